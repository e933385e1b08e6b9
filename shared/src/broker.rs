//! RabbitMQ: the topology's names (the only place they are spelled), its idempotent
//! declaration, connecting with backoff, and publishing with confirms.
//!
//! Topology, every name under the fleet prefix `P`:
//! - `P.jobs` (direct exchange) → `P.jobs` (quorum queue, dead-letters to `P.dlx`,
//!   delivery limit as a guard against messages that crash workers).
//! - `P.retry` (direct exchange) → `P.retry.<N>s` (durable classic queues, one per
//!   delay tier, no consumers): a message published there with a per-message
//!   expiration dead-letters back into `P.jobs` when it expires. That is the delayed
//!   redelivery used for retries with backoff and for deferring work.
//! - `P.dlx` (fanout exchange) → `P.dead` (quorum queue): dead letters, each with
//!   its reason in the `x-tenantry-reason` header.

use std::time::Duration;

use lapin::options::{
    BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
};
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::job::{DEAD_ID_HEADER, REASON_HEADER, SIGNATURE_HEADER, TENANT_HEADER};

/// Routing key of job messages on the jobs exchange.
pub const JOB_ROUTING_KEY: &str = "job";
/// Delays of the retry tiers. Attempt `n` (1-based) waits about `RETRY_TIERS[n-1]`
/// (the last tier repeats), with ±20 % jitter.
pub const RETRY_TIERS: [Duration; 5] = [
    Duration::from_secs(1),
    Duration::from_secs(5),
    Duration::from_secs(30),
    Duration::from_secs(120),
    Duration::from_secs(600),
];
/// Deliveries of one message before the broker itself dead-letters it (a message
/// that kills every worker that touches it must not loop forever).
pub const DELIVERY_LIMIT: i64 = 20;
/// Content type of job messages.
pub const JSON: &str = "application/json";

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error(
        "RabbitMQ at {addr} is unreachable ({source}); start it with `rabbitmq-server -detached`"
    )]
    Connect {
        addr: String,
        #[source]
        source: lapin::Error,
    },
    #[error("broker error: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("the broker refused the message (nack)")]
    Nacked,
    #[error("the message could not be routed to {0}")]
    Unroutable(String),
    #[error("the broker closed the consumer")]
    ConsumerClosed,
}

/// Names of every exchange and queue of one fleet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    prefix: String,
}

impl Topology {
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }
    pub fn jobs_exchange(&self) -> String {
        format!("{}.jobs", self.prefix)
    }
    pub fn jobs_queue(&self) -> String {
        format!("{}.jobs", self.prefix)
    }
    pub fn retry_exchange(&self) -> String {
        format!("{}.retry", self.prefix)
    }
    pub fn retry_queue(&self, tier: usize) -> String {
        format!(
            "{}.retry.{}s",
            self.prefix,
            RETRY_TIERS[tier.min(RETRY_TIERS.len() - 1)].as_secs()
        )
    }
    fn retry_routing_key(tier: usize) -> String {
        format!("tier{}", tier.min(RETRY_TIERS.len() - 1))
    }
    pub fn dead_exchange(&self) -> String {
        format!("{}.dlx", self.prefix)
    }
    pub fn dead_queue(&self) -> String {
        format!("{}.dead", self.prefix)
    }

    /// Every queue, for operators' views and for tests that clean up.
    pub fn all_queues(&self) -> Vec<String> {
        let mut queues = vec![self.jobs_queue(), self.dead_queue()];
        queues.extend((0..RETRY_TIERS.len()).map(|t| self.retry_queue(t)));
        queues
    }

    pub fn all_exchanges(&self) -> Vec<String> {
        vec![
            self.jobs_exchange(),
            self.retry_exchange(),
            self.dead_exchange(),
        ]
    }
}

fn table(entries: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in entries {
        t.insert(ShortString::from(*k), v.clone());
    }
    t
}

fn long_string(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

/// Declares the whole topology. Idempotent: every process runs it on start.
pub async fn declare_topology(channel: &Channel, topology: &Topology) -> Result<(), BrokerError> {
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .exchange_declare(
            topology.jobs_exchange().into(),
            ExchangeKind::Direct,
            durable,
            FieldTable::default(),
        )
        .await?;
    channel
        .exchange_declare(
            topology.retry_exchange().into(),
            ExchangeKind::Direct,
            durable,
            FieldTable::default(),
        )
        .await?;
    channel
        .exchange_declare(
            topology.dead_exchange().into(),
            ExchangeKind::Fanout,
            durable,
            FieldTable::default(),
        )
        .await?;

    let durable_queue = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .queue_declare(
            topology.jobs_queue().into(),
            durable_queue,
            table(&[
                ("x-queue-type", long_string("quorum")),
                (
                    "x-dead-letter-exchange",
                    long_string(&topology.dead_exchange()),
                ),
                ("x-delivery-limit", AMQPValue::LongLongInt(DELIVERY_LIMIT)),
            ]),
        )
        .await?;
    channel
        .queue_bind(
            topology.jobs_queue().into(),
            topology.jobs_exchange().into(),
            JOB_ROUTING_KEY.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;

    for tier in 0..RETRY_TIERS.len() {
        channel
            .queue_declare(
                topology.retry_queue(tier).into(),
                durable_queue,
                table(&[
                    (
                        "x-dead-letter-exchange",
                        long_string(&topology.jobs_exchange()),
                    ),
                    ("x-dead-letter-routing-key", long_string(JOB_ROUTING_KEY)),
                ]),
            )
            .await?;
        channel
            .queue_bind(
                topology.retry_queue(tier).into(),
                topology.retry_exchange().into(),
                Topology::retry_routing_key(tier).into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }

    channel
        .queue_declare(
            topology.dead_queue().into(),
            durable_queue,
            table(&[("x-queue-type", long_string("quorum"))]),
        )
        .await?;
    channel
        .queue_bind(
            topology.dead_queue().into(),
            topology.dead_exchange().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok(())
}

/// Opens one connection; the error names the address (without credentials) and how
/// to start the broker.
pub async fn connect(url: &str, name: &str) -> Result<Connection, BrokerError> {
    let props = ConnectionProperties::default()
        .with_connection_name(LongString::from(name.as_bytes().to_vec()));
    Connection::connect(url, props)
        .await
        .map_err(|source| BrokerError::Connect {
            addr: Settings::redacted_url(url),
            source,
        })
}

/// Connects, retrying with exponential backoff (capped at 10 s) until it succeeds or
/// `stop` is cancelled. Says what is wrong once per outage, not once per attempt.
pub async fn connect_with_retry(
    url: &str,
    name: &str,
    stop: &CancellationToken,
) -> Option<Connection> {
    let mut delay = Duration::from_millis(200);
    let mut reported = false;
    loop {
        match connect(url, name).await {
            Ok(conn) => {
                if reported {
                    tracing::info!(addr = %Settings::redacted_url(url), "RabbitMQ is reachable again.");
                }
                return Some(conn);
            }
            Err(err) => {
                if !reported {
                    tracing::error!("{err}; retrying with backoff.");
                    reported = true;
                }
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return None,
            _ = tokio::time::sleep(jittered(delay)) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}

/// Runs `serve` on a connection until it returns `Ok` (asked to stop) or `stop` fires;
/// when it fails (the broker went away), reconnects with backoff and serves again.
/// The loop every long-lived consumer shares.
pub async fn keep_connected<F, Fut>(url: &str, name: &str, stop: &CancellationToken, mut serve: F)
where
    // An owned handle rather than `&Connection`: a future borrowing its argument
    // would need a higher-ranked `Send` bound that async closures cannot yet prove.
    F: FnMut(std::sync::Arc<Connection>) -> Fut,
    Fut: std::future::Future<Output = Result<(), BrokerError>>,
{
    let mut delay = Duration::from_millis(200);
    while !stop.is_cancelled() {
        let Some(conn) = connect_with_retry(url, name, stop).await else {
            break;
        };
        let conn = std::sync::Arc::new(conn);
        let outcome = serve(conn.clone()).await;
        let _ = conn.close(200, "closing".into()).await;
        match outcome {
            Ok(()) => break,
            Err(e) => {
                tracing::warn!(connection = name, error = %e, "Lost the broker; reconnecting.");
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(jittered(delay)) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// `d` scaled by a random factor in [0.8, 1.2].
pub fn jittered(d: Duration) -> Duration {
    let factor = 0.8 + rand::random::<f64>() * 0.4;
    d.mul_f64(factor)
}

/// Depth and consumers of one queue, as the broker counts them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct QueueStats {
    pub name: String,
    pub messages: u64,
    pub consumers: u64,
}

/// Reads a queue's counts with a passive declare on a throwaway channel (a missing
/// queue closes the channel it was asked on).
pub async fn queue_stats(conn: &Connection, name: &str) -> Result<QueueStats, BrokerError> {
    let channel = conn.create_channel().await?;
    let queue = channel
        .queue_declare(
            name.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    let stats = QueueStats {
        name: name.to_owned(),
        messages: u64::from(queue.message_count()),
        consumers: u64::from(queue.consumer_count()),
    };
    let _ = channel.close(200, "done".into()).await;
    Ok(stats)
}

/// A message to publish: body and the headers that travel with it.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub body: Vec<u8>,
    pub signature: Option<String>,
    pub tenant: Option<String>,
    pub reason: Option<String>,
    /// Message id (the job id), so duplicates are recognisable downstream.
    pub message_id: Option<String>,
    /// Set on dead letters: the id their record gets.
    pub dead_id: Option<String>,
}

impl Outgoing {
    fn properties(&self) -> BasicProperties {
        let mut headers = FieldTable::default();
        if let Some(sig) = &self.signature {
            headers.insert(SIGNATURE_HEADER.into(), long_string(sig));
        }
        if let Some(tenant) = &self.tenant {
            headers.insert(TENANT_HEADER.into(), long_string(tenant));
        }
        if let Some(reason) = &self.reason {
            headers.insert(REASON_HEADER.into(), long_string(reason));
        }
        if let Some(id) = &self.dead_id {
            headers.insert(DEAD_ID_HEADER.into(), long_string(id));
        }
        let mut props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type(JSON.into())
            .with_headers(headers);
        if let Some(id) = &self.message_id {
            props = props.with_message_id(id.as_str().into());
        }
        props
    }
}

/// A channel in confirm mode on its own connection. Every publish is `mandatory`
/// and awaited: Ok means the broker has the message on a queue.
pub struct ConfirmedPublisher {
    /// Owned when the publisher opened its own connection; None when it borrows a
    /// channel on someone else's (the worker's consumer connection).
    connection: Option<Connection>,
    channel: Channel,
    topology: Topology,
}

impl ConfirmedPublisher {
    pub async fn open(url: &str, name: &str, topology: &Topology) -> Result<Self, BrokerError> {
        let connection = connect(url, name).await?;
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Self {
            connection: Some(connection),
            channel,
            topology: topology.clone(),
        })
    }

    /// Publishes on a new channel of an existing connection (the worker's).
    pub async fn on(connection: &Connection, topology: &Topology) -> Result<Self, BrokerError> {
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Self {
            connection: None,
            channel,
            topology: topology.clone(),
        })
    }

    /// The confirm-mode channel (also fine for declaring the topology).
    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// Closes the channel (and the connection, if owned), awaiting each: a dropped lapin
    /// channel closes itself asynchronously and races a connection close that follows.
    pub async fn close(self) {
        let _ = self.channel.close(200, "done".into()).await;
        if let Some(conn) = self.connection {
            let _ = conn.close(200, "done".into()).await;
        }
    }

    /// The owned connection, if this publisher opened one.
    pub fn connection(&self) -> Option<&Connection> {
        self.connection.as_ref()
    }

    pub fn is_connected(&self) -> bool {
        self.connection
            .as_ref()
            .is_none_or(|c| c.status().connected())
            && self.channel.status().connected()
    }

    /// Publishes many messages pipelined, then awaits every confirm.
    pub async fn publish_jobs(&self, messages: &[Outgoing]) -> Result<(), BrokerError> {
        let exchange = self.topology.jobs_exchange();
        self.publish_all(&exchange, JOB_ROUTING_KEY, messages, None)
            .await
    }

    /// Sends a message to wait in retry tier `tier` (0-based) for about its delay.
    pub async fn publish_delayed(
        &self,
        message: &Outgoing,
        tier: usize,
    ) -> Result<(), BrokerError> {
        let tier = tier.min(RETRY_TIERS.len() - 1);
        let expiration = jittered(RETRY_TIERS[tier]).as_millis().max(1).to_string();
        let exchange = self.topology.retry_exchange();
        self.publish_all(
            &exchange,
            &Topology::retry_routing_key(tier),
            std::slice::from_ref(message),
            Some(expiration),
        )
        .await
    }

    /// Sends a message to the dead-letter queue (its `reason` should be set).
    pub async fn publish_dead(&self, message: &Outgoing) -> Result<(), BrokerError> {
        let exchange = self.topology.dead_exchange();
        self.publish_all(&exchange, "", std::slice::from_ref(message), None)
            .await
    }

    async fn publish_all(
        &self,
        exchange: &str,
        routing_key: &str,
        messages: &[Outgoing],
        expiration: Option<String>,
    ) -> Result<(), BrokerError> {
        let options = BasicPublishOptions {
            mandatory: true,
            ..Default::default()
        };
        let mut confirms = Vec::with_capacity(messages.len());
        for message in messages {
            let mut props = message.properties();
            if let Some(exp) = &expiration {
                props = props.with_expiration(exp.as_str().into());
            }
            let confirm = self
                .channel
                .basic_publish(
                    exchange.into(),
                    routing_key.into(),
                    options,
                    &message.body,
                    props,
                )
                .await?;
            confirms.push(confirm);
        }
        for confirm in confirms {
            match confirm.await? {
                Confirmation::Ack(None) | Confirmation::NotRequested => {}
                Confirmation::Ack(Some(_returned)) => {
                    return Err(BrokerError::Unroutable(exchange.to_owned()));
                }
                Confirmation::Nack(_) => return Err(BrokerError::Nacked),
            }
        }
        Ok(())
    }
}

/// Sets the prefetch of a consuming channel.
pub async fn set_prefetch(channel: &Channel, prefetch: u16) -> Result<(), BrokerError> {
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await?;
    Ok(())
}

/// Reads a string header of a delivery.
pub fn header_str<'a>(props: &'a BasicProperties, key: &str) -> Option<&'a str> {
    let headers = props.headers().as_ref()?;
    match headers.inner().get(key)? {
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok(),
        AMQPValue::ShortString(s) => Some(s.as_str()),
        _ => None,
    }
}

/// Deletes every queue and exchange of a fleet. For tests and `tenantryctl` teardown.
pub async fn delete_topology(conn: &Connection, topology: &Topology) -> Result<(), BrokerError> {
    for queue in topology.all_queues() {
        let channel = conn.create_channel().await?;
        let _ = channel
            .queue_delete(
                queue.as_str().into(),
                lapin::options::QueueDeleteOptions::default(),
            )
            .await;
    }
    for exchange in topology.all_exchanges() {
        let channel = conn.create_channel().await?;
        let _ = channel
            .exchange_delete(
                exchange.as_str().into(),
                lapin::options::ExchangeDeleteOptions::default(),
            )
            .await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_live_under_the_prefix() {
        let t = Topology::new("fleet-a");
        for name in t.all_queues().iter().chain(t.all_exchanges().iter()) {
            assert!(name.starts_with("fleet-a."), "{name}");
        }
        assert_eq!(t.retry_queue(0), "fleet-a.retry.1s");
        assert_eq!(t.retry_queue(99), "fleet-a.retry.600s");
    }

    #[test]
    fn jitter_stays_in_bounds() {
        for _ in 0..1000 {
            let d = jittered(Duration::from_secs(10));
            assert!(d >= Duration::from_secs(8) && d <= Duration::from_secs(12));
        }
    }
}
