//! The dead-letter recorder: drains the dead-letter queue into Postgres, where dead
//! letters can be listed per tenant and replayed. It re-verifies each body's
//! signature before attributing it to a tenant, so a forged message that was
//! dead-lettered is recorded under no tenant at all.

use std::time::Duration;

use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions};
use lapin::types::{AMQPValue, FieldTable};
use serde_json::{Map, Value};
use tenantry::broker::{self, BrokerError, header_str};
use tenantry::db::dead_letters::{self, NewDeadLetter};
use tenantry::job::{DEAD_ID_HEADER, JobMessage, REASON_HEADER, SIGNATURE_HEADER};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::context::WorkerContext;

pub async fn run(ctx: &WorkerContext, stop: CancellationToken) {
    let name = format!("tenantry-dead-letters-{}", ctx.worker_id);
    let (tag, stop_ref) = (name.as_str(), &stop);
    broker::keep_connected(&ctx.settings.amqp_url, &name, &stop, |conn| async move {
        serve(ctx, &conn, tag, stop_ref).await
    })
    .await;
}

async fn serve(
    ctx: &WorkerContext,
    conn: &lapin::Connection,
    tag: &str,
    stop: &CancellationToken,
) -> Result<(), BrokerError> {
    let channel = conn.create_channel().await?;
    broker::declare_topology(&channel, &ctx.topology).await?;
    broker::set_prefetch(&channel, 16).await?;
    let mut consumer = channel
        .basic_consume(
            ctx.topology.dead_queue().into(),
            tag.into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    loop {
        let delivery = tokio::select! {
            _ = stop.cancelled() => {
                // Cancel explicitly: a consumer dropped while active cancels itself
                // asynchronously, racing the channel close.
                let _ = channel.basic_cancel(tag.into(), lapin::options::BasicCancelOptions::default()).await;
                let _ = channel.close(200, "stopping".into()).await;
                return Ok(());
            }
            next = consumer.next() => match next {
                Some(Ok(d)) => d,
                Some(Err(e)) => return Err(e.into()),
                None => return Err(BrokerError::ConsumerClosed),
            },
        };
        let props = &delivery.properties;
        let signature = header_str(props, SIGNATURE_HEADER);
        let verified = ctx.signer.verify(&delivery.data, signature).is_ok();
        let message = verified
            .then(|| JobMessage::from_bytes(&delivery.data, usize::MAX).ok())
            .flatten();
        let reason = header_str(props, REASON_HEADER)
            .map(str::to_owned)
            .unwrap_or_else(|| broker_reason(props));
        let id = header_str(props, DEAD_ID_HEADER)
            .and_then(|s| Uuid::parse_str(s).ok())
            .unwrap_or_else(Uuid::new_v4);
        let record = NewDeadLetter {
            id,
            tenant: message.as_ref().map(|m| &m.tenant_id),
            job_id: message
                .as_ref()
                .and_then(|m| (m.jobs.len() == 1).then(|| m.jobs[0].job_id)),
            reason: &reason,
            body: &delivery.data,
            headers: headers_json(props.headers().as_ref()),
            message_id: props.message_id().as_ref().map(|m| m.as_str()),
        };
        // Hold the message until it is recorded: if Postgres is down, it waits here.
        let mut wait = Duration::from_millis(200);
        loop {
            match dead_letters::record(&ctx.pool, &record).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "Could not record a dead letter; retrying.");
                    tokio::select! {
                        _ = stop.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(wait) => {}
                    }
                    wait = (wait * 2).min(Duration::from_secs(10));
                }
            }
        }
        tracing::info!(dead_letter = %id, reason = %reason, "Recorded a dead letter.");
        delivery.ack(BasicAckOptions::default()).await?;
    }
}

/// The reason RabbitMQ gives in `x-death` when it dead-lettered the message itself
/// (for example after the delivery limit).
fn broker_reason(props: &lapin::BasicProperties) -> String {
    let reason = props
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("x-death"))
        .and_then(|v| match v {
            AMQPValue::FieldArray(a) => a.as_slice().first().cloned(),
            _ => None,
        })
        .and_then(|first| match first {
            AMQPValue::FieldTable(t) => t.inner().get("reason").cloned(),
            _ => None,
        })
        .and_then(|r| match r {
            AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
            AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
            _ => None,
        });
    match reason {
        Some(r) => format!("dead-lettered by the broker: {r}"),
        None => "dead-lettered without a reason".to_owned(),
    }
}

/// String-valued headers as JSON, for the record (secrets are never in headers).
fn headers_json(headers: Option<&FieldTable>) -> Value {
    let mut out = Map::new();
    if let Some(headers) = headers {
        for (k, v) in headers.inner() {
            if let AMQPValue::LongString(s) = v {
                out.insert(
                    k.as_str().to_owned(),
                    Value::String(String::from_utf8_lossy(s.as_bytes()).into_owned()),
                );
            }
        }
    }
    Value::Object(out)
}
