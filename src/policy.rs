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

/// Who may read a mailbox besides its owner: a client by name, or every client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reader {
    /// The client of this agency with this name.
    Client(String),
    /// Every client of this agency (`role:client`).
    AnyClient,
}

impl Reader {
    /// Parses a `readers` entry: a client name, or `role:client`.
    pub(crate) fn parse(s: &str) -> Result<Reader, String> {
        match s {
            "role:client" => Ok(Reader::AnyClient),
            s if crate::identity::is_name(s) => Ok(Reader::Client(s.to_owned())),
            s => Err(format!(
                "{s:?} is neither a client name (lowercase letters, digits, '-') nor \
                 \"role:client\""
            )),
        }
    }

    fn admits(&self, who: &Identity) -> bool {
        match self {
            Reader::Client(name) => *name == who.name,
            Reader::AnyClient => true,
        }
    }
}

impl std::fmt::Display for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reader::Client(name) => f.write_str(name),
            Reader::AnyClient => f.write_str("role:client"),
        }
    }
}

/// The node's grants of mailbox access (`[inbox] readers` and `[units.<name>] readers`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Readers {
    pub inbox: Vec<Reader>,
    pub units: BTreeMap<String, Vec<Reader>>,
}

impl Readers {
    /// The config key that grants access to `mailbox`.
    fn key(mailbox: &Mailbox) -> String {
        match mailbox {
            Mailbox::Inbox => "[inbox] readers".into(),
            Mailbox::Unit(u) => format!("[units.{u}] readers"),
        }
    }

    fn of(&self, mailbox: &Mailbox) -> &[Reader] {
        match mailbox {
            Mailbox::Inbox => &self.inbox,
            Mailbox::Unit(u) => self.units.get(u.as_str()).map_or(&[], Vec::as_slice),
        }
    }
}

impl Readers {
    /// Everyone who may read `mailbox`: those the config grants it to, and the client it is
    /// named after (a unit is its namesake's own).
    pub(crate) fn potential<'a>(&'a self, mailbox: &'a Mailbox) -> (&'a [Reader], Option<&'a str>) {
        let namesake = match mailbox {
            Mailbox::Inbox => None,
            Mailbox::Unit(u) => Some(u.as_str()),
        };
        (self.of(mailbox), namesake)
    }
}

/// Decides whether `who` may read the mailbox `unit` names ("" for the agency inbox), and by
/// which rule. Deny by default: a client reads its own unit (named as the client) and its own
/// receipts (`receipts-<client>`), plus the mailboxes the node's config grants it by name or to
/// every client; another client's receipts are never granted. Operators read dead letters and
/// logs, not mailboxes; nodes read nothing.
pub(crate) fn may_read(
    who: &Identity,
    unit: &str,
    readers: &Readers,
) -> Result<(Mailbox, String), Refusal> {
    let deny = |reason: String| Refusal::new(RefusalCode::Unauthorized, reason);
    match who.role {
        Role::Node => {
            return Err(deny(format!(
                "{who} is a node; only clients read mailboxes"
            )));
        }
        Role::Operator => {
            return Err(deny(format!(
                "{who} is an operator: operators read dead letters and logs, not mailboxes"
            )));
        }
        Role::Client => {}
    }
    let mailbox = Mailbox::from_wire(unit).map_err(|e| deny(e.to_string()))?;
    if let Mailbox::Unit(u) = &mailbox {
        // Receipts units first: a client named like a colleague's receipts unit does not own
        // it.
        if mailbox == crate::receipt::receipts_mailbox(&who.name) {
            return Ok((mailbox, "own receipts".into()));
        }
        if crate::receipt::is_receipts_mailbox(&mailbox) {
            return Err(deny(format!(
                "{who} may not read {u}: a receipts unit is read by its own client only"
            )));
        }
        if u.as_str() == who.name {
            return Ok((mailbox, "own unit".into()));
        }
    }
    let key = Readers::key(&mailbox);
    match readers.of(&mailbox).iter().find(|r| r.admits(who)) {
        Some(r) => Ok((mailbox, format!("{key} = {r}"))),
        None => Err(deny(format!(
            "{who} may not read {mailbox}: denied by default, as no entry of {key} in the \
             node config names {} or role:client (a client reads its own unit {} and its \
             receipts unit {} without a grant)",
            who.name,
            who.name,
            crate::receipt::receipts_mailbox(&who.name)
        ))),
    }
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
    fn mailboxes_are_read_by_their_owner_and_by_grant_only() {
        let desk = id("dea", Role::Client, "desk");
        let analyst = id("dea", Role::Client, "analyst");
        let none = Readers::default();
        let read = |who: &Identity, unit: &str, r: &Readers| {
            may_read(who, unit, r).map(|(m, rule)| (m.to_string(), rule))
        };
        // Own unit and own receipts, without a grant.
        assert_eq!(read(&desk, "desk", &none).unwrap().1, "own unit");
        assert_eq!(
            read(&desk, "receipts-desk", &none).unwrap().1,
            "own receipts"
        );
        // Anything else is denied by default, naming the rule to add.
        for unit in ["", "analyst", "24x7-desk"] {
            let r = read(&desk, unit, &none).unwrap_err();
            assert_eq!(r.code, RefusalCode::Unauthorized);
            assert!(r.reason.contains("denied by default"), "{}", r.reason);
        }
        let r = read(&desk, "", &none).unwrap_err();
        assert!(r.reason.contains("[inbox] readers"), "{}", r.reason);

        let grants = Readers {
            inbox: vec![Reader::AnyClient],
            units: BTreeMap::from([("24x7-desk".into(), vec![Reader::Client("desk".into())])]),
        };
        assert_eq!(
            read(&analyst, "", &grants).unwrap(),
            ("(inbox)".into(), "[inbox] readers = role:client".into())
        );
        assert_eq!(
            read(&desk, "24x7-desk", &grants).unwrap().1,
            "[units.24x7-desk] readers = desk"
        );
        let r = read(&analyst, "24x7-desk", &grants).unwrap_err();
        assert!(
            r.reason.contains("[units.24x7-desk] readers"),
            "{}",
            r.reason
        );
        // A colleague's receipts: never, whatever the grants.
        let r = read(&analyst, "receipts-desk", &grants).unwrap_err();
        assert!(r.reason.contains("its own client only"), "{}", r.reason);
        let squatter = id("dea", Role::Client, "receipts-desk");
        assert!(read(&squatter, "receipts-desk", &grants).is_err());
        // Operators and nodes read no mailbox.
        let op = id("dea", Role::Operator, "desk");
        let r = read(&op, "desk", &grants).unwrap_err();
        assert!(
            r.reason.contains("operators read dead letters"),
            "{}",
            r.reason
        );
        assert!(read(&id("dea", Role::Node, "dea-1"), "", &grants).is_err());
        assert!(read(&desk, "Not A Unit", &grants).is_err());
        assert_eq!(Reader::parse("role:client"), Ok(Reader::AnyClient));
        assert!(Reader::parse("role:operator").is_err());
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
