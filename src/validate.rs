//! Admission of submitted envelopes: the checks a node makes before it takes responsibility.
//!
//! Sans-I/O: a pure function of the signed envelope, who sent it (from its verified certificate),
//! the node's own identity and the current time. The envelope's structure is checked once, by
//! [`Message::parse`]; this module adds what depends on the sender and the node: the originator
//! named in the envelope against the sender's certificate, the signature, expiry, hop limits and
//! loops. It returns an [`Admitted`] message or a [`Refusal`] with a code and a reason the sender
//! can act on. Routing is decided elsewhere ([`crate::route`]).

use std::sync::Arc;
use std::time::SystemTime;

use crate::identity::{PeerCert, Role};
use crate::message::{Message, MessageId, Status, clip};
use crate::receipt;
use crate::refusal::Refusal;
use crate::signature;
use crate::signers::SignerError;
use crate::wire::pb::{self, RefusalCode};

/// A message the node may take responsibility for, with what the previous hop added to it.
#[derive(Debug, Clone)]
pub(crate) struct Admitted {
    pub message: Arc<Message>,
    /// Hop records of the nodes it passed so far (oldest first; empty from a client).
    pub hops: Vec<pb::HopRecord>,
    /// From a peer: the agencies its copy is for at this node.
    pub route_to: Vec<String>,
    /// The signer's certificate chain (leaf first), carried with every copy; set by the caller
    /// (the client's handshake chain, or the verified chain a peer's envelope carried).
    pub signer_chain: Arc<[bytes::Bytes]>,
}

/// The node doing the admitting.
pub(crate) struct NodeContext<'a> {
    pub node: &'a str,
    /// Largest hop count the node itself allows, whatever the envelope says.
    pub max_hops: u32,
    /// Most addressees an envelope may name here.
    pub max_addressees: usize,
    /// Batch roots this node has already verified.
    pub verified: &'a signature::VerifiedRoots,
}

/// Checks a submitted envelope.
///
/// Whoever sent it, the originator's signature must verify over the exact bytes against the
/// signer's certificate (`signer`: from a client, the client's own, which is `sender`; from a
/// peer node, the chain the envelope carries, verified by the caller, or why it did not verify),
/// and the signer must be the
/// originator: a client of the originator's agency with the originator's name, or for SYSTEM
/// traffic (receipts, reports) the originating node itself; a node originates nothing else.
/// From a client: the originator must be the client itself at this node; it may not send SYSTEM
/// traffic, control payloads, hop records or `route_to`. From a peer: the last hop record must
/// be the peer's. For everyone: control payloads must name their sender honestly (see
/// [`receipt::check_control`]), and expiry, hop limits and loops are checked.
pub(crate) fn admit(
    signed: pb::SignedEnvelope,
    sender: &PeerCert,
    signer: Result<&PeerCert, SignerError>,
    node: &NodeContext<'_>,
    now: SystemTime,
) -> Result<Admitted, (Refusal, Option<MessageId>)> {
    let pb::SignedEnvelope {
        envelope,
        signature,
        hops,
        route_to,
        signer_chain,
    } = signed;
    let message = Message::parse(envelope, signature)?;
    let id = message.id;
    let fail = |r: Refusal| (r, Some(id));
    if message.addressees.len() > node.max_addressees {
        return Err(fail(Refusal::new(
            RefusalCode::Limit,
            format!(
                "the envelope names {} addressees; this node accepts at most {} \
                 (limits.max_addressees): split it",
                message.addressees.len(),
                node.max_addressees
            ),
        )));
    }
    let deny = |reason: String| fail(Refusal::new(RefusalCode::Unauthorized, reason));
    let originator = &message.originator;
    let signer = match sender.identity.role {
        Role::Client | Role::Operator => {
            let me = &sender.identity;
            if originator.agency != me.agency
                || originator.client.as_deref() != Some(me.name.as_str())
                || originator.node != node.node
            {
                return Err(deny(format!(
                    "originator {}/{}@{} does not match the sender's certificate {}/{} at node {}",
                    originator.agency,
                    originator.client.as_deref().unwrap_or(""),
                    originator.node,
                    me.agency,
                    me.name,
                    node.node
                )));
            }
            if message.status == Status::System {
                return Err(deny("only nodes send SYSTEM traffic".into()));
            }
            if receipt::is_node_control(&message) {
                return Err(deny(format!(
                    "only nodes send {} payloads",
                    message.payload_type
                )));
            }
            if !hops.is_empty() || !route_to.is_empty() {
                return Err(fail(Refusal::invalid(
                    "clients cannot set hop records or route_to; nodes add them",
                )));
            }
            sender
        }
        Role::Node => {
            let last = hops.last();
            if last.is_none_or(|h| {
                h.node != sender.identity.name || h.agency != sender.identity.agency.as_str()
            }) {
                return Err(deny(format!(
                    "the last hop record must be the sending node's ({}), not {}",
                    sender.identity.name,
                    last.map_or("missing".into(), |h| clip(&h.node))
                )));
            }
            // The path starts where the message entered the federation.
            let first = &hops[0];
            if first.node != originator.node || first.agency != originator.agency.as_str() {
                return Err(deny(format!(
                    "the first hop record must be the originator's node ({}/{}), not {}/{}",
                    originator.agency,
                    originator.node,
                    clip(&first.agency),
                    clip(&first.node)
                )));
            }
            signer.map_err(|e| {
                let code = match (e.revoked, e.unknown) {
                    (true, _) => RefusalCode::Revoked,
                    (false, true) => RefusalCode::ChainNeeded,
                    (false, false) => RefusalCode::Invalid,
                };
                fail(Refusal::new(code, format!("originator signature: {e}")))
            })?
        }
    };
    signed_by_originator(&message, signer).map_err(deny)?;
    signature::verify(
        &message.envelope,
        message.signature.as_ref(),
        &signer.sha256,
        signer.ed25519_public_key.as_deref(),
        Some(node.verified),
    )
    .map_err(|e| fail(Refusal::invalid(format!("originator signature: {e}"))))?;
    receipt::check_control(&message).map_err(deny)?;
    if message.expires_at <= now {
        return Err(fail(Refusal::new(
            RefusalCode::Expired,
            "the message expired before the node accepted it",
        )));
    }
    // Hop records name the nodes passed so far: the originator's node, then relays.
    let relays = (hops.len() as u32).saturating_sub(1);
    if hops.len() as u32 > node.max_hops {
        return Err(fail(Refusal::new(
            RefusalCode::Unauthorized,
            format!(
                "hop limit exceeded: the message has passed {} nodes; this node allows {}",
                hops.len(),
                node.max_hops
            ),
        )));
    }
    if let Some(limit) = message.handling.max_relays
        && relays > limit
    {
        return Err(fail(Refusal::new(
            RefusalCode::Unauthorized,
            format!(
                "the message has passed {relays} relay node(s); its handling policy allows {limit}"
            ),
        )));
    }
    if hops.iter().any(|h| h.node == node.node) {
        let path: Vec<&str> = hops.iter().map(|h| h.node.as_str()).collect();
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
    Ok(Admitted {
        message: Arc::new(message),
        hops,
        route_to,
        signer_chain: signer_chain.into(),
    })
}

/// Whether `signer` is the originator of `message`: a client (or operator) of the originator's
/// agency with the originator's name, or, for SYSTEM traffic, the originating node itself.
pub(crate) fn signed_by_originator(message: &Message, signer: &PeerCert) -> Result<(), String> {
    let o = &message.originator;
    let s = &signer.identity;
    let ok = match &o.client {
        Some(client) => {
            matches!(s.role, Role::Client | Role::Operator)
                && s.agency == o.agency
                && &s.name == client
        }
        None => {
            message.status == Status::System
                && s.role == Role::Node
                && s.agency == o.agency
                && s.name == o.node
        }
    };
    if ok {
        Ok(())
    } else if o.client.is_none() && message.status != Status::System {
        Err(format!(
            "node {}/{} originated a message that is not SYSTEM traffic; nodes originate only \
             their own receipts and reports",
            o.agency, o.node
        ))
    } else {
        Err(format!(
            "the envelope claims originator {o} but is signed by {s}; the signer must be the \
             originator"
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use bytes::Bytes;

    use super::*;
    use crate::draft::Draft;
    use crate::identity::{AgencyId, Identity};
    use crate::message::{Originator, Precedence};
    use crate::signature::Signer;

    struct Fixture {
        signer: Signer,
        cert: PeerCert,
        now: SystemTime,
        verified: signature::VerifiedRoots,
    }

    fn fixture() -> Fixture {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let signer = Signer::from_pkcs8(pkcs8.as_ref(), [1; 32]).unwrap();
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
            now: UNIX_EPOCH + Duration::from_secs(1_800_000_000),
            verified: Default::default(),
        }
    }

    fn originator(client: &str) -> Originator {
        Originator {
            agency: AgencyId::new("dea").unwrap(),
            node: "dea-1".into(),
            client: Some(client.into()),
        }
    }

    fn draft() -> Draft {
        Draft::from_raw("enlace.v1.LiaisonMessage", Bytes::new())
            .to("pgr")
            .to("afi")
            .to("pgr")
            .precedence(Precedence::Flash)
            .expires_in(Duration::from_secs(60))
    }

    fn ctx(f: &Fixture, max_hops: u32) -> NodeContext<'_> {
        NodeContext {
            node: "dea-1",
            max_hops,
            max_addressees: 64,
            verified: &f.verified,
        }
    }

    fn run(f: &Fixture, env: &pb::Envelope) -> Result<Admitted, Refusal> {
        admit(f.signer.seal(env), &f.cert, Ok(&f.cert), &ctx(f, 8), f.now).map_err(|(r, _)| r)
    }

    #[test]
    fn admits_a_good_envelope_and_dedups_addressees() {
        let f = fixture();
        let a = run(&f, &draft().finish(&originator("duty-desk"), f.now)).unwrap();
        assert_eq!(a.message.precedence, Precedence::Flash);
        assert_eq!(a.message.addressees.len(), 2);
    }

    #[test]
    fn refuses_spoofed_originator() {
        let f = fixture();
        let r = run(&f, &draft().finish(&originator("someone-else"), f.now)).unwrap_err();
        assert_eq!(r.code, RefusalCode::Unauthorized);
    }

    #[test]
    fn refuses_expired_and_tampered() {
        let f = fixture();
        let env = draft().finish(&originator("duty-desk"), f.now - Duration::from_secs(120));
        assert_eq!(run(&f, &env).unwrap_err().code, RefusalCode::Expired);

        let env = draft().finish(&originator("duty-desk"), f.now);
        let mut signed = f.signer.seal(&env);
        let mut bytes = signed.envelope.to_vec();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        signed.envelope = bytes.into();
        let (r, _) = admit(signed, &f.cert, Ok(&f.cert), &ctx(&f, 8), f.now).unwrap_err();
        assert_eq!(r.code, RefusalCode::Invalid);
    }

    /// A node certificate: `dea-2` is a node of agency `dea`.
    fn node_cert(name: &str) -> PeerCert {
        PeerCert {
            identity: Identity {
                trust_domain: "enlace.test".into(),
                agency: AgencyId::new(name.split('-').next().unwrap()).unwrap(),
                role: Role::Node,
                name: name.into(),
            },
            serial: "02".into(),
            sha256: [2; 32],
            ed25519_public_key: None,
        }
    }

    fn hop(node: &str) -> pb::HopRecord {
        pb::HopRecord {
            node: node.into(),
            agency: node.split('-').next().unwrap().into(),
            ..Default::default()
        }
    }

    /// `signed` as forwarded to `at` along `hops` (the last one sends it), its originator's
    /// chain verified as `signer`.
    fn forwarded(
        f: &Fixture,
        mut signed: pb::SignedEnvelope,
        hops: &[&str],
        signer: Result<&PeerCert, SignerError>,
        at: &str,
        max_hops: u32,
    ) -> Result<Admitted, Refusal> {
        signed.hops = hops.iter().map(|n| hop(n)).collect();
        let peer = node_cert(hops.last().unwrap());
        let ctx = NodeContext {
            node: at,
            max_hops,
            max_addressees: 64,
            verified: &f.verified,
        };
        admit(signed, &peer, signer, &ctx, f.now).map_err(|(r, _)| r)
    }

    #[test]
    fn refuses_loops_and_too_many_hops() {
        let f = fixture();
        let with_hops = |hops: &[&str], max_hops: Option<u32>, node_max: u32| {
            let mut d = draft();
            if let Some(n) = max_hops {
                d = d.handling(pb::HandlingPolicy {
                    max_hops: Some(n),
                    ..Default::default()
                });
            }
            let s = f.signer.seal(&d.finish(&originator("duty-desk"), f.now));
            forwarded(&f, s, hops, Ok(&f.cert), "pgr-1", node_max)
        };
        let r = with_hops(&["dea-1", "pgr-1", "dea-2"], None, 8).unwrap_err();
        assert_eq!(r.code, RefusalCode::Unauthorized);
        assert!(r.reason.contains("routing loop"), "{}", r.reason);
        let r = with_hops(&["dea-1", "dea-3", "dea-4"], None, 2).unwrap_err();
        assert!(r.reason.contains("hop limit exceeded"), "{}", r.reason);
        // Two nodes passed: the originator's and one relay.
        let r = with_hops(&["dea-1", "dea-3"], Some(0), 2).unwrap_err();
        assert!(r.reason.contains("allows 0"), "{}", r.reason);
        assert!(with_hops(&["dea-1", "dea-3"], Some(1), 2).is_ok());
    }

    #[test]
    fn a_peer_cannot_claim_another_originator_or_skip_the_path() {
        let f = fixture();
        let good = || {
            f.signer
                .seal(&draft().finish(&originator("duty-desk"), f.now))
        };
        assert!(forwarded(&f, good(), &["dea-1"], Ok(&f.cert), "pgr-1", 8).is_ok());

        // The chain the envelope carried did not verify.
        let r = forwarded(
            &f,
            good(),
            &["dea-1"],
            Err(SignerError::other("unknown CA")),
            "pgr-1",
            8,
        );
        let r = r.unwrap_err();
        assert_eq!(r.code, RefusalCode::Invalid);
        assert!(r.reason.contains("unknown CA"), "{}", r.reason);
        // A signer revoked since the message set out: refused as such, so that the originator's
        // non-delivery report says REVOKED.
        let revoked = SignerError {
            unknown: false,
            revoked: true,
            reason: "invalid peer certificate: Revoked".into(),
        };
        let r = forwarded(&f, good(), &["dea-1"], Err(revoked), "pgr-1", 8).unwrap_err();
        assert_eq!(r.code, RefusalCode::Revoked);

        // Signed by duty-desk, but claiming to come from AFI.
        let mut afi = originator("duty-desk");
        afi.agency = AgencyId::new("afi").unwrap();
        afi.node = "afi-1".into();
        let s = f.signer.seal(&draft().finish(&afi, f.now));
        let r = forwarded(&f, s, &["afi-1"], Ok(&f.cert), "pgr-1", 8).unwrap_err();
        assert_eq!(r.code, RefusalCode::Unauthorized);
        assert!(r.reason.contains("signed by"), "{}", r.reason);

        // The last hop must be the sending peer, the first the originator's node.
        let mut s = good();
        s.hops = vec![hop("dea-1")];
        let ctx = ctx(&f, 8);
        let r = admit(s, &node_cert("afi-1"), Ok(&f.cert), &ctx, f.now).unwrap_err();
        assert!(r.0.reason.contains("last hop record"), "{}", r.0.reason);
        let r = forwarded(&f, good(), &["afi-1", "pgr-2"], Ok(&f.cert), "pgr-1", 8);
        let r = r.unwrap_err();
        assert!(r.reason.contains("first hop"), "{}", r.reason);

        // A bad signature is caught past the first node too.
        let mut s = good();
        let mut bytes = s.envelope.to_vec();
        bytes[3] ^= 1;
        s.envelope = bytes.into();
        let r = forwarded(&f, s, &["dea-1"], Ok(&f.cert), "pgr-1", 8);
        assert_eq!(r.unwrap_err().code, RefusalCode::Invalid);
    }

    #[test]
    fn clients_cannot_send_system_traffic_or_set_the_path() {
        let f = fixture();
        let system = draft()
            .status(Status::System)
            .finish(&originator("duty-desk"), f.now);
        let r = run(&f, &system).unwrap_err();
        assert!(r.reason.contains("only nodes send SYSTEM"), "{}", r.reason);

        let mut s = f
            .signer
            .seal(&draft().finish(&originator("duty-desk"), f.now));
        s.hops = vec![hop("cenapi-1")];
        let r = admit(s, &f.cert, Ok(&f.cert), &ctx(&f, 8), f.now).unwrap_err();
        assert!(r.0.reason.contains("hop records"), "{}", r.0.reason);

        let mut s = f
            .signer
            .seal(&draft().finish(&originator("duty-desk"), f.now));
        s.route_to = vec!["afi".into()];
        assert!(admit(s, &f.cert, Ok(&f.cert), &ctx(&f, 8), f.now).is_err());
    }

    #[test]
    fn a_node_originates_only_system_traffic_in_its_own_name() {
        let f = fixture();
        let node = node_cert("dea-1");
        let mut o = originator("x");
        o.client = None;
        let env = draft().finish(&o, f.now);
        let message = Message::parse(Bytes::from(prost::Message::encode_to_vec(&env)), None);
        let message = message.map_err(|(r, _)| r).unwrap();
        let r = signed_by_originator(&message, &node).unwrap_err();
        assert!(r.contains("not SYSTEM traffic"), "{r}");
    }

    #[test]
    fn refuses_missing_fields() {
        let f = fixture();
        let mut env = draft().finish(&originator("duty-desk"), f.now);
        env.addressees.clear();
        assert!(run(&f, &env).unwrap_err().reason.contains("no addressees"));
    }
}
