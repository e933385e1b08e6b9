//! Every machine-readable error code of tenantry, written once: its wire string, the HTTP
//! status the API answers it with (for codes the HTTP edge answers), and what it means.
//!
//! The same codes name a failed job's reason (`error_code` in the job's status, its
//! attempts and its `job_failed` webhook), label the failure metrics, and are listed in
//! the README (a test keeps that list equal to this table). Clients match on the wire
//! strings: never rename one.

/// Declares [`Code`] from one table, in the manner of meilisearch's `make_error_codes!`:
/// `Variant = "wire_string", HTTP status or None, "meaning";`.
macro_rules! error_codes {
    ($($variant:ident = $wire:literal, $status:expr, $meaning:literal;)+) => {
        /// A stable error code. [`Code::as_str`] is what travels on the wire.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Code {
            $(#[doc = $meaning] $variant,)+
        }

        impl Code {
            /// Every code, in table order.
            pub const ALL: &'static [Code] = &[$(Code::$variant),+];

            /// The wire string: what clients, job rows, webhooks and metric labels carry.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Code::$variant => $wire,)+
                }
            }

            /// The HTTP status the API answers this code with; `None` for codes only a
            /// job's failure carries.
            pub const fn http_status(self) -> Option<u16> {
                match self {
                    $(Code::$variant => $status,)+
                }
            }

            /// What the code means, in one line.
            pub const fn meaning(self) -> &'static str {
                match self {
                    $(Code::$variant => $meaning,)+
                }
            }
        }
    };
}

error_codes! {
    // The HTTP edge: the request itself.
    BadRequest = "bad_request", Some(400), "The request could not be read (e.g. its body could not be received).";
    MalformedJson = "malformed_json", Some(400), "The body is not valid JSON.";
    InvalidPath = "invalid_path", Some(400), "A path parameter is not of the expected form.";
    InvalidQuery = "invalid_query", Some(400), "The query string does not fit the endpoint's parameters.";
    InvalidHeader = "invalid_header", Some(400), "A header's value is not allowed (e.g. `Idempotency-Key`).";
    Unauthorized = "unauthorized", Some(401), "No credentials, or an unknown API key or admin token.";
    KeyExpired = "key_expired", Some(401), "The API key has expired.";
    TenantInactive = "tenant_inactive", Some(401), "The tenant is inactive: its keys are refused and its queued jobs fail.";
    AdminApiDisabled = "admin_api_disabled", Some(403), "The admin API is off (no `TENANTRY_ADMIN_TOKEN`).";
    TenantSuspended = "tenant_suspended", Some(403), "The tenant is suspended: submissions are refused until it is reactivated.";
    NotFound = "not_found", Some(404), "No such resource for this tenant, or no such endpoint.";
    MethodNotAllowed = "method_not_allowed", Some(405), "The endpoint does not answer this method.";
    ModelMismatch = "model_mismatch", Some(409), "The database holds vectors of another embedding model than this fleet's.";
    JobNotCancellable = "job_not_cancellable", Some(409), "Only a PENDING job can be cancelled.";
    DocumentInProgress = "document_in_progress", Some(409), "The document's job is pending or processing.";
    IsolationMoveInProgress = "isolation_move_in_progress", Some(409), "The tenant's points are still moving to another isolation mode.";
    NotReplayable = "not_replayable", Some(409), "The dead letter cannot be replayed.";
    AlreadyReplayed = "already_replayed", Some(409), "The dead letter was replayed already.";
    JobNotFailed = "job_not_failed", Some(409), "Only a FAILED job can be replayed.";
    TenantExists = "tenant_exists", Some(409), "A tenant with this id exists already.";
    PayloadTooLarge = "payload_too_large", Some(413), "The body exceeds `TENANTRY_MAX_BODY_BYTES`.";
    UnsupportedMediaType = "unsupported_media_type", Some(415), "The body is not sent as `Content-Type: application/json`.";
    InvalidValue = "invalid_value", Some(422), "A field's value is not allowed; the error's `field` names it.";
    // 429 where waiting frees the resource (hourly calls, concurrent jobs); the API
    // answers 403 where only deleting or a higher limit can (documents, storage,
    // collections). A job that does not fit when measured fails with this code.
    QuotaExceeded = "quota_exceeded", Some(429), "A quota is exhausted (429 when waiting frees it, 403 when only deleting or a higher limit does).";
    RateLimited = "rate_limited", Some(429), "Too many calls this hour; retry after `Retry-After` seconds.";
    Internal = "internal", Some(500), "An unexpected server failure (logged with its cause).";
    Unavailable = "unavailable", Some(503), "A dependency (database, vector store) is unavailable; retry after `Retry-After` seconds.";
    // A job's failure reason: set by the workers, or when the tenant cancels.
    Cancelled = "cancelled", None, "The tenant cancelled the job.";
    InvalidOptions = "invalid_options", None, "The job's chunking options are invalid.";
    InvalidConfiguration = "invalid_configuration", None, "The tenant's processing preferences are invalid.";
    NoContent = "no_content", None, "The document has no text to index.";
    EmbedderUnavailable = "embedder_unavailable", None, "The embedder failed transiently on every attempt.";
    EmbedderRefused = "embedder_refused", None, "The embedder refused the input.";
    VectorStoreUnavailable = "vector_store_unavailable", None, "The vector store failed transiently on every attempt.";
    VectorStoreRefused = "vector_store_refused", None, "The vector store refused the points.";
    WorkerError = "worker_error", None, "The worker failed unexpectedly on every attempt.";
    NotStarted = "not_started", None, "The job was started but not processed (a worker-internal placeholder).";
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_is_unique_and_snake_case() {
        let mut seen = std::collections::HashSet::new();
        for code in Code::ALL {
            let s = code.as_str();
            assert!(seen.insert(s), "{s} appears twice");
            assert!(
                !s.is_empty()
                    && s.starts_with(|c: char| c.is_ascii_lowercase())
                    && !s.ends_with('_')
                    && !s.contains("__")
                    && s.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
                "{s} is not snake_case"
            );
            assert!(!code.meaning().is_empty(), "{s} has no meaning");
            if let Some(status) = code.http_status() {
                assert!((400..600).contains(&status), "{s}: {status}");
            }
        }
    }

    /// The README's error-code table as this table writes it.
    fn readme_table() -> String {
        let mut table = String::from("| code | HTTP status | meaning |\n|---|---|---|\n");
        for code in Code::ALL {
            let status = code
                .http_status()
                .map_or_else(|| "— (jobs only)".to_owned(), |s| s.to_string());
            table.push_str(&format!(
                "| `{}` | {status} | {} |\n",
                code.as_str(),
                code.meaning()
            ));
        }
        table
    }

    #[test]
    fn the_readme_lists_exactly_these_codes() {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
            .expect("README.md at the workspace root");
        // The table is the run of `|` lines from its header on; it must equal ours, row
        // for row, so a code missing from or extra in the README fails.
        let header = "| code | HTTP status | meaning |";
        let start = readme
            .find(header)
            .expect("README.md has an error-code table");
        let found: String = readme[start..]
            .lines()
            .take_while(|l| l.starts_with('|'))
            .map(|l| format!("{l}\n"))
            .collect();
        let expected = readme_table();
        assert_eq!(
            found, expected,
            "README.md's error-code table differs from shared/src/error_code.rs"
        );
    }
}
