//! Revocation and rotation that bite, on a copy of the test PKI that the tests change while the
//! nodes run: a client revoked while connected (story 6) and a revoked peer node are cut off
//! within seconds with nothing accepted lost; a CRL past its nextUpdate is refused (or only
//! warned about, in lab mode); the node's own certificate rotates without dropping
//! connections; the daemon reloads on SIGHUP and keeps running; `--check-config` warns about
//! missing CRLs and certificates close to expiry.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Daemon, SendAndWait, TestNet, certs, init_logging, wait_event, within};
use enlace::network::LocalNetwork;
use enlace::node::Event;
use enlace::pki::{CaRef, Pki, PkiOptions, Validity};
use enlace::{Client, Draft, Mailbox, MessageId, pb};

const ENLACED: &str = env!("CARGO_BIN_EXE_enlaced");

fn liaison(body: &str) -> pb::LiaisonMessage {
    pb::LiaisonMessage {
        body: Some(enlace::payloads::text("en", body)),
        ..Default::default()
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

/// A network of `agencies` on a private copy of the test PKI (returned with it), with
/// `edit` applied to each node's config text before the nodes start.
async fn network(agencies: &[&str], edit: impl Fn(String) -> String) -> (TestNet, PathBuf) {
    init_logging();
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    copy_dir(&certs(), &pki);
    let net = LocalNetwork::mesh(dir.path(), &pki, agencies).unwrap();
    for name in net.nodes.keys() {
        let path = net.config_path(name);
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, edit(text)).unwrap();
    }
    let mut nodes = BTreeMap::new();
    for name in net.nodes.keys() {
        nodes.insert(name.clone(), net.start(name).await.unwrap());
    }
    (TestNet { dir, net, nodes }, pki)
}

fn revoke(pki: &Path, agency: &str, cert: &str) {
    let r = Pki::open(pki)
        .unwrap()
        .revoke(CaRef::Agency(agency), &pki.join(format!("{cert}.pem")))
        .unwrap();
    assert!(r.newly_revoked);
}

/// Waits for the node to report that it closed `who`'s connection for its certificate (other
/// ends, such as a duplicate link closed at start, are skipped), and returns why.
async fn disconnected(events: &mut tokio::sync::broadcast::Receiver<Event>, who: &str) -> String {
    match wait_event(events, |e| {
        matches!(e, Event::Disconnected { who: w, reason, .. }
            if w == who && reason.contains("certificate no longer valid"))
    })
    .await
    {
        Event::Disconnected { reason, .. } => reason,
        _ => unreachable!(),
    }
}

/// Reads `inbox` until `marker` arrives; returns the ids before it (acknowledging each).
async fn ids_until(inbox: &mut enlace::Inbox, marker: MessageId) -> BTreeSet<MessageId> {
    let mut got = BTreeSet::new();
    loop {
        let d = within("deliveries", inbox.next()).await.unwrap();
        let id = d.id();
        d.ack().await.unwrap();
        if id == marker {
            return got;
        }
        assert!(got.insert(id), "{id} delivered twice");
    }
}

/// Story 6: a client certificate revoked while its connection is busy submitting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_revoked_while_connected_is_cut_off_and_nothing_is_lost() {
    let (net, pki) = network(&["dea", "pgr"], |t| t).await;
    let pgr = net.subscriber("pgr", "duty-desk").await;
    let mut inbox = pgr.inbox().unwrap();
    let desk = net.client("dea", "duty-desk").await;
    let analyst = Arc::new(net.client("dea", "analyst").await);
    let mut events = net.node("dea-1").events();
    // Refusals downstream, collected as they happen (the other events are many).
    let downstream = {
        let mut events = net.node("dea-1").events();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                match events.recv().await {
                    Ok(Event::ForwardRefused { id, code, .. }) => {
                        let _ = tx.send((id, code));
                    }
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        panic!("{n} events missed")
                    }
                    Err(_) => return,
                }
            }
        });
        rx
    };
    let mut downstream = downstream;

    // The analyst submits one message after another until the node stops it.
    let sending = tokio::spawn({
        let analyst = analyst.clone();
        async move {
            let mut accepted = BTreeSet::new();
            for i in 0.. {
                let draft = Draft::new(&liaison(&format!("report {i}"))).to("pgr");
                let handed = match analyst.send(draft).await {
                    Ok(h) => h,
                    Err(e) => return (accepted, e.to_string()),
                };
                let id = handed.id();
                match handed.await {
                    Ok(a) => {
                        accepted.insert(a.id);
                    }
                    Err(e) => return (accepted, format!("{id}: {e}")),
                }
            }
            unreachable!()
        }
    });
    wait_event(
        &mut events,
        |e| matches!(e, Event::Accepted { from, .. } if from == "dea/client/analyst"),
    )
    .await;

    // The CA revokes it and publishes its CRL; the node notices the file change by itself.
    let revoked_at = Instant::now();
    revoke(&pki, "dea", "clients/dea/analyst");
    let reason = disconnected(&mut events, "dea/client/analyst").await;
    let took = revoked_at.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "closed {took:?} after revocation"
    );
    assert!(reason.contains("certificate no longer valid"), "{reason}");
    assert!(reason.contains("Revoked"), "{reason}");
    let (accepted, stopped) = within("the sender to stop", sending).await.unwrap();
    assert!(!accepted.is_empty());
    assert!(
        stopped.contains("no longer valid") || stopped.contains("closed"),
        "{stopped}"
    );

    // New connections are refused at the handshake.
    let err = Client::connect(net.options("dea", "analyst"))
        .await
        .err()
        .expect("a revoked certificate connects");
    assert!(err.to_string().contains("certificate revoked"), "{err}");

    // Every message the node accepted is delivered, and nothing else: the other client's
    // marker comes after exactly the accepted ones.
    let marker = desk
        .submit(Draft::new(&liaison("marker")).to("pgr"))
        .await
        .unwrap();
    let delivered = ids_until(&mut inbox, marker.id).await;
    assert!(
        delivered.is_subset(&accepted),
        "delivered what was not accepted"
    );
    // A copy still on its way when PGR's node learned of the revocation is refused there as
    // REVOKED (the signer is no longer trusted), and the originator gets a non-delivery report
    // of that reason: accounted for, not lost.
    let mut refused = BTreeMap::new();
    while !accepted
        .difference(&delivered)
        .all(|id| refused.contains_key(id))
    {
        let (id, code) = within("refusals downstream", downstream.recv())
            .await
            .unwrap();
        refused.insert(id, code);
    }
    for id in accepted.difference(&delivered) {
        assert_eq!(refused[id], pb::RefusalCode::Revoked, "{id}");
    }
    assert!(
        accepted.len() - delivered.len() <= 2,
        "the sender stopped with: {stopped}"
    );
    net.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_peer_node_loses_its_link_and_what_waits_for_it_stays_queued() {
    let (net, pki) = network(&["dea", "pgr"], |t| t).await;
    let mut events = net.node("dea-1").events();
    let desk = net.client("dea", "duty-desk").await;
    let revoked_at = Instant::now();
    revoke(&pki, "pgr", "nodes/pgr/pgr-1");
    let reason = disconnected(&mut events, "pgr/node/pgr-1").await;
    assert!(
        revoked_at.elapsed() < Duration::from_secs(5),
        "{:?}",
        revoked_at.elapsed()
    );
    assert!(reason.contains("certificate"), "{reason}");
    // Accepted and kept for PGR; the link does not come back with the revoked certificate.
    let sent = desk
        .submit(Draft::new(&liaison("waits for pgr")).to("pgr"))
        .await
        .unwrap();
    assert!(
        net.node("dea-1")
            .links()
            .iter()
            .all(|l| l.peer != "pgr-1" || l.state != enlace::node::LinkState::Up),
        "{:?}",
        net.node("dea-1").links()
    );
    let _ = sent;
    net.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crl_past_its_next_update_is_refused_unless_the_lab_setting_says_warn() {
    for lab in [false, true] {
        let (net, pki) = network(&["dea", "pgr"], |t| match lab {
            false => t,
            true => t.replace("crl_dir = ", "crl_expired = \"warn\"\ncrl_dir = "),
        })
        .await;
        let mut events = net.node("dea-1").events();
        // The CAs publish CRLs whose nextUpdate is a second away, and then stop publishing.
        // (What is tested is the passing of that time: the test waits for it.)
        Pki::open(&pki)
            .unwrap()
            .with_options(PkiOptions {
                crl_lifetime: time::Duration::seconds(1),
                ..PkiOptions::default()
            })
            .write_crls()
            .unwrap();
        std::thread::sleep(Duration::from_millis(2100));
        net.node("dea-1").reload();
        wait_event(
            &mut events,
            |e| matches!(e, Event::Reloaded { what, .. } if what == "tls"),
        )
        .await;
        let r = Client::connect(net.options("dea", "duty-desk")).await;
        match (lab, r) {
            (false, Err(e)) => assert!(e.to_string().contains("TLS handshake refused"), "{e}"),
            (false, Ok(_)) => panic!("a stale CRL was accepted"),
            (true, Ok(c)) => {
                c.submit(Draft::new(&liaison("lab")).to("pgr"))
                    .await
                    .unwrap();
            }
            (true, Err(e)) => panic!("lab mode refused a client: {e}"),
        }
        if !lab {
            let refused = wait_event(&mut events, |e| {
                matches!(e, Event::ConnectionRefused { .. })
            })
            .await;
            let Event::ConnectionRefused { reason, .. } = refused else {
                unreachable!()
            };
            assert!(reason.to_lowercase().contains("crl"), "{reason}");
        }
        net.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_certificate_rotates_on_reload_without_dropping_connections() {
    let (net, pki) = network(&["dea", "pgr"], |t| t).await;
    let pgr = net.subscriber("pgr", "duty-desk").await;
    let mut inbox = pgr.inbox().unwrap();
    let desk = net.client("dea", "duty-desk").await;
    let mut events = net.node("dea-1").events();
    let presented = || async {
        let raw = net
            .raw("dea", "clients/dea/analyst", pb::Role::Client)
            .await
            .unwrap();
        let chain = raw
            .conn
            .peer_identity()
            .unwrap()
            .downcast::<Vec<rustls_pki_types::CertificateDer<'static>>>()
            .unwrap();
        chain[0].to_vec()
    };
    let before = presented().await;
    // A new certificate and key for dea-1, written where its config points.
    Pki::open(&pki)
        .unwrap()
        .with_options(PkiOptions {
            overwrite: true,
            ..PkiOptions::default()
        })
        .issue_node("dea", "dea-1", None)
        .unwrap();
    net.node("dea-1").reload();
    wait_event(
        &mut events,
        |e| matches!(e, Event::Reloaded { what, .. } if what == "tls"),
    )
    .await;
    assert_ne!(
        presented().await,
        before,
        "new connections see the new certificate"
    );
    // The connections made before carry on: the client's, and the link to pgr-1.
    let sent = desk
        .submit(Draft::new(&liaison("after rotation")).to("pgr"))
        .await
        .unwrap();
    let d = within("a delivery over the old link", inbox.next())
        .await
        .unwrap();
    assert_eq!(d.id(), sent.id);
    assert!(
        events.try_recv().into_iter().all(|e| !matches!(
            e,
            Event::Disconnected { ref who, .. } if who == "dea/client/duty-desk" || who == "pgr/node/pgr-1"
        )),
        "a connection was dropped"
    );
    net.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_daemon_which_keeps_serving() {
    init_logging();
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    copy_dir(&certs(), &pki);
    let net = LocalNetwork::mesh(dir.path(), &pki, &["dea"]).unwrap();
    let daemon = Daemon::start(&net.config_path("dea-1"));
    let analyst = Client::connect(net.client_options("dea", "analyst").unwrap())
        .await
        .unwrap();
    let mut analyst_unit = analyst
        .subscribe(Mailbox::unit("analyst").unwrap())
        .await
        .unwrap();
    let pid = daemon.child.id().to_string();
    daemon.skip_logs();
    revoke(&pki, "dea", "clients/dea/analyst");
    let hup = Command::new("kill").args(["-HUP", &pid]).status().unwrap();
    assert!(hup.success());
    // The policy file is reloaded first, then the TLS material.
    let policy = tokio::task::block_in_place(|| {
        daemon.wait_log(
            Duration::from_secs(10),
            &["reloaded", "what=policy", "SIGHUP"],
        )
    });
    assert!(policy.is_some(), "no policy reload logged");
    let line = tokio::task::block_in_place(|| {
        daemon.wait_log(Duration::from_secs(10), &["reloaded", "what=tls", "SIGHUP"])
    });
    assert!(line.is_some(), "no reload logged");
    // The revoked analyst's live connection is closed; the daemon lives on and serves.
    let end = within("the revoked connection to close", analyst_unit.next()).await;
    assert!(end.is_none(), "a delivery instead of the end");
    let desk = Client::connect(net.client_options("dea", "duty-desk").unwrap())
        .await
        .unwrap();
    let mut inbox = desk.subscribe(Mailbox::Inbox).await.unwrap();
    let sent = desk
        .submit(Draft::new(&liaison("after SIGHUP")).to("dea"))
        .await
        .unwrap();
    assert_eq!(
        within("a delivery", inbox.next()).await.unwrap().id(),
        sent.id
    );
    let (status, _) = tokio::task::spawn_blocking(move || daemon.terminate_keep_logs())
        .await
        .unwrap();
    assert!(status.success(), "{status}");
}

#[test]
fn check_config_warns_about_missing_crls_and_certificates_close_to_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    copy_dir(&certs(), &pki);
    let net = LocalNetwork::mesh(dir.path(), &pki, &["dea"]).unwrap();
    let path = net.config_path("dea-1");
    let text = std::fs::read_to_string(&path).unwrap();
    let crl_line = text
        .lines()
        .find(|l| l.starts_with("crl_dir = "))
        .unwrap()
        .to_owned();
    std::fs::write(&path, text.replace(&crl_line, "")).unwrap();
    // dea-1's certificate now expires in ten days.
    Pki::open(&pki)
        .unwrap()
        .with_options(PkiOptions {
            overwrite: true,
            ..PkiOptions::default()
        })
        .issue_node("dea", "dea-1", Some(Validity::days_from_now(10)))
        .unwrap();
    let out = Command::new(ENLACED)
        .args(["--check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success());
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        all.contains("no CRLs") && all.contains("revoked certificates are not detected"),
        "{all}"
    );
    assert!(
        all.contains("(in 9 days): renew it") || all.contains("(in 10 days): renew it"),
        "{all}"
    );
}
