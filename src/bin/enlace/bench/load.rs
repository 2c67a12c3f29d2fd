//! The load of `enlace bench`: sending applications, receiving applications and their payloads.
//!
//! A [`Flow`] is one sender (a client connection and the tasks that drive it) and one receiver
//! (a subscribed client connection and the task that reads and acknowledges its inbox). Records
//! are kept a fixed number of sends in flight by a few producer tasks, each awaiting the
//! acceptances of its sends in order (no task per message, as an integrator would write it);
//! alerts go out on a 5 ms schedule, each in a task of its own.
//! Every send notes its id and when `send()` was first called; every receipt its id and when the
//! application got it. Nothing here computes statistics or prints.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use bytes::Bytes;
use enlace::network::LocalNetwork;
use enlace::payloads::{Chemical, PrecursorAlert, Quantity, seaport, text};
use enlace::{Acceptance, Client, Draft, Inbox, Mailbox, MessageId, Precedence, SubmitError, pb};
use prost::{Message, Name};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Encoded payload size of a record.
pub const RECORD_BYTES: usize = 1024;
/// Encoded payload size of an alert.
pub const ALERT_BYTES: usize = 512;
/// One alert per this period.
pub const ALERT_EVERY: Duration = Duration::from_millis(5);

/// An id and when something happened to it.
pub type Stamp = (MessageId, Instant);

/// What a flow's sender achieved.
#[derive(Default)]
pub struct Sent {
    /// Accepted ids, with when `send()` was first called for each.
    pub accepted: Vec<Stamp>,
    /// Sends that ended in anything but acceptance (busy refusals are retried, not counted).
    pub errors: u64,
    pub first_error: Option<String>,
}

/// One sender and one receiver.
pub struct Flow {
    sender: Arc<Client>,
    senders: JoinSet<Sent>,
    accepted: Arc<AtomicU64>,
    receiver: Client,
    received: Arc<AtomicU64>,
    stop_reading: watch::Sender<bool>,
    reader: tokio::task::JoinHandle<Vec<Stamp>>,
}

impl Flow {
    /// DEA analyst records to `<to>/records`, read by `to`'s analyst: `producers` tasks keep
    /// `outstanding` sends in flight between them (at least one each) until `stop`.
    pub async fn records(
        net: &LocalNetwork,
        to: &str,
        producers: u32,
        outstanding: u32,
        stop: &Arc<AtomicBool>,
    ) -> anyhow::Result<Flow> {
        let mut flow = Flow::connect(net, ("dea", "analyst"), (to, "analyst"), "records").await?;
        let t = Template::new(&record(), &format!("{to}/records"), Precedence::Routine);
        let (producers, outstanding) = (producers.max(1) as usize, outstanding as usize);
        for i in 0..producers {
            let share = outstanding / producers + usize::from(i < outstanding % producers);
            let in_flight = share.max(1);
            let (c, s, n) = (flow.sender.clone(), stop.clone(), flow.accepted.clone());
            flow.senders.spawn(produce(c, t.clone(), in_flight, s, n));
        }
        Ok(flow)
    }

    /// DEA duty desk FLASH alerts to `<to>/alerts`, read by `to`'s duty desk, one every
    /// [`ALERT_EVERY`] until `stop`.
    pub async fn alerts(
        net: &LocalNetwork,
        to: &str,
        stop: &Arc<AtomicBool>,
    ) -> anyhow::Result<Flow> {
        let mut flow =
            Flow::connect(net, ("dea", "duty-desk"), (to, "duty-desk"), "alerts").await?;
        let t = Template::new(&alert(), &format!("{to}/alerts"), Precedence::Flash);
        let (c, s, n) = (flow.sender.clone(), stop.clone(), flow.accepted.clone());
        flow.senders.spawn(send_alerts(c, t, s, n));
        Ok(flow)
    }

    /// Connects the receiver first, so nothing waits in a mailbox for its reader to turn up.
    async fn connect(
        net: &LocalNetwork,
        from: (&str, &str),
        to: (&str, &str),
        unit: &str,
    ) -> anyhow::Result<Flow> {
        let receiver = connect(net, to).await?;
        let inbox = receiver
            .subscribe(Mailbox::unit(unit)?)
            .await
            .context("subscribing the receiver")?;
        let received = Arc::new(AtomicU64::new(0));
        let (stop_reading, stopped) = watch::channel(false);
        let reader = tokio::spawn(read(inbox, received.clone(), stopped));
        Ok(Flow {
            sender: Arc::new(connect(net, from).await?),
            senders: JoinSet::new(),
            accepted: Arc::new(AtomicU64::new(0)),
            receiver,
            received,
            stop_reading,
            reader,
        })
    }

    /// Deliveries the receiving application has had so far (duplicates included).
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// Whether the receiver has had fewer deliveries than the node accepted.
    pub fn behind(&self) -> bool {
        self.received() < self.accepted.load(Ordering::Relaxed)
    }

    /// Waits for the sending tasks, which end once the caller has set `stop`.
    pub async fn sent(&mut self) -> anyhow::Result<Sent> {
        let mut all = Sent::default();
        while let Some(s) = self.senders.join_next().await {
            let s = s.context("sending task")?;
            all.accepted.extend(s.accepted);
            all.errors += s.errors;
            all.first_error = all.first_error.or(s.first_error);
        }
        Ok(all)
    }

    /// Stops reading and closes both clients; returns every receipt, in arrival order.
    pub async fn finish(self) -> anyhow::Result<Vec<Stamp>> {
        let _ = self.stop_reading.send(true);
        let receipts = self.reader.await.context("reading task")?;
        self.receiver.close().await;
        self.sender.close().await;
        Ok(receipts)
    }
}

async fn connect(net: &LocalNetwork, (agency, client): (&str, &str)) -> anyhow::Result<Client> {
    let opts = net.client_options(agency, client)?;
    Client::connect(opts)
        .await
        .with_context(|| format!("cannot connect {agency}/{client}"))
}

/// The receiving application: takes each delivery, notes when, and acknowledges it at once.
async fn read(
    mut inbox: Inbox,
    received: Arc<AtomicU64>,
    mut stop: watch::Receiver<bool>,
) -> Vec<Stamp> {
    let mut got = Vec::with_capacity(64 * 1024);
    loop {
        let d = tokio::select! {
            d = inbox.next() => d,
            _ = stop.wait_for(|s| *s) => break,
        };
        let Some(d) = d else { break };
        got.push((d.id(), Instant::now()));
        received.fetch_add(1, Ordering::Relaxed);
        // A failed ack only means the node offers the message again; if it reaches the
        // application a second time, that shows up as a duplicate.
        let _ = d.ack().await;
    }
    got
}

/// A message to send, built afresh for each attempt around one shared payload: only the id
/// differs from one message to the next.
#[derive(Clone)]
struct Template {
    payload_type: String,
    payload: Bytes,
    to: Arc<str>,
    precedence: Precedence,
}

impl Template {
    fn new<P: Message + Name>(payload: &P, to: &str, precedence: Precedence) -> Template {
        Template {
            payload_type: P::full_name(),
            payload: payload.encode_to_vec().into(),
            to: to.into(),
            precedence,
        }
    }

    fn draft(&self, id: MessageId) -> Draft {
        let d = Draft::from_raw(self.payload_type.clone(), self.payload.clone())
            .id(id)
            .to(&self.to)
            .precedence(self.precedence);
        // Records are a high-volume feed, sent as `enlace send --bulk` sends them: only a
        // non-delivery would be reported back. Alerts ask for every receipt.
        if self.precedence.is_time_sensitive() {
            d
        } else {
            d.non_delivery_receipts_only()
        }
    }
}

/// A send handed over: its id, when `send()` was called, and its acceptance to come.
type InFlight = (MessageId, Instant, Acceptance);

impl Sent {
    /// Notes a send task's outcome (a task that failed is a send error).
    fn noted(
        &mut self,
        done: Result<(MessageId, Instant, Result<(), SubmitError>), tokio::task::JoinError>,
        accepted: &AtomicU64,
    ) {
        match done {
            Ok((id, at, r)) => self.note(id, at, r, accepted),
            Err(e) => {
                self.errors += 1;
                self.first_error
                    .get_or_insert(format!("send task failed: {e}"));
            }
        }
    }

    fn note(
        &mut self,
        id: MessageId,
        at: Instant,
        r: Result<(), SubmitError>,
        accepted: &AtomicU64,
    ) {
        match r {
            Ok(()) => {
                accepted.fetch_add(1, Ordering::Relaxed);
                self.accepted.push((id, at));
            }
            Err(e) => {
                self.errors += 1;
                self.first_error.get_or_insert(e.to_string());
            }
        }
    }
}

/// Hands one message over. A busy node's refusal (QUEUE_FULL) is retried inside the client's
/// acceptance, with the same id, and the latency clock keeps running.
async fn send(
    client: &Client,
    t: &Template,
) -> (MessageId, Instant, Result<Acceptance, SubmitError>) {
    let id = MessageId::new_v7(SystemTime::now());
    let at = Instant::now();
    (id, at, client.send(t.draft(id)).await)
}

/// Keeps `in_flight` record sends outstanding until `stop`, then waits for them. Analytical
/// acceptances come in the order of sending, so the oldest is the next to wait for.
async fn produce(
    client: Arc<Client>,
    t: Template,
    in_flight: usize,
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicU64>,
) -> Sent {
    let mut sent = Sent::default();
    let mut sends: VecDeque<InFlight> = VecDeque::with_capacity(in_flight);
    while !stop.load(Ordering::Relaxed) {
        if sends.len() < in_flight {
            match send(&client, &t).await {
                (id, at, Ok(a)) => sends.push_back((id, at, a)),
                (id, at, Err(e)) => sent.note(id, at, Err(e), &accepted),
            }
        } else if let Some((id, at, a)) = sends.pop_front() {
            sent.note(id, at, a.await.map(|_| ()), &accepted);
        }
    }
    for (id, at, a) in sends {
        sent.note(id, at, a.await.map(|_| ()), &accepted);
    }
    sent
}

/// Sends one alert every [`ALERT_EVERY`] until `stop`, then waits for the answers. Each alert's
/// hand-over and acceptance run in a task of their own, so that neither a slow answer nor the
/// next tick delays another alert (the latency clock starts when the task calls `send()`, as it
/// always has in this bench); records, the throughput load, need no task per message.
async fn send_alerts(
    client: Arc<Client>,
    t: Template,
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicU64>,
) -> Sent {
    // The runtime may be busy, so a tick can be late; it is caught up at once, keeping the
    // offered rate at one alert per 5 ms on average.
    let mut ticks = tokio::time::interval(ALERT_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut sent = Sent::default();
    let mut sends = JoinSet::new();
    let alert = |client: Arc<Client>, t: Template| async move {
        let (id, at, handed) = send(&client, &t).await;
        let answer = match handed {
            Ok(acceptance) => acceptance.await.map(|_| ()),
            Err(e) => Err(e),
        };
        (id, at, answer)
    };
    loop {
        ticks.tick().await;
        if stop.load(Ordering::Relaxed) {
            break;
        }
        sends.spawn(alert(client.clone(), t.clone()));
        while let Some(done) = sends.try_join_next() {
            sent.noted(done, &accepted);
        }
    }
    while let Some(done) = sends.join_next().await {
        sent.noted(done, &accepted);
    }
    sent
}

/// A ROUTINE record draft to `to`, as the records flow sends them, with a fresh id.
pub fn record_draft(to: &str) -> Draft {
    record_draft_at(to, Precedence::Routine)
}

/// A record draft to `to` at an analytical precedence, with a fresh id.
pub fn record_draft_at(to: &str, p: Precedence) -> Draft {
    Template::new(&record(), to, p).draft(MessageId::new_v7(SystemTime::now()))
}

/// An alert draft to `to`, as the alerts flow sends them (at `p`), with a fresh id.
pub fn alert_draft_to(to: &str, p: Precedence) -> Draft {
    Template::new(&alert(), to, p).draft(MessageId::new_v7(SystemTime::now()))
}

/// A ROUTINE analytical record whose encoded payload is exactly [`RECORD_BYTES`].
fn record() -> pb::AnalyticalReport {
    sized(RECORD_BYTES, |n| pb::AnalyticalReport {
        kind: pb::AnalyticalReportKind::OperationalAnalysis as i32,
        title: Some(text("es-MX", "Registro analítico de referencia")),
        summary: Some(text(
            "es-MX",
            &filler("Movimientos de carga observados en puerto. ", n),
        )),
        ..Default::default()
    })
}

/// A FLASH precursor alert whose encoded payload is exactly [`ALERT_BYTES`].
fn alert() -> pb::PrecursorChemicalAlert {
    sized(ALERT_BYTES, |n| {
        PrecursorAlert::new(pb::PrecursorAlertKind::SuspiciousShipment)
            .chemical(
                Chemical::new("Pseudoephedrine hydrochloride")
                    .cas("345-78-8".parse().expect("a valid CAS number"))
                    .quantity(Quantity::kilograms(1200.0)),
            )
            .vessel(
                "MSC Bench",
                seaport("CNSHA".parse().expect("a valid UN/LOCODE"), "Shanghai"),
                seaport("MXZLO".parse().expect("a valid UN/LOCODE"), "Manzanillo"),
            )
            .action(pb::PrecursorRequestedAction::Intercept)
            .narrative(text("en", &filler("Declared as vitamin C. ", n)))
            .build()
    })
}

/// `phrase` repeated and cut to `n` characters (ASCII phrases only, so `n` bytes).
fn filler(phrase: &str, n: usize) -> String {
    phrase.chars().cycle().take(n).collect()
}

/// `build(n)` for the filler length `n` that makes its encoding `size` bytes long. A few rounds
/// suffice: only a length prefix crossing a varint boundary moves the size by more than `n`.
fn sized<P: Message>(size: usize, build: impl Fn(usize) -> P) -> P {
    let mut n = 0;
    for _ in 0..8 {
        let len = build(n).encoded_len();
        if len == size {
            break;
        }
        n = (n + size).saturating_sub(len);
    }
    build(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_have_the_advertised_sizes() {
        assert_eq!(record().encoded_len(), RECORD_BYTES);
        assert_eq!(alert().encoded_len(), ALERT_BYTES);
    }
}
