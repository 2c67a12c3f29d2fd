//! The delivery log: what a node writes about every message and connection, and how anyone
//! holding its files checks that nothing was changed since. Sans-I/O, but for [`files`], which
//! reads a log directory, and [`verify::verify_dir`].
//!
//! A node's log lives in `<data_dir>/log/`:
//!
//! ```text
//! records-<first seq, 20 digits>.jsonl   the records, one JSON object per line, in order
//! checkpoints.jsonl                      signed checkpoints and the witnesses' cosignatures
//! keys.jsonl                             the keys that signed them, with their certificates
//! base.json                              after pruning: where the kept records start
//! witnessed.jsonl                        the latest checkpoint of each peer this node cosigned
//! ```
//!
//! Each [`Record`] is one line; its exact bytes are a leaf of an RFC 9162 Merkle tree, and it
//! names the hash of the record before it (`prev`), so a record changed, removed or moved is
//! found where it is. Every so often the node signs the tree's head as a checkpoint (C2SP
//! signed note, [`crate::note`]), and its peers cosign it after checking it extends the last one
//! they saw. Records never hold payload content: ids, identities, types, sizes, hashes, reasons.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::merkle::{self, Hash};

pub mod files;
pub mod verify;

/// How the log's files are named.
pub const RECORDS_PREFIX: &str = "records-";
/// The checkpoints file.
pub const CHECKPOINTS: &str = "checkpoints.jsonl";
/// The keys file.
pub const KEYS: &str = "keys.jsonl";
/// Where the kept records start after pruning.
pub const BASE: &str = "base.json";
/// The checkpoints of peers this node has cosigned.
pub const WITNESSED: &str = "witnessed.jsonl";

/// One record of the delivery log. Optional fields are left out when they do not apply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Record {
    /// Its position in the log, from 0.
    pub seq: u64,
    /// The leaf hash of the record before it, hex (empty for the first record).
    pub prev: String,
    /// When, UTC, to the microsecond.
    pub time: String,
    /// The node that wrote it.
    pub node: String,
    /// What happened: `accepted`, `received`, `refused`, `duplicate`, `forwarded`,
    /// `forward_refused`, `delivered`, `acknowledged`, `returned`, `deferred`, `retrying`,
    /// `dead_lettered`, `redriven`, `expired`, `purged`, `connected`, `connection_refused`,
    /// `disconnected`, `reloaded`, `reload_refused`, `link`, `checkpoint_witnessed`,
    /// `witness_refused`, `pruned`, `started`, `stopped`.
    pub event: String,
    /// Who did it: the submitter, the client a copy went to, the operator, the peer node, or
    /// this node (`<agency>/<role>/<name>`).
    pub actor: String,
    /// The message id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The message's originator (`<agency>/<name>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub originator: Option<String>,
    /// The message's addressees, as written.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addressees: Vec<String>,
    /// The payload's type name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_type: Option<String>,
    /// The precedence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precedence: Option<String>,
    /// The message's status (operational, exercise, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// The size of the exact envelope bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// The SHA-256 of the exact envelope bytes, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// For receipts, reports and responses: the message they are about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refers_to: Option<String>,
    /// The peer node a copy went to or came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// The queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// The attempt number, or attempts so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// A refusal code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// Why (a refusal's reason names the policy rule that decided it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// A connection's remote address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<String>,
    /// The SHA-256 of the certificate of the other side of a connection, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<String>,
    /// Anything else: a link's state, a reload's detail, a time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl Record {
    /// The record as its line is written (without the newline).
    pub fn to_line(&self) -> String {
        serde_json::to_string(self).expect("a record serializes")
    }

    /// The agency part of every identity the record names (originator, actor, addressees).
    fn agencies(&self) -> impl Iterator<Item = &str> {
        self.originator
            .iter()
            .chain(std::iter::once(&self.actor))
            .chain(self.addressees.iter())
            .map(|s| s.split('/').next().unwrap_or(""))
    }
}

/// The leaf hash of a record's line.
pub fn leaf(line: &[u8]) -> Hash {
    merkle::leaf_hash(line)
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

/// Parses hex (either case); `None` unless it is a non-empty, even-length string of hex digits
/// only (no sign, no prefix).
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.is_empty() || !s.len().is_multiple_of(2) || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

/// Parses a 32-byte hash in hex.
pub fn unhex32(s: &str) -> Option<Hash> {
    unhex(s)?.try_into().ok()
}

/// A time as records write it: RFC 3339, UTC, microseconds.
pub fn timestamp(t: SystemTime) -> String {
    crate::message::rfc3339_micros(t)
}

/// Reads a time written by [`timestamp`] (or any RFC 3339 time).
pub fn parse_time(s: &str) -> Option<SystemTime> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    let nanos = t.unix_timestamp_nanos();
    (nanos >= 0).then(|| UNIX_EPOCH + std::time::Duration::from_nanos(nanos as u64))
}

/// The name of the records file whose first record is `seq`.
pub fn records_file(seq: u64) -> String {
    format!("{RECORDS_PREFIX}{seq:020}.jsonl")
}

/// The first record of a records file, from its name.
pub fn records_file_seq(name: &str) -> Option<u64> {
    name.strip_prefix(RECORDS_PREFIX)?
        .strip_suffix(".jsonl")?
        .parse()
        .ok()
}

/// One line of `checkpoints.jsonl`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum CheckpointEntry {
    /// A checkpoint the node signed: the note, and the tree's frontier at its size (hex), so
    /// that consistency proofs from it need no old records.
    Checkpoint {
        /// The signed note.
        note: String,
        /// The frontier's subtree roots, hex.
        frontier: Vec<String>,
    },
    /// A witness's cosignature of the checkpoint of `size`.
    Cosignature {
        /// The checkpoint's tree size.
        size: u64,
        /// The witness's node name.
        witness: String,
        /// The cosignature line.
        line: String,
    },
}

/// One line of `keys.jsonl`: a key that signs or cosigns checkpoints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyEntry {
    /// The verifier key ([`crate::note::VerifierKey`] written form).
    pub key: String,
    /// The certificate it belongs to (DER, base64), so an auditor can check it against the
    /// federation's root.
    pub certificate: String,
    /// When the node first used or saw it.
    pub since: String,
}

/// `base.json`: where the kept records start after pruning.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Base {
    /// The first kept record.
    pub size: u64,
    /// The tree's frontier over the pruned records, hex.
    pub frontier: Vec<String>,
    /// The leaf hash of the last pruned record, hex.
    pub prev: String,
}

/// One line of `witnessed.jsonl`: a peer's checkpoint this node cosigned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Witnessed {
    /// The peer node's name.
    pub peer: String,
    /// The peer's checkpoint text.
    pub checkpoint: String,
}

/// Which records a query wants. Every field set must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// The message id, or the message a receipt or report refers to.
    pub id: Option<String>,
    /// The originator (`<agency>/<name>`).
    pub originator: Option<String>,
    /// An agency named anywhere in the record (originator, actor, addressees).
    pub agency: Option<String>,
    /// The event.
    pub event: Option<String>,
    /// The precedence (case-insensitive).
    pub precedence: Option<String>,
    /// From this time on.
    pub since: Option<SystemTime>,
    /// Before this time.
    pub until: Option<SystemTime>,
}

impl Filter {
    /// Whether `r` matches.
    pub fn matches(&self, r: &Record) -> bool {
        let eq = |want: &Option<String>, have: Option<&String>| {
            want.as_ref()
                .is_none_or(|w| have.is_some_and(|h| h.eq_ignore_ascii_case(w)))
        };
        if let Some(id) = &self.id
            && r.id.as_deref() != Some(id.as_str())
            && r.refers_to.as_deref() != Some(id.as_str())
        {
            return false;
        }
        if !eq(&self.originator, r.originator.as_ref())
            || !eq(&self.event, Some(&r.event))
            || !eq(&self.precedence, r.precedence.as_ref())
        {
            return false;
        }
        if let Some(a) = &self.agency
            && !r.agencies().any(|x| x.eq_ignore_ascii_case(a))
        {
            return false;
        }
        if self.since.is_some() || self.until.is_some() {
            let Some(t) = parse_time(&r.time) else {
                return false;
            };
            if self.since.is_some_and(|s| t < s) || self.until.is_some_and(|u| t >= u) {
                return false;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Record {
        Record {
            seq: 3,
            prev: hex(&[1; 32]),
            time: timestamp(UNIX_EPOCH + std::time::Duration::from_micros(1_764_687_855_123_456)),
            node: "dea-1".into(),
            event: "delivered".into(),
            actor: "pgr/client/duty-desk".into(),
            id: Some("0193".into()),
            originator: Some("dea/duty-desk".into()),
            addressees: vec!["PGR".into()],
            precedence: Some("FLASH".into()),
            ..Record::default()
        }
    }

    #[test]
    fn a_record_round_trips_through_its_line_and_leaves_out_what_does_not_apply() {
        let r = record();
        let line = r.to_line();
        assert!(line.starts_with(r#"{"seq":3,"prev":""#), "{line}");
        assert!(
            line.contains(r#""time":"2025-12-02T15:04:15.123456Z""#),
            "{line}"
        );
        assert!(!line.contains("queue"), "{line}");
        let back: Record = serde_json::from_str(&line).unwrap();
        assert_eq!(back, r);
        assert!(serde_json::from_str::<Record>(&line.replace("\"seq\"", "\"sek\"")).is_err());
        assert_eq!(unhex32(&hex(&[0xab; 32])), Some([0xab; 32]));
        assert_eq!(unhex32("zz"), None);
        assert_eq!(unhex32(&hex(&[0xab; 31])), None);
        // `from_str_radix` alone would take a sign: a hash has one spelling.
        assert_eq!(unhex32(&format!("+b{}", "ab".repeat(31))), None);
        assert_eq!(records_file_seq(&records_file(42)), Some(42));
    }

    #[test]
    fn filters_match_every_field_they_set() {
        let r = record();
        let t = parse_time(&r.time).unwrap();
        let yes = [
            Filter::default(),
            Filter {
                id: Some("0193".into()),
                ..Filter::default()
            },
            Filter {
                agency: Some("pgr".into()),
                ..Filter::default()
            },
            Filter {
                agency: Some("dea".into()),
                event: Some("DELIVERED".into()),
                ..Filter::default()
            },
            Filter {
                precedence: Some("flash".into()),
                since: Some(t),
                ..Filter::default()
            },
        ];
        for f in yes {
            assert!(f.matches(&r), "{f:?}");
        }
        let no = [
            Filter {
                id: Some("0194".into()),
                ..Filter::default()
            },
            Filter {
                agency: Some("afi".into()),
                ..Filter::default()
            },
            Filter {
                originator: Some("pgr/x".into()),
                ..Filter::default()
            },
            Filter {
                until: Some(t),
                ..Filter::default()
            },
        ];
        for f in no {
            assert!(!f.matches(&r), "{f:?}");
        }
        let receipt = Record {
            id: Some("0200".into()),
            refers_to: Some("0193".into()),
            ..record()
        };
        assert!(
            Filter {
                id: Some("0193".into()),
                ..Filter::default()
            }
            .matches(&receipt)
        );
    }
}
