//! Reclaiming space: deleting finished head segments, compacting a sparse, pinned head, and
//! reading a live copy back from disk (for compaction and redrive). Part of the writer thread.
//!
//! A segment is deleted only from the head, and only when it holds no live copy, so a `Done`
//! record always outlives the `Put` it finishes. One old message would then pin every later
//! segment; compaction prevents that by copying the head's live copies forward (same seqs,
//! current attempts and dead state) a bounded slice per write, after which the head is deleted.
//! Nothing here decides when a message is finished: that is the node's `Done`.

use super::index::{Entry, Fingerprint};
use super::record::{Frame, Payload, PutBody, Record, read_frame};
use super::writer::{Fatal, Writer, fatal};
use super::{recover, segment, summary};

impl Writer {
    /// The segment to compact: the head, if it is sparse enough (see
    /// [`super::index::Index::compaction_source`]) and pinned (see [`Writer::watch_head`]), or
    /// if the whole log is so sparse that it must go, pinned or not.
    pub(super) fn compaction_source(&self) -> Option<u64> {
        let active = self.active.as_ref().map(|a| a.id);
        (self.state.index)
            .compaction_source(active, self.opts.compact_below_live_ratio)
            .filter(|&(head, far)| far || self.pinned == Some(head))
            .map(|(head, _)| head)
    }

    /// The live copies compaction moves in the next write: up to `max_batch_bytes` of the
    /// compaction source's, oldest first.
    fn compaction_moves(&self) -> Vec<u64> {
        let Some(source) = self.compaction_source() else {
            return Vec::new();
        };
        let mut budget = self.opts.max_batch_bytes as u64;
        let mut moving = Vec::new();
        let index = &self.state.index;
        for seq in index.segments()[&source].live_seqs(source, index) {
            if budget == 0 {
                break;
            }
            moving.push(seq);
            let len = self
                .state
                .index
                .get(seq)
                .map_or(0, |e| u64::from(e.loc.len));
            budget = budget.saturating_sub(len);
        }
        moving
    }

    /// At most how many bytes [`Writer::compact_into`] adds to the write (the copies it would
    /// move, each with its current dead-letter reason, which its old frame may not have had),
    /// and whether they are all the source's live copies (so that it can then be deleted).
    pub(super) fn compaction_bound(&self) -> (u64, bool) {
        let index = &self.state.index;
        let moves = self.compaction_moves();
        let whole = self
            .compaction_source()
            .is_some_and(|s| index.segments()[&s].live == moves.len());
        (self.moved_bound(moves.into_iter()), whole)
    }

    /// As [`Writer::compaction_bound`], for all of the compaction source's live copies: what
    /// emptying it takes, over as many writes as it needs.
    pub(super) fn compaction_source_bound(&self) -> u64 {
        let index = &self.state.index;
        self.compaction_source().map_or(0, |source| {
            self.moved_bound(index.segments()[&source].live_seqs(source, index))
        })
    }

    /// At most how many bytes copies of live copies `seqs` take, written again.
    fn moved_bound(&self, seqs: impl Iterator<Item = u64>) -> u64 {
        let index = &self.state.index;
        seqs.filter_map(|seq| Some((index.get(seq)?, index.dead_reason(seq))))
            .map(|(e, dead)| u64::from(e.loc.len) + dead.map_or(0, |d| d.len() as u64))
            .sum()
    }

    /// Adds copies of up to `max_batch_bytes` of the compaction source's live records, with
    /// their current attempts and dead state and their original seqs.
    pub(super) fn compact_into(&mut self, records: &mut Vec<Record>) -> Result<(), Fatal> {
        let moving = self.compaction_moves();
        for seq in moving {
            let mut body = self.read_put(seq)?;
            body.dead = self.state.index.dead_reason(seq).cloned();
            records.push(Record::Put(body));
            self.stats.compacted_records += 1;
        }
        Ok(())
    }

    /// Reads back the `Put` frame of live copy `seq`, checking it is the one the index expects,
    /// with the copy's current attempts (its frame has those it was written with).
    pub(super) fn read_put(&mut self, seq: u64) -> Result<PutBody, Fatal> {
        let Entry { loc, attempts } = self
            .state
            .index
            .get(seq)
            .ok_or_else(|| format!("store index has no live record {seq}"))?;
        let path = segment::path(&self.dir, loc.segment);
        let file = match self.readers.entry(loc.segment) {
            std::collections::hash_map::Entry::Occupied(f) => f.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => v.insert(
                self.disk
                    .open_read(&path)
                    .map_err(|e| fatal("open", &path, e))?,
            ),
        };
        let mut frame = vec![0; loc.len as usize];
        file.read_exact_at(&mut frame, loc.offset)
            .map_err(|e| fatal("read", &path, e))?;
        // The message bytes are a slice of the frame as read, not a second copy.
        let frame = bytes::Bytes::from(frame);
        let reason = match read_frame(&frame, 0) {
            Frame::Ok { kind, body, .. } => {
                match Record::decode_in(kind, body, Payload::Slice(&frame)) {
                    Ok(Record::Put(p)) if p.seq == seq => return Ok(PutBody { attempts, ..p }),
                    Ok(_) => "a different record",
                    Err(reason) => reason,
                }
            }
            Frame::End => "nothing",
            Frame::Bad(reason) => reason,
        };
        Err(format!(
            "record {seq} at {} offset {} reads back as {reason}",
            path.display(),
            loc.offset
        ))
    }

    /// The dedup fingerprints of segment `id`'s `Put` frames, which its deletion forgets: read
    /// from its summary, or from the segment when the summary does not stand for it (one lost
    /// to a crash, or removed on a full disk). The index does not keep them: 8 bytes for every
    /// queued copy, for an event that comes once per segment. A segment that cannot be read is
    /// logged, and its fingerprints stay (its message ids are still taken for seen, until the
    /// next open): not a reason to stop the store.
    fn fingerprints(&self, id: u64) -> Vec<Fingerprint> {
        let hasher = self.shared.seen().hasher();
        let mut fingerprints = Vec::new();
        let mut each = |s: segment::Scanned| {
            if let Record::Put(p) = s.record {
                fingerprints.push(hasher.fingerprint(&p.queue, &p.message_id));
            }
        };
        let path = segment::path(&self.dir, id);
        let summarized = match recover::from_summary(&*self.disk, &self.dir, id, &path, &mut each) {
            Ok(summarized) => summarized,
            Err(reason) => {
                tracing::warn!(
                    segment = %path.display(), reason,
                    "store: a finished segment's summary could not be read to the end; its \
                     message ids stay seen until the next open"
                );
                return Vec::new();
            }
        };
        if summarized.is_none() {
            let mut data = Vec::new();
            if let Err(e) = self.disk.read_into(&path, &mut data) {
                tracing::warn!(
                    segment = %path.display(), error = %e,
                    "store: a finished segment to delete could not be read; its message ids stay \
                     seen until the next open"
                );
                return Vec::new();
            }
            // A sealed segment: committed records only (damage past them would have stopped
            // the open).
            segment::scan(&data, each);
        }
        fingerprints
    }

    /// Deletes head segments that hold nothing live, oldest first, each deletion made durable
    /// before the next (so a crash can never bring back an older segment without the newer
    /// ones whose `Done` records finish its copies).
    pub(super) fn reclaim(&mut self) -> Result<(), Fatal> {
        while let Some(id) = self.state.index.deletable_head(self.state.newest) {
            let fingerprints = self.fingerprints(id);
            // Its summary first: a summary left without its segment is removed at open, and
            // one directory sync below makes both removals durable.
            let summary = summary::path(&self.dir, id);
            match self.disk.remove(&summary) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(fatal("remove", &summary, e));
                }
                _ => {}
            }
            let path = segment::path(&self.dir, id);
            self.disk
                .remove(&path)
                .map_err(|e| fatal("remove", &path, e))?;
            self.disk
                .sync_dir(&self.dir)
                .map_err(|e| fatal("sync directory of", &path, e))?;
            self.readers.remove(&id);
            self.state.index.remove_segment(id);
            let mut seen = self.shared.seen();
            for fp in fingerprints {
                seen.remove(fp);
            }
            self.stats.segments_deleted += 1;
        }
        Ok(())
    }
}
