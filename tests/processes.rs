//! The real binaries: `enlaced` as a separate process (config checks, serving, SIGTERM) and the
//! `enlace` CLI sending and reading messages.

mod common;

use std::process::Command;

use common::{Daemon, SendAndWait, TestNet, certs, within};
use enlace::Mailbox;
use enlace::network::LocalNetwork;

const ENLACED: &str = env!("CARGO_BIN_EXE_enlaced");
const ENLACE: &str = env!("CARGO_BIN_EXE_enlace");

#[test]
fn check_config_names_the_bad_key() {
    let dir = tempfile::tempdir().unwrap();
    let net = LocalNetwork::mesh(dir.path(), &certs(), &["dea", "pgr"]).unwrap();
    let good = net.config_path("dea-1");

    let out = Command::new(ENLACED)
        .args(["--check-config", "--config"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("configuration is valid (node dea/node/dea-1)")
    );

    let text = std::fs::read_to_string(&good).unwrap();
    for (from, to, key) in [
        (
            "listen = \"127.0.0.1:",
            "listen = \"localhost:",
            "node.listen",
        ),
        (
            "[log]\nformat = \"human\"",
            "[log]\nformat = \"xml\"",
            "[log] format",
        ),
        ("agency = \"pgr\"", "agency = \"dea\"", "peers[0].serves"),
    ] {
        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, text.replacen(from, to, 1)).unwrap();
        let out = Command::new(ENLACED)
            .args(["--check-config", "--config"])
            .arg(&bad)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{key}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(key), "error for {key} should name it: {err}");
    }

    // A certificate that is not the configured node's is refused at start too.
    let bad = dir.path().join("wrong-cert.toml");
    std::fs::write(&bad, text.replace("nodes/dea/dea-1", "nodes/pgr/pgr-1")).unwrap();
    let out = Command::new(ENLACED)
        .args(["--check-config", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("the config says node dea/dea-1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_serves_and_stops_cleanly_on_sigterm() {
    // pgr-1 runs as a separate enlaced process; dea-1 runs in this process.
    let dir = tempfile::tempdir().unwrap();
    let net = LocalNetwork::mesh(dir.path(), &certs(), &["dea", "pgr"]).unwrap();
    let daemon = Daemon::start(&net.config_path("pgr-1"));
    let dea = net.start("dea-1").await.unwrap();

    let pgr = enlace::Client::connect(net.client_options("pgr", "duty-desk").unwrap())
        .await
        .unwrap();
    let mut inbox = pgr.subscribe(Mailbox::Inbox).await.unwrap();
    let sender = enlace::Client::connect(net.client_options("dea", "duty-desk").unwrap())
        .await
        .unwrap();
    let body = enlace::pb::LiaisonMessage::default();
    let acc = sender
        .submit(enlace::Draft::new(&body).to("pgr"))
        .await
        .unwrap();
    let d = within("delivery via the daemon", inbox.next())
        .await
        .unwrap();
    assert_eq!(d.id(), acc.id);
    d.ack().await.unwrap();

    let (status, rest) = tokio::task::spawn_blocking(move || daemon.terminate_keep_logs())
        .await
        .unwrap();
    assert!(status.success(), "enlaced exited with {status}");
    assert!(
        rest.iter().any(|l| l.contains("SIGTERM received")),
        "{rest:#?}"
    );
    assert!(rest.iter().any(|l| l.contains("stopped")), "{rest:#?}");
    dea.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_sends_a_typed_alert_from_json_and_reads_the_inbox() {
    let net = TestNet::mesh(&["dea", "pgr"]).await;
    let dir = tempfile::tempdir().unwrap();
    let payload = dir.path().join("alert.json");
    std::fs::write(
        &payload,
        r#"{"kind": "PRECURSOR_ALERT_KIND_SUSPICIOUS_SHIPMENT",
            "chemicals": [{"nameAsLabelled": "Pseudoephedrine HCl", "casNumber": "345-78-8",
                           "quantity": {"value": "1200", "unit": "kg"}}],
            "requestedAction": "PRECURSOR_REQUESTED_ACTION_INTERCEPT"}"#,
    )
    .unwrap();
    let env = |agency: &str, client: &str| net.cli_env(agency, client);
    let run = |args: &[&str], envs: Vec<(&str, String)>| {
        let mut cmd = tokio::process::Command::new(ENLACE);
        cmd.args(args).envs(envs);
        async move { cmd.output().await.unwrap() }
    };

    let out = run(
        &[
            "send",
            "--to",
            "pgr",
            "--precedence",
            "flash",
            "--expires-in",
            "2h",
            "--type",
            "PrecursorChemicalAlert",
            "--payload",
            payload.to_str().unwrap(),
            "--json",
        ],
        env("dea", "duty-desk"),
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let accepted: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = accepted["accepted"].as_str().unwrap().to_owned();

    let out = run(
        &["inbox", "--json", "--count", "1", "--idle", "10s"],
        env("pgr", "duty-desk"),
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(line["id"], id.as_str());
    assert_eq!(line["precedence"], "FLASH");
    assert_eq!(line["from"], "dea/duty-desk");
    assert_eq!(line["payload"]["chemicals"][0]["casNumber"], "345-78-8");
    assert_eq!(line["hops"], serde_json::json!(["dea/dea-1", "pgr/pgr-1"]));

    // Exit codes: unknown recipient is a refusal (4); a bad payload file is a failure (1);
    // an expired certificate cannot connect (3).
    let out = run(
        &["send", "--to", "fbi", "--text", "hola"],
        env("dea", "duty-desk"),
    )
    .await;
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("no route to agency fbi"));
    std::fs::write(&payload, r#"{"kind": "NOT_A_KIND"}"#).unwrap();
    let out = run(
        &[
            "send",
            "--to",
            "pgr",
            "--type",
            "PrecursorChemicalAlert",
            "--payload",
            payload.to_str().unwrap(),
        ],
        env("dea", "duty-desk"),
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("invalid JSON for enlace.v1.PrecursorChemicalAlert")
    );
    let out = run(
        &["send", "--to", "pgr", "--text", "x"],
        env("dea", "expired"),
    )
    .await;
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    net.stop().await;
}

/// The README's first command, small: the demo plays story 1 and story 2 to the end (it exits
/// non-zero if a delivery is missing, if the derived report went out without DEA's release, or
/// if it was refused after it), and prints story 2's refusal, naming its source, and approval.
#[test]
fn the_demo_plays_both_stories() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(ENLACE)
        .args(["demo", "--records", "40", "--alerts", "1", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for needle in [
        "40 of 40 records accepted and 40 delivered",
        "2 of 2 alert copies delivered",
        "response:action-taken",
        "Story 2, originator control",
        "refused (PolicyDenied): denied by the handling of source message",
        "DisseminationDecision to CENAPI: approved for FGR (signed)",
        "delivered to FGR via cenapi-1 → pgr-1",
        "/metrics  health /healthz /readyz",
    ] {
        assert!(stdout.contains(needle), "{needle:?} in:\n{stdout}");
    }
    // What it leaves: configs an operator can check, with their policy files.
    let check = Command::new(ENLACED)
        .args(["--check-config", "--config"])
        .arg(dir.path().join("config/cenapi-1.toml"))
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    // And the nodes' delivery logs, which verify, each against its partners' cosignatures too;
    // one byte changed in a record, and the record is named.
    let verify = || {
        Command::new(ENLACE)
            .args(["log", "verify", "--data-dir"])
            .arg(dir.path())
            .output()
            .unwrap()
    };
    let ok = verify();
    let report = String::from_utf8_lossy(&ok.stdout);
    assert!(ok.status.success(), "{report}");
    for node in ["dea-1", "pgr-1", "afi-1", "cenapi-1"] {
        assert!(report.contains(&format!("{node}: ok")), "{report}");
    }
    let log = dir.path().join("data/pgr-1/log");
    let (_, records) = enlace::audit::files::record_files(&log).unwrap().remove(0);
    let mut bytes = std::fs::read(&records).unwrap();
    // Inside the fifth record: its time's last digit.
    let line = bytes
        .split(|b| *b == b'\n')
        .take(4)
        .map(|l| l.len() + 1)
        .sum::<usize>();
    let at = line + bytes[line..].windows(2).position(|w| w == b"Z\"").unwrap() - 1;
    bytes[at] = if bytes[at] == b'1' { b'2' } else { b'1' };
    std::fs::write(&records, bytes).unwrap();
    let bad = verify();
    let report = String::from_utf8_lossy(&bad.stdout);
    assert!(!bad.status.success(), "{report}");
    assert!(report.contains("pgr-1: FAILED"), "{report}");
    assert!(report.contains("problem: record 4 ("), "{report}");
}
