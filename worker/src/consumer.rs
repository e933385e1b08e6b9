//! A worker task: one broker connection, one consumer on the jobs queue with bounded
//! prefetch and manual acks, up to `TENANTRY_WORKER_IN_FLIGHT` messages (each a group
//! of one tenant's jobs) processed at once. Settled messages are acknowledged in runs
//! (`multiple`), never before everything published on their behalf is confirmed.
//! Reconnects with backoff when the broker goes away; on stop, finishes the messages in
//! hand, acknowledges them, cancels its consumer and closes (unacknowledged prefetched
//! messages go back to the queue).

use std::collections::BTreeSet;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicCancelOptions, BasicConsumeOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use tenantry::broker::{self, BrokerError, ConfirmedPublisher, Outgoing, header_str};
use tenantry::job::{JobMessage, SIGNATURE_HEADER, TENANT_HEADER};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::context::WorkerContext;
use crate::pipeline::{Action, process};

/// Runs worker task `index` until `stop`.
pub async fn run(ctx: &WorkerContext, index: usize, stop: CancellationToken) {
    let name = format!("tenantry-worker-{}-{index}", ctx.worker_id);
    let (tag, stop_ref) = (name.as_str(), &stop);
    broker::keep_connected(&ctx.settings.amqp_url, &name, &stop, |conn| async move {
        serve(ctx, &conn, tag, stop_ref).await
    })
    .await;
    tracing::debug!(worker = index, "Worker stopped.");
}

async fn serve(
    ctx: &WorkerContext,
    conn: &Connection,
    tag: &str,
    stop: &CancellationToken,
) -> Result<(), BrokerError> {
    let channel = conn.create_channel().await?;
    broker::declare_topology(&channel, &ctx.topology).await?;
    broker::set_prefetch(&channel, ctx.settings.worker.prefetch).await?;
    let publisher = ConfirmedPublisher::on(conn, &ctx.topology).await?;
    let mut consumer = channel
        .basic_consume(
            ctx.topology.jobs_queue().into(),
            tag.into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    // Deliveries in hand, processed concurrently: jobs spend most of their time waiting
    // (Postgres commits, the vector store's flush, a remote embedder), and concurrent
    // writes into one collection share a flush. Each is settled on its own.
    let limit = ctx
        .settings
        .worker
        .in_flight
        .clamp(1, usize::from(ctx.settings.worker.prefetch.max(1)));
    let mut in_hand = FuturesUnordered::new();
    let mut acks = Acks::default();
    loop {
        let next = tokio::select! {
            // Stop first: a prefetched delivery is ready at once, and must not win
            // against a stop request (it goes back to the queue when the channel closes).
            biased;
            _ = stop.cancelled() => break,
            Some(settled) = in_hand.next() => {
                acks.settle(&channel, settled?).await?;
                continue;
            }
            next = consumer.next(), if in_hand.len() < limit => next,
        };
        let delivery = match next {
            Some(Ok(d)) => d,
            Some(Err(e)) => return Err(e.into()),
            None => return Err(BrokerError::ConsumerClosed),
        };
        acks.received(delivery.delivery_tag);
        in_hand.push(handle(ctx, &publisher, delivery));
    }
    // Stopping: no new deliveries are taken; the messages in hand finish and are settled.
    while let Some(settled) = in_hand.next().await {
        acks.settle(&channel, settled?).await?;
    }
    drop(in_hand);
    stop_consuming(&channel, tag).await;
    publisher.close().await;
    Ok(())
}

/// Delivery tags received and not yet acknowledged, and those of them settled. A
/// settled message is acknowledged together with the ones before it, with one
/// `multiple` ack, once none before it is still being processed.
#[derive(Debug, Default)]
struct Acks {
    outstanding: BTreeSet<u64>,
    settled: BTreeSet<u64>,
}

impl Acks {
    fn received(&mut self, tag: u64) {
        self.outstanding.insert(tag);
    }

    /// Marks `tag` settled; the highest tag that may now be acknowledged with `multiple`.
    fn settled_through(&mut self, tag: u64) -> Option<u64> {
        self.settled.insert(tag);
        let mut through = None;
        while let Some(&first) = self.outstanding.first() {
            if !self.settled.remove(&first) {
                break;
            }
            self.outstanding.pop_first();
            through = Some(first);
        }
        through
    }

    async fn settle(&mut self, channel: &Channel, tag: u64) -> Result<(), BrokerError> {
        if let Some(through) = self.settled_through(tag) {
            channel
                .basic_ack(through, BasicAckOptions { multiple: true })
                .await?;
        }
        Ok(())
    }
}

/// Stops deliveries and closes the channel (which returns any prefetched,
/// unacknowledged messages to the queue), awaiting each: a channel left to close
/// itself on drop races the connection close that follows.
async fn stop_consuming(channel: &Channel, tag: &str) {
    let _ = channel
        .basic_cancel(tag.into(), BasicCancelOptions::default())
        .await;
    let _ = channel.close(200, "worker stopping".into()).await;
}

/// Processes one delivery to completion and publishes what it asks for (a delayed copy,
/// dead letters), each confirmed. Returns the delivery's tag, to be acknowledged: a
/// crash before that duplicates, never loses.
async fn handle(
    ctx: &WorkerContext,
    publisher: &ConfirmedPublisher,
    delivery: Delivery,
) -> Result<u64, BrokerError> {
    let _in_hand = ctx.metrics.in_flight_guard();
    let signature = header_str(&delivery.properties, SIGNATURE_HEADER).map(str::to_owned);
    let disposition = process(ctx, &delivery.data, signature.as_deref()).await;
    // The delivery as it came, or a new message of some of its jobs, signed here.
    let copy =
        |part: Option<JobMessage>, reason: Option<String>, dead_id: Option<String>| match part {
            None => Outgoing {
                body: delivery.data.clone(),
                signature: signature.clone(),
                tenant: header_str(&delivery.properties, TENANT_HEADER).map(str::to_owned),
                reason,
                message_id: delivery
                    .properties
                    .message_id()
                    .as_ref()
                    .map(|m| m.to_string()),
                dead_id,
            },
            Some(message) => {
                let body = message.to_bytes();
                Outgoing {
                    signature: Some(ctx.signer.sign(&body)),
                    tenant: Some(message.tenant_id.to_string()),
                    reason,
                    message_id: message.jobs.first().map(|j| j.job_id.to_string()),
                    dead_id,
                    body,
                }
            }
        };
    for action in disposition.actions {
        match action {
            Action::Later { tier, why, part } => {
                tracing::debug!(tier, why = %why, "Delaying jobs.");
                publisher
                    .publish_delayed(&copy(part, None, None), tier)
                    .await?;
            }
            Action::Dead { reason, part } => {
                let dead_id = Some(Uuid::new_v4().to_string());
                publisher
                    .publish_dead(&copy(part, Some(reason), dead_id))
                    .await?;
            }
        }
    }
    Ok(delivery.delivery_tag)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settled_messages_are_acknowledged_in_runs_from_the_oldest() {
        let mut acks = Acks::default();
        for tag in 1..=5 {
            acks.received(tag);
        }
        assert_eq!(acks.settled_through(2), None, "1 is still in hand");
        assert_eq!(acks.settled_through(3), None);
        assert_eq!(acks.settled_through(1), Some(3), "1, 2 and 3 in one ack");
        assert_eq!(acks.settled_through(5), None);
        acks.received(6);
        assert_eq!(acks.settled_through(4), Some(5));
        assert_eq!(acks.settled_through(6), Some(6));
        assert!(acks.outstanding.is_empty() && acks.settled.is_empty());
    }
}
