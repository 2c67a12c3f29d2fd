//! The on-disk record format: framing, checksum, and the encoding of each record kind.
//!
//! Pure: bytes in, records out. Nothing here opens files or knows about segments or indexes.
//!
//! A frame is `[u32 len][u32 crc][u8 kind][body]`, all integers **little-endian**; `len` counts
//! `kind + body` (so it is at least 1) and `crc` is the CRC-32C (Castagnoli) of those same bytes.
//! A `len` of 0 marks the end of data (zero padding, or a file that ends exactly there). The
//! record kinds and their bodies are listed on [`Record`]; strings are UTF-8 with a length prefix,
//! and a `Put`'s message bytes run to the end of its body, so they need no length of their own.

use bytes::Bytes;

use super::crc::crc32c;

/// Bytes before `kind`: `len` and `crc`.
pub(super) const FRAME_HEADER: usize = 8;
/// Largest message a `Put` may carry. Far above the node's frame limit (1 MiB by default); it
/// exists so that a corrupt `len` can never make recovery allocate without bound.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
/// Largest queue name, in bytes (its length is stored in one byte).
pub const MAX_QUEUE_BYTES: usize = 255;
/// Dead-letter reasons are cut to this many bytes (at a character boundary) before storing.
pub const MAX_REASON_BYTES: usize = 1024;
/// Largest `len` accepted when reading: a `Put` of the largest message with its longest fields.
pub(super) const MAX_FRAME_LEN: usize = MAX_MESSAGE_BYTES + 4096;
/// Format version written in each segment header.
pub(super) const FORMAT_VERSION: u32 = 1;

const KIND_HEADER: u8 = 1;
const KIND_PUT: u8 = 2;
const KIND_DONE: u8 = 3;
const KIND_ATTEMPT: u8 = 4;
const KIND_DEAD: u8 = 5;
const KIND_COMMIT: u8 = 6;

/// One copy of a message waiting in a queue, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct PutBody {
    pub seq: u64,
    pub queue: String,
    pub message_id: [u8; 16],
    pub precedence: u8,
    pub expires_at_ms: u64,
    pub received_at_ms: u64,
    pub attempts: u32,
    /// Set when a dead-lettered copy is moved forward by compaction, so the copy is one record.
    pub dead: Option<String>,
    pub bytes: Bytes,
}

/// What decoding a `Put` keeps of its message bytes.
#[derive(Debug, Clone, Copy)]
pub(super) enum Payload<'a> {
    /// A slice of `owner`, the bytes the body lies in (compaction reads a frame and writes its
    /// message again).
    Slice(&'a Bytes),
    /// None (recovery needs only a copy's place and metadata; the message stays on disk and
    /// is read back before its turn).
    Skip,
}

/// A log record. Bodies (after the kind byte):
/// - `Header` (1): `version u32, segment u64, next_seq u64` — first record of every segment.
/// - `Put` (2): `seq u64, message_id [16], precedence u8, expires_at_ms u64, received_at_ms u64,
///   attempts u32, queue_len u8, queue, dead_flag u8, dead_len u16, dead, message bytes…`
/// - `Done` (3): `seq u64`.
/// - `Attempt` (4): `seq u64, attempts u32`.
/// - `DeadLetter` (5): `seq u64, reason…` (to the end of the body).
/// - `Commit` (6): `records u32`, the number of frames since the previous `Commit` (or the start
///   of the segment). It ends every write; frames after the last `Commit` were never
///   acknowledged and recovery drops them, so each write is all-or-nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Record {
    Header { segment: u64, next_seq: u64 },
    Put(PutBody),
    Done { seq: u64 },
    Attempt { seq: u64, attempts: u32 },
    DeadLetter { seq: u64, reason: String },
    Commit { records: u32 },
}

/// The frame length of a `Put` whose queue name, dead-letter reason and message have these
/// lengths.
pub(super) fn put_len(queue: usize, dead: usize, bytes: usize) -> usize {
    FRAME_HEADER + 1 + 8 + 16 + 1 + 8 + 8 + 4 + 1 + queue + 3 + dead + bytes
}

/// The frame length of a segment `Header`.
pub(super) const HEADER_LEN: usize = FRAME_HEADER + 1 + 20;

pub(super) fn done_len() -> usize {
    FRAME_HEADER + 1 + 8
}

pub(super) fn attempt_len() -> usize {
    FRAME_HEADER + 1 + 12
}

pub(super) fn commit_len() -> usize {
    FRAME_HEADER + 1 + 4
}

/// The frame length of a `DeadLetter` with a reason this long.
pub(super) fn dead_letter_len(reason: usize) -> usize {
    FRAME_HEADER + 1 + 8 + reason
}

/// What [`read_frame`] found at a position.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Frame<'a> {
    /// A frame whose checksum matches; the next one starts at `next`.
    Ok {
        kind: u8,
        body: &'a [u8],
        next: usize,
    },
    /// End of data: the end of the buffer, or zero bytes to the end of it.
    End,
    /// Not a valid frame, and why.
    Bad(&'static str),
}

/// Reads the frame starting at `pos`, checking its length and checksum.
pub(super) fn read_frame(buf: &[u8], pos: usize) -> Frame<'_> {
    let rest = buf.get(pos..).unwrap_or_default();
    if rest.iter().all(|&b| b == 0) {
        // Covers the exact end of the buffer and zero padding (a `len` of 0 and nothing after).
        return Frame::End;
    }
    let Some((header, after)) = rest.split_first_chunk::<FRAME_HEADER>() else {
        return Frame::Bad("truncated frame header");
    };
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if len == 0 {
        return Frame::Bad("zero length followed by data");
    }
    if len > MAX_FRAME_LEN || len > after.len() {
        return Frame::Bad("frame runs past the end of the data");
    }
    let data = &after[..len];
    if crc32c(data) != crc {
        return Frame::Bad("checksum mismatch");
    }
    Frame::Ok {
        kind: data[0],
        body: &data[1..],
        next: pos + FRAME_HEADER + len,
    }
}

impl Record {
    /// Bytes this record takes on disk, frame header included.
    pub(super) fn frame_len(&self) -> usize {
        match self {
            Record::Header { .. } => HEADER_LEN,
            Record::Put(p) => put_len(
                p.queue.len(),
                p.dead.as_ref().map_or(0, String::len),
                p.bytes.len(),
            ),
            Record::Done { .. } => done_len(),
            Record::Attempt { .. } => attempt_len(),
            Record::DeadLetter { reason, .. } => dead_letter_len(reason.len()),
            Record::Commit { .. } => commit_len(),
        }
    }

    /// Appends this record's frame to `out`. Callers keep strings within the documented limits
    /// ([`MAX_QUEUE_BYTES`], [`MAX_REASON_BYTES`]); longer ones are cut here rather than corrupt
    /// the frame.
    pub(super) fn encode(&self, out: &mut Vec<u8>) {
        self.encode_with(out, true);
    }

    /// As [`Record::encode`], but a `Put`'s frame without its message bytes (what a segment's
    /// summary keeps, see `summary`; decoded, it is the record recovery's scan would give).
    pub(super) fn encode_without_message(&self, out: &mut Vec<u8>) {
        self.encode_with(out, false);
    }

    fn encode_with(&self, out: &mut Vec<u8>, message: bool) {
        let start = out.len();
        out.extend_from_slice(&[0; FRAME_HEADER]);
        match self {
            Record::Header { segment, next_seq } => {
                out.push(KIND_HEADER);
                out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
                out.extend_from_slice(&segment.to_le_bytes());
                out.extend_from_slice(&next_seq.to_le_bytes());
            }
            Record::Put(p) => {
                out.push(KIND_PUT);
                out.extend_from_slice(&p.seq.to_le_bytes());
                out.extend_from_slice(&p.message_id);
                out.push(p.precedence);
                out.extend_from_slice(&p.expires_at_ms.to_le_bytes());
                out.extend_from_slice(&p.received_at_ms.to_le_bytes());
                out.extend_from_slice(&p.attempts.to_le_bytes());
                let queue = &p.queue.as_bytes()[..p.queue.len().min(MAX_QUEUE_BYTES)];
                out.push(queue.len() as u8); // At most MAX_QUEUE_BYTES (255).
                out.extend_from_slice(queue);
                let dead = p.dead.as_deref().unwrap_or_default().as_bytes();
                let dead = &dead[..dead.len().min(u16::MAX as usize)];
                out.push(u8::from(p.dead.is_some()));
                out.extend_from_slice(&(dead.len() as u16).to_le_bytes());
                out.extend_from_slice(dead);
                if message {
                    out.extend_from_slice(&p.bytes);
                }
            }
            Record::Done { seq } => {
                out.push(KIND_DONE);
                out.extend_from_slice(&seq.to_le_bytes());
            }
            Record::Attempt { seq, attempts } => {
                out.push(KIND_ATTEMPT);
                out.extend_from_slice(&seq.to_le_bytes());
                out.extend_from_slice(&attempts.to_le_bytes());
            }
            Record::DeadLetter { seq, reason } => {
                out.push(KIND_DEAD);
                out.extend_from_slice(&seq.to_le_bytes());
                out.extend_from_slice(reason.as_bytes());
            }
            Record::Commit { records } => {
                out.push(KIND_COMMIT);
                out.extend_from_slice(&records.to_le_bytes());
            }
        }
        let len = (out.len() - start - FRAME_HEADER) as u32; // Bounded by MAX_FRAME_LEN.
        let crc = crc32c(&out[start + FRAME_HEADER..]);
        out[start..start + 4].copy_from_slice(&len.to_le_bytes());
        out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    }

    /// Decodes the body of a frame whose checksum matched.
    ///
    /// # Errors
    /// A static reason when the kind is unknown or the body is malformed.
    #[cfg(test)]
    pub(super) fn decode(kind: u8, body: &[u8]) -> Result<Record, &'static str> {
        let owner = Bytes::copy_from_slice(body);
        Record::decode_in(kind, &owner, Payload::Slice(&owner))
    }

    /// As [`Record::decode`], keeping of a `Put`'s message bytes what `payload` says.
    pub(super) fn decode_in(
        kind: u8,
        body: &[u8],
        payload: Payload<'_>,
    ) -> Result<Record, &'static str> {
        let mut r = Reader(body);
        let rec = match kind {
            KIND_HEADER => {
                if r.u32()? != FORMAT_VERSION {
                    return Err("unsupported segment format version");
                }
                Record::Header {
                    segment: r.u64()?,
                    next_seq: r.u64()?,
                }
            }
            KIND_PUT => {
                let seq = r.u64()?;
                let message_id = r.take(16)?.try_into().map_err(|_| "short message id")?;
                let precedence = r.u8()?;
                let expires_at_ms = r.u64()?;
                let received_at_ms = r.u64()?;
                let attempts = r.u32()?;
                let queue_len = r.u8()? as usize;
                let queue = r.string(queue_len)?;
                let has_dead = r.u8()? != 0;
                let dead_len = r.u16()? as usize;
                let dead = r.string(dead_len)?;
                Record::Put(PutBody {
                    seq,
                    queue,
                    message_id,
                    precedence,
                    expires_at_ms,
                    received_at_ms,
                    attempts,
                    dead: has_dead.then_some(dead),
                    bytes: {
                        let rest = r.rest();
                        match payload {
                            Payload::Slice(owner) => owner.slice_ref(rest),
                            Payload::Skip => Bytes::new(),
                        }
                    },
                })
            }
            KIND_DONE => Record::Done { seq: r.u64()? },
            KIND_ATTEMPT => Record::Attempt {
                seq: r.u64()?,
                attempts: r.u32()?,
            },
            KIND_DEAD => {
                let seq = r.u64()?;
                let len = r.0.len();
                Record::DeadLetter {
                    seq,
                    reason: r.string(len)?,
                }
            }
            KIND_COMMIT => Record::Commit { records: r.u32()? },
            _ => return Err("unknown record kind"),
        };
        if !r.0.is_empty() {
            return Err("trailing bytes in record body");
        }
        Ok(rec)
    }
}

/// A cursor over a record body; every read is bounds-checked.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], &'static str> {
        if self.0.len() < n {
            return Err("record body too short");
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], &'static str> {
        let mut a = [0; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, &'static str> {
        Ok(self.array::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, &'static str> {
        self.array().map(u16::from_le_bytes)
    }
    fn u32(&mut self) -> Result<u32, &'static str> {
        self.array().map(u32::from_le_bytes)
    }
    fn u64(&mut self) -> Result<u64, &'static str> {
        self.array().map(u64::from_le_bytes)
    }
    fn string(&mut self, n: usize) -> Result<String, &'static str> {
        let b = self.take(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| "string is not UTF-8")
    }
    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(dead: Option<&str>) -> Record {
        Record::Put(PutBody {
            seq: 42,
            queue: "mailbox:pgr".into(),
            message_id: [7; 16],
            precedence: 3,
            expires_at_ms: 1_700_000_000_000,
            received_at_ms: 1_600_000_000_000,
            attempts: 2,
            dead: dead.map(str::to_owned),
            bytes: Bytes::from_static(b"an envelope"),
        })
    }

    fn all_kinds() -> Vec<Record> {
        vec![
            Record::Header {
                segment: 9,
                next_seq: 100,
            },
            put(None),
            put(Some("too many attempts")),
            put(Some("")),
            Record::Done { seq: 5 },
            Record::Attempt {
                seq: 6,
                attempts: 3,
            },
            Record::DeadLetter {
                seq: 7,
                reason: "expired".into(),
            },
            Record::Commit { records: 8 },
        ]
    }

    #[test]
    fn every_kind_round_trips_and_frame_len_is_exact() {
        let mut buf = Vec::new();
        for rec in all_kinds() {
            let start = buf.len();
            rec.encode(&mut buf);
            assert_eq!(buf.len() - start, rec.frame_len(), "{rec:?}");
        }
        let mut pos = 0;
        let mut decoded = Vec::new();
        while let Frame::Ok { kind, body, next } = read_frame(&buf, pos) {
            decoded.push(Record::decode(kind, body).unwrap());
            pos = next;
        }
        assert_eq!(decoded, all_kinds());
        assert_eq!(read_frame(&buf, pos), Frame::End);
    }

    #[test]
    fn zero_padding_is_the_end_but_data_after_a_zero_len_is_not() {
        let mut buf = Vec::new();
        Record::Done { seq: 1 }.encode(&mut buf);
        let end = buf.len();
        buf.resize(end + 100, 0);
        assert_eq!(read_frame(&buf, end), Frame::End);
        buf.push(1);
        assert_eq!(
            read_frame(&buf, end),
            Frame::Bad("zero length followed by data")
        );
    }

    #[test]
    fn every_single_byte_flip_and_truncation_is_detected() {
        let mut buf = Vec::new();
        put(Some("x")).encode(&mut buf);
        for i in 0..buf.len() {
            let mut bad = buf.clone();
            bad[i] ^= 0x10;
            assert!(matches!(read_frame(&bad, 0), Frame::Bad(_)), "flip at {i}");
            assert!(
                matches!(read_frame(&buf[..i], 0), Frame::Bad(_) | Frame::End),
                "cut {i}"
            );
        }
    }

    #[test]
    fn a_huge_len_is_refused_without_allocating() {
        let mut buf = vec![0xff, 0xff, 0xff, 0x7f, 0, 0, 0, 0, KIND_DONE];
        buf.extend_from_slice(&[0; 8]);
        assert_eq!(
            read_frame(&buf, 0),
            Frame::Bad("frame runs past the end of the data")
        );
    }

    #[test]
    fn malformed_bodies_are_errors_not_panics() {
        assert_eq!(Record::decode(99, &[]), Err("unknown record kind"));
        assert_eq!(
            Record::decode(KIND_DONE, &[1, 2]),
            Err("record body too short")
        );
        assert_eq!(
            Record::decode(KIND_DONE, &[0; 9]),
            Err("trailing bytes in record body")
        );
        let mut header = 2u32.to_le_bytes().to_vec();
        header.extend_from_slice(&[0; 16]);
        assert_eq!(
            Record::decode(KIND_HEADER, &header),
            Err("unsupported segment format version")
        );
        let mut dead = 1u64.to_le_bytes().to_vec();
        dead.extend_from_slice(&[0xff, 0xfe]);
        assert_eq!(Record::decode(KIND_DEAD, &dead), Err("string is not UTF-8"));
        // Every prefix of a valid Put body is rejected cleanly.
        let mut buf = Vec::new();
        put(Some("r")).encode(&mut buf);
        let body = &buf[FRAME_HEADER + 1..];
        let fixed = 8 + 16 + 1 + 8 + 8 + 4 + 1 + "mailbox:pgr".len() + 3 + 1;
        for n in 0..fixed {
            assert!(Record::decode(KIND_PUT, &body[..n]).is_err(), "prefix {n}");
        }
    }
}
