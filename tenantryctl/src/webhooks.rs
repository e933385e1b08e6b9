//! `tenantryctl webhooks …`: a tenant's webhook deliveries, redelivery of one, and
//! its signing secret (tenant key).

use std::io::Write;

use clap::Subcommand;
use serde_json::json;

use crate::client::{As, Client, encode};
use crate::table::{Table, field};

#[derive(Debug, Subcommand)]
pub enum WebhooksCmd {
    /// Recent deliveries, newest first.
    Deliveries {
        /// pending, delivered or dead.
        #[arg(long)]
        status: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// Make one event due again now (dead and delivered ones too).
    Redeliver { event_id: String },
    /// Issue (or rotate) the signing secret; it is printed once.
    Secret,
}

pub async fn run(
    client: &Client,
    cmd: WebhooksCmd,
    json: bool,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<()> {
    let answer = match &cmd {
        WebhooksCmd::Deliveries { status, limit } => {
            let filter = status
                .as_deref()
                .map(|s| format!("&status={}", encode(s)))
                .unwrap_or_default();
            let path = format!("/v1/tenant/webhooks/deliveries?limit={limit}{filter}");
            client.get(As::Tenant, &path).await?
        }
        WebhooksCmd::Redeliver { event_id } => {
            let path = format!(
                "/v1/tenant/webhooks/deliveries/{}/redeliver",
                encode(event_id)
            );
            client.post(As::Tenant, &path, &json!({})).await?
        }
        WebhooksCmd::Secret => {
            client
                .post(As::Tenant, "/v1/tenant/webhooks/secret", &json!({}))
                .await?
        }
    };
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&answer)?)?;
        return Ok(());
    }
    match cmd {
        WebhooksCmd::Deliveries { .. } => {
            let mut t = Table::new(&[
                "EVENT",
                "TYPE",
                "STATUS",
                "ATTEMPTS",
                "CREATED",
                "NEXT",
                "LAST ERROR",
            ]);
            let empty = Vec::new();
            let rows = answer["deliveries"].as_array().unwrap_or(&empty);
            for d in rows {
                t.row(
                    [
                        "event_id",
                        "type",
                        "status",
                        "attempts",
                        "created_at",
                        "next_attempt_at",
                        "last_error",
                    ]
                    .iter()
                    .map(|k| field(d, k))
                    .collect(),
                );
            }
            write!(out, "{}", t.render())?;
        }
        WebhooksCmd::Redeliver { event_id } => {
            writeln!(out, "Event {event_id}: due again now.")?;
        }
        WebhooksCmd::Secret => {
            writeln!(out, "{}", field(&answer, "secret"))?;
            if let Some(until) = answer["previous_secret_valid_until"].as_str() {
                writeln!(out, "The previous secret also signs until {until}.")?;
            }
        }
    }
    Ok(())
}
