//! Respond-by deadlines kept across restarts: `<data_dir>/deadlines.jsonl`, a journal of the
//! changes to the receipts worker's [`Deadlines`] (tracked, answered, given more time, fired),
//! one JSON object per line.
//!
//! At start the journal is replayed (a line a crash cut short is skipped, and said) and
//! rewritten compacted: one `track` line per deadline still pending. While the node runs, the
//! receipts worker appends what changed after each batch of notices and after each second's
//! overdue check, with an `fdatasync`, and the file is rewritten compacted once it holds more
//! than twice the pending deadlines (plus [`SLACK`]) lines. So an action copy acknowledged but
//! not yet answered still gets its overdue notice after a restart, one that fired does not fire
//! again, and one answered stays settled.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::runtime::NodeError;
use crate::config::Config;
use crate::identity::AgencyId;
use crate::message::{MessageId, Originator, Precedence, from_millis, millis};
use crate::respond::{Answer, Deadlines};
use crate::wire::pb;

/// The file, in the node's data directory.
const FILE: &str = "deadlines.jsonl";

/// Lines beyond twice the pending deadlines before the file is rewritten compacted.
const SLACK: usize = 1000;

/// What the node needs to send an overdue notice and a reminder about one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Awaited {
    pub originator: Originator,
    pub precedence: Precedence,
    pub expires_at: SystemTime,
}

/// One line of the journal.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "e", rename_all = "snake_case")]
enum Line {
    Track {
        id: String,
        deadline_ms: u64,
        expires_ms: u64,
        agency: String,
        node: String,
        #[serde(default)]
        client: Option<String>,
        precedence: i32,
        #[serde(default)]
        fired: bool,
    },
    /// A business response: final, or more time until `more_until_ms`.
    Answer {
        id: String,
        #[serde(default)]
        more_until_ms: Option<u64>,
    },
    Fired {
        id: String,
    },
}

/// The journal: see the module docs.
pub(super) struct Journal {
    path: PathBuf,
    file: File,
    /// Bytes of whole lines in the file (what a failed write is cut back to).
    len: u64,
    /// Lines in the file.
    lines: usize,
    /// Lines not written yet.
    buf: Vec<u8>,
    pending: usize,
}

impl Journal {
    /// Replays the journal (if any) into the deadlines it describes, and rewrites it compacted.
    pub fn open(
        config: &Config,
        capacity: usize,
    ) -> Result<(Journal, Deadlines<Awaited>), NodeError> {
        let path = config.data_dir.join(FILE);
        let io = |e: std::io::Error| NodeError::Deadlines(format!("{}: {e}", path.display()));
        let text = match std::fs::read(&path) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(io(e)),
        };
        let (deadlines, skipped) = replay(&text, capacity);
        if skipped > 0 {
            tracing::warn!(
                node = %config.name, file = %path.display(), skipped,
                "respond-by lines that do not parse were skipped (a crash cuts the last one short)"
            );
        }
        std::fs::create_dir_all(&config.data_dir).map_err(io)?;
        let lines = rewrite(&path, &deadlines).map_err(io)?;
        let file = OpenOptions::new().append(true).open(&path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        let journal = Journal {
            path,
            file,
            len,
            lines,
            buf: Vec::new(),
            pending: 0,
        };
        Ok((journal, deadlines))
    }

    pub fn track(&mut self, id: MessageId, deadline: SystemTime, a: &Awaited) {
        self.push(&track_line(id, deadline, a, false));
    }

    pub fn answer(&mut self, id: MessageId, answer: Answer) {
        let more_until_ms = match answer {
            Answer::Final => None,
            Answer::MoreTime(until) => Some(millis(until)),
        };
        let id = id.to_string();
        self.push(&Line::Answer { id, more_until_ms });
    }

    pub fn fired(&mut self, id: MessageId) {
        self.push(&Line::Fired { id: id.to_string() });
    }

    fn push(&mut self, line: &Line) {
        // A line of strings and numbers always serializes.
        if serde_json::to_writer(&mut self.buf, line).is_ok() {
            self.buf.push(b'\n');
            self.pending += 1;
        }
    }

    /// Writes what changed and makes it durable; rewrites the file compacted when it has grown
    /// long. A failure is logged: the deadlines in memory are unaffected, and the next flush
    /// tries again.
    pub fn flush(&mut self, deadlines: &Deadlines<Awaited>) {
        if self.buf.is_empty() {
            return;
        }
        let result = match self.lines + self.pending > 2 * deadlines.len() + SLACK {
            true => rewrite(&self.path, deadlines).and_then(|lines| {
                self.file = OpenOptions::new().append(true).open(&self.path)?;
                self.len = self.file.metadata()?.len();
                self.lines = lines;
                Ok(())
            }),
            // Lines written but not synced when the sync fails are cut at the next attempt,
            // and written again with the rest.
            false => super::files::append_whole(&mut self.file, self.len, &self.buf)
                .and_then(|()| self.file.sync_data())
                .map(|()| {
                    self.len += self.buf.len() as u64;
                    self.lines += self.pending;
                }),
        };
        match result {
            Ok(()) => {
                self.buf.clear();
                self.pending = 0;
            }
            Err(e) => tracing::error!(
                file = %self.path.display(), error = %e,
                "respond-by deadlines not written; retrying with the next change"
            ),
        }
    }
}

fn track_line(id: MessageId, deadline: SystemTime, a: &Awaited, fired: bool) -> Line {
    Line::Track {
        id: id.to_string(),
        deadline_ms: millis(deadline),
        expires_ms: millis(a.expires_at),
        agency: a.originator.agency.to_string(),
        node: a.originator.node.clone(),
        client: a.originator.client.clone(),
        precedence: a.precedence.to_pb() as i32,
        fired,
    }
}

/// The deadlines a journal describes, and how many lines did not parse.
fn replay(text: &str, capacity: usize) -> (Deadlines<Awaited>, usize) {
    let mut deadlines = Deadlines::new(capacity);
    let mut skipped = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let applied = serde_json::from_str::<Line>(line)
            .ok()
            .and_then(|l| apply(&mut deadlines, l));
        if applied.is_none() {
            skipped += 1;
        }
    }
    (deadlines, skipped)
}

/// Applies one line; `None` when it names no valid id, agency or precedence.
fn apply(deadlines: &mut Deadlines<Awaited>, line: Line) -> Option<()> {
    match line {
        Line::Track {
            id,
            deadline_ms,
            expires_ms,
            agency,
            node,
            client,
            precedence,
            fired,
        } => {
            let id: MessageId = id.parse().ok()?;
            let precedence = pb::Precedence::try_from(precedence).ok()?;
            let awaited = Awaited {
                originator: Originator {
                    agency: AgencyId::new(&agency).ok()?,
                    node,
                    client,
                },
                precedence: Precedence::from_pb(precedence)?,
                expires_at: from_millis(expires_ms),
            };
            let expires_at = awaited.expires_at;
            deadlines.track(id, from_millis(deadline_ms), expires_at, awaited);
            if fired {
                deadlines.fired(&id);
            }
        }
        Line::Answer { id, more_until_ms } => {
            let answer = match more_until_ms {
                None => Answer::Final,
                Some(ms) => Answer::MoreTime(from_millis(ms)),
            };
            deadlines.answer(id.parse().ok()?, answer);
        }
        Line::Fired { id } => deadlines.fired(&id.parse().ok()?),
    }
    Some(())
}

/// Replaces the file with the pending deadlines (`files::replace`). Returns the number of
/// lines.
fn rewrite(path: &Path, deadlines: &Deadlines<Awaited>) -> std::io::Result<usize> {
    let mut text = Vec::new();
    let mut lines = 0;
    for (id, deadline, _, fired, a) in deadlines.entries() {
        if serde_json::to_writer(&mut text, &track_line(id, deadline, a, fired)).is_ok() {
            text.push(b'\n');
            lines += 1;
        }
    }
    super::files::replace(path, &text, super::files::SHARED)?;
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn awaited() -> Awaited {
        Awaited {
            originator: Originator {
                agency: AgencyId::new("dea").unwrap(),
                node: "dea-1".into(),
                client: Some("duty-desk".into()),
            },
            precedence: Precedence::Immediate,
            // Kept to the millisecond, as the journal keeps it.
            expires_at: from_millis(millis(SystemTime::now() + Duration::from_secs(3600))),
        }
    }

    fn text(lines: &[Line]) -> String {
        lines
            .iter()
            .map(|l| serde_json::to_string(l).unwrap() + "\n")
            .collect()
    }

    #[test]
    fn a_replayed_journal_keeps_what_fired_what_was_answered_and_what_is_owed() {
        let now = SystemTime::now();
        let ids: Vec<MessageId> = (0..4u8).map(|i| MessageId::derived(b"t", &[i])).collect();
        let a = awaited();
        let due = now - Duration::from_secs(1);
        let mut lines: Vec<Line> = ids
            .iter()
            .map(|id| track_line(*id, due, &a, false))
            .collect();
        // 0 is owed; 1 fired already; 2 was answered; 3 got more time.
        lines.push(Line::Fired {
            id: ids[1].to_string(),
        });
        lines.push(Line::Answer {
            id: ids[2].to_string(),
            more_until_ms: None,
        });
        let later = now + Duration::from_secs(600);
        lines.push(Line::Answer {
            id: ids[3].to_string(),
            more_until_ms: Some(millis(later)),
        });
        let mut journal = text(&lines);
        journal.push_str("{\"e\":\"track\",\"id\":\"cut sh");
        let (mut d, skipped) = replay(&journal, 100);
        assert_eq!(skipped, 1);
        assert_eq!(d.len(), 3);
        let fired: Vec<MessageId> = d.due(now).into_iter().map(|o| o.id).collect();
        assert_eq!(fired, vec![ids[0]]);
        let fired: Vec<MessageId> = d.due(later).into_iter().map(|o| o.id).collect();
        assert_eq!(fired, vec![ids[3]]);
        assert_eq!(d.due(later + Duration::from_secs(1)).len(), 0);
    }

    #[test]
    fn the_file_round_trips_through_a_compacted_rewrite() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE);
        let mut d = Deadlines::new(10);
        let a = awaited();
        let id = MessageId::derived(b"t", b"x");
        let deadline = SystemTime::now() + Duration::from_secs(60);
        d.track(id, deadline, a.expires_at, a.clone());
        d.fired(&id);
        assert_eq!(rewrite(&path, &d).unwrap(), 1);
        let (back, skipped) = replay(&std::fs::read_to_string(&path).unwrap(), 10);
        assert_eq!(skipped, 0);
        let entries: Vec<_> = back
            .entries()
            .map(|(i, t, _, f, w)| (i, millis(t), f, w.clone()))
            .collect();
        assert_eq!(entries, vec![(id, millis(deadline), true, a)]);
    }
}
