//! Receipts and respond-by over real QUIC on loopback with the committed test certificates: the
//! stages of a message relayed DEA → CENAPI → AFI reach the originator's receipt stream, a
//! non-delivery report joins them, and an unanswered action copy brings an overdue notice to the
//! originator and a reminder to the addressee's escalation unit.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use common::{SendAndWait, TestNet, certs, init_logging, within};
use enlace::network::LocalNetwork;
use enlace::{Draft, Mailbox, MessageId, Precedence, Receipt, Receipts, Stage, pb};

const DIRECTORY: &str = r#"
[agencies.afi]
display = "CMI"
aliases = ["pfm", "cmi"]
served_by = "afi-1"
"#;

/// A protobuf timestamp for `t`.
fn timestamp(t: SystemTime) -> prost_types::Timestamp {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap();
    prost_types::Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

fn liaison(body: &str) -> pb::LiaisonMessage {
    pb::LiaisonMessage {
        body: Some(enlace::payloads::text("en", body)),
        ..Default::default()
    }
}

/// DEA, AFI and CENAPI; DEA and AFI reach each other only through CENAPI. DEA routes the
/// unknown agency `zzz` to CENAPI too, which has no route for it. AFI's escalation unit is its
/// 24/7 desk.
async fn relay_federation() -> TestNet {
    relay_federation_with_limits(&[]).await
}

/// [`relay_federation`] with extra `[limits]` lines for every node.
async fn relay_federation_with_limits(limits: &[&str]) -> TestNet {
    init_logging();
    let dir = tempfile::tempdir().unwrap();
    let mut net =
        LocalNetwork::mesh_with_limits(dir.path(), &certs(), &["dea", "afi", "cenapi"], limits)
            .unwrap();
    net.extra.insert(
        "dea-1".into(),
        format!("{DIRECTORY}\n[routes]\nCMI = \"cenapi-1\"\nzzz = \"cenapi-1\"\n"),
    );
    net.extra.insert(
        "afi-1".into(),
        format!("{DIRECTORY}\n[routes]\ndea = \"cenapi-1\"\n"),
    );
    net.extra.insert("cenapi-1".into(), DIRECTORY.to_owned());
    net.node_extra
        .insert("afi-1".into(), "escalation_unit = \"24x7-desk\"".into());
    net.links(&[("dea-1", "cenapi-1"), ("afi-1", "cenapi-1")])
        .unwrap();
    let mut nodes = BTreeMap::new();
    for name in net.nodes.keys() {
        nodes.insert(name.clone(), net.start(name).await.unwrap());
    }
    TestNet { dir, net, nodes }
}

/// Reads receipts of `id` until `done` says the set is complete.
async fn gather(
    receipts: &mut Receipts,
    id: MessageId,
    mut got: Vec<Receipt>,
    done: impl Fn(&[Receipt]) -> bool,
) -> Vec<Receipt> {
    within("receipts", async {
        while !done(&got) {
            got.push(receipts.next_for(id).await.expect("receipt stream ended"));
        }
    })
    .await;
    got
}

fn has(got: &[Receipt], name: &str) -> bool {
    got.iter().any(|r| r.stage.name() == name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relayed_message_s_receipts_reach_the_originator_stage_by_stage() {
    let net = relay_federation().await;
    let afi = net.subscriber("afi", "duty-desk").await;
    let mut afi_inbox = afi.inbox().unwrap();
    let desk = net.client("dea", "duty-desk").await;
    let mut receipts = desk.receipts().await.unwrap();

    // Addressed under AFI's current name, through the relay.
    let sent = desk
        .submit(
            Draft::new(&liaison("verify the consignee of container MSCU 123456"))
                .to("PFM")
                .precedence(Precedence::Routine)
                .respond_within(Duration::from_secs(3600)),
        )
        .await
        .unwrap();
    let d = within("AFI's copy", afi_inbox.next()).await.unwrap();
    assert_eq!(d.id(), sent.id);
    let original = d.message().clone();
    d.ack().await.unwrap();

    // Opened first, answered after: the response goes once the acknowledgement has been seen.
    let stages = ["accepted", "persisted", "delivered", "acknowledged"];
    let got = gather(&mut receipts, sent.id, Vec::new(), |g| {
        stages.iter().all(|s| has(g, s))
    })
    .await;
    afi.respond(
        &original,
        pb::BusinessResponse {
            outcome: pb::BusinessOutcome::PositiveHit as i32,
            reason: "consignee is a front company".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let mut got = gather(&mut receipts, sent.id, got, |g| {
        has(g, "response:positive-hit")
    })
    .await;

    // Each stage once, from the node or client that reached it, in time order.
    assert_eq!(got.len(), 5, "{got:#?}");
    got.sort_by_key(|r| r.at);
    let names: Vec<_> = got.iter().map(|r| r.stage.name()).collect();
    assert_eq!(
        names,
        [
            "accepted",
            "persisted",
            "delivered",
            "acknowledged",
            "response:positive-hit"
        ]
    );
    for r in &got {
        assert_eq!(r.message_id, sent.id);
        assert_eq!(r.addressee, "afi", "{r:?}");
        assert!(r.at.is_some(), "{r:?}");
    }
    let by: Vec<_> = got.iter().map(|r| r.by.as_str()).collect();
    assert_eq!(by[..3], ["dea-1", "afi-1", "afi-1"]);
    assert!(
        by[3].contains("duty-desk") && by[3].starts_with("afi"),
        "{}",
        by[3]
    );
    assert_eq!(by[4], "afi/duty-desk");
    assert_eq!(got[4].detail, "consignee is a front company");

    // The response settled the deadline: no overdue notice will follow (checked in the
    // respond-by unit tests; here the deadline is an hour away anyway).
    drop(receipts);
    desk.close().await;
    afi.close().await;
    net.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_delivery_joins_the_receipt_stream() {
    let net = relay_federation().await;
    let analyst = net.client("dea", "analyst").await;
    let mut receipts = analyst.receipts().await.unwrap();
    // DEA's node routes `zzz` to CENAPI, which knows no such agency.
    let sent = analyst
        .submit(
            Draft::new(&liaison("to nobody"))
                .to("zzz")
                .precedence(Precedence::Flash),
        )
        .await
        .unwrap();
    let got = gather(&mut receipts, sent.id, Vec::new(), |g| {
        has(g, "accepted") && g.iter().any(|r| matches!(r.stage, Stage::NonDelivery(_)))
    })
    .await;
    let nd = got
        .iter()
        .find(|r| matches!(r.stage, Stage::NonDelivery(_)))
        .unwrap();
    assert_eq!(nd.stage.name(), "non-delivery:unknown-recipient", "{nd:?}");
    assert_eq!((nd.addressee.as_str(), nd.by.as_str()), ("zzz", "dea-1"));
    assert!(
        nd.detail.contains("no route to agency zzz"),
        "{}",
        nd.detail
    );
    assert!(!has(&got, "persisted"), "{got:#?}");
    drop(receipts);
    analyst.close().await;
    net.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_request_is_overdue_and_need_more_time_moves_the_deadline() {
    let net = relay_federation().await;
    let afi = net.subscriber("afi", "duty-desk").await;
    let escalation = net.client("afi", "duty-desk").await;
    let mut afi_inbox = afi.inbox().unwrap();
    let mut desk_24x7 = escalation
        .subscribe(Mailbox::unit("24x7-desk").unwrap())
        .await
        .unwrap();
    let desk = net.client("dea", "duty-desk").await;
    let mut receipts = desk.receipts().await.unwrap();

    let request = |body: &str, within: u64| {
        Draft::new(&liaison(body))
            .to("afi")
            .precedence(Precedence::Immediate)
            .respond_within(Duration::from_secs(within))
    };
    // One nobody answers, one answered "need more time".
    let silent = desk.submit(request("silent", 1)).await.unwrap();
    let slow = desk.submit(request("slow", 1)).await.unwrap();
    let mut need_until = None;
    for _ in 0..2 {
        let d = within("AFI's copies", afi_inbox.next()).await.unwrap();
        if d.id() == slow.id {
            let until = SystemTime::now() + Duration::from_secs(3);
            need_until = Some(until);
            afi.respond(
                d.message(),
                pb::BusinessResponse {
                    outcome: pb::BusinessOutcome::NeedMoreTime as i32,
                    need_until: Some(timestamp(until)),
                    ..Default::default()
                },
            )
            .await
            .unwrap()
            .await
            .unwrap();
        }
        d.ack().await.unwrap();
    }
    let need_until = need_until.expect("the slow request arrived");

    // The silent one: an overdue notice to the originator, through the relay...
    let got = gather(&mut receipts, silent.id, Vec::new(), |g| has(g, "overdue")).await;
    let overdue = got.iter().find(|r| r.stage == Stage::Overdue).unwrap();
    assert_eq!(
        (overdue.addressee.as_str(), overdue.by.as_str()),
        ("afi", "afi-1")
    );
    assert!(
        overdue.detail.contains("no business response by"),
        "{}",
        overdue.detail
    );
    // ...and a reminder to AFI's 24/7 desk.
    let reminder = within("reminder", desk_24x7.next()).await.unwrap();
    let r = Receipt::from_message(reminder.message()).unwrap();
    assert_eq!((r.message_id, r.stage.clone()), (silent.id, Stage::Overdue));
    assert_eq!(r.unit, "24x7-desk");
    reminder.ack().await.unwrap();

    // The slow one: overdue only at the deadline it asked for, once.
    let got = gather(&mut receipts, slow.id, Vec::new(), |g| has(g, "overdue")).await;
    let overdue = got.iter().find(|r| r.stage == Stage::Overdue).unwrap();
    assert!(overdue.at.unwrap() >= need_until, "{overdue:?}");
    assert!(has(&got, "response:need-more-time"), "{got:#?}");
    let reminder = within("second reminder", desk_24x7.next()).await.unwrap();
    assert_eq!(
        Receipt::from_message(reminder.message())
            .unwrap()
            .message_id,
        slow.id
    );
    reminder.ack().await.unwrap();

    drop(receipts);
    desk.close().await;
    afi.close().await;
    escalation.close().await;
    net.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enlace_status_prints_the_timeline_without_consuming_it() {
    let net = relay_federation().await;
    let afi = net.subscriber("afi", "duty-desk").await;
    let mut afi_inbox = afi.inbox().unwrap();
    let desk = net.client("dea", "duty-desk").await;
    let mut dea_events = net.node("dea-1").events();
    let sent = desk
        .submit(Draft::new(&liaison("status check")).to("cmi"))
        .await
        .unwrap();
    let mut afi_events = net.node("afi-1").events();
    let d = within("AFI's copy", afi_inbox.next()).await.unwrap();
    let original = d.message().clone();
    d.ack().await.unwrap();
    // Answered once AFI's node has the acknowledgement, so the timeline has one order.
    common::wait_event(
        &mut afi_events,
        |e| matches!(e, enlace::node::Event::Acknowledged { id, .. } if *id == sent.id),
    )
    .await;
    afi.respond(
        &original,
        pb::BusinessResponse {
            outcome: pb::BusinessOutcome::ActionTaken as i32,
            ..Default::default()
        },
    )
    .await
    .unwrap()
    .await
    .unwrap();
    // Every receipt is in DEA's node (accepted there: ACCEPTED from DEA's node itself, the
    // other four through the relay) before the CLI looks.
    let mut taken = 0;
    while taken < 5 {
        let e = common::wait_event(
            &mut dea_events,
            |e| matches!(e, enlace::node::Event::Accepted { id, .. } if *id != sent.id),
        )
        .await;
        let _ = e;
        taken += 1;
    }

    let run = |args: Vec<String>| {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_enlace"));
        cmd.args(args).envs(net.cli_env("dea", "duty-desk"));
        async move { cmd.output().await.unwrap() }
    };
    let id = sent.id.to_string();
    let out = run(vec!["status".into(), id.clone()]).await;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines[0].starts_with("AT (UTC)"), "{stdout}");
    let stages: Vec<&str> = lines[1..]
        .iter()
        .map(|l| l.split_whitespace().nth(1).unwrap())
        .collect();
    assert_eq!(
        stages,
        [
            "accepted",
            "persisted",
            "delivered",
            "acknowledged",
            "response:action-taken"
        ],
        "{stdout}"
    );
    assert!(lines[2].contains("afi-1"), "{stdout}");

    // Read again, as JSON: nothing was consumed.
    let out = run(vec!["status".into(), "--json".into(), id.clone()]).await;
    assert!(out.status.success());
    let rows: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 5);
    assert!(rows.iter().all(|r| r["messageId"] == id.as_str()));
    assert_eq!(rows[4]["by"], "afi/duty-desk");

    // An id with no receipts, and one that is not an id.
    let other = MessageId::new_v7(SystemTime::now()).to_string();
    let out = run(vec!["status".into(), other]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no receipts"));
    let out = run(vec!["status".into(), "not-an-id".into()]).await;
    assert_eq!(out.status.code(), Some(2));

    desk.close().await;
    afi.close().await;
    net.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enlace_send_respond_within_then_status_shows_the_request_overdue() {
    let net = relay_federation().await;
    let mut dea_events = net.node("dea-1").events();
    let run = |args: &[&str]| {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_enlace"));
        cmd.args(args).envs(net.cli_env("dea", "duty-desk"));
        async move { cmd.output().await.unwrap() }
    };
    let out = run(&[
        "send",
        "--to",
        "cmi",
        "--text",
        "confirm the hit within a second",
        "--respond-within",
        "1s",
        "--json",
    ])
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let accepted: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let id: MessageId = accepted["accepted"].as_str().unwrap().parse().unwrap();
    // Nobody at AFI answers. DEA's node takes the ACCEPTED receipt, then PERSISTED and OVERDUE
    // from AFI's node through the relay.
    for _ in 0..3 {
        common::wait_event(
            &mut dea_events,
            |e| matches!(e, enlace::node::Event::Accepted { id: got, .. } if *got != id),
        )
        .await;
    }
    let out = run(&["status", "--json", &id.to_string()]).await;
    assert!(out.status.success());
    let stages: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["stage"].to_string())
        .collect();
    assert_eq!(
        stages,
        ["\"accepted\"", "\"persisted\"", "\"overdue\""],
        "{stages:?}"
    );
    net.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_of_a_copy_still_waiting_survives_a_restart_of_the_addressee_s_node() {
    let mut net = relay_federation_with_limits(&["shutdown_grace_ms = 100"]).await;
    let desk = net.client("dea", "duty-desk").await;
    let mut receipts = desk.receipts().await.unwrap();
    let mut afi_events = net.node("afi-1").events();
    let sent = desk
        .submit(
            Draft::new(&liaison("nobody at AFI reads this before the deadline"))
                .to("afi")
                .respond_within(Duration::from_secs(4)),
        )
        .await
        .unwrap();
    // Persisted at AFI's node, nobody subscribed: the copy waits in its mailbox.
    common::wait_event(
        &mut afi_events,
        |e| matches!(e, enlace::node::Event::Accepted { id, .. } if *id == sent.id),
    )
    .await;
    // The restarted node found the copy in its store, tracked its deadline again, and says so.
    overdue_after_afi_restarts(&mut net, &mut receipts, sent.id).await;
    drop(receipts);
    desk.close().await;
    net.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_of_a_copy_acknowledged_but_unanswered_survives_a_restart() {
    let mut net = relay_federation_with_limits(&["shutdown_grace_ms = 100"]).await;
    let desk = net.client("dea", "duty-desk").await;
    let mut receipts = desk.receipts().await.unwrap();
    let sent = desk
        .submit(
            Draft::new(&liaison(
                "AFI reads this, and does not answer before the deadline",
            ))
            .to("afi")
            .respond_within(Duration::from_secs(5)),
        )
        .await
        .unwrap();
    // AFI's desk takes it and acknowledges it: no copy waits in AFI's mailbox any more, so
    // only the journaled deadline can bring the overdue notice after the restart.
    let afi_desk = net.subscriber("afi", "duty-desk").await;
    let mut inbox = afi_desk.inbox().unwrap();
    let d = within("delivery at AFI", inbox.next()).await.unwrap();
    assert_eq!(d.id(), sent.id);
    d.ack().await.unwrap();
    gather(&mut receipts, sent.id, Vec::new(), |g| {
        has(g, "acknowledged")
    })
    .await;
    drop(inbox);
    afi_desk.client.close().await;

    // Only the journaled deadline can bring the overdue notice now.
    overdue_after_afi_restarts(&mut net, &mut receipts, sent.id).await;
    drop(receipts);
    desk.close().await;
    net.stop().await;
}

/// Restarts AFI's node (same data directory, a fresh port: the old one may not be free yet;
/// AFI's node dials CENAPI's, so the link comes back), then waits for the overdue notice about
/// `id`, which must come from the restarted node.
async fn overdue_after_afi_restarts(net: &mut TestNet, receipts: &mut Receipts, id: MessageId) {
    let afi = net.nodes.remove("afi-1").unwrap();
    afi.stop().await;
    net.net.nodes.get_mut("afi-1").unwrap().addr = enlace::network::free_port().unwrap();
    net.net.write_configs().unwrap();
    let restarted = SystemTime::now();
    net.nodes
        .insert("afi-1".into(), net.net.start("afi-1").await.unwrap());
    let got = gather(receipts, id, Vec::new(), |g| has(g, "overdue")).await;
    let overdue = got.iter().find(|r| r.stage == Stage::Overdue).unwrap();
    assert!(
        overdue.at.unwrap() > restarted,
        "the deadline passed before the restart; this test needs a longer respond_within"
    );
    assert_eq!(overdue.by, "afi-1");
}
