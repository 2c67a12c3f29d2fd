//! Segment summaries: a sealed segment's committed records without their messages, so that
//! opening a store reads a few megabytes per segment instead of every message in it.
//!
//! `<dir>/seg-<id>.sum` sits beside `seg-<id>.log`. It lists, in log order, each committed
//! record of the segment but its `Commit`s, as the frame recovery's scan would decode (a `Put`
//! without its message bytes), with the offset and length of the record's frame in the segment.
//! A trailer names the segment and the length of its committed part, and a CRC-32C covers the
//! whole file.
//!
//! A segment is sealed when no run will append to it again: when the writer rolls to the next
//! one, when the store closes, and at open for every segment found (a segment is only appended
//! to by the run that created it). Its summary is written then, after every byte it describes
//! was made durable, and fsynced. It is only ever a shortcut: recovery uses a summary only when
//! its checksum holds, it names the segment, and the segment's file is exactly as long as the
//! part it describes. Otherwise (torn by a power cut, missing, or a segment changed since, such
//! as a torn tail cut) the segment is scanned as before and its summary written again. A
//! summary that cannot be written (a full disk) is logged and skipped. Summaries are removed
//! with their segments.
//!
//! What recovery no longer does for a summarized segment is check every message's checksum; a
//! damaged message is still found when it is read back for delivery (see `reclaim::read_put`
//! and [`super::Store::read`]).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::StoreError;
use super::crc::crc32c;
use super::disk::Disk;
use super::record::{Frame, Payload, Record, read_frame};
use super::segment::Scanned;

/// Ends every summary, before the segment id, committed length, record count and checksum.
const MAGIC: &[u8; 8] = b"ENLSUM01";
/// `MAGIC`, segment u64, committed length u64, records u32, CRC-32C u32.
const TRAILER: usize = 8 + 8 + 8 + 4 + 4;

/// The path of segment `id`'s summary in `dir`.
pub(super) fn path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("seg-{id:020}.sum"))
}

/// The segment id a summary's file name stands for.
pub(super) fn parse_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("seg-")?.strip_suffix(".sum")?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

/// The segment ids that have a summary in `dir`.
///
/// # Errors
/// [`StoreError::Io`] when the directory cannot be listed.
pub(super) fn list(disk: &dyn Disk, dir: &Path) -> Result<BTreeSet<u64>, StoreError> {
    let names = disk.list(dir).map_err(|source| StoreError::Io {
        op: "list",
        path: dir.to_owned(),
        source,
    })?;
    Ok(names.iter().filter_map(|n| parse_name(n)).collect())
}

/// A summary being written, record by record, as its segment is.
#[derive(Debug, Default)]
pub(super) struct Builder {
    buf: Vec<u8>,
    records: u32,
}

impl Builder {
    /// Adds a committed record whose frame is `len` bytes at `offset` in the segment.
    /// `Commit`s are left out (everything in a summary is committed).
    pub(super) fn add(&mut self, offset: u64, len: u32, record: &Record) {
        if matches!(record, Record::Commit { .. }) {
            return;
        }
        self.buf.extend_from_slice(&offset.to_le_bytes());
        self.buf.extend_from_slice(&len.to_le_bytes());
        record.encode_without_message(&mut self.buf);
        self.records += 1;
    }

    /// The summary's bytes, for a segment whose committed part is `len` bytes long.
    pub(super) fn finish(mut self, segment: u64, len: u64) -> Vec<u8> {
        self.buf.extend_from_slice(MAGIC);
        self.buf.extend_from_slice(&segment.to_le_bytes());
        self.buf.extend_from_slice(&len.to_le_bytes());
        self.buf.extend_from_slice(&self.records.to_le_bytes());
        let crc = crc32c(&self.buf);
        self.buf.extend_from_slice(&crc.to_le_bytes());
        self.buf
    }
}

/// Replays summary `data` of `segment`, whose file is `file_len` bytes long: calls `each` for
/// every record in it, in log order, and returns the committed length. Nothing is replayed
/// unless the whole summary checks out first.
///
/// # Errors
/// Why the summary cannot stand for the segment (then the segment must be scanned).
pub(super) fn replay(
    data: &[u8],
    segment: u64,
    file_len: u64,
    mut each: impl FnMut(Scanned),
) -> Result<u64, &'static str> {
    let Some(body_len) = data.len().checked_sub(TRAILER) else {
        return Err("too short");
    };
    let (signed, crc) = data.split_at(data.len() - 4);
    if crc32c(signed) != u32::from_le_bytes(crc.try_into().map_err(|_| "too short")?) {
        return Err("checksum mismatch");
    }
    let trailer = &data[body_len..];
    let u64_at = |at: usize| u64::from_le_bytes(trailer[at..at + 8].try_into().expect("8 bytes"));
    if &trailer[..8] != MAGIC {
        return Err("not a segment summary");
    }
    if u64_at(8) != segment {
        return Err("the summary of another segment");
    }
    let len = u64_at(16);
    if len != file_len {
        return Err("the segment's length differs from the summary's");
    }
    let count = u32::from_le_bytes(trailer[24..28].try_into().expect("4 bytes"));
    // Checked whole before any record is replayed: a summary is used entirely or not at all.
    let mut records = Vec::with_capacity(count.min(1 << 20) as usize);
    let body = &data[..body_len];
    let mut pos = 0;
    while pos < body.len() {
        let Some((place, _)) = body[pos..].split_first_chunk::<12>() else {
            return Err("truncated entry");
        };
        let offset = u64::from_le_bytes(place[..8].try_into().expect("8 bytes"));
        let frame_len = u32::from_le_bytes(place[8..].try_into().expect("4 bytes"));
        let record = match read_frame(body, pos + 12) {
            Frame::Ok {
                kind,
                body: rec,
                next,
            } => {
                pos = next;
                Record::decode_in(kind, rec, Payload::Skip)?
            }
            Frame::End => return Err("truncated entry"),
            Frame::Bad(reason) => return Err(reason),
        };
        if offset.saturating_add(u64::from(frame_len)) > len {
            return Err("a record past the segment's committed end");
        }
        records.push(Scanned {
            offset,
            len: frame_len,
            record,
        });
    }
    if records.len() != count as usize {
        return Err("record count mismatch");
    }
    if !matches!(records.first(), Some(Scanned { record: Record::Header { segment: s, .. }, .. }) if *s == segment)
    {
        return Err("it does not begin with the segment's header");
    }
    records.into_iter().for_each(&mut each);
    Ok(len)
}

/// Writes segment `id`'s summary and fsyncs it, replacing any earlier one. A summary is only a
/// shortcut for the next open, so failing to write one is logged, and what was written of it is
/// removed (best effort).
pub(super) fn write(disk: &dyn Disk, dir: &Path, id: u64, summary: &[u8]) {
    let path = path(dir, id);
    let attempt = || -> std::io::Result<()> {
        let mut file = match disk.create(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                disk.remove(&path)?;
                disk.create(&path)?
            }
            r => r?,
        };
        file.write_all(summary)?;
        file.sync_data()
    };
    if let Err(e) = attempt() {
        tracing::warn!(
            summary = %path.display(),
            error = %e,
            "store: could not write a segment's summary; the next open scans the segment instead"
        );
        let _ = disk.remove(&path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::record::PutBody;

    fn put(seq: u64) -> Record {
        Record::Put(PutBody {
            seq,
            queue: "node/pgr-1".into(),
            message_id: [seq as u8; 16],
            precedence: 3,
            expires_at_ms: 9,
            received_at_ms: 7,
            attempts: 1,
            dead: None,
            bytes: bytes::Bytes::from_static(b"the message itself"),
        })
    }

    fn sample() -> (Vec<u8>, Vec<(u64, u32, Record)>) {
        let recs = vec![
            (
                0,
                29,
                Record::Header {
                    segment: 4,
                    next_seq: 10,
                },
            ),
            (29, 90, put(10)),
            (119, 17, Record::Done { seq: 10 }),
            (136, 13, Record::Commit { records: 3 }),
            (149, 90, put(11)),
        ];
        let mut b = Builder::default();
        for (o, l, r) in &recs {
            b.add(*o, *l, r);
        }
        (b.finish(4, 239), recs)
    }

    #[test]
    fn a_summary_gives_back_the_records_as_a_scan_would_without_messages_or_commits() {
        let (data, recs) = sample();
        let mut got = Vec::new();
        let len = replay(&data, 4, 239, |s| got.push((s.offset, s.len, s.record))).unwrap();
        assert_eq!(len, 239);
        let expected: Vec<_> = recs
            .into_iter()
            .filter(|(_, _, r)| !matches!(r, Record::Commit { .. }))
            .map(|(o, l, r)| match r {
                Record::Put(p) => (
                    o,
                    l,
                    Record::Put(PutBody {
                        bytes: bytes::Bytes::new(),
                        ..p
                    }),
                ),
                r => (o, l, r),
            })
            .collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn a_summary_that_does_not_match_its_segment_exactly_is_not_used() {
        let (data, _) = sample();
        let refused = |data: &[u8], segment, len| {
            let mut called = false;
            let r = replay(data, segment, len, |_| called = true);
            assert!(!called, "a record was replayed from a bad summary");
            r.unwrap_err()
        };
        assert_eq!(refused(&data, 5, 239), "the summary of another segment");
        assert_eq!(
            refused(&data, 4, 300),
            "the segment's length differs from the summary's"
        );
        // Every torn prefix, and every single flipped bit, is refused.
        for cut in 0..data.len() {
            refused(&data[..cut], 4, 239);
        }
        for i in 0..data.len() * 8 {
            let mut bad = data.clone();
            bad[i / 8] ^= 1 << (i % 8);
            refused(&bad, 4, 239);
        }
        // Well formed, but not beginning with the segment's header.
        let mut headless = Builder::default();
        headless.add(0, 90, &put(10));
        let headless = headless.finish(4, 90);
        assert_eq!(
            refused(&headless, 4, 90),
            "it does not begin with the segment's header"
        );
        assert_eq!(parse_name("seg-00000000000000000004.sum"), Some(4));
        assert_eq!(parse_name("seg-00000000000000000004.log"), None);
        assert_eq!(
            path(Path::new("/s"), 4),
            Path::new("/s/seg-00000000000000000004.sum")
        );
    }
}
