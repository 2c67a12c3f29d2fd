//! Faults on a real network path: DEA's and PGR's `enlaced` run in network namespaces of their
//! own, joined by a veth pair, and the test breaks that link (a partition, random loss, a slow
//! link) or stops PGR for a while. The test's clients reach each node over a separate uplink
//! from the root namespace, which is never faulted.
//!
//! What is checked is what the application sees: every unexpired message arrives at PGR's duty
//! desk once (by id; the client library drops redeliveries of what the application already
//! acknowledged, as it promises), expired ones never arrive and their originator hears
//! NonDelivery(EXPIRED), and time-sensitive messages are not kept behind analytical traffic.
//!
//! These tests need root, iproute2 and nftables (see `common::netns`); without them they say why
//! and pass without running, except under `CI=true`, where a missing `nft` fails them.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use common::netns::{Lab, Link, NODE_PORT, Ns, lab_or_skip};
use common::{Daemon, SendAndWait, certs, init_logging};
use enlace::network::{LocalNetwork, NodeSpec};
use enlace::{
    Client, ClientOptions, Dedup, Draft, Mailbox, MessageId, Precedence, Role, Status, pb,
};
use tokio::sync::Notify;

/// Two nodes in namespaces of their own. Fields drop in order: daemons before the lab that
/// holds their namespaces.
struct Federation {
    dea: Option<Daemon>,
    pgr: Option<Daemon>,
    net: LocalNetwork,
    link: Link,
    dea_ns: Ns,
    pgr_ns: Ns,
    _dir: tempfile::TempDir,
    lab: Lab,
}

impl Federation {
    /// Namespaces, a link, configs and both daemons; `None` when this machine cannot run it.
    fn start(test: &str) -> Option<Federation> {
        init_logging();
        let mut lab = lab_or_skip(test)?;
        let dea_ns = lab.namespace("dea").unwrap();
        let pgr_ns = lab.namespace("pgr").unwrap();
        let link = lab.link(&dea_ns, &pgr_ns).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let spec = |agency: &str, addr, peer: &str| NodeSpec {
            agency: agency.into(),
            name: format!("{agency}-1"),
            addr: std::net::SocketAddr::new(addr, NODE_PORT),
            metrics: None,
            peers: vec![peer.into()],
        };
        // Each node is known to its peer by its address on the link.
        let nodes = BTreeMap::from([
            ("dea-1".to_owned(), spec("dea", link.a_addr, "pgr-1")),
            ("pgr-1".to_owned(), spec("pgr", link.b_addr, "dea-1")),
        ]);
        let mut net = LocalNetwork::plan(dir.path(), &certs(), nodes).unwrap();
        // A peer that stays unreachable is given up on sooner, so redials come sooner.
        net.limits = vec!["handshake_timeout_ms = 2000".into()];
        for spec in net.nodes.values() {
            // Listen on every address of the namespace: the link (peers) and the uplink (the
            // test's clients).
            let planned = format!("listen = \"{}\"", spec.addr);
            let text = net.render(spec);
            assert!(text.contains(&planned), "rendered config has {planned}");
            let text = text.replace(&planned, &format!("listen = \"0.0.0.0:{NODE_PORT}\""));
            let path = net.config_path(&spec.name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, text).unwrap();
            net.write_policy(spec).unwrap();
        }
        let dea = lab.daemon(&dea_ns, &net.config_path("dea-1"));
        let pgr = lab.daemon(&pgr_ns, &net.config_path("pgr-1"));
        Some(Federation {
            dea: Some(dea),
            pgr: Some(pgr),
            net,
            link,
            dea_ns,
            pgr_ns,
            _dir: dir,
            lab,
        })
    }

    /// Options for `agency/client` reaching its node over the uplink (not at the address the
    /// node's peer knows it by, on the link).
    fn options(&self, agency: &str, client: &str) -> ClientOptions {
        let node = match agency {
            "dea" => self.dea_ns.node_addr(),
            _ => self.pgr_ns.node_addr(),
        };
        let spec = self.net.node_of(agency).unwrap();
        let leaf = self.net.pki.leaf_paths(agency, client, Role::Client);
        ClientOptions::new(node.to_string())
            .server_name(self.net.server_name(agency, &spec.name))
            .identity(&leaf.cert, &leaf.key)
            .trust(self.net.pki.root_cert_path())
    }

    async fn client(&self, agency: &str, client: &str) -> Client {
        Client::connect(self.options(agency, client)).await.unwrap()
    }

    /// A subscriber to `agency`'s inbox whose deliveries `reader` records.
    async fn reader(&self, agency: &str, reader: &Reader) -> Client {
        let o = self
            .options(agency, "duty-desk")
            .dedup(reader.dedup.clone());
        let c = Client::connect(o).await.unwrap();
        reader.consume(&c).await;
        c
    }

    fn restart_pgr(&mut self) {
        self.pgr = Some(
            self.lab
                .daemon(&self.pgr_ns, &self.net.config_path("pgr-1")),
        );
    }

    /// Stops both daemons with SIGTERM; each must exit cleanly.
    fn stop(mut self) {
        for d in [self.dea.take(), self.pgr.take()].into_iter().flatten() {
            let (status, _) = d.terminate_keep_logs();
            assert!(status.success(), "enlaced exited with {status}");
        }
    }
}

/// One delivery as the application saw it.
#[derive(Debug, Clone)]
struct Got {
    id: MessageId,
    precedence: Precedence,
    at: Instant,
    /// For reports: the id the report is about, and its reason.
    report: Option<(MessageId, pb::NonDeliveryReason)>,
}

/// Records every delivery to the application, in order, and acknowledges it. Survives the
/// client it reads from: a replacement client continues the same record (same `Dedup`).
#[derive(Clone, Default)]
struct Reader {
    got: Arc<Mutex<Vec<Got>>>,
    progress: Arc<Notify>,
    dedup: Dedup,
}

impl Reader {
    /// Subscribes `client` to its agency's inbox and records what it delivers.
    async fn consume(&self, client: &Client) {
        let mut inbox = client.subscribe(Mailbox::Inbox).await.unwrap();
        let me = self.clone();
        tokio::spawn(async move {
            while let Some(d) = inbox.next().await {
                let report = (d.message().status() == Status::System)
                    .then(|| d.payload::<pb::NonDelivery>().ok())
                    .flatten()
                    .and_then(|r| Some((MessageId::from_slice(&r.message_id)?, r.reason())));
                me.got.lock().unwrap().push(Got {
                    id: d.id(),
                    precedence: d.precedence(),
                    at: Instant::now(),
                    report,
                });
                me.progress.notify_waiters();
                // A failed ack only means a redelivery, which the client library drops.
                let _ = d.ack().await;
            }
        });
    }

    fn snapshot(&self) -> Vec<Got> {
        self.got.lock().unwrap().clone()
    }

    /// Waits (bounded) until `done` holds for what was delivered so far.
    async fn wait(&self, what: &str, limit: Duration, done: impl Fn(&[Got]) -> bool) {
        let wait = async {
            loop {
                let notified = self.progress.notified();
                if done(&self.got.lock().unwrap()) {
                    return;
                }
                notified.await;
            }
        };
        if tokio::time::timeout(limit, wait).await.is_err() {
            let got = self.snapshot();
            panic!(
                "timed out after {limit:?}: {what} ({} deliveries so far)",
                got.len()
            );
        }
    }

    async fn wait_for_ids(&self, what: &str, limit: Duration, ids: &[MessageId]) {
        self.wait(what, limit, |got| {
            ids.iter().all(|id| got.iter().any(|g| g.id == *id))
        })
        .await
    }
}

fn record(i: usize) -> pb::LiaisonMessage {
    pb::LiaisonMessage {
        body: Some(enlace::payloads::text(
            "es-MX",
            &format!("registro {i} {}", "x".repeat(1000)),
        )),
        ..Default::default()
    }
}

/// Sends to PGR; returns the accepted id. DEA's node is always reachable: only the link fails.
async fn send(
    sender: &Client,
    i: usize,
    precedence: Precedence,
    expires_in: Duration,
) -> MessageId {
    let draft = Draft::new(&record(i))
        .to("pgr")
        .precedence(precedence)
        .expires_in(expires_in);
    sender.submit(draft).await.unwrap().id
}

/// The window of unanswered analytical bytes on a node's link to its peer: the library's
/// pipeline default (`pipeline::DEFAULT_WINDOW_BYTES`, internal since the public API was made
/// small), 128 KiB, the same as a client's default `window_bytes`.
const LINK_WINDOW_BYTES: usize = 128 * 1024;

/// Unacknowledged analytical deliveries per subscribed client (`dispatch::CLIENT_WINDOWS`).
const CLIENT_ANALYTICAL_WINDOW: usize = 256;

/// How many of these records fit in the analytical pipeline's window of unanswered bytes: the
/// most that can be in flight on a link, ahead of anything queued after them.
fn on_the_wire() -> usize {
    let record_bytes = prost::Message::encoded_len(&record(0));
    LINK_WINDOW_BYTES / record_bytes + 1
}

const HOUR: Duration = Duration::from_secs(3600);

/// Sends a FLASH and a ROUTINE message after everything else and waits for both: redeliveries
/// still in the pipes would most likely show up by then.
async fn flush(sender: &Client, reader: &Reader) {
    let ids = [
        send(sender, 0, Precedence::Flash, HOUR).await,
        send(sender, 0, Precedence::Routine, HOUR).await,
    ];
    reader
        .wait_for_ids("the flush messages", Duration::from_secs(15), &ids)
        .await;
}

/// Every id in `expected` was delivered exactly once, and nothing else but `also`.
fn assert_exactly_once(got: &[Got], expected: &[MessageId], also: usize) {
    let mut count: HashMap<MessageId, usize> = HashMap::new();
    for g in got {
        *count.entry(g.id).or_default() += 1;
    }
    let dups: Vec<_> = count.iter().filter(|(_, n)| **n > 1).collect();
    assert!(dups.is_empty(), "delivered more than once: {dups:?}");
    let missing = expected.iter().filter(|id| !count.contains_key(id)).count();
    assert_eq!(
        missing,
        0,
        "{missing} of {} never delivered",
        expected.len()
    );
    assert_eq!(got.len(), expected.len() + also, "unexpected deliveries");
}

/// Positions in delivery order of the time-sensitive and the analytical messages among `ids`.
fn positions(got: &[Got], ids: &[MessageId]) -> (Vec<usize>, Vec<usize>) {
    let mut alerts = Vec::new();
    let mut records = Vec::new();
    for (pos, g) in got.iter().filter(|g| ids.contains(&g.id)).enumerate() {
        if g.precedence.is_time_sensitive() {
            alerts.push(pos);
        } else {
            records.push(pos);
        }
    }
    (alerts, records)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_partition_heals_everything_unexpired_arrives_once_alerts_first() {
    let Some(fed) = Federation::start("partition") else {
        return;
    };
    let started = Instant::now();
    let sender = fed.client("dea", "analyst").await;
    let (pgr, dea) = (Reader::default(), Reader::default());
    let _pgr_desk = fed.reader("pgr", &pgr).await;
    let _dea_desk = fed.reader("dea", &dea).await;
    // The link works before it is cut.
    let first = send(&sender, 0, Precedence::Routine, HOUR).await;
    pgr.wait_for_ids("delivery over the link", Duration::from_secs(15), &[first])
        .await;

    fed.link.partition().unwrap();
    let mut live = Vec::new();
    for i in 0..300 {
        live.push(send(&sender, i, Precedence::Routine, HOUR).await);
    }
    for i in 0..3 {
        live.push(send(&sender, i, Precedence::Flash, HOUR).await);
        live.push(send(&sender, i, Precedence::Immediate, HOUR).await);
    }
    let short = Duration::from_secs(3);
    let lapse_at = SystemTime::now() + short;
    let mut expiring = Vec::new();
    for i in 0..3 {
        let p = [Precedence::Flash, Precedence::Immediate][i % 2];
        expiring.push(send(&sender, i, p, short).await);
    }
    // The expired alerts are on the dead link, unanswered, when they expire: their reports
    // leave within a second of the expiry, during the partition (not when the link is declared
    // dead, 30 s later, or heals).
    let within_a_second = lapse_at
        .duration_since(SystemTime::now())
        .unwrap_or_default()
        + Duration::from_secs(1);
    dea.wait(
        "a non-delivery report for each expired alert, within a second of its expiry",
        within_a_second,
        |got| {
            expiring
                .iter()
                .all(|id| got.iter().any(|g| g.report.map(|r| r.0) == Some(*id)))
        },
    )
    .await;
    assert!(SystemTime::now() >= lapse_at, "reported before the expiry");
    assert_eq!(pgr.snapshot().len(), 1, "nothing crosses a partition");
    assert!(
        fed.link.dropped().unwrap() > 0,
        "the partition dropped packets"
    );
    fed.link.heal().unwrap();
    let healed = Instant::now();

    pgr.wait_for_ids("every unexpired message", Duration::from_secs(25), &live)
        .await;
    let drained = healed.elapsed();
    flush(&sender, &pgr).await;

    let got = pgr.snapshot();
    let mut expected = live.clone();
    expected.push(first);
    assert_exactly_once(&got, &expected, 2);
    for id in &expiring {
        assert!(
            !got.iter().any(|g| g.id == *id),
            "expired {id} was delivered"
        );
    }
    for g in dea.snapshot() {
        let (about, reason) = g.report.expect("DEA's inbox only gets reports");
        assert!(expiring.contains(&about), "report about {about}");
        assert_eq!(reason, pb::NonDeliveryReason::Expired);
    }
    // Alerts sent during the partition, after 300 records, come first once it heals, except
    // for records that were already on the wire when it struck: the link's analytical pipeline
    // has at most LINK_WINDOW_BYTES unanswered, and those are retransmitted as the link
    // comes back, possibly ahead of an alert. Nothing still queued may pass an alert.
    let (alerts, records) = positions(&got, &live);
    let last_alert = *alerts.iter().max().unwrap();
    let records_before = records.iter().filter(|p| **p < last_alert).count();
    let on_the_wire = on_the_wire();
    eprintln!(
        "partition: drained {} messages in {drained:?} after healing; alerts at positions \
         {alerts:?}, {records_before} records before the last alert; test took {:?}",
        live.len(),
        started.elapsed()
    );
    assert!(
        records_before <= on_the_wire,
        "{records_before} records delivered before the last alert ({alerts:?}); at most \
         {on_the_wire} can have been on the wire"
    );
    fed.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_random_loss_everything_arrives_exactly_once() {
    let Some(fed) = Federation::start("random_loss") else {
        return;
    };
    let started = Instant::now();
    let sender = fed.client("dea", "analyst").await;
    let pgr = Reader::default();
    let _pgr_desk = fed.reader("pgr", &pgr).await;
    let first = send(&sender, 0, Precedence::Routine, HOUR).await;
    pgr.wait_for_ids("delivery over the link", Duration::from_secs(15), &[first])
        .await;

    fed.link.loss(15).unwrap();
    let mut sent = vec![first];
    for i in 0..200 {
        let p = match i % 20 {
            0 => Precedence::Flash,
            10 => Precedence::Immediate,
            5 | 15 => Precedence::Bulk,
            _ => Precedence::Routine,
        };
        sent.push(send(&sender, i, p, HOUR).await);
    }
    pgr.wait_for_ids("every message", Duration::from_secs(25), &sent)
        .await;
    flush(&sender, &pgr).await;
    let dropped = fed.link.dropped().unwrap();
    fed.link.heal().unwrap();

    assert_exactly_once(&pgr.snapshot(), &sent, 2);
    eprintln!(
        "random loss: {} messages, {dropped} packets dropped on the link; test took {:?}",
        sent.len(),
        started.elapsed()
    );
    assert!(dropped > 0, "the loss rule dropped packets");
    fed.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_slow_link_alerts_overtake_the_bulk_backlog() {
    let Some(fed) = Federation::start("slow_link") else {
        return;
    };
    let started = Instant::now();
    let analyst = Arc::new(fed.client("dea", "analyst").await);
    let desk = fed.client("dea", "duty-desk").await;
    let pgr = Reader::default();
    let _pgr_desk = fed.reader("pgr", &pgr).await;
    let first = send(&analyst, 0, Precedence::Routine, HOUR).await;
    pgr.wait_for_ids("delivery over the link", Duration::from_secs(15), &[first])
        .await;

    fed.link.slow("4mbit").unwrap();
    // About 1.6 MB of bulk: some 3 s on a 4 Mbit/s link. The sender is not slowed (its node is
    // across the uplink); the backlog builds in DEA's outbox and on the link.
    const BULK: usize = 1500;
    let bulk_started = Instant::now();
    // Many sends in flight, as a bulk sender does, so that DEA's node takes them faster than
    // the link carries them.
    let bulk = tokio::spawn({
        let analyst = analyst.clone();
        async move {
            let mut ids = Vec::with_capacity(BULK);
            let mut in_flight = tokio::task::JoinSet::new();
            for i in 0..BULK {
                if in_flight.len() >= 128 {
                    ids.push(in_flight.join_next().await.unwrap().unwrap());
                }
                let analyst = analyst.clone();
                in_flight.spawn(async move { send(&analyst, i, Precedence::Bulk, HOUR).await });
            }
            while let Some(id) = in_flight.join_next().await {
                ids.push(id.unwrap());
            }
            ids
        }
    });
    // Alerts while the bulk flows: each is sent once PGR's desk has seen some of the bulk.
    let mut alerts: Vec<(MessageId, Instant)> = Vec::new();
    for (n, seen) in [100, 400, 700, 1000].into_iter().enumerate() {
        pgr.wait(
            &format!("{seen} bulk records"),
            Duration::from_secs(25),
            |got| {
                got.iter()
                    .filter(|g| g.precedence == Precedence::Bulk)
                    .count()
                    >= seen
            },
        )
        .await;
        let p = [Precedence::Flash, Precedence::Immediate][n % 2];
        let sent_at = Instant::now();
        alerts.push((send(&desk, n, p, HOUR).await, sent_at));
    }
    let bulk_ids = bulk.await.unwrap();
    let alert_ids: Vec<MessageId> = alerts.iter().map(|a| a.0).collect();
    pgr.wait_for_ids("every bulk record", Duration::from_secs(25), &bulk_ids)
        .await;
    pgr.wait_for_ids("every alert", Duration::from_secs(5), &alert_ids)
        .await;
    let tail_dropped = fed.link.tail_dropped().unwrap();
    flush(&analyst, &pgr).await;

    let got = pgr.snapshot();
    let mut expected = bulk_ids.clone();
    expected.extend(&alert_ids);
    expected.push(first);
    assert_exactly_once(&got, &expected, 2);
    let arrival = |id: MessageId| got.iter().find(|g| g.id == id).unwrap().at;
    let bulk_done = bulk_ids.iter().map(|id| arrival(*id)).max().unwrap();
    let drain = bulk_done - bulk_started;
    let latencies: Vec<Duration> = alerts.iter().map(|(id, at)| arrival(*id) - *at).collect();
    eprintln!(
        "slow link: {BULK} bulk records drained in {drain:?} ({tail_dropped} packets \
         tail-dropped); alert latencies {latencies:?}; test took {:?}",
        started.elapsed()
    );
    for ((id, _), latency) in alerts.iter().zip(&latencies) {
        assert!(
            arrival(*id) < bulk_done,
            "alert {id} arrived after the bulk backlog had drained"
        );
        // Generous: an alert waits at most for what is already on the wire, never for the
        // backlog, which took `drain` to go through.
        assert!(
            *latency < drain / 4,
            "alert {id} took {latency:?}, the bulk took {drain:?}"
        );
    }
    fed.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_down_for_a_while_gets_everything_unexpired_once_in_precedence_order() {
    let Some(mut fed) = Federation::start("peer_down") else {
        return;
    };
    let started = Instant::now();
    let sender = fed.client("dea", "analyst").await;
    let (pgr, dea) = (Reader::default(), Reader::default());
    let pgr_desk = fed.reader("pgr", &pgr).await;
    let _dea_desk = fed.reader("dea", &dea).await;
    let first = send(&sender, 0, Precedence::Routine, HOUR).await;
    pgr.wait_for_ids("delivery over the link", Duration::from_secs(15), &[first])
        .await;

    // PGR stops; DEA notices (PGR closes its connections on the way out).
    let dea_daemon = fed.dea.as_ref().unwrap();
    dea_daemon.skip_logs();
    pgr_desk.abort();
    let (status, _) = fed.pgr.take().unwrap().terminate_keep_logs();
    assert!(status.success(), "pgr-1 exited with {status}");
    let down = tokio::task::block_in_place(|| {
        dea_daemon.wait_log(
            Duration::from_secs(10),
            &["event=\"link\"", "pgr-1", "down"],
        )
    });
    assert!(down.is_some(), "dea-1 saw the link to pgr-1 go down");

    // Queued at DEA in the reverse of precedence order; two of them expire meanwhile.
    let mut live = Vec::new();
    for (p, n) in [
        (Precedence::Bulk, 200),
        (Precedence::Routine, 200),
        (Precedence::Priority, 2),
        (Precedence::Immediate, 2),
        (Precedence::Flash, 2),
    ] {
        for i in 0..n {
            live.push(send(&sender, i, p, HOUR).await);
        }
    }
    let expiring = vec![
        send(&sender, 0, Precedence::Flash, Duration::from_secs(2)).await,
        send(&sender, 0, Precedence::Routine, Duration::from_secs(2)).await,
    ];
    // PGR stays down until DEA has given up on those two and told their originator.
    dea.wait(
        "a non-delivery report for each expired message",
        Duration::from_secs(15),
        |got| {
            expiring
                .iter()
                .all(|id| got.iter().any(|g| g.report.map(|r| r.0) == Some(*id)))
        },
    )
    .await;

    fed.restart_pgr();
    let back = Instant::now();
    let _pgr_desk = fed.reader("pgr", &pgr).await;
    pgr.wait_for_ids("everything queued", Duration::from_secs(20), &live)
        .await;
    let drained = back.elapsed();
    flush(&sender, &pgr).await;

    let got = pgr.snapshot();
    let mut expected = live.clone();
    expected.push(first);
    assert_exactly_once(&got, &expected, 2);
    for id in &expiring {
        assert!(
            !got.iter().any(|g| g.id == *id),
            "expired {id} was delivered"
        );
    }
    for g in dea.snapshot() {
        let (about, reason) = g.report.expect("DEA's inbox only gets reports");
        assert!(expiring.contains(&about), "report about {about}");
        assert_eq!(reason, pb::NonDeliveryReason::Expired);
    }
    let order: Vec<Precedence> = got
        .iter()
        .filter(|g| live.contains(&g.id))
        .map(|g| g.precedence)
        .collect();
    eprintln!(
        "peer down: {} queued messages delivered {drained:?} after the restart, in the order \
         {}; test took {:?}",
        live.len(),
        order.iter().map(|p| &p.as_str()[..1]).collect::<String>(),
        started.elapsed()
    );
    // DEA's outbox serves the most urgent lane first, and its link keeps that order: PGR has
    // queued every alert before the first record reaches it. PGR's delivery to its reader then
    // takes the alerts first too, but sends each on a stream of its own while the records share
    // the subscription's stream: an alert and the records written just after it race to the
    // application (separate streams, read by separate tasks in the client), so a few records
    // may come first; no more than the client's analytical window can be in flight, and
    // nothing still queued may pass an alert.
    let (alerts, records) = positions(&got, &live);
    let last_alert = *alerts.iter().max().unwrap();
    let records_before = records.iter().filter(|p| **p < last_alert).count();
    assert!(
        records_before < CLIENT_ANALYTICAL_WINDOW,
        "{records_before} records delivered before the last alert ({alerts:?}); at most \
         {CLIENT_ANALYTICAL_WINDOW} can have been on their way to the reader"
    );
    // Alerts travel concurrently, each on its own stream, so FLASH, IMMEDIATE and PRIORITY
    // queued together arrive in any order among themselves. ROUTINE before BULK holds only on
    // the whole: the receiving node stores pipelined copies concurrently (up to 1024 per stream,
    // `node::server`) and queues each when its own write returns, so copies stored together
    // enter PGR's mailbox in whatever order their tasks finish.
    let median = |p: Precedence| {
        let at: Vec<usize> = order
            .iter()
            .enumerate()
            .filter(|(_, q)| **q == p)
            .map(|(i, _)| i)
            .collect();
        at[at.len() / 2]
    };
    assert!(
        median(Precedence::Routine) < median(Precedence::Bulk),
        "ROUTINE is served before BULK on the whole"
    );
    fed.stop();
}
