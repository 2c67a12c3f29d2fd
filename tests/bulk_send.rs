//! `enlace send --bulk`: a file of analytical records streamed into the queue, resumed after an
//! interruption without sending anything twice.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::TestNet;

fn line(i: usize) -> String {
    format!(
        r#"{{"type": "AnalyticalReport", "payload": {{"kind": "ANALYTICAL_REPORT_KIND_OPERATIONAL_ANALYSIS", "title": {{"language": "es-MX", "text": "registro {i}"}}}}}}"#
    )
}

fn sha256_hex(b: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, b)
        .as_ref()
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_file_is_sent_once_and_resumes() {
    let net = TestNet::mesh(&["dea", "cenapi"]).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("records.jsonl");
    let first: String = (1..=150).map(|i| line(i) + "\n").collect();
    std::fs::write(&file, &first).unwrap();
    let env = net.cli_env("dea", "analyst");
    let send = || {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_enlace"));
        cmd.args(["send", "--to", "cenapi", "--precedence", "bulk", "--bulk"])
            .arg(&file)
            .envs(env.clone());
        async move { cmd.output().await.unwrap() }
    };

    let out = send().await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("sent 150 of 150 lines"));

    // The file grows: a re-run resumes after line 150 and sends only the new lines, plus one
    // bad line that is reported and does not block the rest.
    let more: String = (151..=300).map(|i| line(i) + "\n").collect();
    std::fs::write(
        &file,
        format!("{first}{more}{{\"type\": \"NoSuchType\"}}\n"),
    )
    .unwrap();
    let out = send().await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("resuming"), "{stderr}");
    assert!(stderr.contains("line 301"), "{stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("sent 150 of 301 lines"));

    // Interrupted mid-way: progress says only 100 lines were done, though the node accepted all.
    // The re-run sends lines 101..300 again with the same ids, and the node drops them.
    let prefix: String = (1..=100).map(|i| line(i) + "\n").collect();
    let progress = serde_json::json!({
        "lines_done": 100, "bytes_done": prefix.len(), "prefix_sha256": sha256_hex(prefix.as_bytes()),
    });
    let mut ppath = file.clone().into_os_string();
    ppath.push(".enlace-progress");
    std::fs::write(&ppath, progress.to_string()).unwrap();
    let out = send().await;
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // CENAPI's analyst (a fresh client: no memory of ids) receives each record exactly once.
    let analyst = net.subscriber("cenapi", "analyst").await;
    let mut inbox = analyst.inbox().unwrap();
    let mut titles = HashSet::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(3), inbox.next()).await {
            Ok(Some(d)) => {
                let r: enlace::pb::AnalyticalReport = d.payload().unwrap();
                let title = r.title.unwrap().text;
                assert!(titles.insert(title.clone()), "{title} delivered twice");
                d.ack().await.unwrap();
            }
            // Quiet for 3 s after 300 records: nothing else is coming.
            Err(_) if titles.len() == 300 => break,
            other => panic!(
                "inbox ended early with {} records: {:?}",
                titles.len(),
                other.is_ok()
            ),
        }
    }
    analyst.close().await;
    net.stop().await;
}

/// A running `send --bulk` whose node is killed and restarted goes on by itself: it notices at
/// once (the restarted node resets the old connection), reconnects, sends again the lines it
/// had no answer for, and ends with every line sent; the application sees each record once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_bulk_send_resumes_by_itself_when_its_node_restarts() {
    use common::{Daemon, certs, within};
    use enlace::network::LocalNetwork;
    use enlace::{Client, Dedup, Mailbox};

    const LINES: usize = 6000;
    let dir = tempfile::tempdir().unwrap();
    let net = LocalNetwork::mesh(dir.path(), &certs(), &["dea"]).unwrap();
    let config = net.config_path("dea-1");
    let mut daemon = Daemon::start(&config);
    let file = dir.path().join("records.jsonl");
    let text: String = (1..=LINES).map(|i| line(i) + "\n").collect();
    std::fs::write(&file, text).unwrap();
    let c = certs().join("clients/dea/analyst");
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_enlace"));
    cmd.args(["send", "--to", "dea", "--precedence", "bulk", "--bulk"])
        .arg(&file)
        .env("ENLACE_NODE", net.nodes["dea-1"].addr.to_string())
        .env("ENLACE_SERVER_NAME", net.server_name("dea", "dea-1"))
        .env("ENLACE_CERT", format!("{}.pem", c.display()))
        .env("ENLACE_KEY", format!("{}.key.pem", c.display()))
        .env("ENLACE_CA", certs().join("ca/root.pem"))
        .kill_on_drop(true);

    // The application: one `Dedup` across its two connections, as a real one keeps.
    let dedup = Dedup::default();
    let reader = || async {
        let options = net.client_options("dea", "duty-desk").unwrap();
        let client = Client::connect(options.dedup(dedup.clone())).await.unwrap();
        let inbox = client.subscribe(Mailbox::Inbox).await.unwrap();
        (client, inbox)
    };
    let (client, mut inbox) = reader().await;
    let sending = cmd.output();
    tokio::pin!(sending);
    let mut seen = HashSet::new();
    let mut shown = 0usize;
    // Part of the file through, then the node dies and comes back on the same data.
    while seen.len() < LINES / 4 {
        tokio::select! {
            d = inbox.next() => show(d.expect("the node is up"), &mut seen, &mut shown).await,
            out = &mut sending => panic!("the run ended before the kill: {out:?}"),
        }
    }
    daemon.kill9();
    let _daemon = Daemon::start(&config);
    drop((client, inbox));
    let (client, mut inbox) = reader().await;
    let out = within("the bulk run to end by itself", async {
        loop {
            tokio::select! {
                d = inbox.next() => show(d.expect("the node is up"), &mut seen, &mut shown).await,
                out = &mut sending => return out.unwrap(),
            }
        }
    })
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("reconnecting"), "{stderr}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("sent {LINES} of {LINES} lines")),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    while seen.len() < LINES {
        let d = within("the rest of the records", inbox.next())
            .await
            .unwrap();
        show(d, &mut seen, &mut shown).await;
    }
    assert_eq!(shown, LINES, "every record shown once");
    client.close().await;
}

/// The application's handling of one delivery: shown, remembered, acknowledged (its node may
/// be going away: `Dedup` then remembers the acknowledgement).
async fn show(d: enlace::Delivery, seen: &mut HashSet<enlace::MessageId>, shown: &mut usize) {
    *shown += 1;
    seen.insert(d.id());
    let _ = d.ack().await;
}
