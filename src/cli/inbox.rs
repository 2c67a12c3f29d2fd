//! `enlace inbox`: print deliveries as a table or JSON lines, acknowledging each once printed.

use std::io::Write;
use std::time::{Duration, SystemTime};

use super::{ConnectArgs, Failure, exit, fail, parse_duration};
use crate::client::{Client, Delivery};
use crate::wire::json;

/// Arguments of `enlace inbox`.
#[derive(Debug, clap::Args)]
pub struct InboxArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Read this unit's mailbox instead of the agency inbox.
    #[arg(long, default_value = "")]
    pub unit: String,
    /// Keep reading until interrupted.
    #[arg(long, short)]
    pub follow: bool,
    /// Without --follow: stop after this long without a new delivery.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub idle: Duration,
    /// Stop after this many deliveries.
    #[arg(long)]
    pub count: Option<u64>,
    /// One JSON object per line (envelope fields and the payload in proto3 JSON).
    #[arg(long)]
    pub json: bool,
}

pub(super) async fn run(a: InboxArgs) -> Result<(), Failure> {
    let client = Client::connect(a.connect.options()?.subscribe(&a.unit))
        .await
        .map_err(|e| fail(exit::CONNECT, e))?;
    let mut inbox = client.inbox().expect("subscribed client has an inbox");
    let mut out = std::io::stdout().lock();
    if !a.json {
        writeln!(
            out,
            "{:<24} {:<9} {:<22} {:<28} {:<36}",
            "RECEIVED (UTC)", "PREC", "FROM", "TYPE", "ID"
        )?;
    }
    let mut n = 0u64;
    loop {
        if a.count.is_some_and(|c| n >= c) {
            break;
        }
        let next = if a.follow {
            inbox.next().await
        } else {
            tokio::time::timeout(a.idle, inbox.next())
                .await
                .ok()
                .flatten()
        };
        let Some(d) = next else { break };
        if a.json {
            writeln!(out, "{}", to_json(&d))?;
        } else {
            writeln!(out, "{}", row(&d))?;
        }
        out.flush()?;
        d.ack().await.map_err(|e| fail(exit::CONNECT, e))?;
        n += 1;
    }
    drop(out);
    client.close().await;
    Ok(())
}

fn from(d: &Delivery) -> String {
    d.envelope
        .originator
        .as_ref()
        .map(|o| format!("{}/{}", o.agency, o.client))
        .unwrap_or_default()
}

fn row(d: &Delivery) -> String {
    let ty = d.envelope.payload_type.trim_start_matches("enlace.v1.");
    format!(
        "{:<24} {:<9} {:<22} {:<28} {}",
        utc(d.received_at),
        d.precedence.as_str(),
        from(d),
        ty,
        d.id
    )
}

fn to_json(d: &Delivery) -> serde_json::Value {
    let payload = json::decode_json(&d.envelope.payload_type, &d.envelope.payload)
        .unwrap_or_else(|e| serde_json::json!({"error": e.to_string()}));
    let envelope = json::decode_json("Envelope", &prost::Message::encode_to_vec(&d.envelope))
        .unwrap_or(serde_json::Value::Null);
    serde_json::json!({
        "id": d.id.to_string(),
        "receivedAt": utc(d.received_at),
        "attempt": d.attempt,
        "precedence": d.precedence.as_str(),
        "from": from(d),
        "payloadType": d.envelope.payload_type,
        "envelope": strip_payload(envelope),
        "payload": payload,
        "hops": d.signed.hops.iter().map(|h| format!("{}/{}", h.agency, h.node)).collect::<Vec<_>>(),
    })
}

fn strip_payload(mut v: serde_json::Value) -> serde_json::Value {
    if let Some(o) = v.as_object_mut() {
        o.remove("payload");
    }
    v
}

/// Formats a time as RFC 3339 UTC with milliseconds.
pub fn utc(t: SystemTime) -> String {
    crate::message::rfc3339(t)
}
