//! Checking a log directory: every record in order and unaltered, every checkpoint's root
//! recomputed from the records and its signature verified, every cosignature verified. The
//! first bad record is named with what is wrong with it.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io;
use std::path::Path;

use super::files;
use super::{Base, CheckpointEntry, Record, hex, leaf, records_file, unhex32};
use crate::merkle::{Frontier, Hash};
use crate::note::{Checkpoint, Note, VerifierKey};

/// Something wrong with a log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The record it concerns, if one.
    pub record: Option<u64>,
    /// Where: a file and line.
    pub place: String,
    /// What is wrong.
    pub what: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.record {
            Some(r) => write!(f, "record {r} ({}): {}", self.place, self.what),
            None => write!(f, "{}: {}", self.place, self.what),
        }
    }
}

/// What checking a log found.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// The node whose log it is (from its records).
    pub node: Option<String>,
    /// The first record kept (0 unless pruned).
    pub first: u64,
    /// Records read and checked.
    pub records: u64,
    /// Checkpoints whose signature verified and whose root the records give.
    pub checkpoints: usize,
    /// The largest such checkpoint's size.
    pub last_checkpoint: Option<u64>,
    /// Verified cosignatures, by witness key name.
    pub cosignatures: BTreeMap<String, usize>,
    /// What is wrong; empty when the log checks.
    pub problems: Vec<Problem>,
    /// Things worth knowing that are not wrong (records not yet under a checkpoint, where
    /// the keys came from).
    pub notes: Vec<String>,
}

impl Report {
    /// Whether the log checks.
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }

    fn problem(&mut self, record: Option<u64>, place: impl Into<String>, what: impl Into<String>) {
        self.problems.push(Problem {
            record,
            place: place.into(),
            what: what.into(),
        });
    }
}

/// Checks the log in `dir`. The keys signatures must verify with are those of the log's own
/// `keys.jsonl`: only as good as the files themselves (a node that rewrites its log can rewrite
/// them too), which is why [`verify_dirs`] also checks each log against what its witnesses kept.
pub fn verify_dir(dir: &Path) -> io::Result<Report> {
    verify_dir_witnessed(dir, &[])
}

/// Checks the logs in `dirs` (the nodes of one federation, e.g. a demo's), each also against
/// the checkpoints of it that the others cosigned as witnesses: a log rewritten with its own
/// node's key still verifies alone, but not against what its partners kept.
pub fn verify_dirs(dirs: &[std::path::PathBuf]) -> io::Result<Vec<Report>> {
    let mut witnessed: Vec<(String, String, Checkpoint)> = Vec::new();
    for d in dirs {
        let witness = d.parent().and_then(|p| p.file_name()).map_or_else(
            || d.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        for w in files::witnessed(d)?.into_iter().flatten() {
            if let Ok(cp) = Checkpoint::parse(&w.checkpoint) {
                witnessed.push((witness.clone(), w.peer, cp));
            }
        }
    }
    dirs.iter()
        .map(|d| verify_dir_witnessed(d, &witnessed))
        .collect()
}

/// Checks the log in `dir`, and that its records give the root of every checkpoint of it in
/// `witnessed` (witness, the node whose log it is, checkpoint; other nodes' are skipped).
pub fn verify_dir_witnessed(
    dir: &Path,
    witnessed: &[(String, String, Checkpoint)],
) -> io::Result<Report> {
    let mut report = Report::default();
    report
        .notes
        .push("signature keys taken from the log's own keys.jsonl".into());
    let mut keys: HashMap<String, VerifierKey> = HashMap::new();
    for (i, k) in files::keys(dir)?.into_iter().enumerate() {
        match k.ok().and_then(|k| VerifierKey::decode(&k.key)) {
            Some(k) => {
                keys.insert(k.name.clone(), k);
            }
            None => report.problem(None, format!("keys.jsonl:{}", i + 1), "not a key"),
        }
    }

    // Where the kept records start.
    let (mut frontier, mut prev, first) = match files::base(dir)? {
        None => (Frontier::new(), None, 0),
        Some(Err(e)) => {
            report.problem(None, "base.json", format!("not readable: {e}"));
            return Ok(report);
        }
        Some(Ok(b)) => match base(&b) {
            Some((f, p)) => (f, Some(p), b.size),
            None => {
                report.problem(None, "base.json", "its frontier or hash is malformed");
                return Ok(report);
            }
        },
    };
    report.first = first;

    // The checkpoints, in order of size, each with its cosignatures.
    let mut cps: Vec<(usize, Note, Checkpoint)> = Vec::new();
    let mut cosigs: Vec<(usize, u64, String, String)> = Vec::new();
    for (i, e) in files::checkpoints(dir)?.into_iter().enumerate() {
        let place = format!("checkpoints.jsonl:{}", i + 1);
        match e {
            Ok(CheckpointEntry::Checkpoint { note, .. }) => {
                match Note::parse(&note).and_then(|n| Checkpoint::parse(&n.text).map(|c| (n, c))) {
                    Ok((n, c)) => cps.push((i + 1, n, c)),
                    Err(e) => report.problem(None, place, e.to_string()),
                }
            }
            Ok(CheckpointEntry::Cosignature {
                size,
                witness,
                line,
            }) => cosigs.push((i + 1, size, witness, line)),
            Err(e) => report.problem(None, place, format!("not an entry: {e}")),
        }
    }
    for (line, note, cp) in &cps {
        let signer = note
            .signatures
            .first()
            .map(|s| s.name.clone())
            .unwrap_or_default();
        let place = format!("checkpoints.jsonl:{line}");
        match keys.get(&signer) {
            Some(k) if note.verified_by(k) => {}
            Some(_) => report.problem(
                None,
                place,
                format!("the checkpoint of size {} is forged: its signature does not verify with the key of {signer}", cp.size),
            ),
            None => report.problem(None, place, format!("no key known for {signer}")),
        }
    }
    for (line, size, witness, sig) in &cosigs {
        let place = format!("checkpoints.jsonl:{line}");
        let Some((_, note, _)) = cps.iter().find(|(_, _, c)| c.size == *size) else {
            report.problem(None, place, format!("a cosignature by {witness} of a checkpoint of size {size} that is not in the log"));
            continue;
        };
        let mut with = note.clone();
        match Note::parse(&format!("{}\n{sig}\n", note.text)) {
            Ok(n) => with.signatures = n.signatures,
            Err(e) => {
                report.problem(None, place, format!("cosignature by {witness}: {e}"));
                continue;
            }
        }
        let key = with.signatures.first().and_then(|s| keys.get(&s.name));
        match key.and_then(|k| with.cosigned_by(k)) {
            Some(_) => *report.cosignatures.entry(witness.clone()).or_default() += 1,
            None => report.problem(
                None,
                place,
                format!(
                    "the cosignature by {witness} of the checkpoint of size {size} does not verify"
                ),
            ),
        }
    }
    // The roots the records must give: at each signed checkpoint, and at each checkpoint of
    // this log a witness cosigned (what the witness keeps is out of the node's reach).
    let mut sizes: Vec<(u64, Hash, String, bool)> = cps
        .iter()
        .map(|(l, _, c)| (c.size, c.root, format!("checkpoints.jsonl:{l}"), true))
        .collect();
    let node = log_node(dir)?;
    for (witness, peer, cp) in witnessed {
        if node.as_ref() == Some(peer) {
            let place = format!("the checkpoint {witness} cosigned (its witnessed.jsonl)");
            sizes.push((cp.size, cp.root, place, false));
        }
    }
    sizes.sort_by_key(|a| (a.0, !a.3));
    sizes.retain(|(s, ..)| *s > first || (*s == first && first > 0));
    let mut next_cp = sizes.iter().peekable();
    // A checkpoint at the base itself: the base's frontier must give its root.
    while let Some((s, root, place, own)) = next_cp.peek() {
        if *s != frontier.size() {
            break;
        }
        if frontier.root() != *root {
            report.problem(
                None,
                place.clone(),
                "base.json does not match the checkpoint at its size",
            );
        } else if *own {
            report.checkpoints += 1;
            report.last_checkpoint = Some(*s);
        }
        next_cp.next();
    }

    // The records.
    let mut expected = first;
    let mut last_cp_size = first;
    'files: for (seq0, path) in files::record_files(dir)? {
        let name = records_file(seq0);
        if seq0 != expected {
            report.problem(
                Some(expected),
                &name,
                format!(
                    "missing: the records file starting at record {seq0} follows record {}",
                    expected.wrapping_sub(1)
                ),
            );
            break;
        }
        let data = fs::read(&path)?;
        let mut pos = 0;
        let mut line_no = 0;
        while pos < data.len() {
            line_no += 1;
            let place = format!("{name}:{line_no}");
            let Some(end) = data[pos..].iter().position(|b| *b == b'\n') else {
                report.problem(
                    Some(expected),
                    place,
                    "cut short: the last line has no end (truncated)",
                );
                break 'files;
            };
            let line = &data[pos..pos + end];
            pos += end + 1;
            let r: Record = match serde_json::from_slice(line) {
                Ok(r) => r,
                Err(e) => {
                    report.problem(
                        Some(expected),
                        place,
                        format!("altered: not a valid record ({e})"),
                    );
                    break 'files;
                }
            };
            if r.seq != expected {
                // The record that belongs here comes next: the two were swapped.
                let next_seq = data[pos..]
                    .split(|b| *b == b'\n')
                    .next()
                    .and_then(|l| serde_json::from_slice::<Record>(l).ok())
                    .map(|n| n.seq);
                let what = if r.seq > expected && next_seq == Some(expected) {
                    format!(
                        "out of order: record {expected} comes after record {}",
                        r.seq
                    )
                } else if r.seq > expected {
                    format!("missing: the record found here is record {}", r.seq)
                } else {
                    format!(
                        "out of order: record {} appears where record {expected} belongs",
                        r.seq
                    )
                };
                report.problem(Some(expected), place, what);
                break 'files;
            }
            let prev_hex = prev.map(|p: Hash| hex(&p)).unwrap_or_default();
            if r.prev != prev_hex {
                if expected == 0 {
                    report.problem(
                        Some(0),
                        place,
                        "altered: the first record names a record before it",
                    );
                } else if !next_names(&data[pos..], line) && pos < data.len() {
                    // The next record does not vouch for this one as it is either: this one
                    // was changed (its link to the one before among what changed).
                    report.problem(
                        Some(expected),
                        place,
                        format!("altered: it names the hash of record {} as {}, which is not that record's hash {prev_hex}", expected - 1, r.prev),
                    );
                } else {
                    report.problem(
                        Some(expected - 1),
                        format!("{name}:{}", line_no - 1),
                        format!("altered: record {expected} names its hash as {}, but it hashes to {prev_hex}", r.prev),
                    );
                }
                break 'files;
            }
            if report.node.is_none() {
                report.node = Some(r.node.clone());
            }
            let h = leaf(line);
            frontier.push(h);
            prev = Some(h);
            expected += 1;
            report.records += 1;
            while let Some((s, root, cp_place, own)) = next_cp.peek() {
                if *s != frontier.size() {
                    break;
                }
                if frontier.root() != *root {
                    if pos < data.len() && !next_names(&data[pos..], line) {
                        // The next record does not vouch for this one: this one was changed
                        // (named as the chain would name it, whether or not a checkpoint ends
                        // here).
                        report.problem(
                            Some(expected - 1),
                            place,
                            format!(
                                "altered: record {expected} names another hash for it than \
                                 it hashes to, and it does not give the root of the checkpoint \
                                 of size {s}"
                            ),
                        );
                        break 'files;
                    }
                    let whose = if *own {
                        "the signed root of the checkpoint".to_owned()
                    } else {
                        "the root a witness cosigned for the checkpoint".to_owned()
                    };
                    report.problem(
                        Some(last_cp_size),
                        cp_place.clone(),
                        format!(
                            "altered: the records {last_cp_size}..{} do not give {whose} of size {s} (one of them was changed, or the log rewritten)",
                            s - 1
                        ),
                    );
                    break 'files;
                }
                if *own {
                    report.checkpoints += 1;
                    report.last_checkpoint = Some(*s);
                }
                last_cp_size = *s;
                next_cp.next();
            }
        }
    }
    if report.ok()
        && let Some((s, _, place, _)) = next_cp.peek()
    {
        report.problem(
            Some(expected),
            place.clone(),
            format!("missing: the log ends before record {expected}, but a checkpoint of size {s} was signed (truncated)"),
        );
    }
    if report.ok() && expected > last_cp_size {
        report.notes.push(format!(
            "records {last_cp_size}..{} are not under a signed checkpoint yet",
            expected - 1
        ));
    }
    Ok(report)
}

/// The node whose log it is, from its first record.
fn log_node(dir: &Path) -> io::Result<Option<String>> {
    let Some((_, path)) = files::record_files(dir)?.into_iter().next() else {
        return Ok(None);
    };
    let data = fs::read(path)?;
    let first = data.split(|b| *b == b'\n').next().unwrap_or_default();
    Ok(serde_json::from_slice::<Record>(first).ok().map(|r| r.node))
}

/// Whether the first line of `rest` names `line`'s hash as its predecessor's.
fn next_names(rest: &[u8], line: &[u8]) -> bool {
    rest.split(|b| *b == b'\n')
        .next()
        .and_then(|l| serde_json::from_slice::<Record>(l).ok())
        .is_some_and(|n| n.prev == hex(&leaf(line)))
}

fn base(b: &Base) -> Option<(Frontier, Hash)> {
    let nodes = b
        .frontier
        .iter()
        .map(|h| unhex32(h))
        .collect::<Option<Vec<_>>>()?;
    Some((Frontier::from_parts(b.size, nodes)?, unhex32(&b.prev)?))
}
