//! Exchange agreements, internal rules and handling conditions, enforced by real nodes: at
//! submission (the sender hears the rule synchronously), at the receiving node and before a
//! copy is handed to a client (the originator gets `NonDelivery(POLICY_DENIED)` naming the
//! rule), at a relay (story 3: TLP:RED does not pass a relay of another agency), and across
//! reloads of the policy file (a bad file keeps the policy in force).

mod common;

use common::{SendAndWait, TestNet, certs, wait_event, within};
use enlace::network::LocalNetwork;
use enlace::node::Event;
use enlace::pb::{self, RefusalCode};
use enlace::{Client, Draft, MessageId, Precedence, Stage, SubmitError};

fn liaison(body: &str) -> pb::LiaisonMessage {
    pb::LiaisonMessage {
        body: Some(enlace::payloads::text("en", body)),
        ..Default::default()
    }
}

fn alert() -> pb::PrecursorChemicalAlert {
    pb::PrecursorChemicalAlert::default()
}

fn tlp(label: pb::TlpLabel) -> pb::HandlingPolicy {
    pb::HandlingPolicy {
        tlp: label as i32,
        ..Default::default()
    }
}

/// Reports nobody reads stay queued: shutting down does not wait long for them.
const QUICK: &[&str] = &["shutdown_grace_ms = 200"];

const LAB: &str = r#"legal_basis = { text = "test agreement", reference = "TEST-1" }"#;

/// DEA: alerts and liaison to PGR (nothing more permissive than AMBER); reports to AFI; from
/// PGR, anything. The duty desk sends anything; the analyst, liaison and reports at ROUTINE
/// at most. Only the duty desk receives.
fn dea_policy() -> String {
    format!(
        r#"[policy]
agency = "dea"

[[agreements]]
id = "dea-pgr"
from = "dea"
to = "pgr"
payload_types = ["PrecursorChemicalAlert", "LiaisonMessage"]
max_precedence = "FLASH"
most_permissive_tlp = "AMBER"
{LAB}

[[agreements]]
id = "dea-afi-reports"
from = "dea"
to = "afi"
payload_types = ["AnalyticalReport"]
max_precedence = "ROUTINE"
{LAB}

[[agreements]]
id = "pgr-dea"
from = "pgr"
to = "dea"
payload_types = ["*"]
max_precedence = "FLASH"
{LAB}

[[send]]
id = "desk"
clients = ["duty-desk"]
payload_types = ["*"]
max_precedence = "FLASH"

[[send]]
id = "analysts-routine"
clients = ["analyst"]
payload_types = ["LiaisonMessage", "AnalyticalReport"]
max_precedence = "ROUTINE"

[[receive]]
id = "desk-receives"
clients = ["duty-desk"]
payload_types = ["*"]
"#
    )
}

/// PGR takes only precursor alerts from DEA.
fn pgr_policy() -> String {
    format!(
        r#"[policy]
agency = "pgr"

[[agreements]]
id = "from-dea"
from = "dea"
to = "pgr"
payload_types = ["PrecursorChemicalAlert"]
max_precedence = "FLASH"
{LAB}

[[agreements]]
id = "to-dea"
from = "pgr"
to = "dea"
payload_types = ["*"]
max_precedence = "FLASH"
{LAB}

[[send]]
id = "clients"
clients = ["role:client"]
payload_types = ["*"]
max_precedence = "FLASH"

[[receive]]
id = "clients-receive"
clients = ["role:client"]
payload_types = ["*"]
"#
    )
}

/// DEA, PGR and AFI, meshed, with the policies above (AFI's allows everything).
async fn agencies() -> TestNet {
    let dir = tempfile::tempdir().unwrap();
    let mut net =
        LocalNetwork::mesh_with_limits(dir.path(), &certs(), &["dea", "pgr", "afi"], QUICK)
            .unwrap();
    net.policies.insert("dea-1".into(), dea_policy());
    net.policies.insert("pgr-1".into(), pgr_policy());
    TestNet::start(dir, net).await
}

/// Asserts a `POLICY_DENIED` refusal whose reason contains each of `words`.
fn assert_denied<T: std::fmt::Debug>(r: Result<T, SubmitError>, words: &[&str]) {
    match r {
        Err(SubmitError::Refused { code, reason, .. }) => {
            assert_eq!(code, RefusalCode::PolicyDenied, "{reason}");
            for w in words {
                assert!(reason.contains(w), "expected {w:?} in: {reason}");
            }
        }
        other => panic!("expected POLICY_DENIED, got {other:?}"),
    }
}

/// Waits for the non-delivery report about `id` on `client`'s receipts and returns its detail.
async fn non_delivery(client: &Client, id: MessageId) -> String {
    let mut receipts = client.receipts().await.unwrap();
    within("a non-delivery report", async {
        loop {
            let r = receipts.next_for(id).await.expect("receipt stream ended");
            if let Stage::NonDelivery(_) = r.stage {
                assert_eq!(r.stage.name(), "non-delivery:policy-denied", "{r:?}");
                return r.detail;
            }
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_node_refuses_what_no_agreement_or_send_rule_allows_naming_the_rule() {
    let net = agencies().await;
    let pgr = net.subscriber("pgr", "duty-desk").await;
    let mut pgr_inbox = pgr.inbox().unwrap();
    let mut events = net.node("dea-1").events();
    let desk = net.client("dea", "duty-desk").await;

    // Allowed: an AMBER precursor alert at FLASH, under agreement dea-pgr.
    let ok = desk
        .submit(
            Draft::new(&alert())
                .to("pgr")
                .precedence(Precedence::Flash)
                .handling(tlp(pb::TlpLabel::Amber)),
        )
        .await
        .unwrap();
    let d = within("PGR's copy", pgr_inbox.next()).await.unwrap();
    assert_eq!(d.id(), ok.id);
    d.ack().await.unwrap();

    // No agreement with AFI for liaison messages: deny by default.
    assert_denied(
        desk.submit(Draft::new(&liaison("to AFI")).to("afi")).await,
        &[
            "dea-1.policy.toml#default-deny",
            "no agreement lets enlace.v1.LiaisonMessage flow from dea to afi",
        ],
    );
    // A label more permissive than the agreement allows.
    assert_denied(
        desk.submit(
            Draft::new(&alert())
                .to("pgr")
                .handling(tlp(pb::TlpLabel::Green)),
        )
        .await,
        &["dea-1.policy.toml#dea-pgr", "TLP:AMBER", "TLP:GREEN"],
    );
    // A precedence above the agreement's cap.
    let report = pb::AnalyticalReport::default();
    assert_denied(
        desk.submit(
            Draft::new(&report)
                .to("afi")
                .precedence(Precedence::Immediate),
        )
        .await,
        &["#dea-afi-reports", "ROUTINE at most, not IMMEDIATE"],
    );
    // The analyst may send liaison at ROUTINE, not at FLASH, and no alerts at all.
    let analyst = net.client("dea", "analyst").await;
    assert_denied(
        analyst
            .submit(
                Draft::new(&liaison("urgent?"))
                    .to("pgr")
                    .precedence(Precedence::Flash),
            )
            .await,
        &["#analysts-routine", "ROUTINE at most, not FLASH"],
    );
    assert_denied(
        analyst.submit(Draft::new(&alert()).to("pgr")).await,
        &["#default-deny", "no [[send]] rule lets analyst send"],
    );
    // Each refusal is logged at the node, with the code and the rule.
    let e = wait_event(&mut events, |e| {
        matches!(e, Event::Refused { code: RefusalCode::PolicyDenied, reason, .. } if reason.contains("analysts-routine"))
    })
    .await;
    assert!(matches!(e, Event::Refused { from, .. } if from.contains("analyst")));
    // Nothing refused reached PGR: the next delivery is the next allowed message.
    let next = analyst
        .submit(Draft::new(&liaison("routine liaison")).to("dea"))
        .await
        .unwrap();
    let _ = next;
    let after = desk.submit(Draft::new(&alert()).to("pgr")).await.unwrap();
    let d = within("PGR's next copy", pgr_inbox.next()).await.unwrap();
    assert_eq!(d.id(), after.id, "only allowed messages reach PGR");
    d.ack().await.unwrap();
    desk.close().await;
    analyst.close().await;
    pgr.close().await;
    net.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_receiving_node_and_its_receive_rules_enforce_its_own_policy() {
    let net = agencies().await;
    let desk = net.client("dea", "duty-desk").await;
    let mut pgr_events = net.node("pgr-1").events();

    // DEA's policy lets liaison go to PGR; PGR's takes only precursor alerts from DEA. DEA's
    // node accepts it, PGR's refuses it, and the originator learns why, with PGR's rule.
    let sent = desk
        .submit(Draft::new(&liaison("liaison PGR does not take")).to("pgr"))
        .await
        .unwrap();
    let detail = non_delivery(&desk, sent.id).await;
    assert!(
        detail.contains("pgr-1.policy.toml#default-deny")
            && detail.contains("no agreement lets enlace.v1.LiaisonMessage flow from dea to pgr"),
        "{detail}"
    );
    wait_event(&mut pgr_events, |e| {
        matches!(e, Event::Refused { id: Some(id), code: RefusalCode::PolicyDenied, .. } if *id == sent.id)
    })
    .await;

    // At DEA only the duty desk may be handed anything. A copy for a unit only the analyst
    // reads is refused at DEA's node, and its originator (at PGR) hears the rule.
    let pgr = net.client("pgr", "duty-desk").await;
    let to_records = pgr
        .submit(Draft::new(&liaison("for DEA's records unit")).to("dea/records"))
        .await
        .unwrap();
    let detail = non_delivery(&pgr, to_records.id).await;
    assert!(
        detail.contains("dea-1.policy.toml#default-deny")
            && detail.contains("no [[receive]] rule lets a reader of records (analyst, records)"),
        "{detail}"
    );
    // A receipts unit takes receipts, reports and answers only: nothing else can be slipped
    // past the receive rules through it.
    let into_receipts = pgr
        .submit(Draft::new(&liaison("not a receipt")).to("dea/receipts-analyst"))
        .await
        .unwrap();
    let detail = non_delivery(&pgr, into_receipts.id).await;
    assert!(
        detail
            .contains("unit receipts-analyst holds receipts, reports and business responses only"),
        "{detail}"
    );
    // A copy for the inbox, which every client reads, waits for a reader that may have it:
    // the analyst, reading first, is never handed it; the duty desk is.
    let analyst = net.subscriber("dea", "analyst").await;
    let mut analyst_inbox = analyst.inbox().unwrap();
    let to_inbox = pgr
        .submit(Draft::new(&liaison("for DEA's desk")).to("dea"))
        .await
        .unwrap();
    let mut dea_events = net.node("dea-1").events();
    let desk_reader = net.subscriber("dea", "duty-desk").await;
    let mut desk_inbox = desk_reader.inbox().unwrap();
    // (DEA's inbox also gets the node's report about the refused liaison: SYSTEM traffic,
    // which any reader may have.)
    let got = within("the desk's copy", async {
        loop {
            tokio::select! {
                d = desk_inbox.next() => break d.unwrap(),
                d = analyst_inbox.next() => {
                    let d = d.unwrap();
                    assert_eq!(d.message().status(), enlace::Status::System, "the analyst was handed {}", d.id());
                    d.ack().await.unwrap();
                }
            }
        }
    })
    .await;
    assert_eq!(got.id(), to_inbox.id);
    got.ack().await.unwrap();
    wait_event(
        &mut dea_events,
        |e| matches!(e, Event::Acknowledged { id, .. } if *id == to_inbox.id),
    )
    .await;
    for c in [&desk, &pgr, &analyst.client, &desk_reader.client] {
        c.close().await;
    }
    net.stop().await;
}

/// DEA, CENAPI and AFI; DEA reaches AFI only through CENAPI. Every policy allows everything.
async fn relayed() -> TestNet {
    let dir = tempfile::tempdir().unwrap();
    let mut net =
        LocalNetwork::mesh_with_limits(dir.path(), &certs(), &["dea", "cenapi", "afi"], QUICK)
            .unwrap();
    net.extra
        .insert("dea-1".into(), "[routes]\nafi = \"cenapi-1\"\n".into());
    net.extra
        .insert("afi-1".into(), "[routes]\ndea = \"cenapi-1\"\n".into());
    net.links(&[("dea-1", "cenapi-1"), ("afi-1", "cenapi-1")])
        .unwrap();
    TestNet::start(dir, net).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tlp_red_does_not_pass_a_relay_of_another_agency() {
    let net = relayed().await;
    let afi = net.subscriber("afi", "duty-desk").await;
    let mut afi_inbox = afi.inbox().unwrap();
    let desk = net.client("dea", "duty-desk").await;
    let mut cenapi_events = net.node("cenapi-1").events();

    // RED is for AFI alone: CENAPI's node, a relay of another agency, refuses to carry it.
    let red = desk
        .submit(
            Draft::new(&alert())
                .to("afi")
                .precedence(Precedence::Flash)
                .handling(tlp(pb::TlpLabel::Red)),
        )
        .await
        .unwrap();
    let detail = non_delivery(&desk, red.id).await;
    assert!(
        detail.contains("TLP:RED") && detail.contains("cenapi is not one of them"),
        "{detail}"
    );
    wait_event(&mut cenapi_events, |e| {
        matches!(e, Event::Refused { id: Some(id), code: RefusalCode::PolicyDenied, .. } if *id == red.id)
    })
    .await;
    // AMBER+STRICT likewise; AMBER passes.
    let strict = desk
        .submit(
            Draft::new(&alert())
                .to("afi")
                .handling(tlp(pb::TlpLabel::AmberStrict)),
        )
        .await
        .unwrap();
    assert!(
        non_delivery(&desk, strict.id)
            .await
            .contains("TLP:AMBER+STRICT")
    );
    let amber = desk
        .submit(
            Draft::new(&alert())
                .to("afi")
                .precedence(Precedence::Flash)
                .handling(tlp(pb::TlpLabel::Amber)),
        )
        .await
        .unwrap();
    let d = within("AFI's copy", afi_inbox.next()).await.unwrap();
    assert_eq!(d.id(), amber.id, "only the AMBER alert reaches AFI");
    d.ack().await.unwrap();
    // With max hops 0 the message may not use a relay at all: refused at submission.
    let direct_only = pb::HandlingPolicy {
        tlp: pb::TlpLabel::Red as i32,
        max_hops: Some(0),
        ..Default::default()
    };
    let r = desk
        .submit(Draft::new(&alert()).to("afi").handling(direct_only))
        .await;
    assert!(
        matches!(&r, Err(SubmitError::Refused { reason, .. }) if reason.contains("relay")),
        "{r:?}"
    );
    desk.close().await;
    afi.close().await;
    net.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_puts_a_new_policy_in_force_and_a_bad_file_keeps_the_old_one() {
    let dir = tempfile::tempdir().unwrap();
    let net = LocalNetwork::mesh_with_limits(dir.path(), &certs(), &["dea", "pgr"], QUICK).unwrap();
    let path = net.policy_path("dea-1");
    let open = net.open_policy("dea");
    let net = TestNet::start(dir, net).await;
    let node = net.node("dea-1");
    let mut events = node.events();
    let desk = net.client("dea", "duty-desk").await;
    let to_pgr = || Draft::new(&liaison("reload")).to("pgr");
    desk.submit(to_pgr()).await.unwrap();

    // A file that does not parse is refused; the policy in force stays.
    std::fs::write(&path, "[[agreements]]\nid = \"half\"\n").unwrap();
    node.reload();
    let e = wait_event(
        &mut events,
        |e| matches!(e, Event::ReloadRefused { what, .. } if what == "policy"),
    )
    .await;
    assert!(
        matches!(&e, Event::ReloadRefused { reason, .. } if reason.contains("dea-1.policy.toml") && reason.contains("the policy in force stays")),
        "{e:?}"
    );
    desk.submit(to_pgr()).await.unwrap();

    // A valid file without the agreement: in force at the next reload.
    let without = open.replace(
        "id = \"laboratory\"",
        "id = \"laboratory\"\nvalid_until = \"2000-01-01\"",
    );
    assert_ne!(without, open);
    std::fs::write(&path, &without).unwrap();
    node.reload();
    wait_event(
        &mut events,
        |e| matches!(e, Event::Reloaded { what, .. } if what == "policy"),
    )
    .await;
    assert_denied(
        desk.submit(to_pgr()).await,
        &["#laboratory", "expired at the end of 2000-01-01"],
    );

    // The node notices a changed file by itself.
    std::fs::write(&path, &open).unwrap();
    let e = wait_event(
        &mut events,
        |e| matches!(e, Event::Reloaded { what, .. } if what == "policy"),
    )
    .await;
    assert!(
        matches!(&e, Event::Reloaded { detail, .. } if detail.starts_with("policy file changed")),
        "{e:?}"
    );
    desk.submit(to_pgr()).await.unwrap();
    desk.close().await;
    net.stop().await;
}

/// DEA, CENAPI, PGR and AFI, meshed; every policy allows everything between agencies.
async fn four() -> TestNet {
    let dir = tempfile::tempdir().unwrap();
    let net = LocalNetwork::mesh_with_limits(
        dir.path(),
        &certs(),
        &["dea", "cenapi", "pgr", "afi"],
        QUICK,
    )
    .unwrap();
    TestNet::start(dir, net).await
}

/// Reads `inbox` until the delivery of `id`, acknowledging everything.
async fn receive(inbox: &mut enlace::Inbox, id: MessageId) -> enlace::Delivery {
    within("a delivery", async {
        loop {
            let d = inbox.next().await.expect("inbox ended");
            if d.id() == id {
                return d;
            }
            d.ack().await.unwrap();
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_derived_product_needs_the_originators_release_which_dea_grants_over_the_network() {
    let net = four().await;
    let dea_desk = net.subscriber("dea", "duty-desk").await;
    let mut dea_inbox = dea_desk.inbox().unwrap();
    let cenapi = net.subscriber("cenapi", "analyst").await;
    let mut cenapi_inbox = cenapi.inbox().unwrap();
    let pgr = net.subscriber("pgr", "duty-desk").await;
    let mut pgr_inbox = pgr.inbox().unwrap();

    // Story 2: DEA's alert to CENAPI, whose onward dissemination needs DEA's consent.
    let consent = pb::HandlingPolicy {
        tlp: pb::TlpLabel::Green as i32,
        onward_dissemination: pb::Permission::OriginatorConsent as i32,
        purpose: "interdiction".into(),
        ..Default::default()
    };
    let x = dea_desk
        .submit(
            Draft::new(&alert())
                .to("cenapi")
                .precedence(Precedence::Flash)
                .handling(consent),
        )
        .await
        .unwrap();
    receive(&mut cenapi_inbox, x.id).await.ack().await.unwrap();

    // CENAPI's report derived from it, to a third agency: refused, naming the source and who
    // may release it.
    let report = || {
        Draft::new(&pb::AnalyticalReport::default())
            .to("pgr")
            .derived_from(x.id)
            .handling(pb::HandlingPolicy {
                purpose: "interdiction".into(),
                ..Default::default()
            })
    };
    assert_denied(
        cenapi.submit(report()).await,
        &[
            &format!("source message {} (from dea)", x.id),
            "consent",
            "send it a DisseminationRequest",
        ],
    );
    // Reusing the source's id for a permissive message of its own does not wash the source's
    // conditions off: refused as an id conflict, and the product is refused as before.
    let reuse = cenapi
        .submit(
            Draft::new(&liaison("same id, no conditions"))
                .id(x.id)
                .to("cenapi")
                .handling(tlp(pb::TlpLabel::Clear)),
        )
        .await;
    assert!(
        matches!(
            &reuse,
            Err(SubmitError::Refused {
                code: RefusalCode::DuplicateId,
                ..
            })
        ),
        "{reuse:?}"
    );
    assert_denied(
        cenapi.submit(report()).await,
        &[&format!("source message {} (from dea)", x.id)],
    );
    // Back to DEA itself it may go.
    cenapi
        .submit(
            Draft::new(&pb::AnalyticalReport::default())
                .to("dea")
                .derived_from(x.id),
        )
        .await
        .unwrap();

    // The release, over the network: request to DEA, DEA's duty desk approves for PGR.
    let request = cenapi
        .submit(
            Draft::new(&pb::DisseminationRequest {
                source_message_ids: vec![x.id.to_bytes()],
                to_agencies: vec!["pgr".into()],
                purpose: "interdiction".into(),
                justification: "PGR prosecutes the consignee".into(),
            })
            .to("dea"),
        )
        .await
        .unwrap();
    let asked = receive(&mut dea_inbox, request.id).await;
    let req: pb::DisseminationRequest = asked.payload().unwrap();
    asked.ack().await.unwrap();
    let decision = dea_desk
        .submit(
            Draft::new(&pb::DisseminationDecision {
                request_id: request.id.to_bytes(),
                source_message_ids: req.source_message_ids.clone(),
                approved: true,
                to_agencies: req.to_agencies.clone(),
                purpose: req.purpose.clone(),
                ..Default::default()
            })
            .to("cenapi"),
        )
        .await
        .unwrap();
    receive(&mut cenapi_inbox, decision.id)
        .await
        .ack()
        .await
        .unwrap();

    // Now the same report goes through, and reaches PGR.
    let m1 = cenapi.submit(report()).await.unwrap();
    receive(&mut pgr_inbox, m1.id).await.ack().await.unwrap();

    // The release was for PGR only: AFI still needs one, also for a product of the product
    // (the restriction is inherited through generations).
    assert_denied(
        cenapi
            .submit(
                Draft::new(&pb::AnalyticalReport::default())
                    .to("afi")
                    .derived_from(x.id),
            )
            .await,
        &[&format!("source message {} (from dea)", x.id)],
    );
    assert_denied(
        cenapi
            .submit(
                Draft::new(&pb::AnalyticalReport::default())
                    .to("afi")
                    .derived_from(m1.id),
            )
            .await,
        &[&format!("source message {} (from dea)", x.id)],
    );
    for c in [&dea_desk.client, &cenapi.client, &pgr.client] {
        c.close().await;
    }
    net.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tlp_red_alert_stays_with_its_recipient() {
    let net = four().await;
    let pgr = net.subscriber("pgr", "duty-desk").await;
    let mut pgr_inbox = pgr.inbox().unwrap();
    let desk = net.client("dea", "duty-desk").await;
    // Story 3: TLP:RED, direct delivery only.
    let red = desk
        .submit(
            Draft::new(&alert())
                .to("pgr")
                .precedence(Precedence::Flash)
                .handling(pb::HandlingPolicy {
                    tlp: pb::TlpLabel::Red as i32,
                    max_hops: Some(0),
                    ..Default::default()
                }),
        )
        .await
        .unwrap();
    let d = receive(&mut pgr_inbox, red.id).await;
    let path: Vec<String> = d.hops().into_iter().map(|h| h.node).collect();
    assert_eq!(path, ["dea-1", "pgr-1"], "delivered directly");
    d.ack().await.unwrap();
    // The recipient cannot pass it on: no product of it may go to another agency...
    assert_denied(
        pgr.submit(
            Draft::new(&liaison("what DEA told us"))
                .to("afi")
                .derived_from(red.id),
        )
        .await,
        &["TLP:RED", "afi is outside its scope"],
    );
    // ...while PGR's own units may have it.
    pgr.submit(
        Draft::new(&liaison("for our desk"))
            .to("pgr/24x7-desk")
            .derived_from(red.id),
    )
    .await
    .unwrap();
    desk.close().await;
    pgr.close().await;
    net.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_are_purged_when_the_originators_retention_period_ends() {
    let net = four().await;
    let desk = net.client("dea", "duty-desk").await;
    let mut pgr_events = net.node("pgr-1").events();
    // Valid for an hour, but PGR may keep it for one second only; nobody reads PGR's inbox.
    let until = std::time::SystemTime::now() + std::time::Duration::from_secs(1);
    let since = until.duration_since(std::time::UNIX_EPOCH).unwrap();
    let sent = desk
        .submit(
            Draft::new(&liaison("keep it briefly"))
                .to("pgr")
                .expires_in(std::time::Duration::from_secs(3600))
                .handling(pb::HandlingPolicy {
                    retain_until: Some(prost_types::Timestamp {
                        seconds: since.as_secs() as i64,
                        nanos: since.subsec_nanos() as i32,
                    }),
                    ..Default::default()
                }),
        )
        .await
        .unwrap();
    let e = wait_event(
        &mut pgr_events,
        |e| matches!(e, Event::Purged { id: Some(id), .. } if *id == sent.id),
    )
    .await;
    assert!(
        matches!(&e, Event::Purged { reason, .. } if reason.contains("retain_until")),
        "{e:?}"
    );
    let mut receipts = desk.receipts().await.unwrap();
    let report = within("the originator's report", async {
        loop {
            let r = receipts
                .next_for(sent.id)
                .await
                .expect("receipt stream ended");
            if let Stage::NonDelivery(_) = r.stage {
                return r;
            }
        }
    })
    .await;
    assert!(report.detail.contains("retention period"), "{report:?}");
    // A reader who comes now gets nothing of it.
    let pgr = net.subscriber("pgr", "duty-desk").await;
    let mut inbox = pgr.inbox().unwrap();
    let probe = desk
        .submit(Draft::new(&liaison("probe")).to("pgr"))
        .await
        .unwrap();
    let first = within("the probe", inbox.next()).await.unwrap();
    assert_eq!(first.id(), probe.id, "the purged copy was not delivered");
    first.ack().await.unwrap();
    desk.close().await;
    pgr.close().await;
    net.stop().await;
}

/// Runs the `enlace` CLI; its exit code and output.
fn cli(args: &[&str]) -> (i32, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_enlace"))
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn policy_check_and_explain_tell_the_writer_what_the_file_does() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dea.policy.toml");
    std::fs::write(&file, dea_policy()).unwrap();
    let f = file.to_str().unwrap();

    let (code, out) = cli(&[
        "policy",
        "check",
        f,
        "--agencies",
        "dea,pgr,afi",
        "--at",
        "2026-12-02",
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(
            "agreement dea-pgr: dea → pgr: LiaisonMessage, PrecursorChemicalAlert up to FLASH"
        ),
        "{out}"
    );
    assert!(out.contains("valid, no findings"), "{out}");
    // An agency the directory does not know is a finding.
    let (code, out) = cli(&[
        "policy",
        "check",
        f,
        "--agencies",
        "dea,pgr",
        "--at",
        "2026-12-02",
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("agency \"afi\" is not in the directory"),
        "{out}"
    );
    // A file that does not load names the key.
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[[send]]\nid = \"x\"\nclients = [\"a\"]\npayload_types = [\"*\"]\nmax_precedence = \"URGENT\"\n").unwrap();
    let (code, out) = cli(&["policy", "check", bad.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("send[0].max_precedence"), "{out}");

    let explain = |extra: &[&str]| {
        let mut args = vec!["policy", "explain", "--policy", f, "--at", "2026-12-02"];
        args.extend_from_slice(extra);
        cli(&args)
    };
    let (code, out) = explain(&[
        "--from",
        "dea/duty-desk",
        "--to",
        "pgr",
        "--type",
        "PrecursorChemicalAlert",
        "--precedence",
        "FLASH",
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("send: allowed by dea.policy.toml#desk"),
        "{out}"
    );
    assert!(
        out.contains("agreement: allowed by dea.policy.toml#dea-pgr"),
        "{out}"
    );
    let (code, out) = explain(&[
        "--from",
        "dea/duty-desk",
        "--to",
        "pgr",
        "--type",
        "PrecursorChemicalAlert",
        "--tlp",
        "GREEN",
    ]);
    assert_eq!(code, 4, "{out}");
    assert!(
        out.contains("agreement: denied by dea.policy.toml#dea-pgr"),
        "{out}"
    );
    let (code, out) = explain(&[
        "--from",
        "pgr",
        "--to",
        "dea/analyst",
        "--type",
        "LiaisonMessage",
    ]);
    assert_eq!(code, 4, "{out}");
    assert!(
        out.contains("agreement: allowed by dea.policy.toml#pgr-dea"),
        "{out}"
    );
    assert!(
        out.contains("receive: denied by dea.policy.toml#default-deny"),
        "{out}"
    );
}

/// Probed as an attacker would: a misbehaving PGR node (the raw client with pgr-1's
/// certificate) forwards a message genuinely signed by PGR's duty desk but marked SYSTEM, as if
/// it were node control traffic, of a type DEA's agreement with PGR does not cover. Only a
/// node's own receipts and reports escape the policy: this is refused, and never delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_cannot_pass_client_traffic_off_as_system_to_skip_the_policy() {
    use common::raw::{self, Signer};
    let dir = tempfile::tempdir().unwrap();
    let mut net =
        LocalNetwork::mesh_with_limits(dir.path(), &certs(), &["dea", "pgr"], QUICK).unwrap();
    net.policies.insert(
        "dea-1".into(),
        dea_policy().replace(
            "id = \"pgr-dea\"\nfrom = \"pgr\"\nto = \"dea\"\npayload_types = [\"*\"]",
            "id = \"pgr-dea\"\nfrom = \"pgr\"\nto = \"dea\"\npayload_types = [\"PrecursorChemicalAlert\"]",
        ),
    );
    let mut net = TestNet::start(dir, net).await;
    net.nodes.remove("pgr-1").unwrap().stop().await;
    let peer = net
        .raw("dea", "nodes/pgr/pgr-1", pb::Role::Node)
        .await
        .unwrap();
    let desk = net.subscriber("dea", "duty-desk").await;
    let mut inbox = desk.inbox().unwrap();
    let pgr = Signer::load("clients/pgr/duty-desk");
    let hop = pb::HopRecord {
        node: "pgr-1".into(),
        agency: "pgr".into(),
        received_at: Some(prost_types::Timestamp::default()),
        forwarded_at: Some(prost_types::Timestamp::default()),
    };
    let forward = |status: pb::Status| {
        let mut env = raw::envelope(
            ("pgr", "pgr-1", "duty-desk"),
            &["dea"],
            pb::Precedence::Flash,
            std::time::SystemTime::now(),
            std::time::Duration::from_secs(60),
            "dressed up as control traffic",
        );
        env.status = status as i32;
        let mut s = pgr.seal(&env);
        s.hops = vec![hop.clone()];
        s.route_to = vec!["dea".into()];
        s.signer_chain = pgr.chain();
        s
    };
    for status in [pb::Status::System, pb::Status::Actual] {
        let r = within("the node's answer", peer.submit(forward(status))).await;
        match r {
            Err(refused) => {
                assert_eq!(
                    refused.code(),
                    RefusalCode::PolicyDenied,
                    "{status:?}: {}",
                    refused.reason
                );
                assert!(
                    refused.reason.contains("dea-1.policy.toml#pgr-dea")
                        || refused.reason.contains("dea-1.policy.toml#default-deny"),
                    "{}",
                    refused.reason
                );
            }
            Ok(a) => panic!("{status:?} liaison from PGR accepted: {a:?}"),
        }
    }
    // Nothing reached DEA's desk: the next delivery is a genuine alert from the same peer.
    let mut alert_env = raw::envelope(
        ("pgr", "pgr-1", "duty-desk"),
        &["dea"],
        pb::Precedence::Flash,
        std::time::SystemTime::now(),
        std::time::Duration::from_secs(60),
        "",
    );
    alert_env.payload_type = "enlace.v1.PrecursorChemicalAlert".into();
    alert_env.payload = prost::Message::encode_to_vec(&alert()).into();
    let mut genuine = pgr.seal(&alert_env);
    genuine.hops = vec![hop.clone()];
    genuine.route_to = vec!["dea".into()];
    genuine.signer_chain = pgr.chain();
    let ok = within("the node's answer", peer.submit(genuine))
        .await
        .unwrap();
    let d = within("the genuine alert", inbox.next()).await.unwrap();
    assert_eq!(
        d.id().to_bytes(),
        ok.message_id,
        "only the genuine alert was delivered"
    );
    d.ack().await.unwrap();
    desk.close().await;
    net.stop().await;
}

/// Stops a node and starts it again from its config and data directory.
async fn restart(net: &mut TestNet, node: &str) {
    net.nodes.remove(node).unwrap().stop().await;
    let again = net.net.start(node).await.unwrap();
    net.nodes.insert(node.into(), again);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn originator_control_survives_a_restart_of_the_deriving_node() {
    let mut net = four().await;
    let desk = net.subscriber("dea", "duty-desk").await;
    let consent = pb::HandlingPolicy {
        tlp: pb::TlpLabel::Green as i32,
        onward_dissemination: pb::Permission::OriginatorConsent as i32,
        ..Default::default()
    };
    let x = desk
        .submit(Draft::new(&alert()).to("cenapi").handling(consent))
        .await
        .unwrap();
    let analyst = net.subscriber("cenapi", "analyst").await;
    let mut inbox = analyst.inbox().unwrap();
    receive(&mut inbox, x.id).await.ack().await.unwrap();
    analyst.close().await;
    restart(&mut net, "cenapi-1").await;
    let report = || {
        Draft::new(&pb::AnalyticalReport::default())
            .to("pgr")
            .derived_from(x.id)
    };
    // After the restart CENAPI's node still knows the source's conditions.
    let analyst = net.subscriber("cenapi", "analyst").await;
    let mut inbox = analyst.inbox().unwrap();
    assert_denied(
        analyst.submit(report()).await,
        &[&format!("source message {} (from dea)", x.id), "consent"],
    );
    // DEA releases it to PGR; CENAPI's node restarts again, and still knows the release.
    let decision = desk
        .submit(
            Draft::new(&pb::DisseminationDecision {
                source_message_ids: vec![x.id.to_bytes()],
                approved: true,
                to_agencies: vec!["PGR".into()],
                ..Default::default()
            })
            .to("cenapi"),
        )
        .await
        .unwrap();
    receive(&mut inbox, decision.id).await.ack().await.unwrap();
    analyst.close().await;
    restart(&mut net, "cenapi-1").await;
    let analyst = net.client("cenapi", "analyst").await;
    analyst.submit(report()).await.unwrap();
    analyst.close().await;
    desk.close().await;
    net.stop().await;
}
