//! Sending one delivery: the HTTP client every webhook goes through, and what an
//! attempt's answer means for the event.

use std::net::IpAddr;
use std::time::Duration;

use reqwest::Url;
use reqwest::header::{CONTENT_TYPE, HeaderValue};

use super::address::{self, GuardedResolver, Refused};
use super::{
    ATTEMPT_HEADER, EVENT_ID_HEADER, EVENT_TYPE_HEADER, MAX_RESPONSE_BYTES, SIGNATURE_HEADER,
};

/// How one attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptResult {
    /// A 2xx answer.
    Delivered { status: u16 },
    /// Worth trying again later: a non-2xx answer, a timeout, a network error.
    Failed { status: Option<u16>, error: String },
    /// Trying again cannot help: the destination is refused, or the URL unusable.
    Refused { error: String },
}

/// One event, ready to send.
#[derive(Debug, Clone)]
pub struct Delivery<'a> {
    pub url: &'a str,
    pub event_id: &'a str,
    pub event_type: &'a str,
    pub attempt: i32,
    pub body: &'a [u8],
    /// The `Tenantry-Signature` value.
    pub signature: &'a str,
}

/// The webhook HTTP client: connect and total timeouts, redirects not followed
/// (a 3xx is a failed attempt: a redirect could lead anywhere), no proxy from the
/// environment, and unless private destinations are allowed, the address guard.
#[derive(Debug, Clone)]
pub struct Sender {
    client: reqwest::Client,
    allow_private: bool,
}

impl Sender {
    pub fn new(timeout: Duration, allow_private: bool) -> Result<Self, reqwest::Error> {
        let mut builder = crate::tls::http_client()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .user_agent(super::USER_AGENT);
        if !allow_private {
            builder = builder.dns_resolver(std::sync::Arc::new(GuardedResolver));
        }
        Ok(Self {
            client: builder.build()?,
            allow_private,
        })
    }

    /// Makes one attempt.
    pub async fn send(&self, delivery: &Delivery<'_>) -> AttemptResult {
        let url = match self.check_url(delivery.url) {
            Ok(url) => url,
            Err(error) => return AttemptResult::Refused { error },
        };
        let mut request = self
            .client
            .post(url)
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .header(EVENT_ID_HEADER, delivery.event_id)
            .header(EVENT_TYPE_HEADER, delivery.event_type)
            .header(ATTEMPT_HEADER, delivery.attempt.to_string())
            .body(delivery.body.to_vec());
        request = request.header(SIGNATURE_HEADER, delivery.signature);
        let mut response = match request.send().await {
            Ok(r) => r,
            Err(e) => {
                if let Some(refused) = find_refusal(&e) {
                    return AttemptResult::Refused {
                        error: refused.to_string(),
                    };
                }
                return AttemptResult::Failed {
                    status: None,
                    error: describe(&e),
                };
            }
        };
        let status = response.status();
        if status.is_success() {
            return AttemptResult::Delivered {
                status: status.as_u16(),
            };
        }
        let body = match crate::embed::read_bounded(&mut response, MAX_RESPONSE_BYTES).await {
            Ok((bytes, _)) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(_) => String::new(),
        };
        let mut error = format!("the receiver answered {status}");
        if status.is_redirection() {
            error.push_str(" (redirects are not followed)");
        }
        let body = body.trim();
        if !body.is_empty() {
            error.push_str(": ");
            error.push_str(body);
        }
        AttemptResult::Failed {
            status: Some(status.as_u16()),
            error,
        }
    }

    /// http or https with a host; a literal IP address is judged here (it is never
    /// resolved, so the resolver would not see it).
    fn check_url(&self, raw: &str) -> Result<Url, String> {
        let url = Url::parse(raw).map_err(|e| format!("webhook_url is not a valid URL: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err("webhook_url must be http or https".to_owned());
        }
        let host = url
            .host_str()
            .ok_or_else(|| "webhook_url names no host".to_owned())?;
        let ip = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .ok();
        if let (Some(ip), false) = (ip, self.allow_private)
            && let Some(why) = address::refusal(ip)
        {
            return Err(Refused {
                host: ip.to_string(),
                ip,
                why,
            }
            .to_string());
        }
        Ok(url)
    }
}

/// The address guard's refusal, if that is what failed the request.
fn find_refusal(error: &reqwest::Error) -> Option<Refused> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if let Some(refused) = e.downcast_ref::<Refused>() {
            return Some(refused.clone());
        }
        source = e.source();
    }
    None
}

/// A transport error with its causes, for `last_error`.
fn describe(error: &reqwest::Error) -> String {
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "could not connect"
    } else {
        "request failed"
    };
    let mut message = kind.to_owned();
    let mut source = std::error::Error::source(error);
    while let Some(e) = source {
        message.push_str(": ");
        message.push_str(&e.to_string());
        source = e.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_private_addresses_are_refused_before_sending() {
        let guarded = Sender::new(Duration::from_secs(1), false).unwrap();
        for url in [
            "http://127.0.0.1:9/hook",
            "http://[::1]/hook",
            "https://169.254.169.254/latest/meta-data",
            "http://10.0.0.7/",
        ] {
            let err = guarded.check_url(url).unwrap_err();
            assert!(err.starts_with("destination refused"), "{url}: {err}");
        }
        assert!(guarded.check_url("https://8.8.8.8/hook").is_ok());
        assert!(guarded.check_url("ftp://example.com/").is_err());
        let open = Sender::new(Duration::from_secs(1), true).unwrap();
        assert!(open.check_url("http://127.0.0.1:9/hook").is_ok());
    }

    #[tokio::test]
    async fn a_name_resolving_to_loopback_is_refused_at_connect_time() {
        let guarded = Sender::new(Duration::from_secs(2), false).unwrap();
        let result = guarded
            .send(&Delivery {
                url: "http://localhost:9/hook",
                event_id: "e",
                event_type: "job_completed",
                attempt: 1,
                body: b"{}",
                signature: "t=0,v1=00",
            })
            .await;
        match result {
            AttemptResult::Refused { error } => {
                assert!(error.contains("loopback"), "{error}")
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }
}
