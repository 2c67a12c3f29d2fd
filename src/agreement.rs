//! Exchange agreements and internal rules: a node's policy file, and the decisions made by it.
//!
//! Sans-I/O. [`Policy::load`] reads and validates the TOML file (errors name the key); the
//! decision functions are pure: [`Policy::may_send`] (may this client of the agency send this
//! type at this precedence), [`Policy::may_flow`] (may a message of this type, precedence and
//! handling flow from one agency to another, under which agreement), [`Policy::may_receive`]
//! (may this client be handed this type). Deny by default: anything no rule allows is refused,
//! and every [`Decision`] names the rule that made it (file and rule id, `default-deny` when no
//! rule applied).
//!
//! The file also gives foreign handling codes their meaning ([`Policy::effective`]): a code
//! maps to conditions that the message's own are made at least as strict as.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use serde::Deserialize;

use crate::handling::{Handling, NativeCode, Permission, Tlp};
use crate::message::Precedence;
use crate::policy::Reader;

pub use crate::explain::{Question, day};

/// The package payload type names are in when the file gives a short name.
const PACKAGE: &str = "enlace.v1.";

/// An agreement's `from` or `to` that stands for every agency (laboratory networks).
const ANY: &str = "*";

/// The rule id of a decision no rule made.
pub const DEFAULT_DENY: &str = "default-deny";

/// Why a policy file was refused: the file, the key at fault, what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {key}: {reason}")]
pub struct PolicyError {
    /// The policy file, as its path was given.
    pub file: String,
    /// The key at fault, e.g. `agreements[1].max_precedence`; `(file)` when unreadable.
    pub key: String,
    /// What is wrong with it.
    pub reason: String,
}

/// The rule behind a decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleRef {
    /// The policy file's name (its last path component).
    pub file: String,
    /// The rule's `id`, or [`DEFAULT_DENY`].
    pub id: String,
}

impl fmt::Display for RuleRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.file, self.id)
    }
}

/// What a policy decided, by which rule, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Whether it is allowed.
    pub allowed: bool,
    /// The rule that decided.
    pub rule: RuleRef,
    /// Why, in words: what the rule allows, or what it would take.
    pub reason: String,
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = if self.allowed { "allowed" } else { "denied" };
        write!(f, "{verdict} by {}: {}", self.rule, self.reason)
    }
}

/// Payload types a rule covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Types {
    /// `"*"`: every type.
    Any,
    /// These fully qualified names.
    Only(BTreeSet<String>),
}

impl Types {
    fn covers(&self, payload_type: &str) -> bool {
        match self {
            Types::Any => true,
            Types::Only(t) => t.contains(payload_type),
        }
    }

    fn names(&self) -> Vec<&str> {
        match self {
            Types::Any => vec!["*"],
            Types::Only(t) => t.iter().map(String::as_str).collect(),
        }
    }

    fn overlaps(&self, other: &Types) -> bool {
        match (self, other) {
            (Types::Any, _) | (_, Types::Any) => true,
            (Types::Only(a), Types::Only(b)) => !a.is_disjoint(b),
        }
    }

    fn contains_all(&self, other: &Types) -> bool {
        match (self, other) {
            (Types::Any, _) => true,
            (Types::Only(_), Types::Any) => false,
            (Types::Only(a), Types::Only(b)) => b.is_subset(a),
        }
    }
}

/// The legal basis of an agreement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegalBasis {
    pub(crate) text: String,
    pub(crate) reference: String,
}

/// An exchange agreement: what may flow from one agency to another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agreement {
    pub(crate) id: String,
    pub(crate) from: String,
    pub(crate) to: String,
    pub(crate) types: Types,
    pub(crate) max_precedence: Precedence,
    /// The most permissive label a message may carry to `to` (e.g. AMBER: nothing GREEN or
    /// CLEAR, which the recipient could pass on to the community).
    pub(crate) most_permissive: Tlp,
    pub(crate) legal_basis: LegalBasis,
    /// Start of the first day it is in force (UTC), if it says.
    pub(crate) valid_from: Option<SystemTime>,
    /// End of the last day it is in force (UTC), if it says.
    pub(crate) valid_until: Option<SystemTime>,
    /// `valid_from` and `valid_until` as the file wrote them.
    pub(crate) dates: (Option<String>, Option<String>),
}

impl Agreement {
    /// Whether it governs traffic from `from` to `to`.
    fn between(&self, from: &str, to: &str) -> bool {
        (self.from == ANY || self.from == from) && (self.to == ANY || self.to == to)
    }

    fn in_force(&self, now: SystemTime) -> Result<(), String> {
        if let Some(from) = self.valid_from
            && now < from
        {
            return Err(format!(
                "agreement {} is in force from {} only",
                self.id,
                self.dates.0.as_deref().unwrap_or("?")
            ));
        }
        if let Some(until) = self.valid_until
            && now >= until
        {
            return Err(format!(
                "agreement {} expired at the end of {}",
                self.id,
                self.dates.1.as_deref().unwrap_or("?")
            ));
        }
        Ok(())
    }
}

/// Which clients of the agency may send which types at up to which precedence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendRule {
    pub(crate) id: String,
    pub(crate) clients: Vec<Reader>,
    pub(crate) types: Types,
    pub(crate) max_precedence: Precedence,
}

/// Which clients of the agency may be handed which types.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiveRule {
    pub(crate) id: String,
    pub(crate) clients: Vec<Reader>,
    pub(crate) types: Types,
}

/// A node's policy: its agreements, internal rules and table of foreign handling codes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// The file's name, as decisions cite it.
    pub(crate) file: String,
    /// The agency whose policy this is (`[policy] agency`), checked against the node's.
    pub(crate) agency: Option<String>,
    /// Agencies this agency must inform: its TLP:AMBER circle for derived products.
    pub(crate) must_inform: Vec<String>,
    pub(crate) agreements: Vec<Agreement>,
    pub(crate) send: Vec<SendRule>,
    pub(crate) receive: Vec<ReceiveRule>,
    /// What each foreign code means here.
    pub(crate) native: BTreeMap<NativeCode, Handling>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    #[serde(default)]
    policy: RawHeader,
    #[serde(default)]
    agreements: Vec<RawAgreement>,
    #[serde(default)]
    send: Vec<RawSend>,
    #[serde(default)]
    receive: Vec<RawReceive>,
    #[serde(default)]
    native_codes: BTreeMap<String, BTreeMap<String, RawCode>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawHeader {
    agency: Option<String>,
    #[serde(default)]
    must_inform: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgreement {
    id: String,
    from: String,
    to: String,
    payload_types: Vec<String>,
    max_precedence: String,
    most_permissive_tlp: Option<String>,
    legal_basis: RawLegalBasis,
    valid_from: Option<String>,
    valid_until: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLegalBasis {
    text: String,
    reference: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSend {
    id: String,
    clients: Vec<String>,
    payload_types: Vec<String>,
    max_precedence: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReceive {
    id: String,
    clients: Vec<String>,
    payload_types: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCode {
    tlp: Option<String>,
    onward_dissemination: Option<String>,
    judicial_use: Option<String>,
    operational_action: Option<String>,
}

impl Policy {
    /// The policy of a node that has no policy file: nothing is allowed.
    pub fn deny_all(file: &str) -> Policy {
        Policy {
            file: file.to_owned(),
            agency: None,
            must_inform: Vec::new(),
            agreements: Vec::new(),
            send: Vec::new(),
            receive: Vec::new(),
            native: BTreeMap::new(),
        }
    }

    /// Reads and validates a policy file.
    ///
    /// # Errors
    /// [`PolicyError`] naming the file, the key and what is wrong.
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| PolicyError {
            file: file.clone(),
            key: "(file)".into(),
            reason: e.to_string(),
        })?;
        let name = path
            .file_name()
            .map_or_else(|| file.clone(), |n| n.to_string_lossy().into_owned());
        Policy::parse(&text, &name).map_err(|(key, reason)| PolicyError { file, key, reason })
    }

    /// Parses and validates policy text; `file` is the name decisions cite.
    pub(crate) fn parse(text: &str, file: &str) -> Result<Policy, (String, String)> {
        let raw: RawPolicy = toml::from_str(text).map_err(|e| {
            let key = e
                .span()
                .map(|s| crate::config::describe_location(text, s.start))
                .unwrap_or_else(|| "(document)".into());
            (key, e.message().to_owned())
        })?;
        let err = |key: String, reason: String| (key, reason);
        let name = |key: String, v: &str| {
            if crate::identity::is_name(v) {
                Ok(v.to_owned())
            } else {
                Err(err(
                    key,
                    format!("{v:?} is not an agency id (lowercase letters, digits, '-')"),
                ))
            }
        };
        let precedence = |key: String, v: &str| {
            v.parse::<Precedence>().map_err(|_| {
                err(
                    key,
                    format!(
                        "{v:?} is not a precedence (FLASH, IMMEDIATE, PRIORITY, ROUTINE, BULK)"
                    ),
                )
            })
        };
        let tlp = |key: String, v: &str| {
            Tlp::parse(v).ok_or_else(|| {
                err(
                    key,
                    format!("{v:?} is not a TLP label (RED, AMBER+STRICT, AMBER, GREEN, CLEAR)"),
                )
            })
        };
        let permission = |key: String, v: &str| {
            Permission::parse(v).ok_or_else(|| {
                err(
                    key,
                    format!("{v:?} is not a permission (allowed, consent, denied)"),
                )
            })
        };
        let clients = |key: String, v: &[String]| {
            if v.is_empty() {
                return Err(err(
                    key,
                    "names no client (a name, or \"role:client\")".into(),
                ));
            }
            v.iter()
                .enumerate()
                .map(|(i, c)| Reader::parse(c).map_err(|r| err(format!("{key}[{i}]"), r)))
                .collect::<Result<Vec<_>, _>>()
        };
        let mut ids = BTreeSet::new();
        let mut unique = |key: String, id: &str| {
            if !crate::identity::is_name(id) {
                return Err(err(
                    key,
                    format!("{id:?} is not a rule id (lowercase letters, digits, '-')"),
                ));
            }
            if !ids.insert(id.to_owned()) {
                return Err(err(key, format!("rule id {id:?} is used twice")));
            }
            Ok(id.to_owned())
        };

        let agency = match &raw.policy.agency {
            Some(a) => Some(name("policy.agency".into(), a)?),
            None => None,
        };
        let must_inform = raw
            .policy
            .must_inform
            .iter()
            .enumerate()
            .map(|(i, a)| name(format!("policy.must_inform[{i}]"), a))
            .collect::<Result<_, _>>()?;

        let mut agreements = Vec::new();
        for (i, a) in raw.agreements.iter().enumerate() {
            let k = |f: &str| format!("agreements[{i}].{f}");
            let party = |key: String, v: &str| match v {
                ANY => Ok(ANY.to_owned()),
                v => name(key, v),
            };
            let from = party(k("from"), &a.from)?;
            let to = party(k("to"), &a.to)?;
            if from == to && from != ANY {
                return Err(err(
                    k("to"),
                    format!(
                        "an agreement is between two agencies, not {from} and itself (use [[send]] rules)"
                    ),
                ));
            }
            if a.legal_basis.text.trim().is_empty() || a.legal_basis.reference.trim().is_empty() {
                return Err(err(
                    k("legal_basis"),
                    "needs both text and reference: the basis every exchange under it relies on"
                        .into(),
                ));
            }
            let valid_from = match &a.valid_from {
                Some(d) => Some(date(d).map_err(|r| err(k("valid_from"), r))?),
                None => None,
            };
            let valid_until = match &a.valid_until {
                Some(d) => Some(
                    date(d).map_err(|r| err(k("valid_until"), r))? + Duration::from_secs(86_400),
                ),
                None => None,
            };
            if let (Some(f), Some(u)) = (valid_from, valid_until)
                && u <= f
            {
                return Err(err(k("valid_until"), "is before valid_from".into()));
            }
            agreements.push(Agreement {
                id: unique(k("id"), &a.id)?,
                from,
                to,
                types: types(&k("payload_types"), &a.payload_types)?,
                max_precedence: precedence(k("max_precedence"), &a.max_precedence)?,
                most_permissive: match &a.most_permissive_tlp {
                    Some(t) => tlp(k("most_permissive_tlp"), t)?,
                    None => Tlp::Clear,
                },
                legal_basis: LegalBasis {
                    text: a.legal_basis.text.clone(),
                    reference: a.legal_basis.reference.clone(),
                },
                valid_from,
                valid_until,
                dates: (a.valid_from.clone(), a.valid_until.clone()),
            });
        }
        let mut send = Vec::new();
        for (i, s) in raw.send.iter().enumerate() {
            let k = |f: &str| format!("send[{i}].{f}");
            send.push(SendRule {
                id: unique(k("id"), &s.id)?,
                clients: clients(k("clients"), &s.clients)?,
                types: types(&k("payload_types"), &s.payload_types)?,
                max_precedence: precedence(k("max_precedence"), &s.max_precedence)?,
            });
        }
        let mut receive = Vec::new();
        for (i, r) in raw.receive.iter().enumerate() {
            let k = |f: &str| format!("receive[{i}].{f}");
            receive.push(ReceiveRule {
                id: unique(k("id"), &r.id)?,
                clients: clients(k("clients"), &r.clients)?,
                types: types(&k("payload_types"), &r.payload_types)?,
            });
        }
        let mut native = BTreeMap::new();
        for (scheme, codes) in &raw.native_codes {
            for (code, c) in codes {
                let k = |f: &str| format!("native_codes.{scheme}.{code}.{f}");
                let base = Handling::default();
                let h = Handling {
                    tlp: match &c.tlp {
                        Some(t) => tlp(k("tlp"), t)?,
                        None => Tlp::Clear,
                    },
                    onward: opt(&c.onward_dissemination, |v| {
                        permission(k("onward_dissemination"), v)
                    })?,
                    judicial: opt(&c.judicial_use, |v| permission(k("judicial_use"), v))?,
                    operational: opt(&c.operational_action, |v| {
                        permission(k("operational_action"), v)
                    })?,
                    ..base
                };
                native.insert(
                    NativeCode {
                        scheme: scheme.to_ascii_lowercase(),
                        code: code.to_ascii_lowercase(),
                    },
                    h,
                );
            }
        }
        Ok(Policy {
            file: file.to_owned(),
            agency,
            must_inform,
            agreements,
            send,
            receive,
            native,
        })
    }

    fn rule(&self, id: &str) -> RuleRef {
        RuleRef {
            file: self.file.clone(),
            id: id.to_owned(),
        }
    }

    fn allow(&self, id: &str, reason: String) -> Decision {
        Decision {
            allowed: true,
            rule: self.rule(id),
            reason,
        }
    }

    fn deny(&self, id: &str, reason: String) -> Decision {
        Decision {
            allowed: false,
            rule: self.rule(id),
            reason,
        }
    }

    /// A message's conditions made at least as strict as what its foreign codes mean here.
    /// Codes this file does not know change nothing (they still travel with the message).
    pub fn effective(&self, handling: &Handling) -> Handling {
        handling
            .native
            .iter()
            .filter_map(|c| self.native.get(c))
            .fold(handling.clone(), |h, meaning| {
                let mut stricter = h.strictest(meaning);
                stricter.purpose = h.purpose.clone();
                stricter
            })
    }

    /// [`Policy::may_send`] for a node's hot path: nothing is formatted unless it is denied.
    pub(crate) fn check_send(
        &self,
        client: &str,
        payload_type: &str,
        precedence: Precedence,
    ) -> Result<(), Decision> {
        let allowed = self.send.iter().any(|r| {
            precedence <= r.max_precedence
                && r.types.covers(payload_type)
                && admits(&r.clients, client)
        });
        if allowed {
            Ok(())
        } else {
            Err(self.may_send(client, payload_type, precedence))
        }
    }

    /// [`Policy::may_receive`] for a node's hot path (each copy a reader is offered).
    pub(crate) fn allows_receive(&self, client: &str, payload_type: &str) -> bool {
        self.receive
            .iter()
            .any(|r| r.types.covers(payload_type) && admits(&r.clients, client))
    }

    /// [`Policy::may_flow`] for a node's hot path: nothing is formatted unless it is denied.
    pub(crate) fn check_flow(
        &self,
        from: &str,
        to: &str,
        payload_type: &str,
        precedence: Precedence,
        handling: &Handling,
        now: SystemTime,
    ) -> Result<(), Decision> {
        let allowed = from == to
            || self.agreements.iter().any(|a| {
                a.between(from, to)
                    && precedence <= a.max_precedence
                    && handling.tlp <= a.most_permissive
                    && a.types.covers(payload_type)
                    && a.in_force(now).is_ok()
            });
        if allowed {
            Ok(())
        } else {
            Err(self.may_flow(from, to, payload_type, precedence, handling, now))
        }
    }

    /// May `client` (a client of this agency) send `payload_type` at `precedence`?
    pub fn may_send(&self, client: &str, payload_type: &str, precedence: Precedence) -> Decision {
        let mine: Vec<&SendRule> = self
            .send
            .iter()
            .filter(|r| admits(&r.clients, client) && r.types.covers(payload_type))
            .collect();
        if let Some(r) = mine.iter().find(|r| precedence <= r.max_precedence) {
            return self.allow(
                &r.id,
                format!(
                    "{client} may send {payload_type} up to {}",
                    r.max_precedence
                ),
            );
        }
        match mine.iter().max_by_key(|r| r.max_precedence) {
            Some(r) => self.deny(
                &r.id,
                format!(
                    "{client} may send {payload_type} at {} at most, not {precedence}",
                    r.max_precedence
                ),
            ),
            None => self.deny(
                DEFAULT_DENY,
                format!("no [[send]] rule lets {client} send {payload_type}"),
            ),
        }
    }

    /// May `client` (a client of this agency) be handed `payload_type`?
    pub fn may_receive(&self, client: &str, payload_type: &str) -> Decision {
        match self
            .receive
            .iter()
            .find(|r| admits(&r.clients, client) && r.types.covers(payload_type))
        {
            Some(r) => self.allow(&r.id, format!("{client} may receive {payload_type}")),
            None => self.deny(
                DEFAULT_DENY,
                format!("no [[receive]] rule lets {client} receive {payload_type}"),
            ),
        }
    }

    /// May a copy of `payload_type` wait in a mailbox that `readers` may read: may at least
    /// one of them be handed it? (`role:client` stands for any client the rules name.)
    /// `Err` names the default rule and who may read the mailbox.
    pub(crate) fn receivable(
        &self,
        mailbox: &dyn fmt::Display,
        (readers, namesake): (&[Reader], Option<&str>),
        payload_type: &str,
    ) -> Result<(), Decision> {
        let rule = self.receive.iter().find(|r| {
            r.types.covers(payload_type)
                && (readers.iter().any(|who| match who {
                    Reader::AnyClient => true,
                    Reader::Client(name) => admits(&r.clients, name),
                }) || namesake.is_some_and(|n| admits(&r.clients, n)))
        });
        match rule {
            Some(_) => Ok(()),
            None => Err({
                let names: Vec<String> = readers
                    .iter()
                    .map(ToString::to_string)
                    .chain(namesake.map(str::to_owned))
                    .collect();
                self.deny(
                    DEFAULT_DENY,
                    format!(
                        "no [[receive]] rule lets a reader of {mailbox} ({}) receive \
                         {payload_type}",
                        if names.is_empty() {
                            "nobody may read it".to_owned()
                        } else {
                            names.join(", ")
                        }
                    ),
                )
            }),
        }
    }

    /// May a message of `payload_type` at `precedence` with (effective) `handling` flow from
    /// agency `from` to agency `to` at `now`? Within one agency, yes (the `[[send]]` rules
    /// govern that); between two, only under an agreement in force that covers the type, the
    /// precedence and the label.
    pub fn may_flow(
        &self,
        from: &str,
        to: &str,
        payload_type: &str,
        precedence: Precedence,
        handling: &Handling,
        now: SystemTime,
    ) -> Decision {
        if from == to {
            return self.allow("internal", format!("within agency {from}"));
        }
        let pair: Vec<&Agreement> = self
            .agreements
            .iter()
            .filter(|a| a.between(from, to) && a.types.covers(payload_type))
            .collect();
        let mut refusal = None;
        for a in &pair {
            let why = if let Err(why) = a.in_force(now) {
                why
            } else if precedence > a.max_precedence {
                format!(
                    "agreement {} allows {payload_type} from {from} to {to} at {} at most, \
                     not {precedence}",
                    a.id, a.max_precedence
                )
            } else if handling.tlp > a.most_permissive {
                format!(
                    "agreement {} allows nothing more permissive than {} to {to}; the message \
                     is {}",
                    a.id, a.most_permissive, handling.tlp
                )
            } else {
                return self.allow(
                    &a.id,
                    format!(
                        "{payload_type} from {from} to {to} under {} ({})",
                        a.legal_basis.reference, a.legal_basis.text
                    ),
                );
            };
            // Name the agreement that came closest: one in force over one that is not.
            let closer = refusal
                .as_ref()
                .is_none_or(|(_, _, in_force)| !in_force && a.in_force(now).is_ok());
            if closer {
                refusal = Some((a.id.clone(), why, a.in_force(now).is_ok()));
            }
        }
        match refusal {
            Some((id, why, _)) => self.deny(&id, why),
            None => self.deny(
                DEFAULT_DENY,
                format!("no agreement lets {payload_type} flow from {from} to {to}"),
            ),
        }
    }

    /// Whether `a` and `b` have an agreement in force either way: the community TLP:GREEN
    /// may reach.
    pub fn partners(&self, a: &str, b: &str, now: SystemTime) -> bool {
        self.agreements
            .iter()
            .any(|x| (x.between(a, b) || x.between(b, a)) && x.in_force(now).is_ok())
    }

    /// What someone writing the file should look at: agencies the directory does not know
    /// (`known`, if given), payload types no schema defines, rules a previous rule makes
    /// pointless, agreements overlapping with different terms, and agreements not in force.
    pub fn lint(&self, known: Option<&[String]>, now: SystemTime) -> Vec<String> {
        let mut out = Vec::new();
        let agency = |key: String, a: &str, out: &mut Vec<String>| {
            if let Some(k) = known
                && !k.iter().any(|x| x == a)
            {
                out.push(format!("{key}: agency {a:?} is not in the directory"));
            }
        };
        if let Some(a) = &self.agency {
            agency("policy.agency".into(), a, &mut out);
        }
        for (i, a) in self.must_inform.iter().enumerate() {
            agency(format!("policy.must_inform[{i}]"), a, &mut out);
        }
        let unknown_types = |key: String, t: &Types, out: &mut Vec<String>| {
            for name in t.names() {
                if name != "*" && crate::wire::json::descriptor(name).is_err() {
                    out.push(format!("{key}: no schema defines payload type {name:?}"));
                }
            }
        };
        for (i, a) in self.agreements.iter().enumerate() {
            let key = format!("agreements[{i}] ({})", a.id);
            for (side, v) in [("from", &a.from), ("to", &a.to)] {
                if v == ANY {
                    out.push(format!(
                        "{key}.{side}: \"*\" stands for every agency: fit for a laboratory, \
                         not for an agreement with a legal basis"
                    ));
                } else {
                    agency(format!("{key}.{side}"), v, &mut out);
                }
            }
            unknown_types(format!("{key}.payload_types"), &a.types, &mut out);
            if let Err(why) = a.in_force(now) {
                out.push(format!("{key}: not in force now: {why}"));
            }
            for b in &self.agreements[..i] {
                if b.from == a.from && b.to == a.to && b.types.overlaps(&a.types) {
                    let same_terms = b.max_precedence == a.max_precedence
                        && b.most_permissive == a.most_permissive;
                    if b.types.contains_all(&a.types)
                        && b.max_precedence >= a.max_precedence
                        && b.most_permissive >= a.most_permissive
                        && b.valid_from == a.valid_from
                        && b.valid_until == a.valid_until
                    {
                        out.push(format!(
                            "{key}: shadowed by {}: everything it allows, that one allows already",
                            b.id
                        ));
                    } else if !same_terms {
                        out.push(format!(
                            "{key}: overlaps {} for some payload types with different terms; the \
                             more permissive one applies",
                            b.id
                        ));
                    }
                }
            }
        }
        for (i, s) in self.send.iter().enumerate() {
            let key = format!("send[{i}] ({})", s.id);
            unknown_types(format!("{key}.payload_types"), &s.types, &mut out);
            for b in &self.send[..i] {
                if covers_clients(&b.clients, &s.clients)
                    && b.types.contains_all(&s.types)
                    && b.max_precedence >= s.max_precedence
                {
                    out.push(format!(
                        "{key}: shadowed by {}: everything it allows, that one allows already",
                        b.id
                    ));
                }
            }
        }
        for (i, r) in self.receive.iter().enumerate() {
            let key = format!("receive[{i}] ({})", r.id);
            unknown_types(format!("{key}.payload_types"), &r.types, &mut out);
            for b in &self.receive[..i] {
                if covers_clients(&b.clients, &r.clients) && b.types.contains_all(&r.types) {
                    out.push(format!(
                        "{key}: shadowed by {}: everything it allows, that one allows already",
                        b.id
                    ));
                }
            }
        }
        out
    }
}

fn opt(
    v: &Option<String>,
    parse: impl Fn(&str) -> Result<Permission, (String, String)>,
) -> Result<Permission, (String, String)> {
    v.as_deref().map_or(Ok(Permission::Allowed), parse)
}

fn admits(clients: &[Reader], client: &str) -> bool {
    clients.iter().any(|r| match r {
        Reader::AnyClient => true,
        Reader::Client(name) => name == client,
    })
}

/// Whether every client `b` names is named by `a` too.
fn covers_clients(a: &[Reader], b: &[Reader]) -> bool {
    a.contains(&Reader::AnyClient) || b.iter().all(|c| a.contains(c))
}

/// A `payload_types` list: `"*"`, or names, short (`PrecursorChemicalAlert`) or fully
/// qualified (`enlace.v1.PrecursorChemicalAlert`).
fn types(key: &str, v: &[String]) -> Result<Types, (String, String)> {
    if v.is_empty() {
        return Err((
            key.to_owned(),
            "names no payload type (\"*\" for every type)".into(),
        ));
    }
    if v.iter().any(|t| t == "*") {
        return if v.len() == 1 {
            Ok(Types::Any)
        } else {
            Err((
                key.to_owned(),
                "\"*\" already covers every type: list it alone".into(),
            ))
        };
    }
    let mut set = BTreeSet::new();
    for (i, t) in v.iter().enumerate() {
        let ok = !t.is_empty()
            && t.split('.')
                .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
        if !ok {
            return Err((
                format!("{key}[{i}]"),
                format!("{t:?} is not a payload type name like PrecursorChemicalAlert"),
            ));
        }
        set.insert(if t.contains('.') {
            t.clone()
        } else {
            format!("{PACKAGE}{t}")
        });
    }
    Ok(Types::Only(set))
}

/// The start (00:00 UTC) of a `YYYY-MM-DD` day.
pub(crate) fn date(s: &str) -> Result<SystemTime, String> {
    let bad = || format!("{s:?} is not a date like 2026-12-31");
    let mut parts = s.split('-');
    let (Some(y), Some(m), Some(d), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    if y.len() != 4 || m.len() != 2 || d.len() != 2 {
        return Err(bad());
    }
    let (y, m, d): (i64, i64, i64) = (
        y.parse().map_err(|_| bad())?,
        m.parse().map_err(|_| bad())?,
        d.parse().map_err(|_| bad())?,
    );
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let days_in = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if !(1970..=9999).contains(&y) || !(1..=12).contains(&m) || d < 1 || d > days_in[m as usize - 1]
    {
        return Err(bad());
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Ok(SystemTime::UNIX_EPOCH + Duration::from_secs(days as u64 * 86_400))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALERT: &str = "enlace.v1.PrecursorChemicalAlert";
    const REPORT: &str = "enlace.v1.AnalyticalReport";

    const FILE: &str = r#"
[policy]
agency = "dea"
must_inform = ["cenapi"]

[[agreements]]
id = "dea-pgr-precursors"
from = "dea"
to = "pgr"
payload_types = ["PrecursorChemicalAlert", "enlace.v1.LiaisonMessage"]
max_precedence = "FLASH"
most_permissive_tlp = "AMBER"
legal_basis = { text = "1988 UN Convention art. 12(10)", reference = "UN-1988-12-10" }
valid_from = "2026-01-01"
valid_until = "2026-12-31"

[[agreements]]
id = "dea-pgr-reports"
from = "dea"
to = "pgr"
payload_types = ["AnalyticalReport"]
max_precedence = "ROUTINE"
legal_basis = { text = "MLAT US-MX", reference = "TIAS 91-503" }

[[send]]
id = "scripts-routine"
clients = ["ingest-script"]
payload_types = ["AnalyticalReport"]
max_precedence = "ROUTINE"

[[send]]
id = "desks-anything"
clients = ["duty-desk", "analyst"]
payload_types = ["*"]
max_precedence = "FLASH"

[[receive]]
id = "everyone-alerts"
clients = ["role:client"]
payload_types = ["PrecursorChemicalAlert"]

[native_codes.europol]
H2 = { tlp = "AMBER+STRICT", onward_dissemination = "consent" }
"#;

    fn at(day: &str) -> SystemTime {
        date(day).unwrap() + Duration::from_secs(3600)
    }

    fn policy() -> Policy {
        Policy::parse(FILE, "dea.policy.toml").unwrap()
    }

    fn tlp(t: Tlp) -> Handling {
        Handling {
            tlp: t,
            ..Handling::default()
        }
    }

    #[test]
    fn dates_are_utc_days() {
        assert_eq!(
            date("1970-01-02").unwrap(),
            SystemTime::UNIX_EPOCH + Duration::from_secs(86_400)
        );
        assert_eq!(
            date("2026-12-02")
                .unwrap()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_secs(),
            1_796_169_600
        );
        for bad in [
            "2026-02-30",
            "2026-13-01",
            "26-01-01",
            "2026-1-01",
            "yesterday",
        ] {
            assert!(date(bad).is_err(), "{bad}");
        }
        assert!(date("2024-02-29").is_ok());
    }

    #[test]
    fn agreements_cap_types_precedence_label_and_dates() {
        let p = policy();
        let now = at("2026-06-01");
        let d = p.may_flow(
            "dea",
            "pgr",
            ALERT,
            Precedence::Flash,
            &tlp(Tlp::Amber),
            now,
        );
        assert!(d.allowed, "{d}");
        assert_eq!(d.rule.to_string(), "dea.policy.toml#dea-pgr-precursors");
        assert!(d.reason.contains("UN-1988-12-10"), "{d}");
        // The label cap: nothing more permissive than AMBER goes to PGR.
        let d = p.may_flow(
            "dea",
            "pgr",
            ALERT,
            Precedence::Flash,
            &tlp(Tlp::Green),
            now,
        );
        assert!(!d.allowed);
        assert_eq!(d.rule.id, "dea-pgr-precursors");
        assert!(d.reason.contains("TLP:AMBER"), "{d}");
        // The precedence cap of another agreement of the same pair.
        let d = p.may_flow(
            "dea",
            "pgr",
            REPORT,
            Precedence::Immediate,
            &tlp(Tlp::Red),
            now,
        );
        assert!(!d.allowed);
        assert_eq!(d.rule.id, "dea-pgr-reports");
        assert!(d.reason.contains("ROUTINE at most"), "{d}");
        assert!(
            p.may_flow("dea", "pgr", REPORT, Precedence::Bulk, &tlp(Tlp::Red), now)
                .allowed
        );
        // Dates: not yet, and no longer, in force.
        for day in ["2025-12-31", "2027-01-01"] {
            let d = p.may_flow(
                "dea",
                "pgr",
                ALERT,
                Precedence::Routine,
                &tlp(Tlp::Red),
                at(day),
            );
            assert!(!d.allowed, "{day}");
            assert_eq!(d.rule.id, "dea-pgr-precursors");
        }
        assert!(
            p.may_flow(
                "dea",
                "pgr",
                ALERT,
                Precedence::Routine,
                &tlp(Tlp::Red),
                at("2026-12-31")
            )
            .allowed,
            "valid_until is the last day in force"
        );
        // Deny by default: no agreement for the type, the reverse direction, another pair.
        for (from, to, t) in [
            ("dea", "pgr", "enlace.v1.FugitiveNotice"),
            ("pgr", "dea", ALERT),
            ("dea", "afi", ALERT),
        ] {
            let d = p.may_flow(from, to, t, Precedence::Routine, &tlp(Tlp::Red), now);
            assert!(!d.allowed);
            assert_eq!(d.rule.id, DEFAULT_DENY, "{from}->{to} {t}");
        }
        // Inside one agency, agreements do not apply.
        assert!(
            p.may_flow(
                "dea",
                "dea",
                ALERT,
                Precedence::Flash,
                &tlp(Tlp::Clear),
                now
            )
            .allowed
        );
        assert!(p.partners("pgr", "dea", now));
        assert!(!p.partners("afi", "dea", now));
    }

    #[test]
    fn send_rules_cap_clients_types_and_precedence() {
        let p = policy();
        let d = p.may_send("ingest-script", REPORT, Precedence::Routine);
        assert!(d.allowed);
        assert_eq!(d.rule.id, "scripts-routine");
        let d = p.may_send("ingest-script", REPORT, Precedence::Flash);
        assert!(!d.allowed);
        assert_eq!(d.rule.id, "scripts-routine");
        assert!(d.reason.contains("ROUTINE at most"), "{d}");
        let d = p.may_send("ingest-script", ALERT, Precedence::Routine);
        assert!(!d.allowed);
        assert_eq!(d.rule.id, DEFAULT_DENY);
        assert!(p.may_send("duty-desk", ALERT, Precedence::Flash).allowed);
        assert!(!p.may_send("someone-else", ALERT, Precedence::Bulk).allowed);
    }

    #[test]
    fn receive_rules_name_clients_and_types() {
        let p = policy();
        assert!(p.may_receive("anyone", ALERT).allowed);
        let d = p.may_receive("anyone", REPORT);
        assert!(!d.allowed);
        assert_eq!(d.rule.id, DEFAULT_DENY);
        let none = Policy::deny_all("(none)");
        assert!(!none.may_receive("anyone", ALERT).allowed);
        assert!(!none.may_send("anyone", ALERT, Precedence::Bulk).allowed);
    }

    #[test]
    fn foreign_codes_make_handling_stricter_through_the_table() {
        let p = policy();
        let h = Handling {
            tlp: Tlp::Green,
            native: vec![
                NativeCode {
                    scheme: "europol".into(),
                    code: "h2".into(),
                },
                NativeCode {
                    scheme: "uk-3x5x2".into(),
                    code: "p".into(),
                },
            ],
            purpose: "interdiction".into(),
            ..Handling::default()
        };
        let e = p.effective(&h);
        assert_eq!(e.tlp, Tlp::AmberStrict);
        assert_eq!(e.onward, Permission::Consent);
        assert_eq!(e.purpose, "interdiction");
        assert_eq!(e.native, h.native, "codes travel unchanged");
        // A code the table does not know changes nothing.
        let plain = Handling {
            native: vec![h.native[1].clone()],
            ..h.clone()
        };
        assert_eq!(p.effective(&plain).tlp, Tlp::Green);
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            (
                "[[agreements]]\nid = \"a\"\nfrom = \"dea\"\nto = \"pgr\"\npayload_types = [\"*\"]\nmax_precedence = \"urgent\"\nlegal_basis = { text = \"t\", reference = \"r\" }\n",
                "agreements[0].max_precedence",
            ),
            (
                "[[agreements]]\nid = \"a\"\nfrom = \"dea\"\nto = \"dea\"\npayload_types = [\"*\"]\nmax_precedence = \"FLASH\"\nlegal_basis = { text = \"t\", reference = \"r\" }\n",
                "agreements[0].to",
            ),
            (
                "[[agreements]]\nid = \"a\"\nfrom = \"dea\"\nto = \"pgr\"\npayload_types = [\"*\"]\nmax_precedence = \"FLASH\"\nlegal_basis = { text = \"t\", reference = \"\" }\n",
                "agreements[0].legal_basis",
            ),
            (
                "[[agreements]]\nid = \"a\"\nfrom = \"dea\"\nto = \"pgr\"\npayload_types = [\"*\"]\nmax_precedence = \"FLASH\"\nlegal_basis = { text = \"t\", reference = \"r\" }\nvalid_until = \"2026-02-30\"\n",
                "agreements[0].valid_until",
            ),
            (
                "[[send]]\nid = \"s\"\nclients = [\"Bad Name\"]\npayload_types = [\"*\"]\nmax_precedence = \"FLASH\"\n",
                "send[0].clients[0]",
            ),
            (
                "[[send]]\nid = \"s\"\nclients = [\"a\"]\npayload_types = [\"*\", \"X\"]\nmax_precedence = \"FLASH\"\n",
                "send[0].payload_types",
            ),
            (
                "[[receive]]\nid = \"s\"\nclients = [\"a\"]\npayload_types = [\"x y\"]\n",
                "receive[0].payload_types[0]",
            ),
            (
                "[[receive]]\nid = \"s\"\nclients = [\"a\"]\npayload_types = [\"*\"]\n[[receive]]\nid = \"s\"\nclients = [\"b\"]\npayload_types = [\"*\"]\n",
                "receive[1].id",
            ),
            (
                "[native_codes.europol]\nH9 = { tlp = \"PURPLE\" }\n",
                "native_codes.europol.H9.tlp",
            ),
        ];
        for (text, key) in cases {
            let (k, reason) = Policy::parse(text, "p.toml").unwrap_err();
            assert_eq!(k, key, "{reason}");
        }
        // Unknown keys are refused, with where they are.
        let (k, reason) =
            Policy::parse("[[send]]\nid = \"s\"\nclient = [\"a\"]\n", "p.toml").unwrap_err();
        assert!(reason.contains("unknown field"), "{k}: {reason}");
        assert!(k.contains("send"), "{k}");
    }

    #[test]
    fn lint_finds_unknown_names_shadowed_rules_and_stale_agreements() {
        let text = format!(
            "{FILE}
[[agreements]]
id = \"dea-pgr-alerts-again\"
from = \"dea\"
to = \"pgr\"
payload_types = [\"PrecursorChemicalAlert\"]
max_precedence = \"PRIORITY\"
most_permissive_tlp = \"RED\"
legal_basis = {{ text = \"t\", reference = \"r\" }}
valid_from = \"2026-01-01\"
valid_until = \"2026-12-31\"

[[agreements]]
id = \"to-nowhere\"
from = \"dea\"
to = \"interpol\"
payload_types = [\"NoSuchThing\"]
max_precedence = \"ROUTINE\"
legal_basis = {{ text = \"t\", reference = \"r\" }}

[[send]]
id = \"scripts-again\"
clients = [\"analyst\"]
payload_types = [\"AnalyticalReport\"]
max_precedence = \"BULK\"
"
        );
        let p = Policy::parse(&text, "p.toml").unwrap();
        let known: Vec<String> = ["dea", "pgr", "afi", "cenapi"].map(String::from).to_vec();
        let lint = p.lint(Some(&known), at("2026-06-01"));
        let has = |needle: &str| lint.iter().any(|l| l.contains(needle));
        assert!(
            has("(dea-pgr-alerts-again): shadowed by dea-pgr-precursors"),
            "{lint:#?}"
        );
        assert!(has("\"interpol\" is not in the directory"), "{lint:#?}");
        assert!(has("payload type \"enlace.v1.NoSuchThing\""), "{lint:#?}");
        assert!(
            has("(scripts-again): shadowed by desks-anything"),
            "{lint:#?}"
        );
        assert!(!has("(dea-pgr-precursors)"), "{lint:#?}");
        let later = p.lint(Some(&known), at("2027-06-01"));
        assert!(
            later.iter().any(|l| l.contains("not in force now")),
            "{later:#?}"
        );
    }

    #[test]
    fn the_deploy_examples_load_and_lint_clean() {
        let known: Vec<String> = ["dea", "pgr", "afi", "cenapi"].map(String::from).to_vec();
        let now = date("2026-12-02").unwrap();
        for (node, agency) in [
            ("dea-1", "dea"),
            ("pgr-1", "pgr"),
            ("afi-1", "afi"),
            ("cenapi-1", "cenapi"),
        ] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("deploy")
                .join(format!("{node}.policy.toml"));
            let policy = Policy::load(&path).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(policy.agency.as_deref(), Some(agency), "{node}");
            let findings = policy.lint(Some(&known), now);
            assert!(findings.is_empty(), "{node}: {findings:#?}");
        }
    }
}
