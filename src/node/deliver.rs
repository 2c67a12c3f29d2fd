//! Delivering a mailbox to a subscribed client: one stream per message, acknowledged on it.
//!
//! Up to [`WINDOW`] deliveries are in flight per client; the next message is taken from the
//! mailbox in precedence order only when a slot frees, so a FLASH alert queued behind a backlog
//! of bulk goes out next, not after it. A delivery that is not acknowledged within the ack timeout,
//! or whose stream or connection fails, goes back to the head of its lane for another consumer.

use std::sync::Arc;

use quinn::Connection;
use tokio::sync::Semaphore;

use super::Node;
use super::events::Event;
use super::queue::{Item, Queue};
use crate::client::stream_priority;
use crate::identity::PeerCert;
use crate::lanes::Entry;
use crate::session::CONTROL_FRAME_LIMIT;
use crate::wire::frame::{self, FrameReader};
use crate::wire::pb::{self, frame::Body};

/// Unacknowledged deliveries per subscribed client.
pub const WINDOW: usize = 64;

pub(super) async fn run(node: Arc<Node>, conn: Connection, who: Arc<PeerCert>, unit: String) {
    let mailbox = node.mailbox(&unit);
    let slots = Arc::new(Semaphore::new(WINDOW));
    loop {
        let permit = tokio::select! {
            // The semaphore is never closed, so acquiring only fails if it were.
            p = slots.clone().acquire_owned() => p.expect("semaphore never closed"),
            _ = conn.closed() => return,
        };
        let entry = tokio::select! {
            e = mailbox.pop(|expired| node.expired(&mailbox, expired)) => e,
            _ = conn.closed() => return,
        };
        let (node, conn, who) = (node.clone(), conn.clone(), who.clone());
        let (mailbox, unit) = (mailbox.clone(), unit.clone());
        tokio::spawn(async move {
            deliver_one(&node, &conn, &who, &mailbox, &unit, entry).await;
            drop(permit);
        });
    }
}

async fn deliver_one(
    node: &Arc<Node>,
    conn: &Connection,
    who: &PeerCert,
    mailbox: &Arc<Queue>,
    unit: &str,
    entry: Entry<Item>,
) {
    let id = entry.item.id;
    let attempt = entry.item.attempts + 1;
    let to = who.identity.to_string();
    let result = tokio::time::timeout(node.config.limits.ack_timeout, async {
        let (mut send, recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        let _ = send.set_priority(stream_priority(entry.precedence));
        let deliver = pb::Deliver {
            envelope: Some((*entry.item.signed).clone()),
            attempt,
            agency: node.config.agency.to_string(),
            unit: unit.to_owned(),
        };
        frame::write_body(&mut send, Body::Deliver(deliver))
            .await
            .map_err(|e| e.to_string())?;
        node.events.record(Event::Delivered {
            id,
            to: to.clone(),
            attempt,
        });
        let mut reader = FrameReader::new(recv, CONTROL_FRAME_LIMIT);
        match reader.read().await.map_err(|e| e.to_string())?.body {
            Some(Body::Ack(a)) if a.message_id.as_ref() == id.as_bytes() => Ok(()),
            other => Err(format!("expected Ack for {id}, got {other:?}")),
        }
    })
    .await;
    match result {
        Ok(Ok(())) => node.events.record(Event::Acknowledged { id, by: to }),
        // The client went away: not the message's fault, offer it to the next consumer at once.
        Err(_) | Ok(Err(_)) if conn.close_reason().is_some() => mailbox.requeue(entry),
        Ok(Err(reason)) => {
            node.failed(mailbox, entry, format!("delivery to {to} failed: {reason}"))
        }
        Err(_) => node.failed(mailbox, entry, format!("{to} did not acknowledge in time")),
    }
}
