//! Admission of submitted envelopes: the checks a node makes before it takes responsibility.
//!
//! Sans-I/O: a pure function of the signed envelope, who sent it (from its verified certificate),
//! the node's own identity and the current time. It returns either an [`Admitted`] message or a
//! [`Refusal`] with a code and a reason the sender can act on. Routing is decided elsewhere
//! ([`crate::route`]).

use std::time::SystemTime;

use bytes::Bytes;
use prost::Message;

use crate::identity::{AgencyId, PeerCert, Role};
use crate::message::{MessageId, Precedence, system_time};
use crate::signature;
use crate::wire::pb::{self, RefusalCode};

/// A refusal: a code for programs and a reason for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: RefusalCode,
    pub reason: String,
}

impl Refusal {
    pub fn new(code: RefusalCode, reason: impl Into<String>) -> Refusal {
        Refusal {
            code,
            reason: reason.into(),
        }
    }

    /// The wire form, with the message id when known.
    pub fn to_pb(&self, id: Option<MessageId>) -> pb::Refused {
        pb::Refused {
            code: self.code as i32,
            reason: self.reason.clone(),
            message_id: id.map(MessageId::to_bytes).unwrap_or_default(),
            retry_after_ms: 0,
        }
    }
}

/// A message the node may take responsibility for.
#[derive(Debug, Clone)]
pub struct Admitted {
    pub id: MessageId,
    pub precedence: Precedence,
    pub expires_at: SystemTime,
    /// Addressees (agency name as written, in lowercase: an id or an alias, resolved when the
    /// message is routed; unit), in order, without duplicates.
    pub addressees: Vec<(String, String)>,
    /// The decoded envelope (read-only; the signed bytes are in `signed`).
    pub envelope: pb::Envelope,
    /// The signed envelope as received, with its exact envelope bytes.
    pub signed: pb::SignedEnvelope,
}

/// The node doing the admitting.
pub struct NodeContext<'a> {
    pub agency: &'a AgencyId,
    pub node: &'a str,
    /// Largest hop count the node itself allows, whatever the envelope says.
    pub max_hops: u32,
    /// Batch roots this node has already verified.
    pub verified: &'a signature::VerifiedRoots,
}

/// Checks a submitted envelope.
///
/// From a client: the originator must be the client itself at this node, and the signature must
/// verify against the client's certificate. From a peer node: the envelope must carry a signature
/// (end-to-end verification of originators at relays needs a certificate directory, see
/// ARCHITECTURE.md) and must not exceed its hop limit.
pub fn admit(
    signed: pb::SignedEnvelope,
    sender: &PeerCert,
    node: &NodeContext<'_>,
    now: SystemTime,
) -> Result<Admitted, (Refusal, Option<MessageId>)> {
    let invalid = |reason: String| Refusal::new(RefusalCode::Invalid, reason);
    let env = pb::Envelope::decode(signed.envelope.clone())
        .map_err(|e| (invalid(format!("envelope bytes do not decode: {e}")), None))?;
    let id = MessageId::from_slice(&env.message_id)
        .filter(|id| matches!(id.as_bytes()[6] >> 4, 7 | 8))
        .ok_or_else(|| (invalid("message_id must be a 16-byte UUIDv7".into()), None))?;
    let fail = |r: Refusal| (r, Some(id));

    let originator = env
        .originator
        .as_ref()
        .ok_or_else(|| fail(invalid("originator is missing".into())))?;
    match sender.identity.role {
        Role::Client | Role::Operator => {
            let me = &sender.identity;
            if originator.agency != me.agency.as_str()
                || originator.client != me.name
                || originator.node != node.node
            {
                return Err(fail(Refusal::new(
                    RefusalCode::Unauthorized,
                    format!(
                        "originator {}/{}@{} does not match the sender's certificate {}/{} at node {}",
                        originator.agency,
                        originator.client,
                        originator.node,
                        me.agency,
                        me.name,
                        node.node
                    ),
                )));
            }
            signature::verify(
                &signed.envelope,
                signed.signature.as_ref(),
                &sender.sha256,
                sender.ed25519_public_key.as_deref(),
                Some(node.verified),
            )
            .map_err(|e| fail(invalid(format!("originator signature: {e}"))))?;
        }
        Role::Node => {
            // Only a node's own system messages (reports) have no client.
            let system = env.status() == pb::Status::System;
            if AgencyId::new(&originator.agency).is_err()
                || (originator.client.is_empty() && !system)
            {
                return Err(fail(invalid("originator is incomplete".into())));
            }
            if signed.signature.is_none() {
                return Err(fail(invalid("the envelope is not signed".into())));
            }
        }
    }

    let precedence = Precedence::from_pb(env.precedence())
        .ok_or_else(|| fail(invalid("precedence is missing or unknown".into())))?;
    if env.status() == pb::Status::Unspecified {
        return Err(fail(invalid(
            "status is missing (ACTUAL, EXERCISE, TEST or SYSTEM)".into(),
        )));
    }
    env.created_at
        .as_ref()
        .and_then(system_time)
        .ok_or_else(|| fail(invalid("created_at is missing".into())))?;
    let expires_at = env
        .expires_at
        .as_ref()
        .and_then(system_time)
        .ok_or_else(|| fail(invalid("expires_at is missing".into())))?;
    if expires_at <= now {
        return Err(fail(Refusal::new(
            RefusalCode::Expired,
            "the message expired before the node accepted it",
        )));
    }
    if env.payload_type.is_empty() {
        return Err(fail(invalid("payload_type is missing".into())));
    }
    // Hop records name the nodes passed so far: the originator's node, then relays.
    let relays = (signed.hops.len() as u32).saturating_sub(1);
    if signed.hops.len() as u32 > node.max_hops {
        return Err(fail(Refusal::new(
            RefusalCode::Unauthorized,
            format!(
                "hop limit exceeded: the message has passed {} nodes; this node allows {}",
                signed.hops.len(),
                node.max_hops
            ),
        )));
    }
    if let Some(limit) = env.handling.as_ref().and_then(|h| h.max_hops)
        && relays > limit
    {
        return Err(fail(Refusal::new(
            RefusalCode::Unauthorized,
            format!(
                "the message has passed {relays} relay node(s); its handling policy allows {limit}"
            ),
        )));
    }
    if signed.hops.iter().any(|h| h.node == node.node) {
        let path: Vec<&str> = signed.hops.iter().map(|h| h.node.as_str()).collect();
        return Err(fail(Refusal::new(
            RefusalCode::Unauthorized,
            format!(
                "routing loop: the message has already passed node {} ({} → {})",
                node.node,
                path.join(" → "),
                node.node
            ),
        )));
    }

    let mut addressees: Vec<(String, String)> = Vec::new();
    if env.addressees.is_empty() {
        return Err(fail(invalid("no addressees".into())));
    }
    for a in &env.addressees {
        // Agency names are compared without case ("FGR" is "fgr"); the directory resolves
        // aliases when the message is routed.
        let agency = AgencyId::new(&a.agency.to_ascii_lowercase())
            .map_err(|e| fail(invalid(format!("addressee {:?}: {e}", a.agency))))?
            .to_string();
        if !a.unit.is_empty() && !crate::identity::is_name(&a.unit) {
            return Err(fail(invalid(format!(
                "addressee unit {:?} is not a valid name (lowercase letters, digits, '-')",
                a.unit
            ))));
        }
        let entry = (agency, a.unit.clone());
        if !addressees.contains(&entry) {
            addressees.push(entry);
        }
    }

    Ok(Admitted {
        id,
        precedence,
        expires_at,
        addressees,
        envelope: env,
        signed,
    })
}

/// Encodes an envelope and signs its exact bytes.
pub fn seal(env: &pb::Envelope, signer: &signature::Signer) -> pb::SignedEnvelope {
    let bytes = Bytes::from(env.encode_to_vec());
    pb::SignedEnvelope {
        signature: Some(signer.sign(&bytes)),
        envelope: bytes,
        hops: Vec::new(),
        route_to: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::identity::Identity;
    use crate::message::Draft;

    struct Fixture {
        signer: signature::Signer,
        cert: PeerCert,
        agency: AgencyId,
        now: SystemTime,
        verified: signature::VerifiedRoots,
    }

    fn fixture() -> Fixture {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let signer = signature::Signer::from_pkcs8(pkcs8.as_ref(), [1; 32]).unwrap();
        let cert = PeerCert {
            identity: Identity {
                trust_domain: "enlace.test".into(),
                agency: AgencyId::new("dea").unwrap(),
                role: Role::Client,
                name: "duty-desk".into(),
            },
            serial: "01".into(),
            sha256: [1; 32],
            ed25519_public_key: Some(signer.public_key().to_vec()),
        };
        Fixture {
            signer,
            cert,
            agency: AgencyId::new("dea").unwrap(),
            now: UNIX_EPOCH + Duration::from_secs(1_800_000_000),
            verified: Default::default(),
        }
    }

    fn originator() -> pb::Originator {
        pb::Originator {
            agency: "dea".into(),
            node: "dea-1".into(),
            client: "duty-desk".into(),
        }
    }

    fn draft() -> Draft {
        Draft::from_raw("enlace.v1.LiaisonMessage".into(), Bytes::new())
            .to("pgr")
            .to("afi")
            .to("pgr")
            .precedence(Precedence::Flash)
            .expires_in(Duration::from_secs(60))
    }

    fn run(f: &Fixture, env: &pb::Envelope) -> Result<Admitted, Refusal> {
        let ctx = NodeContext {
            agency: &f.agency,
            node: "dea-1",
            max_hops: 8,
            verified: &f.verified,
        };
        admit(seal(env, &f.signer), &f.cert, &ctx, f.now).map_err(|(r, _)| r)
    }

    #[test]
    fn admits_a_good_envelope_and_dedups_addressees() {
        let f = fixture();
        let a = run(&f, &draft().finish(originator(), f.now)).unwrap();
        assert_eq!(a.precedence, Precedence::Flash);
        assert_eq!(a.addressees.len(), 2);
    }

    #[test]
    fn refuses_spoofed_originator() {
        let f = fixture();
        let mut o = originator();
        o.client = "someone-else".into();
        let r = run(&f, &draft().finish(o, f.now)).unwrap_err();
        assert_eq!(r.code, RefusalCode::Unauthorized);
    }

    #[test]
    fn refuses_expired_and_tampered() {
        let f = fixture();
        let env = draft().finish(originator(), f.now - Duration::from_secs(120));
        assert_eq!(run(&f, &env).unwrap_err().code, RefusalCode::Expired);

        let env = draft().finish(originator(), f.now);
        let mut signed = seal(&env, &f.signer);
        let mut bytes = signed.envelope.to_vec();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        signed.envelope = bytes.into();
        let ctx = NodeContext {
            agency: &f.agency,
            node: "dea-1",
            max_hops: 8,
            verified: &f.verified,
        };
        let (r, _) = admit(signed, &f.cert, &ctx, f.now).unwrap_err();
        assert_eq!(r.code, RefusalCode::Invalid);
    }

    #[test]
    fn refuses_loops_and_too_many_hops() {
        let f = fixture();
        let ctx = NodeContext {
            agency: &f.agency,
            node: "dea-1",
            max_hops: 2,
            verified: &f.verified,
        };
        let hop = |node: &str| pb::HopRecord {
            node: node.into(),
            ..Default::default()
        };
        let with_hops = |hops: &[&str], max_hops: Option<u32>| {
            let mut d = draft();
            if let Some(n) = max_hops {
                d = d.handling(pb::HandlingPolicy {
                    max_hops: Some(n),
                    ..Default::default()
                });
            }
            let mut s = seal(&d.finish(originator(), f.now), &f.signer);
            s.hops = hops.iter().map(|n| hop(n)).collect();
            admit(s, &f.cert, &ctx, f.now).map_err(|(r, _)| r)
        };
        let r = with_hops(&["cenapi-1", "dea-1"], None).unwrap_err();
        assert_eq!(r.code, RefusalCode::Unauthorized);
        assert!(r.reason.contains("routing loop"), "{}", r.reason);
        let r = with_hops(&["pgr-1", "cenapi-1", "afi-1"], None).unwrap_err();
        assert!(r.reason.contains("hop limit exceeded"), "{}", r.reason);
        // Two nodes passed: the originator's and one relay.
        let r = with_hops(&["pgr-1", "cenapi-1"], Some(0)).unwrap_err();
        assert!(r.reason.contains("allows 0"), "{}", r.reason);
        assert!(with_hops(&["pgr-1", "cenapi-1"], Some(1)).is_ok());
    }

    #[test]
    fn refuses_missing_fields() {
        let f = fixture();
        let mut env = draft().finish(originator(), f.now);
        env.addressees.clear();
        assert!(run(&f, &env).unwrap_err().reason.contains("no addressees"));
        let mut env = draft().finish(originator(), f.now);
        env.precedence = 0;
        assert!(run(&f, &env).unwrap_err().reason.contains("precedence"));
        let mut env = draft().finish(originator(), f.now);
        env.message_id = Bytes::from_static(b"short");
        assert!(run(&f, &env).unwrap_err().reason.contains("UUIDv7"));
    }
}
