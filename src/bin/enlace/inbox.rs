//! `enlace inbox`: print deliveries as a table or JSON lines, acknowledging each once printed.

use std::io::Write;
use std::time::{Duration, SystemTime};

use enlace::{Delivery, Mailbox, MessageId, json};

use super::connect::{ConnectArgs, parse_duration};
use super::exit::{self, Failure, connect_failure, fail};

/// Arguments of `enlace inbox`.
#[derive(Debug, clap::Args)]
pub struct InboxArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Read this unit's mailbox instead of the agency inbox.
    #[arg(long)]
    pub unit: Option<Mailbox>,
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
    let client = a.connect.connect().await?;
    let mailbox = a.unit.clone().unwrap_or(Mailbox::Inbox);
    let mut inbox = client.subscribe(mailbox).await.map_err(connect_failure)?;
    let mut out = std::io::stdout().lock();
    if !a.json {
        writeln!(
            out,
            "{:<24} {:<9} {:<22} {:<28} {:<36}",
            "RECEIVED (UTC)", "PREC", "FROM", "TYPE", "ID"
        )?;
    }
    let mut n = 0u64;
    // SIGINT (Ctrl-C) and SIGTERM end the reading cleanly: what was printed is acknowledged,
    // and the connection is closed, so the node hands what is left to other readers at once
    // instead of waiting for the connection to time out.
    let mut stop = std::pin::pin!(interrupted());
    loop {
        if a.count.is_some_and(|c| n >= c) {
            break;
        }
        let next = async {
            if a.follow {
                inbox.next().await
            } else {
                tokio::time::timeout(a.idle, inbox.next())
                    .await
                    .ok()
                    .flatten()
            }
        };
        let next = tokio::select! {
            d = next => d,
            _ = &mut stop => break,
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

/// Completes on SIGINT or SIGTERM.
async fn interrupted() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

fn from(d: &Delivery) -> String {
    d.message().originator().to_string()
}

fn row(d: &Delivery) -> String {
    let ty = d.message().payload_type().trim_start_matches("enlace.v1.");
    format!(
        "{:<24} {:<9} {:<22} {:<28} {}",
        utc(d.received_at()),
        d.precedence().as_str(),
        from(d),
        ty,
        d.id()
    )
}

fn to_json(d: &Delivery) -> serde_json::Value {
    let m = d.message();
    let payload = json::decode_json(m.payload_type(), m.payload_bytes())
        .unwrap_or_else(|e| serde_json::json!({"error": e.to_string()}));
    let envelope =
        json::decode_json("Envelope", m.envelope_bytes()).unwrap_or(serde_json::Value::Null);
    serde_json::json!({
        "id": d.id().to_string(),
        "receivedAt": utc(d.received_at()),
        "attempt": d.attempt(),
        "precedence": d.precedence().as_str(),
        "from": from(d),
        "payloadType": m.payload_type(),
        "envelope": readable_envelope(envelope),
        "payload": payload,
        "hops": d.hops().iter().map(|h| format!("{}/{}", h.agency, h.node)).collect::<Vec<_>>(),
    })
}

/// The envelope's proto3 JSON without the payload (printed decoded beside it), with message ids
/// as UUIDs, as everywhere else, instead of base64 bytes.
fn readable_envelope(mut v: serde_json::Value) -> serde_json::Value {
    let Some(o) = v.as_object_mut() else {
        return v;
    };
    o.remove("payload");
    let uuid = |b64: &serde_json::Value| {
        let bytes = b64.as_str().and_then(base64_decode)?;
        MessageId::from_slice(&bytes).map(|id| serde_json::Value::from(id.to_string()))
    };
    for key in ["messageId", "inReplyTo"] {
        if let Some(id) = o.get(key).and_then(uuid) {
            o.insert(key.to_owned(), id);
        }
    }
    if let Some(serde_json::Value::Array(ids)) = o.get_mut("derivedFrom") {
        for id in ids.iter_mut() {
            if let Some(u) = uuid(id) {
                *id = u;
            }
        }
    }
    v
}

/// Decodes standard base64 (as proto3 JSON writes bytes), padded or not.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' | b'-' => Some(62),
        b'/' | b'_' => Some(63),
        _ => None,
    };
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes().filter(|c| *c != b'=') {
        acc = (acc << 6) | u32::from(value(c)?);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

/// Formats a time as RFC 3339 UTC with milliseconds.
pub fn utc(t: SystemTime) -> String {
    enlace::rfc3339(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_ids_print_as_uuids() {
        let id: MessageId = "01a220d3-7886-74d0-99d1-f57d343e1e76".parse().unwrap();
        // proto3 JSON writes bytes as standard base64.
        let b64 = "AaIg03iGdNCZ0fV9ND4edg==";
        assert_eq!(base64_decode(b64).unwrap(), id.as_bytes());
        let v = readable_envelope(serde_json::json!({
            "messageId": b64, "inReplyTo": b64, "derivedFrom": [b64], "payload": "eA==",
        }));
        assert_eq!(v["messageId"], id.to_string());
        assert_eq!(v["inReplyTo"], id.to_string());
        assert_eq!(v["derivedFrom"][0], id.to_string());
        assert!(v.get("payload").is_none());
    }
}
