//! Delivering a mailbox to a subscribed client, time-sensitive traffic first.
//!
//! One loop per subscription (a mailbox read on a connection). The sans-I/O
//! [`Dispatcher`](crate::dispatch::Dispatcher) says which copy goes next given the windows in
//! flight ([`CLIENT_WINDOWS`]: 64 alerts, 256 analytical copies) and what each outcome means; the
//! ledger takes and settles the copies. FLASH, IMMEDIATE and PRIORITY copies each get a stream of
//! their own at their precedence's priority, acknowledged on it; ROUTINE and BULK copies travel
//! as `Deliver` frames on one long-lived, low-priority stream, acknowledged by `Ack` frames on the
//! same stream. A slow client stops the analytical flow, never the alerts.
//!
//! No acknowledgement within the ack timeout, or a failed stream, is a failed attempt
//! (redelivery with backoff, then a dead letter); if the client's connection is gone, the copy
//! goes straight back to the head of its lane for another consumer. When the client
//! unsubscribes, the loop ends, and what it had in flight goes back at once.
//!
//! Alerts never wait on a dead or slow reader: a time-sensitive copy not acknowledged within
//! the alert deadline (`limits.alert_ack_timeout_ms`, 2 s by default) goes back to the head of
//! its lane at once, no attempt counted, for the unit's other readers, and this subscription
//! gets no more time-sensitive copies until its reader acknowledges the late one after all (it
//! was slow, not gone: the loop resumes it) or its connection ends. A reader that acknowledges
//! late may so see an alert that another reader of the unit also got: alerts are delivered at
//! least once per unit, never held back by one reader.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::Notify;

use quinn::{Connection, RecvStream, SendStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use super::conn::Conn;
use super::consume::{self, Settled, Sink};
use super::ledger::{Copy, InFlight, Queue};
use super::state::Node;
use crate::address::Mailbox;
use crate::dispatch::{CLIENT_WINDOWS, Dispatcher, Outcome, Slot, Ticket};
use crate::message::{MessageId, Precedence};
use crate::signers::SentChains;
use crate::wire::CONTROL_FRAME_LIMIT;
use crate::wire::frame::{self, FrameReader};
use crate::wire::pb::{self, frame::Body};

/// Most analytical deliveries written at once.
const WRITE_BATCH: usize = 64;

/// What the delivery tasks of one subscription share.
struct Consumer {
    node: Arc<Node>,
    conn: Connection,
    /// The client's identity, as acknowledgements name it.
    to: String,
    /// The client's name, as the policy's receive rules name it.
    client: String,
    mailbox: Mailbox,
    settled: mpsc::Sender<Settled>,
    /// Woken when the reader acknowledges an alert it was late for.
    resumed: Notify,
}

impl Consumer {
    /// The `Deliver` frame of a copy. The signer's chain goes with it unless `sent` (the chains
    /// the stream carried already, which the client reads in order and caches) has it; always
    /// with an alert (a stream of its own) and with a redelivery.
    fn deliver_frame(&self, copy: &InFlight, sent: Option<&SentChains>) -> pb::Frame {
        let c = copy.copy();
        let sent = sent.filter(|_| copy.attempt() == 1);
        let chain = SentChains::select(sent, c.message.signature.as_ref(), &c.transit.signer_chain);
        pb::Frame {
            body: Some(Body::Deliver(pb::Deliver {
                envelope: Some(c.message.signed(c.transit.hops.clone(), Vec::new(), chain)),
                attempt: copy.attempt(),
                agency: self.node.config.agency.to_string(),
                unit: self.mailbox.wire_name().to_owned(),
            })),
        }
    }

    /// A failed attempt; if the client is gone, it was not the message's fault.
    fn failed(&self, outcome: Outcome) -> Outcome {
        if self.conn.close_reason().is_some() {
            Outcome::Lost
        } else {
            outcome
        }
    }

    /// Hands a settled copy back to the loop. If the loop has ended, the copy is dropped, which
    /// puts it back in its queue.
    async fn settle(&self, copy: InFlight, ticket: Ticket, outcome: Outcome) {
        let _ = self.settled.send((copy, ticket, outcome)).await;
    }
}

/// Delivers `queue` (the mailbox `mailbox`) to the client on `conn` until the connection ends
/// or `stop` is set.
pub(super) async fn run(
    node: Arc<Node>,
    conn: Arc<Conn>,
    mailbox: Mailbox,
    queue: Arc<Queue>,
    mut stop: watch::Receiver<bool>,
) {
    // Every copy in flight comes back once; the windows bound how many are in flight.
    let (settled, back) =
        mpsc::channel::<Settled>(CLIENT_WINDOWS.alerts + CLIENT_WINDOWS.analytical);
    let c = Arc::new(Consumer {
        node: node.clone(),
        conn: conn.conn.clone(),
        to: conn.name.clone(),
        client: conn.who.identity.name.clone(),
        mailbox,
        settled,
        resumed: Notify::new(),
    });
    let mut tasks = JoinSet::new();
    // Bounded by the analytical window: a slot is taken before a copy is sent here.
    let (analytical, rx) = mpsc::channel(CLIENT_WINDOWS.analytical);
    tasks.spawn(analytical_writer(c.clone(), rx));
    let mut sink = ClientSink {
        consumer: c.clone(),
        tasks,
        analytical,
    };
    let ended = async {
        tokio::select! {
            _ = c.conn.closed() => {}
            // Unsubscribed: what is in flight goes back at once, not after its ack timeout.
            _ = stop.wait_for(|s| *s) => {}
        }
    };
    let dispatcher = Dispatcher::new(CLIENT_WINDOWS, node.retry, false);
    consume::run(&node, &queue, dispatcher, &c.to, back, &mut sink, ended).await;
    // Dropping the sink aborts its tasks; the copies they hold go back to the mailbox.
}

/// How a subscribed client gets its copies: alerts each in a task of their own, analytical
/// copies through the writer of the long-lived stream.
struct ClientSink {
    consumer: Arc<Consumer>,
    /// Every task of this subscription; dropping the set aborts them, and the copies they hold
    /// go back to the mailbox (`InFlight` returns itself when dropped).
    tasks: JoinSet<()>,
    analytical: mpsc::Sender<(InFlight, Ticket)>,
}

impl Sink for ClientSink {
    async fn send(&mut self, copy: InFlight, ticket: Ticket) -> bool {
        match ticket.slot {
            Slot::Alert => {
                self.tasks
                    .spawn(deliver_alert(self.consumer.clone(), copy, ticket));
                true
            }
            // The channel has room for the whole window, so this never waits long.
            Slot::Analytical => self.analytical.send((copy, ticket)).await.is_ok(),
        }
    }

    /// Only what the policy's receive rules let this client have: the rest waits for a reader
    /// that may.
    fn accepts(&self, copy: &Copy) -> bool {
        let c = &self.consumer;
        c.node.may_deliver(&copy.message, &c.mailbox, &c.client)
    }

    async fn settled(&mut self, _: &Dispatcher) -> bool {
        while self.tasks.try_join_next().is_some() {}
        true
    }

    async fn resumed(&self) {
        self.consumer.resumed.notified().await
    }
}

/// Delivers one time-sensitive copy on a stream of its own and waits for its `Ack`: within the
/// alert deadline, or the copy goes back as [`Outcome::Late`] while this task waits on (up to
/// the ack timeout) for the reader to show it is alive after all.
async fn deliver_alert(c: Arc<Consumer>, copy: InFlight, ticket: Ticket) {
    let id = copy.copy().id();
    let limits = &c.node.config.limits;
    let deadline = tokio::time::Instant::now() + limits.alert_ack_timeout.min(limits.ack_timeout);
    let (mut send, recv) = match tokio::time::timeout_at(deadline, c.conn.open_bi()).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            let reason = format!("{}: delivery failed: {e}", c.to);
            return c
                .settle(copy, ticket, c.failed(Outcome::Failed(reason)))
                .await;
        }
        // The client holds every stream it allows: it is not reading.
        Err(_) => return c.settle(copy, ticket, c.failed(Outcome::Late)).await,
    };
    let _ = send.set_priority(copy.precedence().stream_priority());
    let mut reader = FrameReader::new(recv, CONTROL_FRAME_LIMIT);
    let acked = async {
        frame::write(&mut send, &c.deliver_frame(&copy, None))
            .await
            .map_err(|e| e.to_string())?;
        c.node.ledger.delivered(&copy, &c.to);
        read_ack(&mut reader, id).await
    };
    let outcome = match tokio::time::timeout_at(deadline, acked).await {
        Ok(Ok(())) => Outcome::Done,
        Ok(Err(reason)) => Outcome::Failed(format!("{}: delivery failed: {reason}", c.to)),
        Err(_) => {
            c.settle(copy, ticket, c.failed(Outcome::Late)).await;
            // A late acknowledgement: the reader is slow, not gone.
            let rest = limits.ack_timeout.saturating_sub(limits.alert_ack_timeout);
            if let Ok(Ok(())) = tokio::time::timeout(rest, read_ack(&mut reader, id)).await {
                c.resumed.notify_one();
            }
            return;
        }
    };
    c.settle(copy, ticket, c.failed(outcome)).await;
}

/// Reads the `Ack` of `id` from an alert's stream.
async fn read_ack(reader: &mut FrameReader, id: MessageId) -> Result<(), String> {
    match reader.read().await.map_err(|e| e.to_string())?.body {
        Some(Body::Ack(a)) if a.message_id.as_ref() == id.as_bytes() => Ok(()),
        other => Err(format!("expected Ack for {id}, got {other:?}")),
    }
}

/// Analytical copies written and waiting for their `Ack`, by message id.
type Pending = Arc<Mutex<HashMap<MessageId, (InFlight, Ticket, Instant)>>>;

/// Writes analytical deliveries on the long-lived stream, opened on first use (and again after
/// a failure).
async fn analytical_writer(c: Arc<Consumer>, mut rx: mpsc::Receiver<(InFlight, Ticket)>) {
    let mut stream: Option<(SendStream, Pending)> = None;
    // The signers whose chain the current stream carried.
    let mut chains = SentChains::default();
    // The ack reader and the ack-timeout checker of each stream; aborted with this task.
    let mut helpers = JoinSet::new();
    while let Some(first) = rx.recv().await {
        if stream.is_none() {
            match c.conn.open_bi().await {
                Ok((send, recv)) => {
                    let _ = send.set_priority(Precedence::Routine.stream_priority());
                    let pending = Pending::default();
                    helpers.spawn(read_acks(c.clone(), recv, pending.clone()));
                    helpers.spawn(expire_unacked(c.clone(), pending.clone()));
                    stream = Some((send, pending));
                    chains = SentChains::default();
                }
                Err(_) => {
                    c.settle(first.0, first.1, Outcome::Lost).await;
                    continue;
                }
            }
        }
        let Some((send, pending)) = stream.as_mut() else {
            continue;
        };
        // Deliveries already waiting go out in the same write.
        let mut batch = vec![first];
        while batch.len() < WRITE_BATCH
            && let Ok(more) = rx.try_recv()
        {
            batch.push(more);
        }
        let deadline = Instant::now() + c.node.config.limits.ack_timeout;
        let mut buf = bytes::BytesMut::new();
        let mut ids = Vec::with_capacity(batch.len());
        for (copy, _) in &batch {
            frame::encode_into(&c.deliver_frame(copy, Some(&chains)), &mut buf);
            c.node.ledger.delivered(copy, &c.to);
            ids.push(copy.copy().id());
        }
        {
            let mut p = pending.lock().expect("pending lock poisoned");
            for (copy, ticket) in batch {
                p.insert(copy.copy().id(), (copy, ticket, deadline));
            }
        }
        if send.write_all(&buf).await.is_err() {
            // The ack reader sees the same failure and settles what is pending, but it may
            // already have done so and ended: settle what it has not taken.
            let left: Vec<_> = {
                let mut p = pending.lock().expect("pending lock poisoned");
                ids.iter().filter_map(|id| p.remove(id)).collect()
            };
            for (copy, ticket, _) in left {
                let outcome = c.failed(Outcome::Failed("analytical stream failed".into()));
                c.settle(copy, ticket, outcome).await;
            }
            stream = None;
        }
    }
    // The loop is gone: finish the stream; the ack reader settles what is still pending.
    if let Some((mut send, _)) = stream {
        let _ = send.finish();
    }
    helpers.join_all().await;
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
                if let Some((copy, ticket, _)) = done {
                    c.settle(copy, ticket, Outcome::Done).await;
                }
            }
            Ok(other) => break format!("expected Ack, got {other:?}"),
            Err(e) => break e.to_string(),
        }
    };
    let left: Vec<_> = pending
        .lock()
        .expect("pending lock poisoned")
        .drain()
        .map(|(_, v)| v)
        .collect();
    for (copy, ticket, _) in left {
        let outcome = Outcome::Failed(format!("{}: analytical stream ended: {reason}", c.to));
        c.settle(copy, ticket, c.failed(outcome)).await;
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
        if Arc::strong_count(&pending) == 1 {
            return; // The stream and its reader are gone.
        }
        let now = Instant::now();
        let late: Vec<_> = {
            let mut p = pending.lock().expect("pending lock poisoned");
            let ids: Vec<MessageId> = p
                .iter()
                .filter(|(_, (_, _, deadline))| *deadline <= now)
                .map(|(id, _)| *id)
                .collect();
            ids.into_iter().filter_map(|id| p.remove(&id)).collect()
        };
        for (copy, ticket, _) in late {
            c.settle(copy, ticket, c.failed(Outcome::TimedOut)).await;
        }
    }
}
