//! A worker task: one broker connection, one consumer on the jobs queue with bounded
//! prefetch and manual acks, up to `TENANTRY_WORKER_IN_FLIGHT` jobs processed at once.
//! Reconnects with backoff when the broker goes away; on stop, finishes the jobs in
//! hand, acknowledges them, cancels its consumer and closes (unacknowledged prefetched
//! messages go back to the queue).

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicCancelOptions, BasicConsumeOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use tenantry::broker::{self, BrokerError, ConfirmedPublisher, Outgoing, header_str};
use tenantry::job::{SIGNATURE_HEADER, TENANT_HEADER};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::context::WorkerContext;
use crate::pipeline::{Disposition, process};

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
    loop {
        let next = tokio::select! {
            // Stop first: a prefetched delivery is ready at once, and must not win
            // against a stop request (it goes back to the queue when the channel closes).
            biased;
            _ = stop.cancelled() => break,
            Some(settled) = in_hand.next() => {
                settled?;
                continue;
            }
            next = consumer.next(), if in_hand.len() < limit => next,
        };
        let delivery = match next {
            Some(Ok(d)) => d,
            Some(Err(e)) => return Err(e.into()),
            None => return Err(BrokerError::ConsumerClosed),
        };
        in_hand.push(handle(ctx, &publisher, delivery));
    }
    // Stopping: no new deliveries are taken; the jobs in hand finish and are settled.
    while let Some(settled) = in_hand.next().await {
        settled?;
    }
    drop(in_hand);
    stop_consuming(&channel, tag).await;
    publisher.close().await;
    Ok(())
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

/// Processes one delivery to completion, then settles it with the broker. Anything
/// published on its behalf (a delayed copy, a dead letter) is confirmed before the
/// original is acknowledged, so a crash in between duplicates, never loses.
async fn handle(
    ctx: &WorkerContext,
    publisher: &ConfirmedPublisher,
    delivery: Delivery,
) -> Result<(), BrokerError> {
    let _in_hand = ctx.metrics.in_flight_guard();
    let signature = header_str(&delivery.properties, SIGNATURE_HEADER).map(str::to_owned);
    let disposition = process(ctx, &delivery.data, signature.as_deref()).await;
    let copy = |reason: Option<String>, dead_id: Option<String>| Outgoing {
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
    };
    match disposition {
        Disposition::Ack => {}
        Disposition::Later { tier, why } => {
            tracing::debug!(tier, why = %why, "Delaying a job.");
            publisher.publish_delayed(&copy(None, None), tier).await?;
        }
        Disposition::Dead { reason } => {
            publisher
                .publish_dead(&copy(Some(reason), Some(Uuid::new_v4().to_string())))
                .await?;
        }
    }
    delivery.ack(BasicAckOptions::default()).await?;
    Ok(())
}
