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
//! to by the run that created it). Its summary is written as the segment grows, a megabyte at a
//! time ([`SPILL_BYTES`]: a segment of finished copies holds millions of small `Done` frames,
//! and a summary held whole took more memory than the segment), and finished when the segment
//! is sealed: its trailer written, after every byte it describes was made durable, and the file
//! fsynced. Until then its checksum does not hold, and it is not taken for a summary. It is
//! read back a megabyte at a time too. It is only ever a shortcut: recovery uses a summary only when
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
use super::crc::crc32c_append;
use super::disk::{Append, Disk, ReadAt};
use super::record::{FRAME_HEADER, Frame, MAX_FRAME_LEN, Payload, Record, read_frame};
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

/// Bytes a summary being built keeps in memory before they go to its file: a segment of
/// finished copies holds millions of small `Done` frames, and its summary, held whole, took
/// a hundred megabytes.
/// Tests take 512 bytes, so that the power-cut test's small segments spill theirs too.
pub(super) const SPILL_BYTES: usize = if cfg!(test) { 512 } else { 1 << 20 };

/// Bytes of a summary read at a time when it is replayed (512 in tests, as [`SPILL_BYTES`]).
const READ_BYTES: usize = if cfg!(test) { 512 } else { 1 << 20 };

/// A summary being built, record by record, as its segment is: pure, it hands out its bytes in
/// pieces ([`Builder::take`]) and last its trailer ([`Builder::finish`]), whose checksum covers
/// every piece taken before.
#[derive(Debug, Default)]
pub(super) struct Builder {
    buf: Vec<u8>,
    records: u32,
    /// The CRC-32C of the bytes taken so far.
    crc: u32,
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

    /// Bytes held, not yet taken.
    pub(super) fn held(&self) -> usize {
        self.buf.len()
    }

    /// The bytes added since the last take, to be written out in order.
    pub(super) fn take(&mut self) -> Vec<u8> {
        self.crc = crc32c_append(self.crc, &self.buf);
        std::mem::take(&mut self.buf)
    }

    /// The rest of the summary, for a segment whose committed part is `len` bytes long: what
    /// was not taken yet, and the trailer.
    pub(super) fn finish(mut self, segment: u64, len: u64) -> Vec<u8> {
        self.buf.extend_from_slice(MAGIC);
        self.buf.extend_from_slice(&segment.to_le_bytes());
        self.buf.extend_from_slice(&len.to_le_bytes());
        self.buf.extend_from_slice(&self.records.to_le_bytes());
        let crc = crc32c_append(self.crc, &self.buf);
        self.buf.extend_from_slice(&crc.to_le_bytes());
        self.buf
    }
}

/// A summary written to its file as its segment grows: what a [`Builder`] holds goes out each
/// time it passes [`SPILL_BYTES`], so a summary costs at most that much memory. Nothing is
/// synced before [`Spilled::finish`]: until its trailer is written and synced, the file is
/// not a summary (its checksum does not hold) and the next open scans the segment instead.
/// A write that fails (a full disk) gives the summary up: its file is removed, logged, and
/// the segment goes without one.
pub(super) struct Spilled {
    id: u64,
    built: Builder,
    file: Option<Box<dyn Append>>,
    given_up: bool,
}

impl std::fmt::Debug for Spilled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        (f.debug_struct("Spilled").field("id", &self.id))
            .field("held", &self.built.held())
            .field("given_up", &self.given_up)
            .finish_non_exhaustive()
    }
}

impl Spilled {
    /// The summary of segment `id`, nothing written yet.
    pub(super) fn new(id: u64) -> Spilled {
        Spilled {
            id,
            built: Builder::default(),
            file: None,
            given_up: false,
        }
    }

    /// See [`Builder::add`].
    pub(super) fn add(&mut self, offset: u64, len: u32, record: &Record) {
        if !self.given_up {
            self.built.add(offset, len, record);
        }
    }

    /// Writes out what is held, if it is [`SPILL_BYTES`] or more.
    pub(super) fn spill(&mut self, disk: &dyn Disk, dir: &Path) {
        if !self.given_up && self.built.held() >= SPILL_BYTES {
            let bytes = self.built.take();
            if let Err(e) = self.write(disk, dir, &bytes) {
                self.fail(disk, dir, &e);
            }
        }
    }

    /// Writes the rest and the trailer, for a segment whose committed part is `len` bytes
    /// long, and fsyncs the summary.
    pub(super) fn finish(mut self, disk: &dyn Disk, dir: &Path, len: u64) {
        if self.given_up {
            return;
        }
        let rest = std::mem::take(&mut self.built).finish(self.id, len);
        let written = self
            .write(disk, dir, &rest)
            .and_then(|()| (self.file.as_mut()).map_or(Ok(()), |f| f.sync_data()));
        if let Err(e) = written {
            self.fail(disk, dir, &e);
        }
    }

    /// Gives the summary up: nothing more is kept or written (its file, if any, is the
    /// caller's to remove).
    pub(super) fn give_up(&mut self) {
        self.given_up = true;
        self.file = None;
        self.built = Builder::default();
    }

    fn write(&mut self, disk: &dyn Disk, dir: &Path, bytes: &[u8]) -> std::io::Result<()> {
        let file = match &mut self.file {
            Some(file) => file,
            None => self.file.insert(create(disk, &path(dir, self.id))?),
        };
        file.write_all(bytes)
    }

    fn fail(&mut self, disk: &dyn Disk, dir: &Path, e: &std::io::Error) {
        let path = path(dir, self.id);
        tracing::warn!(
            summary = %path.display(),
            error = %e,
            "store: could not write a segment's summary; the next open scans the segment instead"
        );
        self.give_up();
        let _ = disk.remove(&path);
    }
}

/// Creates a summary's file, replacing one left there.
fn create(disk: &dyn Disk, path: &Path) -> std::io::Result<Box<dyn Append>> {
    match disk.create(path) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            disk.remove(path)?;
            disk.create(path)
        }
        r => r,
    }
}

/// Why a summary was not replayed whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Unused {
    /// It does not stand for its segment, and nothing of it was replayed: scan the segment.
    Refused(String),
    /// It checked out, but reading it again to replay it failed (or read other bytes) after
    /// part of it was replayed: what was replayed cannot be taken back.
    Broken(String),
}

/// [`replay`] of the summary in `file`, `summary_len` bytes long: read in one piece when it is
/// small, as most are.
pub(super) fn replay_file(
    file: &dyn ReadAt,
    summary_len: u64,
    segment: u64,
    file_len: u64,
    each: impl FnMut(Scanned),
) -> Result<u64, Unused> {
    let io = |e: std::io::Error| e.to_string();
    if summary_len <= READ_BYTES as u64 {
        let mut data = vec![0; summary_len as usize];
        file.read_exact_at(&mut data, 0)
            .map_err(|e| Unused::Refused(io(e)))?;
        return replay(summary_len, read_slice(&data), segment, file_len, each);
    }
    let read_at = |buf: &mut [u8], at| file.read_exact_at(buf, at).map_err(io);
    replay(summary_len, read_at, segment, file_len, each)
}

/// Reads from `data` as [`replay`] reads a file.
fn read_slice(data: &[u8]) -> impl FnMut(&mut [u8], u64) -> Result<(), String> + '_ {
    move |buf, at| {
        let from = usize::try_from(at)
            .ok()
            .and_then(|at| data.get(at..at.checked_add(buf.len())?))
            .ok_or("read past the end")?;
        buf.copy_from_slice(from);
        Ok(())
    }
}

/// Replays segment `segment`'s summary, `summary_len` bytes read with `read_at` (which fills
/// its buffer from the given offset), for a segment whose file is `file_len` bytes long: calls
/// `each` for every record in it, in log order, and returns the committed length. The summary
/// is read a piece at a time (it may be larger than its segment): its trailer first, then its
/// body once to check it whole (its checksum, and every entry decoded) without replaying
/// anything, then once more to replay it, checksummed again.
///
/// # Errors
/// [`Unused::Refused`] when the summary cannot stand for the segment (then the segment must be
/// scanned); [`Unused::Broken`] when the second reading fails after part of it was replayed.
pub(super) fn replay(
    summary_len: u64,
    mut read_at: impl FnMut(&mut [u8], u64) -> Result<(), String>,
    segment: u64,
    file_len: u64,
    mut each: impl FnMut(Scanned),
) -> Result<u64, Unused> {
    let refused = |e: &str| Unused::Refused(e.to_owned());
    let Some(body_len) = summary_len.checked_sub(TRAILER as u64) else {
        return Err(refused("too short"));
    };
    let mut trailer = [0; TRAILER];
    read_at(&mut trailer, body_len).map_err(Unused::Refused)?;
    let u64_at = |at: usize| u64::from_le_bytes(trailer[at..at + 8].try_into().expect("8 bytes"));
    if &trailer[..8] != MAGIC {
        return Err(refused("not a segment summary"));
    }
    if u64_at(8) != segment {
        return Err(refused("the summary of another segment"));
    }
    let len = u64_at(16);
    if len != file_len {
        return Err(refused("the segment's length differs from the summary's"));
    }
    let count = u32::from_le_bytes(trailer[24..28].try_into().expect("4 bytes"));
    let (signed, sum) = trailer.split_at(TRAILER - 4);
    let sum = u32::from_le_bytes(sum.try_into().expect("4 bytes"));
    // Checked whole before any record is replayed: a summary is used entirely or not at all.
    let mut records = 0u64;
    let mut check = |s: Scanned| -> Result<(), String> {
        if records == 0 && !matches!(s.record, Record::Header { segment: s, .. } if s == segment) {
            return Err("it does not begin with the segment's header".into());
        }
        if s.offset.saturating_add(u64::from(s.len)) > len {
            return Err("a record past the segment's committed end".into());
        }
        records += 1;
        Ok(())
    };
    let mut piece = Vec::new();
    // A torn or damaged file is refused: by an entry that does not decode, or its checksum.
    let body_crc = match entries(body_len, &mut read_at, &mut piece, &mut check) {
        Ok(crc) => crc,
        Err(Entries::Read(e) | Entries::Bad(e)) => return Err(Unused::Refused(e)),
    };
    if crc32c_append(body_crc, signed) != sum {
        return Err(refused("checksum mismatch"));
    }
    if records == 0 {
        return Err(refused("it does not begin with the segment's header"));
    }
    if records != u64::from(count) {
        return Err(refused("record count mismatch"));
    }
    let mut apply = |s: Scanned| {
        each(s);
        Ok(())
    };
    match entries(body_len, &mut read_at, &mut piece, &mut apply) {
        Ok(crc) if crc == body_crc => Ok(len),
        Ok(_) => Err(Unused::Broken("it changed while it was read".into())),
        Err(Entries::Read(e) | Entries::Bad(e)) => Err(Unused::Broken(e)),
    }
}

/// Why [`entries`] stopped.
enum Entries {
    /// Reading failed.
    Read(String),
    /// An entry does not decode, or the caller refused it.
    Bad(String),
}

/// Decodes the entries of a summary's body (`body_len` bytes, read with `read_at` a piece at a
/// time into `window`), calling `each` for every one until it fails; returns the body's
/// CRC-32C.
fn entries(
    body_len: u64,
    read_at: &mut impl FnMut(&mut [u8], u64) -> Result<(), String>,
    window: &mut Vec<u8>,
    each: &mut impl FnMut(Scanned) -> Result<(), String>,
) -> Result<u32, Entries> {
    let bad = |e: &str| Entries::Bad(e.to_owned());
    // `window[pos..end]` holds the body's bytes from `read - (end - pos)` to `read`.
    let (mut pos, mut end, mut read, mut crc) = (0, 0, 0u64, 0);
    loop {
        let avail = &window[pos..end];
        // An entry: the frame's offset and length in the segment, then the frame.
        let need = match avail.get(12..12 + FRAME_HEADER) {
            Some(h) => {
                let frame = u32::from_le_bytes(h[..4].try_into().expect("4 bytes")) as usize;
                if frame > MAX_FRAME_LEN {
                    return Err(bad("frame runs past the end of the data"));
                }
                12 + FRAME_HEADER + frame
            }
            None => 12 + FRAME_HEADER,
        };
        if avail.len() >= need {
            let (place, _) = avail.split_first_chunk::<12>().expect("12 bytes");
            let offset = u64::from_le_bytes(place[..8].try_into().expect("8 bytes"));
            let len = u32::from_le_bytes(place[8..].try_into().expect("4 bytes"));
            let record = match read_frame(&avail[..need], 12) {
                Frame::Ok { kind, body, .. } => {
                    Record::decode_in(kind, body, Payload::Skip).map_err(bad)?
                }
                Frame::End => return Err(bad("truncated entry")),
                Frame::Bad(reason) => return Err(bad(reason)),
            };
            pos += need;
            each(Scanned {
                offset,
                len,
                record,
            })
            .map_err(Entries::Bad)?;
            continue;
        }
        if read == body_len {
            return match avail.is_empty() {
                true => Ok(crc),
                false => Err(bad("truncated entry")),
            };
        }
        // Keep the start of the entry, and read more after it.
        window.copy_within(pos..end, 0);
        (end, pos) = (end - pos, 0);
        if window.len() < need.max(READ_BYTES) {
            window.resize(need.max(READ_BYTES), 0);
        }
        let n = ((body_len - read) as usize).min(window.len() - end);
        read_at(&mut window[end..end + n], read).map_err(Entries::Read)?;
        crc = crc32c_append(crc, &window[end..end + n]);
        (end, read) = (end + n, read + n as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::disk::sim::SimDisk;
    use crate::store::record::PutBody;

    /// [`replay`] of a summary held in memory.
    fn replay_slice(
        data: &[u8],
        segment: u64,
        len: u64,
        each: impl FnMut(Scanned),
    ) -> Result<u64, Unused> {
        replay(data.len() as u64, read_slice(data), segment, len, each)
    }

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
        let len = replay_slice(&data, 4, 239, |s| got.push((s.offset, s.len, s.record))).unwrap();
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
            let r = replay_slice(data, segment, len, |_| called = true);
            assert!(!called, "a record was replayed from a bad summary");
            match r {
                Err(Unused::Refused(reason)) => reason,
                other => panic!("{other:?}"),
            }
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
        // Nothing in it at all.
        assert_eq!(
            refused(&Builder::default().finish(4, 0), 4, 0),
            "it does not begin with the segment's header"
        );
        assert_eq!(parse_name("seg-00000000000000000004.sum"), Some(4));
        assert_eq!(parse_name("seg-00000000000000000004.log"), None);
        assert_eq!(
            path(Path::new("/s"), 4),
            Path::new("/s/seg-00000000000000000004.sum")
        );
    }

    /// Records of a segment `n` frames long: its header, then `Put`s and `Done`s, with
    /// queue names of every length up to 250 bytes, so entries straddle the pieces a summary is
    /// read in.
    fn many(n: u64) -> Vec<(u64, u32, Record)> {
        let mut recs = vec![(
            0,
            29,
            Record::Header {
                segment: 4,
                next_seq: 1,
            },
        )];
        for seq in 1..n {
            let rec = match seq % 3 {
                0 => Record::Done { seq: seq - 1 },
                _ => Record::Put(PutBody {
                    queue: "q".repeat((seq % 250) as usize + 1),
                    ..match put(seq) {
                        Record::Put(p) => p,
                        _ => unreachable!(),
                    }
                }),
            };
            recs.push((seq * 100, 100, rec));
        }
        recs
    }

    fn without_message(r: &Record) -> Record {
        match r {
            Record::Put(p) => Record::Put(PutBody {
                bytes: bytes::Bytes::new(),
                ..p.clone()
            }),
            r => r.clone(),
        }
    }

    #[test]
    fn a_summary_taken_in_pieces_is_the_summary_built_whole_and_replays_across_read_pieces() {
        let recs = many(60_000);
        let len = 60_000 * 100;
        let (mut whole, mut pieces) = (Builder::default(), Builder::default());
        let mut taken = Vec::new();
        for (i, (o, l, r)) in recs.iter().enumerate() {
            whole.add(*o, *l, r);
            pieces.add(*o, *l, r);
            if i % 7_919 == 0 {
                taken.extend(pieces.take());
            }
        }
        taken.extend(pieces.finish(4, len));
        let whole = whole.finish(4, len);
        assert!(whole.len() > 3 * READ_BYTES, "read in several pieces");
        assert_eq!(taken, whole);
        let mut got = Vec::new();
        replay_slice(&whole, 4, len, |s| got.push((s.offset, s.len, s.record))).unwrap();
        let expected: Vec<_> = recs
            .iter()
            .map(|(o, l, r)| (*o, *l, without_message(r)))
            .collect();
        assert_eq!(got.len(), expected.len());
        let first_wrong = got.iter().zip(&expected).position(|(g, e)| g != e);
        assert_eq!(
            first_wrong,
            None,
            "{:?}",
            first_wrong.map(|i| (&got[i], &expected[i]))
        );
    }

    #[test]
    fn a_spilled_summary_holds_at_most_a_spill_in_memory_and_is_written_whole_at_the_end() {
        let disk = SimDisk::default();
        let dir = Path::new("/store");
        let recs = many(60_000);
        let mut s = Spilled::new(4);
        for (o, l, r) in &recs {
            s.add(*o, *l, r);
            s.spill(&disk, dir);
            assert!(s.built.held() < SPILL_BYTES + 1024);
        }
        // Not a summary before it is finished: its checksum does not hold.
        let partial = disk.read(&path(dir, 4)).unwrap();
        assert!(partial.len() >= 2 * SPILL_BYTES);
        assert!(replay_slice(&partial, 4, 60_000 * 100, |_| ()).is_err());
        s.finish(&disk, dir, 60_000 * 100);
        let written = disk.read(&path(dir, 4)).unwrap();
        let mut whole = Builder::default();
        recs.iter().for_each(|(o, l, r)| whole.add(*o, *l, r));
        assert_eq!(written, whole.finish(4, 60_000 * 100));
    }

    #[test]
    fn a_summary_that_cannot_be_written_is_given_up_and_removed() {
        let disk = SimDisk::default();
        let dir = Path::new("/store");
        let recs = many(60_000);
        let mut s = Spilled::new(4);
        let mut spilled = false;
        for (o, l, r) in &recs {
            s.add(*o, *l, r);
            s.spill(&disk, dir);
            if !spilled && disk.len(&path(dir, 4)).is_ok() {
                // The disk fills once a piece is out.
                spilled = true;
                disk.set_space(Some(0));
            }
        }
        assert!(spilled && s.given_up);
        assert_eq!(s.built.held(), 0, "nothing more is kept");
        assert!(disk.len(&path(dir, 4)).is_err(), "its file is removed");
        s.finish(&disk, dir, 60_000 * 100);
        assert!(
            disk.len(&path(dir, 4)).is_err(),
            "and not written at the end"
        );
    }

    #[test]
    fn a_summary_whose_second_reading_fails_says_part_of_it_was_replayed() {
        let recs = many(20_000);
        let mut b = Builder::default();
        recs.iter().for_each(|(o, l, r)| b.add(*o, *l, r));
        let data = b.finish(4, 20_000 * 100);
        let pieces = data.len().div_ceil(READ_BYTES);
        // Replays `data` with reads that fail after the first `n`: what it answers, and how
        // many records it replayed.
        let failing_after = |n: usize| {
            let (mut reads, mut slice, mut replayed) = (0, read_slice(&data), 0);
            let failing = |buf: &mut [u8], at: u64| {
                reads += 1;
                match reads > n {
                    true => Err("input/output error".to_owned()),
                    false => slice(buf, at),
                }
            };
            let r = replay(data.len() as u64, failing, 4, 20_000 * 100, |_| {
                replayed += 1
            });
            (r, replayed)
        };
        // Reads: the trailer, the body once to check it, then half of it again.
        let (r, replayed) = failing_after(1 + pieces + pieces / 2);
        assert_eq!(r, Err(Unused::Broken("input/output error".into())));
        assert!(replayed > 0 && replayed < recs.len(), "{replayed}");
        // Failing on the first reading, nothing is replayed: the segment can be scanned.
        let (r, replayed) = failing_after(1 + pieces / 2);
        assert_eq!(r, Err(Unused::Refused("input/output error".into())));
        assert_eq!(replayed, 0);
    }
}
