//! The raw-broker baseline: the same number of messages of the same size, published
//! with confirms (pipelined in rounds, as the pump does) and consumed with manual
//! acks through lapin on the same broker, doing no work — a quorum queue, like ours.

use std::time::{Duration, Instant};

use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Connection, ConnectionProperties};

/// Messages per second through publish-with-confirm and consume-with-ack.
pub async fn raw_broker(
    amqp_url: &str,
    messages: usize,
    size: usize,
    prefetch: u16,
) -> anyhow::Result<f64> {
    let queue = format!("bench-raw-{}", uuid::Uuid::new_v4().simple());
    let publish_conn = Connection::connect(amqp_url, ConnectionProperties::default()).await?;
    let consume_conn = Connection::connect(amqp_url, ConnectionProperties::default()).await?;
    let pub_ch = publish_conn.create_channel().await?;
    pub_ch
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let mut args = FieldTable::default();
    args.insert(
        ShortString::from("x-queue-type"),
        AMQPValue::LongString("quorum".into()),
    );
    pub_ch
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await?;
    let con_ch = consume_conn.create_channel().await?;
    con_ch
        .basic_qos(prefetch, BasicQosOptions::default())
        .await?;
    let mut consumer = con_ch
        .basic_consume(
            queue.as_str().into(),
            "bench".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let body = vec![b'x'; size];
    let start = Instant::now();
    let consume = async {
        let mut seen = 0usize;
        while seen < messages {
            let Some(delivery) = consumer.next().await else {
                break;
            };
            delivery?.ack(BasicAckOptions::default()).await?;
            seen += 1;
        }
        anyhow::Ok(seen)
    };
    let publish = async {
        for round in body_rounds(messages, 256) {
            let mut confirms = Vec::with_capacity(round);
            for _ in 0..round {
                confirms.push(
                    pub_ch
                        .basic_publish(
                            "".into(),
                            queue.as_str().into(),
                            BasicPublishOptions {
                                mandatory: true,
                                ..Default::default()
                            },
                            &body,
                            BasicProperties::default().with_delivery_mode(2),
                        )
                        .await?,
                );
            }
            for c in confirms {
                c.await?;
            }
        }
        anyhow::Ok(())
    };
    let (seen, published) = tokio::time::timeout(Duration::from_secs(600), async {
        tokio::join!(consume, publish)
    })
    .await?;
    published?;
    let seen = seen?;
    let elapsed = start.elapsed();
    let _ = pub_ch
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await;
    let _ = con_ch.close(200, "done".into()).await;
    let _ = pub_ch.close(200, "done".into()).await;
    let _ = consume_conn.close(200, "done".into()).await;
    let _ = publish_conn.close(200, "done".into()).await;
    anyhow::ensure!(seen == messages, "consumed {seen} of {messages}");
    Ok(messages as f64 / elapsed.as_secs_f64())
}

fn body_rounds(total: usize, round: usize) -> impl Iterator<Item = usize> {
    (0..total.div_ceil(round)).map(move |i| round.min(total - i * round))
}
