//! Recovery at open: replay every segment in order to rebuild the indexes and the list of live
//! copies, cutting a torn tail off the newest segment. A segment whose summary stands for it
//! exactly is replayed from the summary instead of being read (see `summary`).
//!
//! The newest segment is the only one a crash can leave unfinished (a segment is sealed only
//! after its last write was fsynced), so a bad frame or a write without its `Commit` there is a
//! torn tail: the file is truncated at the end of the last complete write, and what was cut is
//! logged. The same in any older segment is corruption of acknowledged data, and open fails with
//! [`StoreError::Corrupt`] naming the file and offset rather than silently losing it.
//! Replay is idempotent by seq: a copy moved by compaction may appear in two segments if a crash
//! came between the copy and the deletion of its old segment; the later frame wins.

use std::path::Path;

use super::StoreError;
use super::disk::Disk;
use super::index::{Index, Location, Seen};
use super::live::LiveCopies;
use super::record::Record;
use super::segment::{self, Scan, Scanned};
use super::summary;

/// What the writer starts from.
#[derive(Debug, Default)]
pub(super) struct State {
    pub index: Index,
    /// The seq the next `Put` gets.
    pub next_seq: u64,
    /// The id the next segment gets.
    pub next_segment: u64,
    /// The newest segment on disk, never deleted (its header carries `next_seq` across restarts
    /// even when no `Put` is left).
    pub newest: Option<u64>,
}

/// Everything recovery found.
#[derive(Debug)]
pub(super) struct Recovered {
    pub state: State,
    pub seen: Seen,
    /// Live copies in seq order.
    pub messages: LiveCopies,
}

/// Replays the log in `dir`. See the module docs.
///
/// # Errors
/// [`StoreError::Corrupt`] for damage outside the newest segment's tail; [`StoreError::Io`].
pub(super) fn recover(disk: &dyn Disk, dir: &Path) -> Result<Recovered, StoreError> {
    let segments = segment::list(disk, dir)?;
    let mut summaries = summary::list(disk, dir)?;
    let last = segments.last().map(|(id, _)| *id);
    let mut state = State {
        next_seq: 1,
        next_segment: last.map_or(1, |id| id + 1),
        ..State::default()
    };
    let mut seen = Seen::default();
    let mut messages = LiveCopies::default();
    // One buffer for every segment: fresh pages for each would be most of the time spent.
    let mut data = Vec::new();
    let count = segments.len();
    let mut summarized = 0;
    for (id, path) in segments {
        let io = |op, source| StoreError::Io {
            op,
            path: path.clone(),
            source,
        };
        let corrupt = |offset, reason: &str| StoreError::Corrupt {
            path: path.clone(),
            offset,
            reason: reason.to_owned(),
        };
        // Each committed record is replayed as the scan (or the summary) gives it; the first
        // must be the segment's own header.
        let (mut first, mut headed) = (true, false);
        let mut each = |s: Scanned| {
            if std::mem::take(&mut first)
                && let Record::Header { segment, next_seq } = s.record
                && segment == id
            {
                state.next_seq = state.next_seq.max(next_seq);
                headed = true;
            }
            if headed {
                let loc = Location {
                    segment: id,
                    offset: s.offset,
                    len: s.len,
                };
                replay(&mut state, &mut seen, &mut messages, loc, s.record);
            }
        };
        let from_summary = match summaries.remove(&id) {
            // Part of it replayed, then a read failed: the open fails (a scan would replay
            // that part twice).
            true => from_summary(disk, dir, id, &path, &mut each).map_err(|reason| {
                let source = std::io::Error::other(reason);
                StoreError::Io {
                    op: "read the summary of",
                    path: path.clone(),
                    source,
                }
            })?,
            false => None,
        };
        let good_len = match from_summary {
            Some(len) => {
                summarized += 1;
                len
            }
            None => {
                disk.read_into(&path, &mut data)
                    .map_err(|e| io("read", e))?;
                let mut built = summary::Spilled::new(id);
                let scan = segment::scan(&data, |s| {
                    built.add(s.offset, s.len, &s.record);
                    built.spill(disk, dir);
                    each(s);
                });
                if Some(id) != last {
                    if let Some(stop) = &scan.stop {
                        let reason =
                            format!("{} in a sealed segment (not a torn tail)", stop.reason);
                        return Err(corrupt(stop.offset, &reason));
                    }
                } else {
                    if scan.good_len < data.len() as u64 {
                        cut(disk, &path, &scan, data.len() as u64)?;
                    }
                    if scan.good_len == 0 {
                        // Created, but its first write never completed: nothing in it was
                        // acknowledged.
                        disk.remove(&path).map_err(|e| io("remove", e))?;
                        // No summary is written for a segment with nothing committed; one left
                        // there anyway would outlive it.
                        let _ = disk.remove(&summary::path(dir, id));
                        disk.sync_dir(dir).map_err(|e| io("sync directory of", e))?;
                        continue;
                    }
                }
                if headed {
                    // No run appends to a segment it found at open: it is sealed, and the next
                    // open can read its summary instead.
                    built.finish(disk, dir, scan.good_len);
                }
                scan.good_len
            }
        };
        if !headed {
            return Err(corrupt(0, "segment does not begin with its own header"));
        }
        state.index.add_segment(id);
        state.index.add_bytes(id, good_len);
        state.newest = Some(id);
        // Nothing more is added to it: its lists give back what they grew beyond their length.
        state.index.seal(id);
    }
    // Summaries of segments that are gone (a crash between removing the two files).
    for id in summaries {
        let _ = disk.remove(&summary::path(dir, id));
    }
    tracing::debug!(
        segments = count,
        summarized,
        "store: recovered (segments with a summary were not read)"
    );
    let (attempts, dead) = state.index.marks();
    messages.finish(attempts, dead);
    Ok(Recovered {
        state,
        seen,
        messages,
    })
}

/// Replays segment `id` from its summary, if the summary stands for it exactly; returns the
/// segment's committed length. `Ok(None)` (logged) when it does not, and nothing was replayed:
/// the segment is scanned instead.
///
/// # Errors
/// Why reading the summary failed after part of it was replayed (see [`summary::Unused`]).
pub(super) fn from_summary(
    disk: &dyn Disk,
    dir: &Path,
    id: u64,
    segment: &Path,
    each: impl FnMut(Scanned),
) -> Result<Option<u64>, String> {
    let path = summary::path(dir, id);
    let checked = (|| {
        let file = disk.open_read(&path)?;
        Ok::<_, std::io::Error>((file, disk.len(&path)?, disk.len(segment)?))
    })()
    .map_err(|e| summary::Unused::Refused(e.to_string()))
    .and_then(|(file, summary_len, segment_len)| {
        summary::replay_file(&*file, summary_len, id, segment_len, each)
    });
    match checked {
        Ok(len) => Ok(Some(len)),
        Err(summary::Unused::Refused(reason)) => {
            tracing::info!(
                summary = %path.display(),
                reason,
                "store: a segment's summary does not stand for it; scanning the segment"
            );
            Ok(None)
        }
        Err(summary::Unused::Broken(reason)) => Err(format!("{}: {reason}", path.display())),
    }
}

fn replay(
    state: &mut State,
    seen: &mut Seen,
    messages: &mut LiveCopies,
    loc: Location,
    record: Record,
) {
    match record {
        Record::Put(p) => {
            seen.insert(&p.queue, &p.message_id);
            state.next_seq = state.next_seq.max(p.seq.saturating_add(1));
            messages.put(&p);
            state.index.put(p.seq, loc, p.attempts, p.dead);
        }
        // A finished copy whose `Put` was in a deleted segment is simply not there.
        Record::Done { seq } => {
            state.index.done(seq);
            messages.done(seq);
        }
        Record::Attempt { seq, attempts } => {
            state.index.attempt(seq, attempts);
        }
        Record::DeadLetter { seq, reason } => {
            state.index.dead_letter(seq, reason);
        }
        Record::Header { .. } | Record::Commit { .. } => {}
    }
}

/// Truncates the newest segment at the end of its last complete write, durably.
fn cut(disk: &dyn Disk, path: &Path, scan: &Scan, file_len: u64) -> Result<(), StoreError> {
    let (found_at, reason) = scan
        .stop
        .as_ref()
        .map_or((scan.good_len, "zero padding"), |s| (s.offset, s.reason));
    tracing::warn!(
        segment = %path.display(),
        cut_at = scan.good_len,
        cut_bytes = file_len - scan.good_len,
        dropped_records = scan.uncommitted,
        found_at,
        reason,
        "store: cutting the unfinished tail of the newest segment (a write interrupted by a \
         crash, never acknowledged)"
    );
    let io = |op, source| StoreError::Io {
        op,
        path: path.to_owned(),
        source,
    };
    disk.truncate(path, scan.good_len)
        .map_err(|e| io("truncate", e))
}
