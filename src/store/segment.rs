//! Segment files: their names, the directory lock, and the scan that finds where a segment's
//! committed records end.
//!
//! A segment is `<dir>/seg-<20-digit segment id>.log`; ids start at 1 and only grow, so names
//! sort in log order. (They are numbered by segment rather than by first seq because compaction
//! copies keep their original seqs, and a segment may hold no `Put` at all.) The scan is pure;
//! the few file helpers here do no retries and return `std::io` errors for the caller to type.

use std::any::Any;
use std::path::{Path, PathBuf};

use super::StoreError;
use super::disk::Disk;
use super::record::{Frame, Payload, Record, read_frame};

/// The path of segment `id` in `dir`.
pub(super) fn path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("seg-{id:020}.log"))
}

/// The path of the spare segment (see `Writer::take_spare`): no segment until it is renamed
/// to one, and not listed as one.
pub(super) fn spare_path(dir: &Path) -> PathBuf {
    dir.join("SPARE")
}

fn parse_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("seg-")?.strip_suffix(".log")?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

/// The segment files in `dir`, oldest first. Other files are ignored.
pub(super) fn list(disk: &dyn Disk, dir: &Path) -> Result<Vec<(u64, PathBuf)>, StoreError> {
    let names = disk.list(dir).map_err(|source| StoreError::Io {
        op: "list",
        path: dir.to_owned(),
        source,
    })?;
    let mut out = Vec::new();
    for name in names {
        if let Some(id) = parse_name(&name) {
            out.push((id, dir.join(name)));
        }
    }
    out.sort_unstable_by_key(|(id, _)| *id);
    Ok(out)
}

/// Takes the store's exclusive lock (`<dir>/LOCK`), so two processes never append to one log.
/// The lock lasts as long as the returned file is open.
///
/// # Errors
/// [`StoreError::Locked`] when another handle or process holds it.
pub(super) fn lock(disk: &dyn Disk, dir: &Path) -> Result<Box<dyn Any + Send>, StoreError> {
    match disk.lock(dir) {
        Ok(Some(lock)) => Ok(lock),
        Ok(None) => Err(StoreError::Locked(dir.to_owned())),
        Err(source) => Err(StoreError::Io {
            op: "lock",
            path: dir.join("LOCK"),
            source,
        }),
    }
}

/// Where (the frame that could not be used, or the end of the data) and why a scan stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Stop {
    pub offset: u64,
    pub reason: &'static str,
}

/// A committed record and where its frame is.
#[derive(Debug)]
pub(super) struct Scanned {
    pub offset: u64,
    pub len: u32,
    pub record: Record,
}

/// Where a segment's committed records end, and why.
#[derive(Debug)]
pub(super) struct Scan {
    /// End of the last `Commit`: the committed part of the file.
    pub good_len: u64,
    /// Set when something other than zero padding follows `good_len`: a bad frame, or frames of
    /// a write whose `Commit` never made it.
    pub stop: Option<Stop>,
    /// Well-formed frames after the last `Commit` (a write cut short), dropped.
    pub uncommitted: usize,
}

/// Scans a segment's bytes, handing each record of a complete write to `each`, in order, once
/// its `Commit` is read (records are not gathered: a segment holds tens of thousands). Never
/// fails: the caller decides whether a stop is a torn tail (the newest segment) or corruption
/// (any older one). A `Put`'s message bytes are not kept (see [`Payload::Skip`]).
pub(super) fn scan(data: &[u8], mut each: impl FnMut(Scanned)) -> Scan {
    let mut pending = Vec::new();
    let mut good_len = 0;
    let mut pos = 0;
    let stop = loop {
        let at = pos as u64;
        let (kind, body, next) = match read_frame(data, pos) {
            Frame::Ok { kind, body, next } => (kind, body, next),
            Frame::End if pending.is_empty() => break None,
            Frame::End => break Some("a write without its commit record"),
            Frame::Bad(reason) => break Some(reason),
        };
        match Record::decode_in(kind, body, Payload::Skip) {
            Err(reason) => break Some(reason),
            Ok(Record::Commit { records: n }) if n as usize != pending.len() => {
                break Some("commit record counts a different number of records");
            }
            Ok(Record::Commit { .. }) => {
                pending.drain(..).for_each(&mut each);
                good_len = next as u64;
            }
            Ok(record) => pending.push(Scanned {
                offset: at,
                len: (next - pos) as u32, // At most FRAME_HEADER + MAX_FRAME_LEN.
                record,
            }),
        }
        pos = next;
    };
    Scan {
        good_len,
        stop: stop.map(|reason| Stop {
            offset: pos as u64,
            reason,
        }),
        uncommitted: pending.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(recs: &[Record], out: &mut Vec<u8>) {
        for r in recs {
            r.encode(out);
        }
        Record::Commit {
            records: recs.len() as u32,
        }
        .encode(out);
    }

    /// Scans `data`, also returning the records handed over.
    fn scan_all(data: &[u8]) -> (Scan, Vec<Scanned>) {
        let mut records = Vec::new();
        (scan(data, |r| records.push(r)), records)
    }

    fn header() -> Record {
        Record::Header {
            segment: 1,
            next_seq: 1,
        }
    }

    #[test]
    fn names_round_trip_and_strangers_are_ignored() {
        let p = path(Path::new("/d"), 42);
        assert_eq!(p, Path::new("/d/seg-00000000000000000042.log"));
        assert_eq!(parse_name("seg-00000000000000000042.log"), Some(42));
        assert_eq!(parse_name("seg-42.log"), None);
        assert_eq!(parse_name("seg-00000000000000000042.log.tmp"), None);
        assert_eq!(parse_name("LOCK"), None);
    }

    #[test]
    fn a_complete_log_scans_clean_with_or_without_padding() {
        let mut data = Vec::new();
        write(&[header(), Record::Done { seq: 1 }], &mut data);
        write(&[Record::Done { seq: 2 }], &mut data);
        let (s, records) = scan_all(&data);
        assert_eq!((s.good_len, s.stop), (data.len() as u64, None));
        let kinds: Vec<_> = records.iter().map(|r| r.record.clone()).collect();
        assert_eq!(
            kinds,
            [header(), Record::Done { seq: 1 }, Record::Done { seq: 2 }]
        );
        let len = data.len();
        data.resize(len + 4096, 0);
        let (s, _) = scan_all(&data);
        assert_eq!((s.good_len, s.stop), (len as u64, None));
    }

    #[test]
    fn a_write_without_its_commit_is_dropped_whole() {
        let mut data = Vec::new();
        write(&[header()], &mut data);
        let good = data.len() as u64;
        Record::Done { seq: 1 }.encode(&mut data);
        Record::Done { seq: 2 }.encode(&mut data);
        let (s, records) = scan_all(&data);
        assert_eq!(records.len(), 1);
        assert_eq!(s.good_len, good);
        assert_eq!(s.uncommitted, 2);
        assert_eq!(
            s.stop.unwrap().offset,
            data.len() as u64,
            "found at the end of the data"
        );
    }

    #[test]
    fn a_commit_with_the_wrong_count_is_a_stop() {
        let mut data = Vec::new();
        write(&[header()], &mut data);
        Record::Done { seq: 1 }.encode(&mut data);
        Record::Commit { records: 2 }.encode(&mut data);
        let (s, records) = scan_all(&data);
        assert_eq!(records.len(), 1);
        assert!(s.stop.is_some());
    }
}
