//! Bad input on a live connection: oversized frames, malformed protobuf, invalid envelopes.
//! Each is refused with a clear reason, and the same connection (and everyone else) keeps working.

mod common;

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use common::raw::{self, Raw, Signer};
use common::{SendAndWait, TestNet, within};
use enlace::pb::{self, RefusalCode, frame::Body};
use enlace::{Accepted, Draft, Precedence, SubmitError};

fn liaison(body: &str) -> pb::LiaisonMessage {
    pb::LiaisonMessage {
        body: Some(enlace::payloads::text("en", body)),
        ..Default::default()
    }
}

fn refusal(r: Result<Accepted, SubmitError>) -> (RefusalCode, String) {
    match r {
        Err(SubmitError::Refused { code, reason, .. }) => (code, reason),
        Err(e) => panic!("expected a refusal, got {e}"),
        Ok(a) => panic!("expected a refusal, message {} was accepted", a.id),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_frame_is_refused_and_the_connection_carries_on() {
    let net = TestNet::mesh(&["dea", "pgr"]).await;
    let pgr = net.subscriber("pgr", "duty-desk").await;
    let dea = net.client("dea", "duty-desk").await;
    let limit = dea.max_frame_bytes() as usize;
    assert_eq!(limit, 1024 * 1024);

    let huge = liaison(&"x".repeat(limit + 1));
    let (code, reason) = refusal(dea.submit(Draft::new(&huge).to("pgr")).await);
    assert_eq!(code, RefusalCode::TooLarge);
    assert!(
        reason.contains("exceeds the limit of 1048576 bytes"),
        "{reason}"
    );

    // The same connection carries the next valid message, and it arrives.
    let ok = dea
        .submit(
            Draft::new(&liaison("next"))
                .to("pgr")
                .precedence(Precedence::Flash),
        )
        .await
        .unwrap();
    let d = within("next message", pgr.inbox().unwrap().next())
        .await
        .unwrap();
    assert_eq!(d.id(), ok.id);
    assert_eq!(d.payload::<pb::LiaisonMessage>().unwrap(), liaison("next"));
    net.stop().await;
}

/// A raw, authorized connection of dea/duty-desk, to send hand-made frames.
async fn raw_conn(net: &TestNet) -> Raw {
    net.raw("dea", "clients/dea/duty-desk", pb::Role::Client)
        .await
        .unwrap()
}

/// Sends raw bytes on a new stream and returns the node's answer.
async fn exchange(s: &Raw, bytes: &[u8]) -> pb::Frame {
    within("answer", s.exchange(bytes)).await
}

fn refused(f: pb::Frame) -> pb::Refused {
    raw::refused(f)
}

/// Submits a signed envelope on the raw connection, bounded in time.
async fn submit(s: &Raw, signed: pb::SignedEnvelope) -> Result<pb::Accepted, pb::Refused> {
    within("answer to a submission", s.submit(signed)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_are_refused_and_the_node_keeps_serving() {
    let net = TestNet::mesh(&["dea", "pgr"]).await;
    let pgr = net.subscriber("pgr", "duty-desk").await;
    let other = net.client("dea", "analyst").await;
    let s = raw_conn(&net).await;

    // Not protobuf at all.
    let mut garbage = 20u32.to_be_bytes().to_vec();
    garbage.extend([0xff; 20]);
    let r = refused(exchange(&s, &garbage).await);
    assert_eq!(r.code(), RefusalCode::Malformed);
    assert!(r.reason.contains("malformed frame"), "{}", r.reason);

    // A length prefix promising more than the stream holds.
    let mut short = 100u32.to_be_bytes().to_vec();
    short.extend([0x0a; 10]);
    let r = refused(exchange(&s, &short).await);
    assert_eq!(r.code(), RefusalCode::Malformed);

    // A valid frame of the wrong kind.
    let ack = raw::frame(Body::Ack(pb::Ack::default()));
    let r = refused(exchange(&s, &ack).await);
    assert!(r.reason.contains("expected Submit"), "{}", r.reason);

    // A Submit whose envelope bytes are not an Envelope.
    let bad_env = raw::frame(Body::Submit(pb::Submit {
        envelope: Some(pb::SignedEnvelope {
            envelope: Bytes::from_static(&[0xff, 0xff, 0xff]),
            ..Default::default()
        }),
    }));
    let r = refused(exchange(&s, &bad_env).await);
    assert_eq!(r.code(), RefusalCode::Invalid);

    // Everyone else is still served, and so is this connection.
    let acc = other
        .submit(Draft::new(&liaison("still here")).to("pgr"))
        .await
        .unwrap();
    let d = within("delivery", pgr.inbox().unwrap().next())
        .await
        .unwrap();
    assert_eq!(d.id(), acc.id);
    net.stop().await;
}

/// The node's refusal of a raw submission, as (code, reason).
fn raw_refusal(r: Result<pb::Accepted, pb::Refused>) -> (RefusalCode, String) {
    match r {
        Err(r) => (r.code(), r.reason),
        Ok(a) => panic!("expected a refusal, accepted {a:?}"),
    }
}

/// The lifetime a client gives a message unless told otherwise.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(7 * 86400);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_envelopes_are_refused_with_reasons() {
    let net = TestNet::mesh(&["dea", "pgr"]).await;
    let dea = net.client("dea", "duty-desk").await;
    let me = ("dea", "dea-1", "duty-desk");
    let now = SystemTime::now();
    // A raw, authorized connection of dea/duty-desk, for hand-made envelopes.
    let s = raw_conn(&net).await;
    let mine = Signer::load("clients/dea/duty-desk");
    let routine = pb::Precedence::Routine;

    let (code, reason) = refusal(dea.submit(Draft::new(&liaison("?")).to("fbi")).await);
    assert_eq!(code, RefusalCode::UnknownRecipient);
    assert!(reason.contains("fbi"), "{reason}");

    let expired = raw::envelope(
        me,
        &["pgr"],
        routine,
        now - Duration::from_secs(8 * 86400),
        DEFAULT_LIFETIME,
        "late",
    );
    let (code, _) = raw_refusal(submit(&s, mine.seal(&expired)).await);
    assert_eq!(code, RefusalCode::Expired);

    let spoofed = raw::envelope(
        ("dea", "dea-1", "analyst"),
        &["pgr"],
        routine,
        now,
        DEFAULT_LIFETIME,
        "spoof",
    );
    let (code, reason) = raw_refusal(submit(&s, mine.seal(&spoofed)).await);
    assert_eq!(code, RefusalCode::Unauthorized);
    assert!(
        reason.contains("does not match the sender's certificate"),
        "{reason}"
    );

    // Signed by someone else's key: the signature does not match the sender's certificate.
    let env = raw::envelope(me, &["pgr"], routine, now, DEFAULT_LIFETIME, "tampered");
    let analyst = Signer::load("clients/dea/analyst");
    let mut signed = analyst.seal(&env);
    let (code, reason) = raw_refusal(submit(&s, signed.clone()).await);
    assert_eq!(code, RefusalCode::Invalid);
    assert!(reason.contains("different certificate"), "{reason}");
    // Right signer, but the bytes were changed after signing.
    signed = mine.seal(&env);
    let mut bytes = signed.envelope.to_vec();
    *bytes.last_mut().unwrap() ^= 0x01;
    signed.envelope = bytes.into();
    let (code, reason) = raw_refusal(submit(&s, signed).await);
    assert_eq!(code, RefusalCode::Invalid);
    assert!(
        reason.contains("does not match the envelope bytes"),
        "{reason}"
    );
    // A batch signature: each member is accepted with its own proof, and refused with another
    // member's proof or after its bytes changed, even once the batch's root is known to the node.
    let envs: Vec<pb::Envelope> = (0..3)
        .map(|i| {
            raw::envelope(
                me,
                &["pgr"],
                routine,
                now,
                DEFAULT_LIFETIME,
                &format!("batch {i}"),
            )
        })
        .collect();
    let bytes: Vec<Vec<u8>> = envs.iter().map(prost::Message::encode_to_vec).collect();
    let refs: Vec<&[u8]> = bytes.iter().map(Vec::as_slice).collect();
    let sigs = mine.sign_batch(&refs);
    let member = |i: usize, sig: usize| pb::SignedEnvelope {
        envelope: bytes[i].clone().into(),
        signature: Some(sigs[sig].clone()),
        hops: Vec::new(),
        route_to: Vec::new(),
        signer_chain: Vec::new(),
    };
    submit(&s, member(0, 0))
        .await
        .expect("a batch member with its own proof is accepted");
    let (code, reason) = raw_refusal(submit(&s, member(1, 2)).await);
    assert_eq!(code, RefusalCode::Invalid);
    assert!(reason.contains("originator signature"), "{reason}");
    let mut tampered = member(2, 2);
    let mut b = tampered.envelope.to_vec();
    *b.last_mut().unwrap() ^= 0x01;
    tampered.envelope = b.into();
    let (code, reason) = raw_refusal(submit(&s, tampered).await);
    assert_eq!(code, RefusalCode::Invalid);
    assert!(reason.contains("does not match"), "{reason}");
    submit(&s, member(2, 2))
        .await
        .expect("the untouched member is accepted");

    // The client that was refused still sends.
    dea.submit(Draft::new(&liaison("fine")).to("pgr"))
        .await
        .unwrap();
    net.stop().await;
}
