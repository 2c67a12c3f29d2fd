//! Delivering a mailbox to a subscribed client, time-sensitive traffic first.
//!
//! FLASH, IMMEDIATE and PRIORITY messages each get a stream of their own at high priority,
//! acknowledged on it; up to [`ALERT_WINDOW`] are in flight per client. ROUTINE and BULK messages
//! travel as `Deliver` frames on one long-lived, low-priority stream, acknowledged by `Ack` frames
//! on the same stream; at most [`BULK_WINDOW`] are unacknowledged, so a slow client stops the
//! analytical flow, never the alerts. The next message is taken from the mailbox only when its
//! path has room, so a FLASH alert queued behind a backlog of bulk goes out next.
//!
//! A delivery that is not acknowledged within the ack timeout, or whose stream fails, counts as a
//! failed attempt (redelivery with backoff, then a dead letter); if the client's connection is
//! gone, the copy goes straight back to the head of its lane for another consumer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use quinn::{Connection, RecvStream, SendStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use super::Node;
use super::queue::{Item, Queue};
use crate::client::stream_priority;
use crate::identity::PeerCert;
use crate::lanes::Entry;
use crate::message::{MessageId, Precedence};
use crate::session::CONTROL_FRAME_LIMIT;
use crate::wire::frame::{self, FrameReader};
use crate::wire::pb::{self, frame::Body};

/// Unacknowledged time-sensitive deliveries per client (each on its own stream).
pub const ALERT_WINDOW: usize = 64;

/// Unacknowledged analytical deliveries per client on the shared stream.
pub const BULK_WINDOW: usize = 256;

/// Most analytical deliveries written at once.
const WRITE_BATCH: usize = 64;

/// Where one client's deliveries go.
struct Consumer {
    node: Arc<Node>,
    conn: Connection,
    mailbox: Arc<Queue>,
    to: String,
    unit: String,
}

type Pending = Arc<Mutex<HashMap<MessageId, (Entry<Item>, Instant, OwnedSemaphorePermit)>>>;

pub(super) async fn run(node: Arc<Node>, conn: Connection, who: Arc<PeerCert>, unit: String) {
    let Some(mailbox) = node.mailbox(&unit) else {
        tracing::warn!(%unit, who = %who.identity, "no room for another unit mailbox; not subscribed");
        return;
    };
    let c = Arc::new(Consumer {
        mailbox,
        node,
        conn,
        to: who.identity.to_string(),
        unit,
    });
    let alerts = Arc::new(Semaphore::new(ALERT_WINDOW));
    let bulk_slots = Arc::new(Semaphore::new(BULK_WINDOW));
    // Bounded by the bulk window: a slot is taken before an entry is sent here.
    let (bulk_tx, bulk_rx) = mpsc::channel::<(Entry<Item>, OwnedSemaphorePermit)>(BULK_WINDOW);
    let pending: Pending = Arc::default();
    tokio::spawn(bulk_writer(c.clone(), bulk_rx, pending.clone()));
    tokio::spawn(expire_unacked(c.clone(), pending));
    let on_expired = |expired| c.node.expired(&c.mailbox, expired);
    loop {
        // The semaphores are never closed, so acquiring fails only if they were.
        let alert_slot = tokio::select! {
            p = alerts.clone().acquire_owned() => p.expect("semaphore never closed"),
            _ = c.conn.closed() => return,
        };
        tokio::select! {
            biased;
            _ = c.conn.closed() => return,
            e = c.mailbox.pop_class(true, on_expired) => spawn_alert(&c, e, alert_slot),
            bulk_slot = bulk_slots.clone().acquire_owned() => {
                let bulk_slot = bulk_slot.expect("semaphore never closed");
                let e = tokio::select! {
                    e = c.mailbox.pop(on_expired) => e,
                    _ = c.conn.closed() => return,
                };
                if e.precedence.is_time_sensitive() {
                    spawn_alert(&c, e, alert_slot);
                } else if let Err(mpsc::error::SendError((e, _))) = bulk_tx.send((e, bulk_slot)).await {
                    c.mailbox.requeue(e);
                    return;
                }
            }
        }
    }
}

fn spawn_alert(c: &Arc<Consumer>, entry: Entry<Item>, slot: OwnedSemaphorePermit) {
    let c = c.clone();
    tokio::spawn(async move {
        deliver_alert(&c, entry).await;
        drop(slot);
    });
}

fn deliver_frame(c: &Consumer, entry: &Entry<Item>) -> pb::Frame {
    pb::Frame {
        body: Some(Body::Deliver(pb::Deliver {
            envelope: Some((*entry.item.signed).clone()),
            attempt: entry.item.attempts + 1,
            agency: c.node.config.agency.to_string(),
            unit: c.unit.clone(),
        })),
    }
}

async fn deliver_alert(c: &Consumer, entry: Entry<Item>) {
    let id = entry.item.id;
    let result = tokio::time::timeout(c.node.config.limits.ack_timeout, async {
        let (mut send, recv) = c.conn.open_bi().await.map_err(|e| e.to_string())?;
        let _ = send.set_priority(stream_priority(entry.precedence));
        frame::write(&mut send, &deliver_frame(c, &entry))
            .await
            .map_err(|e| e.to_string())?;
        c.node
            .delivered(&entry.item, &c.to, &c.unit, entry.item.attempts + 1);
        let mut reader = FrameReader::new(recv, CONTROL_FRAME_LIMIT);
        match reader.read().await.map_err(|e| e.to_string())?.body {
            Some(Body::Ack(a)) if a.message_id.as_ref() == id.as_bytes() => Ok(()),
            other => Err(format!("expected Ack for {id}, got {other:?}")),
        }
    })
    .await;
    match result {
        Ok(Ok(())) => c.node.acknowledged(&entry.item, c.to.clone(), &c.unit),
        Err(_) => fail(c, entry, "did not acknowledge in time".into()),
        Ok(Err(reason)) => fail(c, entry, format!("delivery failed: {reason}")),
    }
}

/// A failed attempt; if the client is gone, it was not the message's fault: offer it again.
fn fail(c: &Consumer, entry: Entry<Item>, reason: String) {
    if c.conn.close_reason().is_some() {
        c.mailbox.requeue(entry);
    } else {
        c.node
            .failed(&c.mailbox, entry, format!("{}: {reason}", c.to));
    }
}

/// Writes analytical deliveries on the long-lived stream, opened on first use.
async fn bulk_writer(
    c: Arc<Consumer>,
    mut rx: mpsc::Receiver<(Entry<Item>, OwnedSemaphorePermit)>,
    pending: Pending,
) {
    let mut stream: Option<SendStream> = None;
    while let Some((entry, slot)) = rx.recv().await {
        if stream.is_none() {
            match c.conn.open_bi().await {
                Ok((send, recv)) => {
                    let _ = send.set_priority(stream_priority(Precedence::Routine));
                    tokio::spawn(read_acks(c.clone(), recv, pending.clone()));
                    stream = Some(send);
                }
                Err(_) => {
                    c.mailbox.requeue(entry);
                    break;
                }
            }
        }
        let Some(send) = stream.as_mut() else { break };
        // Deliveries already waiting go out in the same write.
        let mut batch = vec![(entry, slot)];
        while batch.len() < WRITE_BATCH
            && let Ok(more) = rx.try_recv()
        {
            batch.push(more);
        }
        let deadline = Instant::now() + c.node.config.limits.ack_timeout;
        let mut buf = bytes::BytesMut::new();
        let mut sent = Vec::with_capacity(batch.len());
        {
            let mut pending = pending.lock().expect("pending lock poisoned");
            for (entry, slot) in batch {
                frame::encode_into(&deliver_frame(&c, &entry), &mut buf);
                let (id, attempt) = (entry.item.id, entry.item.attempts + 1);
                sent.push((entry.item.clone(), attempt));
                pending.insert(id, (entry, deadline, slot));
            }
        }
        if send.write_all(&buf).await.is_err() {
            // The reader sees the same failure and settles what is pending, but it may already
            // have done so and ended (the connection closed while this batch was on its way
            // here): settle what it has not taken, so nothing stays pending for good.
            let left: Vec<_> = {
                let mut p = pending.lock().expect("pending lock poisoned");
                sent.iter()
                    .filter_map(|(item, _)| p.remove(&item.id))
                    .map(|(entry, _, _)| entry)
                    .collect()
            };
            for entry in left {
                fail(&c, entry, "analytical stream failed".into());
            }
            stream = None;
            continue;
        }
        for (item, attempt) in sent {
            c.node.delivered(&item, &c.to, &c.unit, attempt);
        }
    }
    // The consumer is gone: whatever was waiting to be written goes back.
    rx.close();
    while let Ok((entry, _)) = rx.try_recv() {
        c.mailbox.requeue(entry);
    }
}

/// Reads `Ack` frames from the analytical stream; when it ends, settles every pending delivery.
async fn read_acks(c: Arc<Consumer>, recv: RecvStream, pending: Pending) {
    let mut reader = FrameReader::new(recv, CONTROL_FRAME_LIMIT);
    let reason = loop {
        match reader.read().await {
            Ok(pb::Frame {
                body: Some(Body::Ack(a)),
            }) => {
                let Some(id) = MessageId::from_slice(&a.message_id) else {
                    continue;
                };
                let done = pending.lock().expect("pending lock poisoned").remove(&id);
                if let Some((entry, _, _)) = done {
                    c.node.acknowledged(&entry.item, c.to.clone(), &c.unit);
                }
            }
            Ok(other) => break format!("expected Ack, got {other:?}"),
            Err(e) => break e.to_string(),
        }
    };
    let settled: Vec<_> = pending
        .lock()
        .expect("pending lock poisoned")
        .drain()
        .map(|(_, (entry, _, _))| entry)
        .collect();
    for entry in settled {
        fail(&c, entry, format!("analytical stream ended: {reason}"));
    }
}

/// Fails deliveries on the analytical stream that were not acknowledged in time.
async fn expire_unacked(c: Arc<Consumer>, pending: Pending) {
    let period = c.node.config.limits.ack_timeout / 4;
    let mut tick = tokio::time::interval(period.max(std::time::Duration::from_millis(10)));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = c.conn.closed() => return,
        }
        let now = Instant::now();
        let late: Vec<_> = {
            let mut p = pending.lock().expect("pending lock poisoned");
            let ids: Vec<MessageId> = p
                .iter()
                .filter(|(_, (_, deadline, _))| *deadline <= now)
                .map(|(id, _)| *id)
                .collect();
            ids.into_iter().filter_map(|id| p.remove(&id)).collect()
        };
        for (entry, _, _) in late {
            fail(&c, entry, "did not acknowledge in time".into());
        }
    }
}
