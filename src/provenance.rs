//! Originator control over derived products: what a node remembers of the messages its agency
//! sent or received ([`Provenance`]), and whether a message derived from them may go where it
//! is going ([`Provenance::check_derived`]).
//!
//! Sans-I/O. A message's *restrictions* are its own handling conditions, with its originator
//! and addressees, plus every restriction of the messages it was derived from, through any
//! number of generations: a product inherits the strictest handling of its sources. A
//! restriction that needs its owner's consent for an agency is lifted, for that agency only, by
//! a release: an approving `DisseminationDecision` from the owner's agency, which the node
//! records when it takes the decision for its own agency. Bounded: the node remembers the
//! `capacity` most recent messages and releases; sources it has forgotten (or never saw) are
//! not checked, as their handling is unknown here.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::SystemTime;

use crate::handling::{Handling, Onward, Permission, Scope};
use crate::latest::Latest;
use crate::message::MessageId;

/// Most restrictions one message carries (its own and inherited ones); beyond it, the oldest
/// inherited ones are dropped and the product is refused (see [`Provenance::inherit`]).
pub const MAX_RESTRICTIONS: usize = 64;

/// One source's conditions, as a derived product inherits them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restriction {
    /// The message whose conditions these are.
    pub source: MessageId,
    /// Its originator agency: whose consent a release needs.
    pub owner: String,
    /// Its addressee agencies, who may always get products of it.
    pub addressees: Vec<String>,
    /// Its handling conditions, as the node's policy reads them: only what judging a derived
    /// product uses (see [`Restriction::new`]).
    pub handling: Handling,
}

impl Restriction {
    /// A message's restriction: its addressee agencies once each, and of its (effective)
    /// handling only the label and the permissions. Foreign codes are already folded into
    /// those, and the purpose, erasure time and relay limit play no part in where a product
    /// may go: an originator cannot make the node keep large fields for every message.
    pub fn new(
        source: MessageId,
        owner: &str,
        mut addressees: Vec<String>,
        handling: &Handling,
    ) -> Restriction {
        addressees.sort();
        addressees.dedup();
        Restriction {
            source,
            owner: owner.to_owned(),
            addressees,
            handling: Handling {
                tlp: handling.tlp,
                onward: handling.onward,
                judicial: handling.judicial,
                operational: handling.operational,
                ..Handling::default()
            },
        }
    }
}

/// Most sources one release names (more are ignored), as many as a product may inherit.
pub const MAX_RELEASE_SOURCES: usize = MAX_RESTRICTIONS;
/// Most agencies one release names (more are ignored).
pub const MAX_RELEASE_AGENCIES: usize = 16;
/// Longest purpose a release may be bound to; a decision with a longer one is not recorded.
pub const MAX_RELEASE_PURPOSE: usize = 256;

/// An originator's release of its messages to named agencies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    /// The `DisseminationDecision` message.
    pub decision: MessageId,
    /// The agency that released (the decision's originator).
    pub by: String,
    pub sources: Vec<MessageId>,
    /// Agencies released to.
    pub to: Vec<String>,
    /// Purpose the release is bound to ("" for any).
    pub purpose: String,
    pub valid_until: Option<SystemTime>,
}

/// The agency deriving, and what its policy says about others.
pub struct Deriver<'a> {
    /// The deriving agency (the derived product's originator).
    pub agency: &'a str,
    /// Whether the product is a judicial instrument (a mutual legal assistance request): then
    /// its sources' judicial-use permission applies too.
    pub judicial: bool,
    /// Its TLP:AMBER circle ([`crate::agreement::Policy::must_inform`]).
    pub must_inform: &'a [String],
    /// Whether an agency is of its community (has an agreement with it).
    pub partner: &'a dyn Fn(&str) -> bool,
}

/// Why a derived product may not go somewhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    /// The source whose conditions deny it.
    pub source: MessageId,
    /// That source's originator.
    pub owner: String,
    /// Whether a release by `owner` would lift it.
    pub releasable: bool,
    pub reason: String,
}

/// What is remembered of one message: its own conditions and those it inherited. Most messages
/// inherit nothing, and a sender's messages mostly share their conditions (owner, addressees,
/// handling): the own conditions are shared between the messages that have the same, so a
/// remembered message costs a few dozen bytes rather than several hundred.
#[derive(Debug, Clone)]
struct Known {
    /// Its own restriction, when its first one is (its source is then the message's id, which
    /// the shared value does not carry: see [`Known::restrictions`]).
    own: Option<Arc<Restriction>>,
    /// The others, in order.
    rest: Option<Arc<[Restriction]>>,
}

impl Known {
    /// Its restrictions, as remembered, of message `id`.
    fn restrictions(&self, id: MessageId) -> impl Iterator<Item = Restriction> + '_ {
        let own = self.own.as_ref().map(|r| Restriction {
            source: id,
            ..Restriction::clone(r)
        });
        own.into_iter()
            .chain(self.rest.iter().flat_map(|r| r.iter().cloned()))
    }
}

/// Everything a [`Provenance`] remembered, to write as its journal file ([`Snapshot::write_to`]).
#[derive(Debug)]
pub struct Snapshot {
    messages: Vec<(MessageId, Known)>,
    releases: Vec<Arc<Release>>,
}

impl Snapshot {
    /// Writes it as JSON lines, a line at a time.
    ///
    /// # Errors
    /// What writing to `out` returns.
    pub fn write_to(&self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        let mut line = Vec::new();
        for (id, k) in &self.messages {
            line.clear();
            let rs: Vec<Restriction> = k.restrictions(*id).collect();
            journal::message(&mut line, *id, &rs);
            out.write_all(&line)?;
        }
        for r in &self.releases {
            line.clear();
            journal::release(&mut line, r);
            out.write_all(&line)?;
        }
        Ok(())
    }
}

/// What the node remembers: restrictions by message id, and releases by source id; and the
/// journal of what it learnt since [`Provenance::take_journal`] was last called (JSON lines,
/// which the node appends to a file so that a restart remembers them: see [`Provenance::replay`]).
#[derive(Debug)]
pub struct Provenance {
    capacity: usize,
    known: HashMap<MessageId, Known>,
    /// The latest distinct own conditions remembered, for [`Known::own`] to share.
    shared: Latest<Restriction>,
    order: VecDeque<MessageId>,
    releases: HashMap<MessageId, Vec<Arc<Release>>>,
    release_order: VecDeque<Arc<Release>>,
    journal: Vec<u8>,
}

impl Provenance {
    /// Remembers up to `capacity` messages and as many releases.
    pub fn new(capacity: usize) -> Provenance {
        Provenance {
            capacity: capacity.max(1),
            known: HashMap::new(),
            shared: Latest::default(),
            order: VecDeque::new(),
            releases: HashMap::new(),
            release_order: VecDeque::new(),
            journal: Vec::new(),
        }
    }

    /// What was learnt since the last call, as JSON lines to append to the journal file.
    pub fn take_journal(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.journal)
    }

    /// Everything remembered, oldest first, as JSON lines: a compacted journal file.
    pub fn snapshot(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.snapshot_later()
            .write_to(&mut out)
            .expect("writing to memory cannot fail");
        out
    }

    /// What [`Provenance::snapshot`] writes, to write later without the caller's lock: it shares
    /// what is remembered (tens of bytes a message), where the JSON text is hundreds.
    pub fn snapshot_later(&self) -> Snapshot {
        Snapshot {
            messages: (self.order.iter())
                .filter_map(|id| Some((*id, self.known.get(id)?.clone())))
                .collect(),
            releases: self.release_order.iter().cloned().collect(),
        }
    }

    /// A node's memory rebuilt from its journal file (`text`), up to `capacity`; also how many
    /// lines were skipped because they do not parse (a line cut short by a crash, at the end).
    pub fn replay(capacity: usize, text: &str) -> (Provenance, usize) {
        let mut p = Provenance::new(capacity);
        let mut skipped = 0;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            match journal::parse(line) {
                // Not journalled again: the file is rewritten from the result.
                Some(journal::Entry::Message(id, rs)) => {
                    if !p.known.contains_key(&id) {
                        p.insert(id, rs);
                    }
                }
                Some(journal::Entry::Release(r)) => {
                    p.release(r);
                }
                None => skipped += 1,
            }
        }
        p.journal.clear();
        (p, skipped)
    }

    /// The restrictions of the sources this node knows, each once.
    fn of_sources(&self, sources: &[MessageId]) -> Vec<Restriction> {
        let mut all: Vec<Restriction> = Vec::new();
        for s in sources {
            for r in self
                .known
                .get(s)
                .into_iter()
                .flat_map(|k| k.restrictions(*s))
            {
                if !all.iter().any(|a| a.source == r.source) {
                    all.push(r);
                }
            }
        }
        all
    }

    /// The restrictions of a message: `own`, then those of each source this node knows.
    /// `Err` when there would be more than [`MAX_RESTRICTIONS`].
    pub fn inherit(
        &self,
        own: Restriction,
        sources: &[MessageId],
    ) -> Result<Vec<Restriction>, String> {
        let own_id = own.source;
        let mut all = vec![own];
        all.extend(
            self.of_sources(sources)
                .into_iter()
                .filter(|r| r.source != own_id),
        );
        if all.len() > MAX_RESTRICTIONS {
            return Err(format!(
                "the message inherits the conditions of {} sources; at most {MAX_RESTRICTIONS} \
                 are tracked",
                all.len() - 1
            ));
        }
        Ok(all)
    }

    /// Remembers a message's restrictions (the oldest message is forgotten beyond capacity).
    /// What is remembered of an id is never replaced: a message that reuses a known id (which
    /// the ledger then refuses) must not overwrite the conditions of the message that had it.
    pub fn remember(&mut self, id: MessageId, restrictions: Vec<Restriction>) {
        if !self.known.contains_key(&id) {
            journal::message(&mut self.journal, id, &restrictions);
            self.insert(id, restrictions);
        }
    }

    /// Remembers a message (the caller checked that it is not known yet), forgetting the
    /// oldest beyond capacity.
    fn insert(&mut self, id: MessageId, mut restrictions: Vec<Restriction>) {
        let own = match restrictions.first() {
            // Shared with the latest messages that have the same conditions.
            Some(r) if r.source == id => Some(self.shared.share(restrictions.remove(0), |r, o| {
                r.owner == o.owner && r.addressees == o.addressees && r.handling == o.handling
            })),
            _ => None,
        };
        let rest = (!restrictions.is_empty()).then(|| restrictions.into());
        // Room first: one over the bound would double the deque (as `respond::Responders`).
        while self.order.len() >= self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.known.remove(&old);
            }
        }
        self.known.insert(id, Known { own, rest });
        self.order.push_back(id);
    }

    #[cfg(test)]
    /// The restrictions remembered of message `id`.
    fn restrictions(&self, id: MessageId) -> Option<Vec<Restriction>> {
        Some(self.known.get(&id)?.restrictions(id).collect())
    }

    /// Puts back journal lines that could not be written, ahead of what came since.
    pub fn unwritten(&mut self, mut lines: Vec<u8>) {
        lines.append(&mut self.journal);
        self.journal = lines;
    }

    /// Records a release (the oldest is forgotten beyond capacity), its sources and agencies
    /// once each and at most [`MAX_RELEASE_SOURCES`] and [`MAX_RELEASE_AGENCIES`]. A release
    /// bound to a purpose longer than [`MAX_RELEASE_PURPOSE`] is not recorded (`false`): what
    /// another agency's decision makes the node keep stays small.
    pub fn release(&mut self, mut r: Release) -> bool {
        if r.purpose.len() > MAX_RELEASE_PURPOSE {
            return false;
        }
        let mut seen = std::collections::HashSet::new();
        r.sources.retain(|s| seen.insert(*s));
        r.sources.truncate(MAX_RELEASE_SOURCES);
        r.to.sort();
        r.to.dedup();
        r.to.truncate(MAX_RELEASE_AGENCIES);
        journal::release(&mut self.journal, &r);
        let r = Arc::new(r);
        for s in &r.sources {
            self.releases.entry(*s).or_default().push(r.clone());
        }
        self.release_order.push_back(r);
        while self.release_order.len() > self.capacity {
            let Some(old) = self.release_order.pop_front() else {
                break;
            };
            for s in &old.sources {
                if let Some(list) = self.releases.get_mut(s) {
                    list.retain(|r| !Arc::ptr_eq(r, &old));
                    if list.is_empty() {
                        self.releases.remove(s);
                    }
                }
            }
        }
        true
    }

    /// Whether `owner` released `source` to `to` for `purpose`, in force at `now`.
    fn released(
        &self,
        source: &MessageId,
        owner: &str,
        to: &str,
        purpose: &str,
        now: SystemTime,
    ) -> bool {
        self.releases.get(source).is_some_and(|list| {
            list.iter().any(|r| {
                r.by == owner
                    && r.to.iter().any(|a| a == to)
                    && (r.purpose.is_empty() || r.purpose == purpose)
                    && r.valid_until.is_none_or(|u| now < u)
            })
        })
    }

    /// May a product derived from `sources` (with `purpose`) go to each agency of `to`? Every
    /// restriction of every source this node knows must allow it, or be released for it.
    pub fn check_derived(
        &self,
        sources: &[MessageId],
        deriver: &Deriver<'_>,
        to: &[&str],
        purpose: &str,
        now: SystemTime,
    ) -> Result<(), Denied> {
        let restrictions = self.of_sources(sources);
        if restrictions.len() >= MAX_RESTRICTIONS {
            return Err(Denied {
                source: sources[0],
                owner: deriver.agency.to_owned(),
                releasable: false,
                reason: format!(
                    "the sources carry the conditions of {} messages; at most \
                     {MAX_RESTRICTIONS} are tracked",
                    restrictions.len()
                ),
            });
        }
        for r in &restrictions {
            // An agency's own information is its own to pass on.
            if r.owner == deriver.agency {
                continue;
            }
            for agency in to {
                let onward = Onward {
                    agency,
                    deriver: deriver.agency,
                    source_originator: &r.owner,
                    source_addressees: &r.addressees,
                    must_inform: deriver.must_inform,
                    federation: (deriver.partner)(agency),
                };
                let judicial = match (deriver.judicial && *agency != r.owner, r.handling.judicial) {
                    (false, _) | (_, Permission::Allowed) => Scope::Within,
                    (true, Permission::Consent) => Scope::NeedsConsent(format!(
                        "judicial use of the source needs its originator's consent ({} has not \
                         released it to {agency})",
                        r.owner
                    )),
                    (true, Permission::Denied) => {
                        Scope::Prohibited("judicial use of the source is prohibited".into())
                    }
                };
                let scope = match (r.handling.onward_scope(&onward), judicial) {
                    (p @ Scope::Prohibited(_), _) | (_, p @ Scope::Prohibited(_)) => p,
                    (c @ Scope::NeedsConsent(_), _) | (_, c @ Scope::NeedsConsent(_)) => c,
                    (Scope::Within, Scope::Within) => Scope::Within,
                };
                let (reason, releasable) = match scope {
                    Scope::Within => continue,
                    Scope::NeedsConsent(why) => (why, true),
                    Scope::Prohibited(why) => (why, false),
                };
                if releasable && self.released(&r.source, &r.owner, agency, purpose, now) {
                    continue;
                }
                return Err(Denied {
                    source: r.source,
                    owner: r.owner.clone(),
                    releasable,
                    reason,
                });
            }
        }
        Ok(())
    }
}

/// The journal's JSON lines: one per message remembered or release recorded.
mod journal {
    use serde::{Deserialize, Serialize};

    use super::{Release, Restriction};
    use crate::handling::{Handling, NativeCode, Permission, Tlp};
    use crate::message::{MessageId, from_millis, millis};

    #[derive(Serialize, Deserialize)]
    #[serde(tag = "kind", rename_all = "snake_case")]
    enum Line {
        Message(MessageLine),
        Release {
            decision: String,
            by: String,
            sources: Vec<String>,
            to: Vec<String>,
            purpose: String,
            valid_until_ms: Option<u64>,
        },
    }

    #[derive(Serialize, Deserialize)]
    struct MessageLine {
        id: String,
        restrictions: Vec<Condition>,
    }

    /// How every message line begins (serde writes the tag first): such a line is read
    /// straight into a [`MessageLine`], without the buffering a tagged enum needs (replaying
    /// the file is most of a restart's time after the store's).
    const MESSAGE_LINE: &str = r#"{"kind":"message","#;

    #[derive(Serialize, Deserialize)]
    struct Condition {
        source: String,
        owner: String,
        addressees: Vec<String>,
        tlp: String,
        native: Vec<(String, String)>,
        max_hops: Option<u32>,
        onward: String,
        judicial: String,
        operational: String,
        purpose: String,
        retain_until_ms: Option<u64>,
    }

    pub(super) enum Entry {
        Message(MessageId, Vec<Restriction>),
        Release(Release),
    }

    fn push(out: &mut Vec<u8>, line: &Line) {
        // Serializing plain strings and numbers cannot fail.
        if serde_json::to_writer(&mut *out, line).is_ok() {
            out.push(b'\n');
        }
    }

    pub(super) fn message(out: &mut Vec<u8>, id: MessageId, rs: &[Restriction]) {
        let restrictions = rs
            .iter()
            .map(|r| Condition {
                source: r.source.to_string(),
                owner: r.owner.clone(),
                addressees: r.addressees.clone(),
                tlp: r.handling.tlp.as_str().to_owned(),
                native: r
                    .handling
                    .native
                    .iter()
                    .map(|c| (c.scheme.clone(), c.code.clone()))
                    .collect(),
                max_hops: r.handling.max_relays,
                onward: r.handling.onward.as_str().to_owned(),
                judicial: r.handling.judicial.as_str().to_owned(),
                operational: r.handling.operational.as_str().to_owned(),
                purpose: r.handling.purpose.clone(),
                retain_until_ms: r.handling.retain_until.map(millis),
            })
            .collect();
        push(
            out,
            &Line::Message(MessageLine {
                id: id.to_string(),
                restrictions,
            }),
        );
    }

    pub(super) fn release(out: &mut Vec<u8>, r: &Release) {
        push(
            out,
            &Line::Release {
                decision: r.decision.to_string(),
                by: r.by.clone(),
                sources: r.sources.iter().map(ToString::to_string).collect(),
                to: r.to.clone(),
                purpose: r.purpose.clone(),
                valid_until_ms: r.valid_until.map(millis),
            },
        );
    }

    pub(super) fn parse(line: &str) -> Option<Entry> {
        let id = |s: &str| s.parse::<MessageId>().ok();
        let line = if line.starts_with(MESSAGE_LINE) {
            // The struct ignores the tag, a field it does not know.
            Line::Message(serde_json::from_str(line).ok()?)
        } else {
            serde_json::from_str::<Line>(line).ok()?
        };
        Some(match line {
            Line::Message(MessageLine {
                id: m,
                restrictions,
            }) => {
                let rs = restrictions
                    .into_iter()
                    .map(|c| {
                        Some(Restriction {
                            source: id(&c.source)?,
                            owner: c.owner,
                            addressees: c.addressees,
                            handling: Handling {
                                tlp: Tlp::parse(&c.tlp)?,
                                native: c
                                    .native
                                    .into_iter()
                                    .map(|(scheme, code)| NativeCode { scheme, code })
                                    .collect(),
                                max_relays: c.max_hops,
                                onward: Permission::parse(&c.onward)?,
                                judicial: Permission::parse(&c.judicial)?,
                                operational: Permission::parse(&c.operational)?,
                                purpose: c.purpose,
                                retain_until: c.retain_until_ms.map(from_millis),
                            },
                        })
                    })
                    .collect::<Option<Vec<_>>>()?;
                Entry::Message(id(&m)?, rs)
            }
            Line::Release {
                decision,
                by,
                sources,
                to,
                purpose,
                valid_until_ms,
            } => Entry::Release(Release {
                decision: id(&decision)?,
                by,
                sources: sources.iter().map(|s| id(s)).collect::<Option<_>>()?,
                to,
                purpose,
                valid_until: valid_until_ms.map(from_millis),
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::handling::{NativeCode, Tlp};

    /// At its bound, a message remembered makes room first: the order's deque keeps the
    /// bound's size (one over it doubled the deque).
    #[test]
    fn at_its_bound_the_order_never_outgrows_it() {
        let mut p = Provenance::new(1024);
        for _ in 0..5000 {
            p.insert(MessageId::new_v7(std::time::SystemTime::now()), Vec::new());
        }
        assert_eq!((p.order.len(), p.known.len()), (1024, 1024));
        assert!(p.order.capacity() < 2048, "{}", p.order.capacity());
    }

    fn id(n: u8) -> MessageId {
        MessageId::from_slice(&[n; 16]).unwrap()
    }

    fn restriction(
        source: u8,
        owner: &str,
        to: &[&str],
        tlp: Tlp,
        onward: Permission,
    ) -> Restriction {
        Restriction {
            source: id(source),
            owner: owner.into(),
            addressees: to.iter().map(|s| s.to_string()).collect(),
            handling: Handling {
                tlp,
                onward,
                ..Handling::default()
            },
        }
    }

    fn cenapi<'a>(partner: &'a dyn Fn(&str) -> bool) -> Deriver<'a> {
        Deriver {
            agency: "cenapi",
            judicial: false,
            must_inform: &[],
            partner,
        }
    }

    fn release(sources: &[u8], by: &str, to: &[&str], purpose: &str) -> Release {
        Release {
            decision: id(99),
            by: by.into(),
            sources: sources.iter().map(|s| id(*s)).collect(),
            to: to.iter().map(|s| s.to_string()).collect(),
            purpose: purpose.into(),
            valid_until: None,
        }
    }

    #[test]
    fn a_product_of_a_consent_required_source_needs_the_originators_release() {
        let now = SystemTime::now();
        let partner = |_: &str| true;
        let mut p = Provenance::new(16);
        // DEA's alert to CENAPI: GREEN, but onward dissemination needs DEA's consent.
        let x = restriction(1, "dea", &["cenapi"], Tlp::Green, Permission::Consent);
        p.remember(id(1), p.inherit(x, &[]).unwrap());
        let d = p
            .check_derived(&[id(1)], &cenapi(&partner), &["pgr"], "interdiction", now)
            .unwrap_err();
        assert!(
            d.releasable && d.owner == "dea" && d.source == id(1),
            "{d:?}"
        );
        assert!(d.reason.contains("consent"), "{}", d.reason);
        // Back to DEA, or inside CENAPI: no release needed.
        p.check_derived(&[id(1)], &cenapi(&partner), &["dea", "cenapi"], "", now)
            .unwrap();
        // A release by someone else, for another agency, or another purpose does not count.
        p.release(release(&[1], "pgr", &["pgr"], ""));
        p.release(release(&[1], "dea", &["sat"], ""));
        p.release(release(&[1], "dea", &["pgr"], "prosecution"));
        assert!(
            p.check_derived(&[id(1)], &cenapi(&partner), &["pgr"], "interdiction", now)
                .is_err()
        );
        p.release(release(&[1], "dea", &["pgr"], "interdiction"));
        p.check_derived(&[id(1)], &cenapi(&partner), &["pgr"], "interdiction", now)
            .unwrap();
        // Only for PGR: AFI still needs one.
        assert!(
            p.check_derived(
                &[id(1)],
                &cenapi(&partner),
                &["pgr", "afi"],
                "interdiction",
                now
            )
            .is_err()
        );
        // A release that ended does not count.
        let mut q = Provenance::new(16);
        q.remember(id(1), p.restrictions(id(1)).unwrap());
        q.release(Release {
            valid_until: Some(now - Duration::from_secs(1)),
            ..release(&[1], "dea", &["pgr"], "")
        });
        assert!(
            q.check_derived(&[id(1)], &cenapi(&partner), &["pgr"], "", now)
                .is_err()
        );
    }

    #[test]
    fn prohibited_dissemination_is_not_releasable_and_red_stays_with_its_recipients() {
        let now = SystemTime::now();
        let partner = |_: &str| true;
        let mut p = Provenance::new(16);
        p.remember(
            id(1),
            vec![restriction(
                1,
                "dea",
                &["cenapi"],
                Tlp::Clear,
                Permission::Denied,
            )],
        );
        let d = p
            .check_derived(&[id(1)], &cenapi(&partner), &["pgr"], "", now)
            .unwrap_err();
        assert!(!d.releasable, "{d:?}");
        p.remember(
            id(2),
            vec![restriction(
                2,
                "dea",
                &["cenapi", "afi"],
                Tlp::Red,
                Permission::Allowed,
            )],
        );
        // RED: the source's own recipients may get products of it; nobody else.
        p.check_derived(&[id(2)], &cenapi(&partner), &["afi", "dea"], "", now)
            .unwrap();
        assert!(
            p.check_derived(&[id(2)], &cenapi(&partner), &["pgr"], "", now)
                .is_err()
        );
        // Sources the node does not know are not checked.
        p.check_derived(&[id(7)], &cenapi(&partner), &["pgr"], "", now)
            .unwrap();
    }

    #[test]
    fn restrictions_are_inherited_through_generations() {
        let now = SystemTime::now();
        let partner = |_: &str| true;
        let mut p = Provenance::new(16);
        // X: DEA, consent. M1 at CENAPI derived from X (kept inside CENAPI). M2 derived from
        // M1. M3 derived from M2 and an unrelated GREEN source.
        p.remember(
            id(1),
            vec![restriction(
                1,
                "dea",
                &["cenapi"],
                Tlp::Amber,
                Permission::Consent,
            )],
        );
        let m1 = p
            .inherit(
                restriction(2, "cenapi", &["cenapi"], Tlp::Clear, Permission::Allowed),
                &[id(1)],
            )
            .unwrap();
        assert_eq!(m1.len(), 2);
        p.remember(id(2), m1);
        let m2 = p
            .inherit(
                restriction(3, "cenapi", &["cenapi"], Tlp::Clear, Permission::Allowed),
                &[id(2)],
            )
            .unwrap();
        p.remember(id(3), m2);
        p.remember(
            id(4),
            vec![restriction(
                4,
                "afi",
                &["cenapi"],
                Tlp::Green,
                Permission::Allowed,
            )],
        );
        let d = p
            .check_derived(&[id(3), id(4)], &cenapi(&partner), &["pgr"], "", now)
            .unwrap_err();
        assert_eq!((d.source, d.owner.as_str()), (id(1), "dea"), "{d:?}");
        // DEA's release of X covers the third generation too.
        p.release(release(&[1], "dea", &["pgr"], ""));
        p.check_derived(&[id(3), id(4)], &cenapi(&partner), &["pgr"], "", now)
            .unwrap();
        // GREEN reaches partners only.
        let none = |_: &str| false;
        assert!(
            p.check_derived(&[id(4)], &cenapi(&none), &["pgr"], "", now)
                .is_err()
        );
    }

    #[test]
    fn a_judicial_instrument_needs_the_sources_judicial_use_permission() {
        let now = SystemTime::now();
        let partner = |_: &str| true;
        let mut p = Provenance::new(16);
        let mut consent = restriction(
            1,
            "dea",
            &["cenapi", "pgr"],
            Tlp::Clear,
            Permission::Allowed,
        );
        consent.handling.judicial = Permission::Consent;
        p.remember(id(1), vec![consent]);
        let mut denied = restriction(2, "afi", &["cenapi"], Tlp::Clear, Permission::Allowed);
        denied.handling.judicial = Permission::Denied;
        p.remember(id(2), vec![denied]);
        let plain = cenapi(&partner);
        let judicial = Deriver {
            judicial: true,
            ..cenapi(&partner)
        };
        // An analytical product may go; an MLA request drawing on it needs DEA's consent.
        p.check_derived(&[id(1)], &plain, &["pgr"], "", now)
            .unwrap();
        let d = p
            .check_derived(&[id(1)], &judicial, &["pgr"], "", now)
            .unwrap_err();
        assert!(d.releasable && d.reason.contains("judicial use"), "{d:?}");
        p.release(release(&[1], "dea", &["pgr"], ""));
        p.check_derived(&[id(1)], &judicial, &["pgr"], "", now)
            .unwrap();
        // Asking the originator itself is always possible; prohibited is prohibited.
        p.check_derived(&[id(2)], &judicial, &["afi"], "", now)
            .unwrap();
        let d = p
            .check_derived(&[id(2)], &judicial, &["cenapi"], "", now)
            .unwrap_err();
        assert!(!d.releasable, "{d:?}");
    }

    #[test]
    fn the_journal_replays_what_was_remembered_and_skips_a_torn_line() {
        let now = SystemTime::now();
        let partner = |_: &str| true;
        let mut p = Provenance::new(16);
        let mut x = restriction(1, "dea", &["cenapi"], Tlp::Green, Permission::Consent);
        x.handling.native = vec![NativeCode {
            scheme: "europol".into(),
            code: "h2".into(),
        }];
        x.handling.retain_until = Some(SystemTime::UNIX_EPOCH + Duration::from_millis(1_234));
        p.remember(id(1), vec![x]);
        let m1 = p
            .inherit(
                restriction(2, "cenapi", &["cenapi"], Tlp::Clear, Permission::Allowed),
                &[id(1)],
            )
            .unwrap();
        p.remember(id(2), m1);
        p.release(release(&[1], "dea", &["pgr"], "interdiction"));
        let mut text = String::from_utf8(p.take_journal()).unwrap();
        assert_eq!(text.lines().count(), 3);
        assert!(p.take_journal().is_empty(), "taken once");
        // A crash cut the last line short.
        text.push_str("{\"kind\":\"message\",\"id\":\"01");
        let (q, skipped) = Provenance::replay(16, &text);
        assert_eq!(skipped, 1);
        assert_eq!(q.restrictions(id(1)), p.restrictions(id(1)));
        assert_eq!(q.restrictions(id(2)), p.restrictions(id(2)));
        assert_eq!(q.snapshot(), p.snapshot());
        // It judges as the original did.
        for who in [&p, &q] {
            assert!(
                who.check_derived(&[id(2)], &cenapi(&partner), &["afi"], "interdiction", now)
                    .is_err()
            );
            who.check_derived(&[id(2)], &cenapi(&partner), &["pgr"], "interdiction", now)
                .unwrap();
        }
        // Replay keeps the bound: the newest are kept.
        let (small, _) = Provenance::replay(1, &text);
        assert!(small.known.contains_key(&id(2)) && !small.known.contains_key(&id(1)));
        // A message line whose tag is not first (not how the node writes it) reads the same.
        let first = text.lines().next().unwrap();
        assert!(first.starts_with(r#"{"kind":"message","#));
        let reordered = serde_json::from_str::<serde_json::Value>(first).unwrap();
        let reordered = serde_json::to_string(&reordered).unwrap(); // keys sorted: "id" first
        assert!(reordered.starts_with(r#"{"id":"#), "{reordered}");
        let (r, skipped) = Provenance::replay(16, &reordered);
        assert_eq!((skipped, r.restrictions(id(1))), (0, p.restrictions(id(1))));
    }

    #[test]
    fn messages_with_the_same_conditions_share_them() {
        let mut p = Provenance::new(16);
        let amber = |n| restriction(n, "dea", &["pgr"], Tlp::Amber, Permission::Allowed);
        for n in 1..=3 {
            p.remember(id(n), vec![amber(n)]);
        }
        let red = restriction(4, "dea", &["pgr"], Tlp::Red, Permission::Allowed);
        p.remember(id(4), vec![red.clone(), amber(1)]);
        let own = |p: &Provenance, n| p.known[&id(n)].own.clone().unwrap();
        assert!(Arc::ptr_eq(&own(&p, 1), &own(&p, 3)));
        assert!(!Arc::ptr_eq(&own(&p, 1), &own(&p, 4)));
        // Each message gets its own conditions back under its own id.
        assert_eq!(p.restrictions(id(2)), Some(vec![amber(2)]));
        assert_eq!(p.restrictions(id(4)), Some(vec![red, amber(1)]));
        // Inherited conditions that are not the message's own come back as they were.
        p.remember(id(5), vec![amber(1)]);
        assert!(p.known[&id(5)].own.is_none());
        assert_eq!(p.restrictions(id(5)), Some(vec![amber(1)]));
    }

    #[test]
    fn a_reused_id_does_not_overwrite_what_is_remembered() {
        let now = SystemTime::now();
        let partner = |_: &str| true;
        let mut p = Provenance::new(16);
        p.remember(
            id(1),
            vec![restriction(
                1,
                "dea",
                &["cenapi"],
                Tlp::Red,
                Permission::Consent,
            )],
        );
        // A CENAPI client submits its own, permissive message under the same id.
        p.remember(
            id(1),
            vec![restriction(
                1,
                "cenapi",
                &["cenapi"],
                Tlp::Clear,
                Permission::Allowed,
            )],
        );
        let d = p
            .check_derived(&[id(1)], &cenapi(&partner), &["pgr"], "", now)
            .unwrap_err();
        assert_eq!(d.owner, "dea");
        assert_eq!(
            String::from_utf8(p.take_journal()).unwrap().lines().count(),
            1
        );
    }

    #[test]
    fn what_is_kept_of_a_message_or_a_release_stays_small() {
        let h = Handling {
            tlp: Tlp::Red,
            onward: Permission::Consent,
            native: vec![NativeCode {
                scheme: "x".repeat(1000),
                code: "y".repeat(1000),
            }],
            purpose: "p".repeat(100_000),
            ..Handling::default()
        };
        let r = Restriction::new(id(1), "dea", vec!["pgr".into(), "pgr".into()], &h);
        assert_eq!(r.addressees, ["pgr"]);
        assert_eq!(
            (r.handling.tlp, r.handling.onward),
            (Tlp::Red, Permission::Consent)
        );
        assert!(r.handling.native.is_empty() && r.handling.purpose.is_empty());
        let mut p = Provenance::new(16);
        let mut big = release(&[1, 1, 2], "dea", &["pgr", "pgr"], "");
        big.sources.extend((0..200u8).map(id));
        big.to.extend((0..100).map(|i| format!("a{i}")));
        assert!(p.release(big));
        let kept = &p.release_order[0];
        assert_eq!(kept.sources.len(), MAX_RELEASE_SOURCES);
        assert_eq!(kept.sources[..2], [id(1), id(2)]);
        assert_eq!(kept.to.len(), MAX_RELEASE_AGENCIES);
        assert!(!p.release(release(
            &[1],
            "dea",
            &["pgr"],
            &"p".repeat(MAX_RELEASE_PURPOSE + 1)
        )));
        assert_eq!(p.release_order.len(), 1);
    }

    #[test]
    fn memory_is_bounded() {
        let mut p = Provenance::new(2);
        for n in 1..=3 {
            p.remember(
                id(n),
                vec![restriction(n, "dea", &[], Tlp::Red, Permission::Denied)],
            );
            p.release(release(&[n], "dea", &["pgr"], ""));
        }
        assert!(!p.known.contains_key(&id(1)));
        assert!(p.known.contains_key(&id(3)));
        assert_eq!(p.releases.len(), 2);
        let many: Vec<Restriction> = (0..MAX_RESTRICTIONS as u8)
            .map(|n| restriction(n, "dea", &[], Tlp::Red, Permission::Allowed))
            .collect();
        let mut p = Provenance::new(100);
        p.remember(id(200), many);
        assert!(
            p.inherit(
                restriction(201, "cenapi", &[], Tlp::Clear, Permission::Allowed),
                &[id(200)]
            )
            .is_err()
        );
    }
}
