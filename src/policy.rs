//! Connection authorization: what a verified certificate may do at this node.
//!
//! Sans-I/O and deny by default. The certificate (already verified by rustls and parsed by
//! [`crate::identity`]) decides the role; the `Hello` only states which role the peer means to act
//! in, and a mismatch is refused. Clients and operators are served only by their own agency's
//! node; nodes only if the peer table lists exactly that node of that agency.

use std::collections::BTreeMap;

use crate::address::Mailbox;
use crate::config::Peer;
use crate::identity::{AgencyId, Identity, Role};
use crate::refusal::Refusal;
use crate::wire::PROTOCOL_VERSION;
use crate::wire::pb::{self, RefusalCode};

/// What an authorized connection is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authorized {
    /// A client (or operator) of this node's agency.
    Client,
    /// A peer node from the peer table.
    Peer { node: String },
}

/// Decides whether a connection with this verified identity and `Hello` is served.
pub fn authorize(
    who: &Identity,
    hello: &pb::Hello,
    own_agency: &AgencyId,
    peers: &BTreeMap<String, Peer>,
) -> Result<Authorized, Refusal> {
    let deny = |reason: String| Refusal::new(RefusalCode::Unauthorized, reason);
    if hello.protocol_version != PROTOCOL_VERSION {
        return Err(Refusal::new(
            RefusalCode::UnsupportedVersion,
            format!(
                "protocol version {} is not supported (this node speaks {PROTOCOL_VERSION})",
                hello.protocol_version
            ),
        ));
    }
    let asked = match hello.role() {
        pb::Role::Node => Role::Node,
        pb::Role::Client => Role::Client,
        pb::Role::Operator => Role::Operator,
        pb::Role::Unspecified => return Err(deny("Hello names no role".into())),
    };
    if asked != who.role {
        return Err(deny(format!(
            "certificate of {who} grants role {}, not {asked}",
            who.role
        )));
    }
    match who.role {
        Role::Client | Role::Operator => {
            if &who.agency != own_agency {
                return Err(deny(format!(
                    "this node serves clients of agency {own_agency}; {who} must use its own agency's node"
                )));
            }
            Ok(Authorized::Client)
        }
        Role::Node => match peers.get(&who.name) {
            Some(p) if p.agency == who.agency => Ok(Authorized::Peer {
                node: who.name.clone(),
            }),
            _ => Err(deny(format!("node {who} is not in this node's peer table"))),
        },
    }
}

/// Decides whether a client may read the mailbox `unit` names ("" for the agency inbox) on its
/// connection. Today any client or operator of the node's agency (the only ones it serves) may
/// read any mailbox of it; the unit must be a valid name.
pub(crate) fn may_read(who: &Identity, unit: &str) -> Result<Mailbox, Refusal> {
    if who.role == Role::Node {
        return Err(Refusal::new(
            RefusalCode::Unauthorized,
            format!("{who} is a node; only clients read mailboxes"),
        ));
    }
    Mailbox::from_wire(unit).map_err(|e| Refusal::new(RefusalCode::Unauthorized, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(agency: &str, role: Role, name: &str) -> Identity {
        Identity {
            trust_domain: "enlace.test".into(),
            agency: AgencyId::new(agency).unwrap(),
            role,
            name: name.into(),
        }
    }

    fn hello(role: pb::Role) -> pb::Hello {
        pb::Hello {
            protocol_version: PROTOCOL_VERSION,
            role: role as i32,
        }
    }

    fn peers() -> BTreeMap<String, Peer> {
        let p = Peer {
            node: "pgr-1".into(),
            agency: AgencyId::new("pgr").unwrap(),
            address: "127.0.0.1:1".parse().unwrap(),
            server_name: "pgr-1.pgr.enlace.test".into(),
            serves: vec![AgencyId::new("pgr").unwrap()],
        };
        BTreeMap::from([("pgr-1".to_string(), p)])
    }

    #[test]
    fn own_clients_and_listed_peers_are_served() {
        let dea = AgencyId::new("dea").unwrap();
        let c = authorize(
            &id("dea", Role::Client, "desk"),
            &hello(pb::Role::Client),
            &dea,
            &peers(),
        );
        assert_eq!(c, Ok(Authorized::Client));
        let desk = id("dea", Role::Client, "desk");
        assert_eq!(may_read(&desk, ""), Ok(Mailbox::Inbox));
        assert_eq!(
            may_read(&desk, "analyst"),
            Mailbox::unit("analyst").map_err(|_| unreachable!())
        );
        assert!(may_read(&desk, "Not A Unit").is_err());
        assert!(may_read(&id("pgr", Role::Node, "pgr-1"), "").is_err());
        let n = authorize(
            &id("pgr", Role::Node, "pgr-1"),
            &hello(pb::Role::Node),
            &dea,
            &peers(),
        );
        assert_eq!(
            n,
            Ok(Authorized::Peer {
                node: "pgr-1".into()
            })
        );
    }

    #[test]
    fn everything_else_is_refused() {
        let dea = AgencyId::new("dea").unwrap();
        let cases = [
            (
                id("pgr", Role::Client, "desk"),
                pb::Role::Client,
                "own agency",
            ),
            (
                id("dea", Role::Client, "desk"),
                pb::Role::Node,
                "grants role client",
            ),
            (id("pgr", Role::Node, "pgr-2"), pb::Role::Node, "peer table"),
            (id("afi", Role::Node, "pgr-1"), pb::Role::Node, "peer table"),
            (
                id("dea", Role::Node, "dea-1"),
                pb::Role::Client,
                "grants role node",
            ),
        ];
        for (who, role, why) in cases {
            let r = authorize(&who, &hello(role), &dea, &peers()).unwrap_err();
            assert_eq!(r.code, RefusalCode::Unauthorized);
            assert!(r.reason.contains(why), "{}: {}", who, r.reason);
        }
        let mut h = hello(pb::Role::Client);
        h.protocol_version = 99;
        let r = authorize(&id("dea", Role::Client, "desk"), &h, &dea, &peers()).unwrap_err();
        assert_eq!(r.code, RefusalCode::UnsupportedVersion);
    }
}
