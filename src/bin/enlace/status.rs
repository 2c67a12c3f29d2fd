//! `enlace status <message-id>`: the receipts of one message you sent, as a timeline.
//!
//! It reads your receipts unit (`receipts-<client>`) without consuming it: nothing is
//! acknowledged, and when it stops it closes the connection, so the node puts every receipt back
//! for the next reader (no delivery attempt is counted). It stops after `--idle` without a new
//! receipt. It sees what the node hands out in that time: up to the node's delivery windows (64
//! time-sensitive and 256 analytical receipts at once), so with a larger backlog of unread
//! receipts of other messages, read them (an application's `enlace::Receipts` stream) first.

use std::io::Write;
use std::time::Duration;

use enlace::{MessageId, Receipt, rfc3339};

use super::connect::{ConnectArgs, parse_duration};
use super::exit::{self, Failure, connect_failure, fail};

/// Arguments of `enlace status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// The id of a message you sent (as `enlace send` printed it).
    pub message_id: String,
    /// Stop after this long without a new receipt.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub idle: Duration,
    /// One JSON object per receipt and line.
    #[arg(long)]
    pub json: bool,
}

pub(super) async fn run(a: StatusArgs) -> Result<(), Failure> {
    let id: MessageId = a.message_id.parse().map_err(|e| fail(exit::USAGE, e))?;
    let client = a.connect.connect().await?;
    let mut inbox = client
        .subscribe(client.receipts_mailbox())
        .await
        .map_err(connect_failure)?;
    let mut got: Vec<Receipt> = Vec::new();
    while let Ok(Some(d)) = tokio::time::timeout(a.idle, inbox.next()).await {
        // Not acknowledged: the receipt stays for whoever reads it next.
        if let Some(mut r) = Receipt::from_message(d.message())
            && r.message_id == id
        {
            r.path = d.path().into_iter().map(str::to_owned).collect();
            got.push(r);
        }
    }
    if inbox.refused() > 0 {
        eprintln!(
            "warning: {} item(s) in your receipts unit did not verify and were ignored (see the \
             log; the node dead-letters them after its delivery attempts)",
            inbox.refused()
        );
    }
    client.abandon().await;
    got.sort_by_key(|r| r.at);
    let mut out = std::io::stdout().lock();
    if a.json {
        for r in &got {
            writeln!(out, "{}", to_json(r))?;
        }
    } else {
        writeln!(
            out,
            "{:<24} {:<30} {:<16} {:<28} DETAIL",
            "AT (UTC)", "STAGE", "ADDRESSEE", "BY"
        )?;
        for r in &got {
            writeln!(out, "{}", row(r))?;
        }
    }
    if got.is_empty() {
        return Err(fail(
            exit::FAILURE,
            anyhow::anyhow!("no receipts for {id} (yet)"),
        ));
    }
    Ok(())
}

fn addressee(r: &Receipt) -> String {
    if r.unit.is_empty() {
        r.addressee.clone()
    } else {
        format!("{}/{}", r.addressee, r.unit)
    }
}

fn row(r: &Receipt) -> String {
    format!(
        "{:<24} {:<30} {:<16} {:<28} {}",
        r.at.map(rfc3339).unwrap_or_else(|| "-".into()),
        r.stage.name(),
        addressee(r),
        r.by,
        r.detail
    )
}

fn to_json(r: &Receipt) -> serde_json::Value {
    serde_json::json!({
        "messageId": r.message_id.to_string(),
        "at": r.at.map(rfc3339),
        "stage": r.stage.name(),
        "addressee": r.addressee,
        "unit": r.unit,
        "by": r.by,
        "detail": r.detail,
        "path": r.path,
    })
}
