//! Bad input on a live connection: oversized frames, malformed protobuf, invalid envelopes.
//! Each is refused with a clear reason, and the same connection (and everyone else) keeps working.

mod common;

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use common::{TestNet, dial_dea, material, quic_config, within};
use enlace::message::{Draft, Precedence};
use enlace::session::{self, SubmitError};
use enlace::wire::frame::{FrameReader, encode};
use enlace::wire::pb::{self, RefusalCode, frame::Body};

fn liaison(body: &str) -> pb::LiaisonMessage {
    pb::LiaisonMessage {
        body: Some(enlace::payloads::text("en", body)),
        ..Default::default()
    }
}

fn refusal(r: Result<enlace::client::Accepted, SubmitError>) -> (RefusalCode, String) {
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
    let (code, reason) = refusal(dea.send(Draft::new(&huge).to("pgr")).await);
    assert_eq!(code, RefusalCode::TooLarge);
    assert!(
        reason.contains("exceeds the limit of 1048576 bytes"),
        "{reason}"
    );

    // The same connection carries the next valid message, and it arrives.
    let ok = dea
        .send(
            Draft::new(&liaison("next"))
                .to("pgr")
                .precedence(Precedence::Flash),
        )
        .await
        .unwrap();
    let d = within("next message", pgr.inbox().unwrap().next())
        .await
        .unwrap();
    assert_eq!(d.id, ok.id);
    assert_eq!(d.payload::<pb::LiaisonMessage>().unwrap(), liaison("next"));
    net.stop().await;
}

/// A raw, authorized connection of dea/duty-desk, to send hand-made frames.
async fn raw(net: &TestNet) -> session::Session {
    dial_dea(net, quic_config("clients/dea/duty-desk"), pb::Role::Client)
        .await
        .unwrap()
}

/// Sends raw bytes on a new stream and returns the node's answer.
async fn exchange(conn: &quinn::Connection, bytes: &[u8]) -> pb::Frame {
    let (mut send, recv) = conn.open_bi().await.unwrap();
    send.write_all(bytes).await.unwrap();
    send.finish().unwrap();
    within("answer", FrameReader::new(recv, 64 * 1024).read())
        .await
        .unwrap()
}

fn refused(f: pb::Frame) -> pb::Refused {
    match f.body {
        Some(Body::Refused(r)) => r,
        other => panic!("expected Refused, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_are_refused_and_the_node_keeps_serving() {
    let net = TestNet::mesh(&["dea", "pgr"]).await;
    let pgr = net.subscriber("pgr", "duty-desk").await;
    let other = net.client("dea", "analyst").await;
    let s = raw(&net).await;

    // Not protobuf at all.
    let mut garbage = 20u32.to_be_bytes().to_vec();
    garbage.extend([0xff; 20]);
    let r = refused(exchange(&s.connection, &garbage).await);
    assert_eq!(r.code(), RefusalCode::Malformed);
    assert!(r.reason.contains("malformed frame"), "{}", r.reason);

    // A length prefix promising more than the stream holds.
    let mut short = 100u32.to_be_bytes().to_vec();
    short.extend([0x0a; 10]);
    let r = refused(exchange(&s.connection, &short).await);
    assert_eq!(r.code(), RefusalCode::Malformed);

    // A valid frame of the wrong kind.
    let ack = encode(&pb::Frame {
        body: Some(Body::Ack(pb::Ack::default())),
    });
    let r = refused(exchange(&s.connection, &ack).await);
    assert!(r.reason.contains("expected Submit"), "{}", r.reason);

    // A Submit whose envelope bytes are not an Envelope.
    let bad_env = encode(&pb::Frame {
        body: Some(Body::Submit(pb::Submit {
            envelope: Some(pb::SignedEnvelope {
                envelope: Bytes::from_static(&[0xff, 0xff, 0xff]),
                ..Default::default()
            }),
        })),
    });
    let r = refused(exchange(&s.connection, &bad_env).await);
    assert_eq!(r.code(), RefusalCode::Invalid);

    // Everyone else is still served, and so is this connection.
    let acc = other
        .send(Draft::new(&liaison("still here")).to("pgr"))
        .await
        .unwrap();
    let d = within("delivery", pgr.inbox().unwrap().next())
        .await
        .unwrap();
    assert_eq!(d.id, acc.id);
    net.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_envelopes_are_refused_with_reasons() {
    let net = TestNet::mesh(&["dea", "pgr"]).await;
    let dea = net.client("dea", "duty-desk").await;
    let me = pb::Originator {
        agency: "dea".into(),
        node: "dea-1".into(),
        client: "duty-desk".into(),
    };
    let now = SystemTime::now();

    let (code, reason) = refusal(dea.send(Draft::new(&liaison("?")).to("fbi")).await);
    assert_eq!(code, RefusalCode::UnknownRecipient);
    assert!(reason.contains("fbi"), "{reason}");

    let expired = Draft::new(&liaison("late"))
        .to("pgr")
        .finish(me.clone(), now - Duration::from_secs(8 * 86400));
    let (code, _) = refusal(dea.send_envelope(&expired).await);
    assert_eq!(code, RefusalCode::Expired);

    let spoofed = Draft::new(&liaison("spoof")).to("pgr").finish(
        pb::Originator {
            client: "analyst".into(),
            ..me.clone()
        },
        now,
    );
    let (code, reason) = refusal(dea.send_envelope(&spoofed).await);
    assert_eq!(code, RefusalCode::Unauthorized);
    assert!(
        reason.contains("does not match the sender's certificate"),
        "{reason}"
    );

    // Signed by someone else's key: the signature does not match the sender's certificate.
    let s = raw(&net).await;
    let env = Draft::new(&liaison("tampered"))
        .to("pgr")
        .finish(me.clone(), now);
    let analyst = material("clients/dea/analyst");
    let signer =
        enlace::signature::Signer::from_pkcs8(analyst.key_der(), analyst.leaf_sha256()).unwrap();
    let mut signed = enlace::validate::seal(&env, &signer);
    match session::submit(&s.connection, signed.clone(), 0).await {
        Err(SubmitError::Refused { code, reason, .. }) => {
            assert_eq!(code, RefusalCode::Invalid);
            assert!(reason.contains("different certificate"), "{reason}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // Right signer, but the bytes were changed after signing.
    let mine = material("clients/dea/duty-desk");
    let signer = enlace::signature::Signer::from_pkcs8(mine.key_der(), mine.leaf_sha256()).unwrap();
    signed = enlace::validate::seal(&env, &signer);
    let mut bytes = signed.envelope.to_vec();
    *bytes.last_mut().unwrap() ^= 0x01;
    signed.envelope = bytes.into();
    match session::submit(&s.connection, signed, 0).await {
        Err(SubmitError::Refused { code, reason, .. }) => {
            assert_eq!(code, RefusalCode::Invalid);
            assert!(
                reason.contains("does not match the envelope bytes"),
                "{reason}"
            );
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // A batch signature: each member is accepted with its own proof, and refused with another
    // member's proof or after its bytes changed, even once the batch's root is known to the node.
    let envs: Vec<pb::Envelope> = (0..3)
        .map(|i| {
            Draft::new(&liaison(&format!("batch {i}")))
                .to("pgr")
                .precedence(Precedence::Routine)
                .finish(me.clone(), now)
        })
        .collect();
    let bytes: Vec<Vec<u8>> = envs.iter().map(prost::Message::encode_to_vec).collect();
    let refs: Vec<&[u8]> = bytes.iter().map(Vec::as_slice).collect();
    let sigs = signer.sign_batch(&refs);
    let member = |i: usize, sig: usize| pb::SignedEnvelope {
        envelope: bytes[i].clone().into(),
        signature: Some(sigs[sig].clone()),
        hops: Vec::new(),
        route_to: Vec::new(),
    };
    session::submit(&s.connection, member(0, 0), 0)
        .await
        .expect("a batch member with its own proof is accepted");
    match session::submit(&s.connection, member(1, 2), 0).await {
        Err(SubmitError::Refused { code, reason, .. }) => {
            assert_eq!(code, RefusalCode::Invalid);
            assert!(reason.contains("originator signature"), "{reason}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    let mut tampered = member(2, 2);
    let mut b = tampered.envelope.to_vec();
    *b.last_mut().unwrap() ^= 0x01;
    tampered.envelope = b.into();
    match session::submit(&s.connection, tampered, 0).await {
        Err(SubmitError::Refused { code, reason, .. }) => {
            assert_eq!(code, RefusalCode::Invalid);
            assert!(reason.contains("does not match"), "{reason}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    session::submit(&s.connection, member(2, 2), 0)
        .await
        .expect("the untouched member is accepted");

    // The client that was refused several times still sends.
    dea.send(Draft::new(&liaison("fine")).to("pgr"))
        .await
        .unwrap();
    net.stop().await;
}
