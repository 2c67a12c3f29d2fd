//! Entry points for the coverage-guided fuzz targets in `fuzz/` (built with the `fuzzing`
//! feature; see `fuzz/README.md`). Each takes arbitrary bytes, feeds them to the code that
//! parses what a peer, a client or an operator sends, and checks what must hold whatever the
//! input: no panic, and the properties asserted here. A failure is a bug, and becomes a test.

use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use prost::Message as _;

use crate::directory::{Agency, Directory};
use crate::identity::{AgencyId, Identity, PeerCert, Role};
use crate::route::{Arrival, NextHop, Router};
use crate::signature::{Signer, VerifiedRoots, verify};
use crate::validate::{NodeContext, admit};
use crate::wire::{frame, json, pb};

/// The largest frame the targets decode (a node's default limit).
const MAX_FRAME: u64 = 1024 * 1024;

struct Fixture {
    signer: Signer,
    client: PeerCert,
    peer: PeerCert,
    directory: Directory,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).expect("a key");
        let signer = Signer::from_pkcs8(pkcs8.as_ref(), [1; 32]).expect("a signer");
        let cert = |agency: &str, role, name: &str, sha256, key: Option<Vec<u8>>| PeerCert {
            identity: Identity {
                trust_domain: "enlace.test".into(),
                agency: AgencyId::new(agency).expect("an agency id"),
                role,
                name: name.into(),
            },
            serial: "01".into(),
            sha256,
            ed25519_public_key: key,
        };
        let key = Some(signer.public_key().to_vec());
        let agency = |id: &str, aliases: &[&str]| Agency {
            id: AgencyId::new(id).expect("an agency id"),
            display: id.to_uppercase(),
            aliases: aliases.iter().map(|a| a.to_string()).collect(),
            served_by: None,
        };
        Fixture {
            client: cert("dea", Role::Client, "duty-desk", [1; 32], key),
            peer: cert("pgr", Role::Node, "pgr-1", [2; 32], None),
            directory: Directory::build(vec![
                agency("afi", &["pfm", "cmi"]),
                agency("pgr", &["fgr"]),
                agency("cenapi", &[]),
            ])
            .expect("a directory"),
            signer,
        }
    })
}

fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

/// The frame decoder: length prefixes checked before decoding, bodies decoded as `Frame`s; every
/// frame decoded re-encodes to bytes that decode to the same frame.
pub fn frames(data: &[u8]) {
    if let Ok(frames) = frame::decode_all(data, MAX_FRAME) {
        for f in frames {
            let again = frame::decode_all(&frame::encode(&f), MAX_FRAME).expect("re-encoded");
            assert_eq!(again, vec![f]);
        }
    }
}

/// Envelope decoding, admission and routing: `data` is a `SignedEnvelope` as a client or a peer
/// node would submit it. It is admitted as it came (the signature almost never verifies), and
/// again signed by the client it claims to be from, so the checks past the signature are reached:
/// from the client itself, and forwarded by a peer node. An admitted message is routed.
pub fn admission(data: &[u8]) {
    let Ok(signed) = pb::SignedEnvelope::decode(data) else {
        return;
    };
    let f = fixture();
    let verified = VerifiedRoots::default();
    let ctx = NodeContext {
        node: "dea-1",
        max_hops: 8,
        max_addressees: 64,
        verified: &verified,
    };
    let _ = admit(signed.clone(), &f.client, Ok(&f.client), &ctx, now());
    let mut resigned = signed.clone();
    resigned.signature = Some(f.signer.sign(&signed.envelope));
    if let Ok(a) = admit(resigned.clone(), &f.client, Ok(&f.client), &ctx, now()) {
        // What a client may send at all: no hops, no route_to, its own name.
        assert!(a.hops.is_empty() && a.route_to.is_empty());
        route(&a.message.addressees, None, &[]);
    }
    let at_pgr = NodeContext {
        node: "pgr-1",
        ..ctx
    };
    if let Ok(a) = admit(resigned, &f.peer, Ok(&f.client), &at_pgr, now()) {
        let hops: Vec<String> = a.hops.iter().map(|h| h.node.clone()).collect();
        route(&a.message.addressees, Some(&a.route_to), &hops);
    }
}

fn route(addressees: &[crate::message::Addressee], from_peer: Option<&[String]>, hops: &[String]) {
    let f = fixture();
    let own = AgencyId::new("dea").expect("an agency id");
    let router = Router {
        agency: &own,
        node: "dea-1",
        directory: &f.directory,
        next_hop: |a: &AgencyId| match a.as_str() {
            "pgr" => Some(NextHop {
                node: "pgr-1",
                relay: false,
            }),
            "afi" => Some(NextHop {
                node: "cenapi-1",
                relay: true,
            }),
            _ => None,
        },
    };
    let arrival = Arrival {
        from_peer,
        hops,
        max_relays: Some(2),
    };
    if let Ok(plan) = router.plan(addressees, arrival) {
        assert!(plan.fan_out() > 0);
    }
}

/// Batch signatures: an arbitrary signature (decoded from `data`) over arbitrary bytes is
/// checked; and a batch signed over the chunks of `data` verifies for each member with its own
/// proof, and not with another member's (unless the two are the same bytes), whether or not the
/// batch's nodes are already known, and a proof changed anywhere fails with the cache as
/// without it.
pub fn batch_proof(data: &[u8]) {
    let f = fixture();
    let (head, rest) = data.split_at(data.len().min(2));
    let split = head.iter().fold(0usize, |n, b| n * 256 + usize::from(*b));
    let (sig, envelope) = rest.split_at(split.min(rest.len()));
    if let Ok(sig) = pb::Signature::decode(sig) {
        let key = f.signer.public_key();
        let _ = verify(envelope, Some(&sig), &[1; 32], Some(key), None);
    }
    let members: Vec<&[u8]> = rest.chunks(rest.len().div_ceil(64).max(1)).collect();
    if members.len() < 2 {
        return;
    }
    let sigs = f.signer.sign_batch(&members);
    let cache = VerifiedRoots::default();
    let key = Some(f.signer.public_key());
    for (i, m) in members.iter().enumerate() {
        assert!(verify(m, Some(&sigs[i]), &[1; 32], key, Some(&cache)).is_ok());
        let j = (i + 1) % members.len();
        if members[j] != *m {
            assert!(verify(m, Some(&sigs[j]), &[1; 32], key, None).is_err());
        }
    }
    // With every node of the batch known, a member still needs its own proof, whole: another
    // member's, or its own with an entry changed, cut or added (picked by the input), gets the
    // same answer as without the cache.
    let pick = data.first().copied().unwrap_or(0) as usize;
    for (i, m) in members.iter().enumerate() {
        let j = (i + 1) % members.len();
        if members[j] != *m {
            assert!(verify(m, Some(&sigs[j]), &[1; 32], key, Some(&cache)).is_err());
        }
        assert!(verify(m, Some(&sigs[i]), &[1; 32], key, Some(&cache)).is_ok());
        for tampered in crate::signature::tampered_proofs(&sigs[i], pick + i) {
            let cached = verify(m, Some(&tampered), &[1; 32], key, Some(&cache));
            let alone = verify(m, Some(&tampered), &[1; 32], key, None);
            assert_eq!(cached, alone);
            assert!(alone.is_err());
        }
    }
}

/// The node config parser: any text yields a config or an error naming a key, never a panic.
pub fn config(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data)
        && let Err((key, _)) = crate::config::Config::parse(text, Path::new("/etc/enlace"))
    {
        assert!(!key.is_empty());
    }
}

/// The policy file parser: any text yields a policy or an error naming a key, never a panic;
/// a policy that loads describes itself, lints, and explains a decision without panicking, and
/// every decision names a rule of the file.
pub fn policy(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let p = match crate::agreement::Policy::parse(text, "p.toml") {
        Ok(p) => p,
        Err((key, _)) => {
            assert!(!key.is_empty());
            return;
        }
    };
    let _ = p.describe();
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_169_600);
    let _ = p.lint(Some(&["dea".to_owned(), "pgr".to_owned()]), now);
    let handling = crate::handling::Handling::default();
    for (from, to) in [("dea", "pgr"), ("pgr", "dea"), ("dea", "dea")] {
        let q = crate::agreement::Question {
            from_agency: from,
            from_client: Some("duty-desk"),
            to_agency: to,
            to_client: Some("analyst"),
            payload_type: "PrecursorChemicalAlert",
            precedence: crate::message::Precedence::Flash,
            handling: &handling,
            now,
        };
        for (_, d) in p.explain(&q) {
            assert_eq!(d.rule.file, "p.toml");
            assert!(!d.rule.id.is_empty());
        }
    }
}

/// Proto3 JSON: the first byte picks a message type. JSON that converts to protobuf bytes
/// converts back to JSON that gives the same bytes; bytes that decode as JSON re-encode too.
pub fn json(data: &[u8]) {
    const TYPES: [&str; 8] = [
        "enlace.v1.PrecursorChemicalAlert",
        "enlace.v1.LiaisonMessage",
        "enlace.v1.Envelope",
        "enlace.v1.Receipt",
        "enlace.v1.BusinessResponse",
        "enlace.v1.CurrencySeizureReport",
        "enlace.v1.MutualLegalAssistanceRequest",
        "enlace.v1.CyberIncident24x7",
    ];
    let Some((pick, rest)) = data.split_first() else {
        return;
    };
    let ty = TYPES[usize::from(*pick) % TYPES.len()];
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(rest)
        && let Ok(bytes) = json::encode_json(ty, &value)
    {
        let back = json::decode_json(ty, &bytes).expect("bytes just encoded decode");
        let again = json::encode_json(ty, &back).expect("decoded JSON encodes");
        assert_eq!(
            json::decode_json(ty, &again).expect("decodes"),
            back,
            "JSON round trip"
        );
    }
    let _ = json::decode_json(ty, rest);
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::draft::Draft;
    use crate::message::{Originator, Precedence};

    type Target = (&'static str, fn(&[u8]));
    const TARGETS: [Target; 6] = [
        ("frames", frames),
        ("admission", admission),
        ("batch_proof", batch_proof),
        ("config", config),
        ("policy", policy),
        ("json", json),
    ];

    fn fuzz_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
    }

    /// Every committed seed and every input that once failed (`fuzz/regressions/<target>/`)
    /// runs clean through its target.
    #[test]
    fn seeds_and_regressions_run_clean() {
        let mut ran = 0;
        for (name, target) in TARGETS {
            for dir in ["seeds", "regressions"] {
                let Ok(entries) = std::fs::read_dir(fuzz_dir().join(dir).join(name)) else {
                    continue;
                };
                for e in entries {
                    let data = std::fs::read(e.unwrap().path()).unwrap();
                    target(&data);
                    ran += 1;
                }
            }
        }
        assert!(ran >= 5, "the seed corpora are missing ({ran} inputs)");
    }

    /// Writes the seed corpora (`cargo test --features fuzzing -- --ignored write_seeds`).
    #[test]
    #[ignore = "writes fuzz/seeds; run by hand when the formats change"]
    fn write_seeds() {
        let write = |target: &str, name: &str, data: &[u8]| {
            let dir = fuzz_dir().join("seeds").join(target);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(name), data).unwrap();
        };
        let f = fixture();
        let o = Originator {
            agency: AgencyId::new("dea").unwrap(),
            node: "dea-1".into(),
            client: Some("duty-desk".into()),
        };
        let alert = Draft::new(&pb::LiaisonMessage::default())
            .to("pgr")
            .to("afi/24x7-desk")
            .precedence(Precedence::Flash)
            .expires_in(Duration::from_secs(600))
            .finish(&o, now());
        let sealed = f.signer.seal(&alert);
        write("admission", "client-alert", &sealed.encode_to_vec());
        let mut forwarded = sealed.clone();
        forwarded.hops = vec![pb::HopRecord {
            node: "dea-1".into(),
            agency: "dea".into(),
            ..Default::default()
        }];
        forwarded.route_to = vec!["afi".into()];
        write("admission", "forwarded", &forwarded.encode_to_vec());
        let bodies = [
            pb::frame::Body::Hello(pb::Hello {
                protocol_version: crate::wire::PROTOCOL_VERSION,
                role: pb::Role::Client as i32,
            }),
            pb::frame::Body::Submit(pb::Submit {
                envelope: Some(sealed),
            }),
            pb::frame::Body::Ack(pb::Ack {
                message_id: bytes::Bytes::from_static(&[7; 16]),
            }),
            pb::frame::Body::Subscribe(pb::Subscribe {
                unit: "24x7-desk".into(),
            }),
        ];
        for (i, b) in bodies.into_iter().enumerate() {
            let f = pb::Frame { body: Some(b) };
            write("frames", &format!("frame-{i}"), &frame::encode(&f));
        }
        let mut batch = vec![0u8, 0];
        batch.extend_from_slice(b"one envelope, another envelope, a third one");
        write("batch_proof", "members", &batch);
        let sig = f
            .signer
            .sign_batch(&[b"a", b"b", b"c"])
            .remove(1)
            .encode_to_vec();
        let mut one = (sig.len() as u16).to_be_bytes().to_vec();
        one.extend_from_slice(&sig);
        one.extend_from_slice(b"b");
        write("batch_proof", "signature", &one);
        let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
        for e in std::fs::read_dir(deploy).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "toml") {
                let name = p.file_name().unwrap().to_string_lossy().into_owned();
                write("config", &name, &std::fs::read(&p).unwrap());
            }
        }
        let alert = serde_json::json!({
            "chemical": {"name": "pseudoephedrine", "casNumber": "90-82-4"},
            "quantity": {"value": 1200.5, "unit": "KILOGRAM"},
            "destination": {"unLocode": "MXZLO"},
        });
        let mut j = vec![0u8];
        j.extend_from_slice(alert.to_string().as_bytes());
        write("json", "alert", &j);
        let mut j = vec![1u8];
        j.extend_from_slice(br#"{"subject":"liaison","body":{"language":"es-MX","text":"hola"}}"#);
        write("json", "liaison", &j);
    }
}
