//! Domain types for messages: ids, precedence, and a typed builder for outgoing envelopes.
//!
//! [`Draft`] is how a Rust user writes a message: a typed payload, addressees, precedence and
//! expiry. The client library turns a draft into the exact bytes the originator signs. Nothing here
//! does I/O; the current time is always a parameter.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::wire::pb;

/// A message id: a UUIDv7 (time-ordered), 16 bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId([u8; 16]);

impl MessageId {
    /// A fresh UUIDv7 for the given time.
    pub fn new_v7(now: SystemTime) -> MessageId {
        let mut rnd = [0u8; 10];
        // The system RNG failing is not recoverable in any meaningful way for id generation.
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut rnd)
            .expect("system random number generator");
        let ms = now
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64;
        let mut b = [0u8; 16];
        b[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
        b[6..].copy_from_slice(&rnd);
        b[6] = (b[6] & 0x0f) | 0x70; // version 7
        b[8] = (b[8] & 0x3f) | 0x80; // RFC 9562 variant
        MessageId(b)
    }

    /// A deterministic id derived from a namespace and a name (UUIDv8 layout, SHA-256 based).
    /// Used where a re-run must produce the same id, e.g. bulk sending resumed from a file.
    pub fn derived(namespace: &[u8], name: &[u8]) -> MessageId {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(b"enlace/v1 derived message id\0");
        ctx.update(&(namespace.len() as u64).to_be_bytes());
        ctx.update(namespace);
        ctx.update(name);
        let d = ctx.finish();
        let mut b = [0u8; 16];
        b.copy_from_slice(&d.as_ref()[..16]);
        b[6] = (b[6] & 0x0f) | 0x80; // version 8
        b[8] = (b[8] & 0x3f) | 0x80;
        MessageId(b)
    }

    pub fn from_slice(b: &[u8]) -> Option<MessageId> {
        b.try_into().ok().map(MessageId)
    }

    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    pub fn to_bytes(self) -> Bytes {
        Bytes::copy_from_slice(&self.0)
    }

    /// Parses the canonical hyphenated form.
    pub fn parse(s: &str) -> Option<MessageId> {
        let hex: String = s.chars().filter(|c| *c != '-').collect();
        if hex.len() != 32 {
            return None;
        }
        let mut b = [0u8; 16];
        for (i, byte) in b.iter_mut().enumerate() {
            *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(MessageId(b))
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Precedence, ordered so that a more urgent level compares greater.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Precedence {
    Bulk,
    Routine,
    Priority,
    Immediate,
    Flash,
}

impl Precedence {
    /// All levels, most urgent first.
    pub const ALL: [Precedence; 5] = [
        Precedence::Flash,
        Precedence::Immediate,
        Precedence::Priority,
        Precedence::Routine,
        Precedence::Bulk,
    ];

    /// FLASH, IMMEDIATE and PRIORITY are time-sensitive: they travel one per stream, ahead of
    /// everything else. ROUTINE and BULK are analytical traffic.
    pub fn is_time_sensitive(self) -> bool {
        self >= Precedence::Priority
    }

    pub fn from_pb(p: pb::Precedence) -> Option<Precedence> {
        Some(match p {
            pb::Precedence::Flash => Precedence::Flash,
            pb::Precedence::Immediate => Precedence::Immediate,
            pb::Precedence::Priority => Precedence::Priority,
            pb::Precedence::Routine => Precedence::Routine,
            pb::Precedence::Bulk => Precedence::Bulk,
            pb::Precedence::Unspecified => return None,
        })
    }

    pub fn to_pb(self) -> pb::Precedence {
        match self {
            Precedence::Flash => pb::Precedence::Flash,
            Precedence::Immediate => pb::Precedence::Immediate,
            Precedence::Priority => pb::Precedence::Priority,
            Precedence::Routine => pb::Precedence::Routine,
            Precedence::Bulk => pb::Precedence::Bulk,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Precedence::Flash => "FLASH",
            Precedence::Immediate => "IMMEDIATE",
            Precedence::Priority => "PRIORITY",
            Precedence::Routine => "ROUTINE",
            Precedence::Bulk => "BULK",
        }
    }

    /// Parses a level name, case-insensitively.
    pub fn parse(s: &str) -> Option<Precedence> {
        Precedence::ALL
            .into_iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(s))
    }
}

impl fmt::Display for Precedence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Converts a system time to a protobuf timestamp.
pub fn timestamp(t: SystemTime) -> prost_types::Timestamp {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    prost_types::Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

/// Converts a protobuf timestamp to a system time (None if before the epoch or malformed).
pub fn system_time(t: &prost_types::Timestamp) -> Option<SystemTime> {
    if t.seconds < 0 || !(0..1_000_000_000).contains(&t.nanos) {
        return None;
    }
    Some(UNIX_EPOCH + Duration::new(t.seconds as u64, t.nanos as u32))
}

/// A message being written: typed payload, addressees, precedence, expiry and handling.
///
/// ```
/// use std::time::Duration;
/// use enlace::message::{Draft, Precedence};
/// use enlace::wire::pb;
///
/// let alert = pb::PrecursorChemicalAlert::default();
/// let draft = Draft::new(&alert)
///     .to("pgr")
///     .to("afi")
///     .precedence(Precedence::Flash)
///     .expires_in(Duration::from_secs(6 * 3600))
///     .case_id("DEA-2026-0142");
/// assert_eq!(draft.envelope().addressees.len(), 2);
/// ```
#[derive(Debug, Clone)]
pub struct Draft {
    envelope: pb::Envelope,
    expires_in: Option<Duration>,
    respond_within: Option<Duration>,
    id: Option<MessageId>,
}

impl Draft {
    /// Starts a message with a typed payload. Defaults: ROUTINE, ACTUAL, ORIGINAL, expires in 7 days.
    pub fn new<P: prost::Message + prost::Name>(payload: &P) -> Draft {
        Draft::from_raw(P::full_name(), payload.encode_to_vec().into())
    }

    /// Starts a message whose payload is already encoded.
    pub fn from_raw(payload_type: String, payload: Bytes) -> Draft {
        Draft {
            envelope: pb::Envelope {
                precedence: pb::Precedence::Routine as i32,
                status: pb::Status::Actual as i32,
                kind: pb::MessageKind::Original as i32,
                payload_type,
                payload,
                ..Default::default()
            },
            expires_in: Some(Duration::from_secs(7 * 24 * 3600)),
            respond_within: None,
            id: None,
        }
    }

    /// Adds an action addressee: an agency id, or `agency/unit`.
    pub fn to(self, addressee: &str) -> Draft {
        self.addressee(addressee, pb::CopyType::Action)
    }

    /// Adds an information-copy addressee.
    pub fn info(self, addressee: &str) -> Draft {
        self.addressee(addressee, pb::CopyType::Information)
    }

    fn addressee(mut self, addressee: &str, copy: pb::CopyType) -> Draft {
        let (agency, unit) = addressee.split_once('/').unwrap_or((addressee, ""));
        self.envelope.addressees.push(pb::Addressee {
            agency: agency.to_owned(),
            unit: unit.to_owned(),
            copy_type: copy as i32,
        });
        self
    }

    pub fn precedence(mut self, p: Precedence) -> Draft {
        self.envelope.precedence = p.to_pb() as i32;
        self
    }

    pub fn status(mut self, s: pb::Status) -> Draft {
        self.envelope.status = s as i32;
        self
    }

    pub fn kind(mut self, k: pb::MessageKind) -> Draft {
        self.envelope.kind = k as i32;
        self
    }

    /// Sets the lifetime; the message is never delivered after it.
    pub fn expires_in(mut self, d: Duration) -> Draft {
        self.expires_in = Some(d);
        self
    }

    /// Asks each action addressee for a business response within `d` (`respond_by`): without
    /// one by then, the originator gets an overdue notice and the addressee's escalation unit a
    /// reminder.
    pub fn respond_within(mut self, d: Duration) -> Draft {
        self.respond_within = Some(d);
        self
    }

    pub fn case_id(mut self, id: &str) -> Draft {
        self.envelope.case_id = id.to_owned();
        self
    }

    pub fn in_reply_to(mut self, id: MessageId) -> Draft {
        self.envelope.in_reply_to = id.to_bytes();
        self
    }

    /// Asks for a non-delivery report only, instead of a receipt for every stage: for
    /// high-volume analytical feeds (`enlace send --bulk`, the benchmark's records).
    pub fn non_delivery_receipts_only(mut self) -> Draft {
        self.envelope.receipts = pb::ReceiptRequest::NonDeliveryOnly as i32;
        self
    }

    pub fn handling(mut self, h: pb::HandlingPolicy) -> Draft {
        self.envelope.handling = Some(h);
        self
    }

    /// Fixes the message id (default: a fresh UUIDv7 at send time).
    pub fn id(mut self, id: MessageId) -> Draft {
        self.id = Some(id);
        self
    }

    /// The envelope as built so far (without id, originator or times).
    pub fn envelope(&self) -> &pb::Envelope {
        &self.envelope
    }

    /// Completes the envelope for sending at `now` by `originator`.
    pub fn finish(mut self, originator: pb::Originator, now: SystemTime) -> pb::Envelope {
        let id = self.id.unwrap_or_else(|| MessageId::new_v7(now));
        self.envelope.message_id = id.to_bytes();
        self.envelope.originator = Some(originator);
        self.envelope.created_at = Some(timestamp(now));
        self.envelope.expires_at = self.expires_in.map(|d| timestamp(now + d));
        if let Some(d) = self.respond_within {
            self.envelope.respond_by = Some(timestamp(now + d));
        }
        self.envelope
    }
}

/// Formats a time as RFC 3339 UTC with milliseconds, e.g. `2026-11-28T05:40:00.123Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let odt = time::OffsetDateTime::from_unix_timestamp(d.as_secs() as i64)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        odt.year(),
        u8::from(odt.month()),
        odt.day(),
        odt.hour(),
        odt.minute(),
        odt.second(),
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_v7_layout_and_order() {
        let t = UNIX_EPOCH + Duration::from_millis(1_700_000_000_000);
        let a = MessageId::new_v7(t);
        let b = MessageId::new_v7(t + Duration::from_millis(1));
        assert_eq!(a.as_bytes()[6] >> 4, 7);
        assert_eq!(a.as_bytes()[8] >> 6, 0b10);
        assert!(a < b);
        assert_eq!(MessageId::parse(&a.to_string()), Some(a));
        assert_eq!(a.to_string().len(), 36);
    }

    #[test]
    fn derived_ids_are_stable_and_distinct() {
        let a = MessageId::derived(b"file", b"1");
        assert_eq!(a, MessageId::derived(b"file", b"1"));
        assert_ne!(a, MessageId::derived(b"file", b"2"));
        assert_ne!(a, MessageId::derived(b"fil", b"e1"));
    }

    #[test]
    fn precedence_orders_flash_first() {
        assert!(Precedence::Flash > Precedence::Immediate);
        assert!(Precedence::Routine > Precedence::Bulk);
        assert!(Precedence::Priority.is_time_sensitive());
        assert!(!Precedence::Routine.is_time_sensitive());
        assert_eq!(Precedence::parse("flash"), Some(Precedence::Flash));
    }

    #[test]
    fn draft_finishes_with_id_times_and_originator() {
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let env = Draft::from_raw("enlace.v1.LiaisonMessage".into(), Bytes::new())
            .to("pgr/desk")
            .info("cenapi")
            .expires_in(Duration::from_secs(60))
            .finish(pb::Originator::default(), now);
        assert_eq!(env.message_id.len(), 16);
        assert_eq!(env.addressees[0].unit, "desk");
        assert_eq!(env.addressees[1].copy_type(), pb::CopyType::Information);
        assert_eq!(
            system_time(env.expires_at.as_ref().unwrap()),
            Some(now + Duration::from_secs(60))
        );
    }
}
