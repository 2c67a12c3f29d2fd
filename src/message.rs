//! Messages as Enlace knows them: ids, precedence, status, and [`Message`], the one domain type a
//! signed envelope becomes.
//!
//! The protobuf `Envelope` is decoded in exactly one place, [`Message::parse`], which checks its
//! structure (id, originator, addressees, precedence, status, times, payload type) and keeps the
//! exact bytes the originator signed beside the fields read from them. Nodes build a `Message`
//! once when they admit an envelope (or recover it from their store) and carry it with every
//! queued copy; the client library builds one for every delivery. Who sent it and whether its
//! signature holds are admission's business (`validate`), not this module's.
//!
//! Nothing here does I/O; the current time is always a parameter.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use prost::Message as _;

use crate::address::Mailbox;
use crate::identity::{AgencyId, is_name};
use crate::refusal::Refusal;
use crate::wire::pb;

/// A message id: 16 bytes, a UUIDv7 (time-ordered) or, for ids derived from content, a UUIDv8.
///
/// Printed and parsed in the canonical hyphenated form:
///
/// ```
/// use enlace::MessageId;
///
/// let id: MessageId = "01a220d3-7886-74d0-99d1-f57d343e1e76".parse().unwrap();
/// assert_eq!(id.to_string(), "01a220d3-7886-74d0-99d1-f57d343e1e76");
/// assert!("not-an-id".parse::<MessageId>().is_err());
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId([u8; 16]);

/// A string that is not a message id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a message id (a UUID such as 01a220d3-7886-74d0-99d1-f57d343e1e76)")]
pub struct BadMessageId(pub String);

impl MessageId {
    /// A fresh UUIDv7 for the given time.
    ///
    /// ```
    /// use std::time::SystemTime;
    /// use enlace::MessageId;
    ///
    /// let a = MessageId::new_v7(SystemTime::now());
    /// assert_eq!(a.to_string().len(), 36);
    /// ```
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

    /// A deterministic id derived from a namespace and a name (UUIDv8 layout, SHA-256 based), for
    /// where a re-run must produce the same id, e.g. bulk sending resumed from a file.
    ///
    /// ```
    /// use enlace::MessageId;
    ///
    /// let a = MessageId::derived(b"/data/records.jsonl", b"line 1");
    /// assert_eq!(a, MessageId::derived(b"/data/records.jsonl", b"line 1"));
    /// assert_ne!(a, MessageId::derived(b"/data/records.jsonl", b"line 2"));
    /// ```
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

    /// The id in its 16-byte binary form, if `b` is 16 bytes long.
    pub fn from_slice(b: &[u8]) -> Option<MessageId> {
        b.try_into().ok().map(MessageId)
    }

    /// The 16 bytes of the id.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// The 16 bytes of the id, as the protobuf fields carry it.
    pub fn to_bytes(self) -> Bytes {
        Bytes::copy_from_slice(&self.0)
    }

    /// Whether the id has the layout a node accepts for a new message (UUIDv7 or v8).
    pub(crate) fn is_v7_or_v8(&self) -> bool {
        matches!(self.0[6] >> 4, 7 | 8)
    }
}

impl std::str::FromStr for MessageId {
    type Err = BadMessageId;

    /// Parses the canonical hyphenated form (hyphens optional).
    fn from_str(s: &str) -> Result<MessageId, BadMessageId> {
        let bad = || BadMessageId(s.to_owned());
        let hex: Vec<u8> = s.bytes().filter(|c| *c != b'-').collect();
        if hex.len() != 32 {
            return Err(bad());
        }
        let mut b = [0u8; 16];
        for (i, byte) in b.iter_mut().enumerate() {
            let pair = std::str::from_utf8(&hex[2 * i..2 * i + 2]).map_err(|_| bad())?;
            *byte = u8::from_str_radix(pair, 16).map_err(|_| bad())?;
        }
        Ok(MessageId(b))
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
///
/// FLASH, IMMEDIATE and PRIORITY are time-sensitive: they travel one per stream, ahead of
/// everything else; ROUTINE and BULK are analytical traffic.
///
/// ```
/// use enlace::Precedence;
///
/// assert!(Precedence::Flash > Precedence::Routine);
/// assert!(Precedence::Priority.is_time_sensitive());
/// assert_eq!("flash".parse::<Precedence>(), Ok(Precedence::Flash));
/// ```
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

    /// FLASH, IMMEDIATE and PRIORITY are time-sensitive.
    pub fn is_time_sensitive(self) -> bool {
        self >= Precedence::Priority
    }

    /// The level a protobuf precedence names; `None` for `UNSPECIFIED`.
    pub(crate) fn from_pb(p: pb::Precedence) -> Option<Precedence> {
        Some(match p {
            pb::Precedence::Flash => Precedence::Flash,
            pb::Precedence::Immediate => Precedence::Immediate,
            pb::Precedence::Priority => Precedence::Priority,
            pb::Precedence::Routine => Precedence::Routine,
            pb::Precedence::Bulk => Precedence::Bulk,
            pb::Precedence::Unspecified => return None,
        })
    }

    pub(crate) fn to_pb(self) -> pb::Precedence {
        match self {
            Precedence::Flash => pb::Precedence::Flash,
            Precedence::Immediate => pb::Precedence::Immediate,
            Precedence::Priority => pb::Precedence::Priority,
            Precedence::Routine => pb::Precedence::Routine,
            Precedence::Bulk => pb::Precedence::Bulk,
        }
    }

    /// The level's name in capitals, e.g. `FLASH`.
    pub fn as_str(self) -> &'static str {
        match self {
            Precedence::Flash => "FLASH",
            Precedence::Immediate => "IMMEDIATE",
            Precedence::Priority => "PRIORITY",
            Precedence::Routine => "ROUTINE",
            Precedence::Bulk => "BULK",
        }
    }

    /// QUIC stream priority for this level: more urgent is sent first.
    pub(crate) fn stream_priority(self) -> i32 {
        match self {
            Precedence::Flash => 100,
            Precedence::Immediate => 80,
            Precedence::Priority => 60,
            Precedence::Routine => 20,
            Precedence::Bulk => 0,
        }
    }
}

/// A string that is not a precedence level.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a precedence: use FLASH, IMMEDIATE, PRIORITY, ROUTINE or BULK")]
pub struct BadPrecedence(pub String);

impl std::str::FromStr for Precedence {
    type Err = BadPrecedence;

    /// Parses a level name, case-insensitively.
    fn from_str(s: &str) -> Result<Precedence, BadPrecedence> {
        Precedence::ALL
            .into_iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| BadPrecedence(s.to_owned()))
    }
}

impl fmt::Display for Precedence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What kind of traffic a message is: exercise and test traffic never looks operational.
///
/// ```
/// use enlace::Status;
///
/// assert_eq!("exercise".parse::<Status>(), Ok(Status::Exercise));
/// assert_eq!(Status::Actual.to_string(), "ACTUAL");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    /// Real operational traffic.
    Actual,
    /// Traffic of an exercise.
    Exercise,
    /// Technical test traffic.
    Test,
    /// Traffic nodes generate themselves: receipts, non-delivery reports, overdue notices.
    System,
}

impl Status {
    pub(crate) fn from_pb(s: pb::Status) -> Option<Status> {
        Some(match s {
            pb::Status::Actual => Status::Actual,
            pb::Status::Exercise => Status::Exercise,
            pb::Status::Test => Status::Test,
            pb::Status::System => Status::System,
            pb::Status::Unspecified => return None,
        })
    }

    pub(crate) fn to_pb(self) -> pb::Status {
        match self {
            Status::Actual => pb::Status::Actual,
            Status::Exercise => pb::Status::Exercise,
            Status::Test => pb::Status::Test,
            Status::System => pb::Status::System,
        }
    }

    /// The status in capitals, e.g. `EXERCISE`.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Actual => "ACTUAL",
            Status::Exercise => "EXERCISE",
            Status::Test => "TEST",
            Status::System => "SYSTEM",
        }
    }
}

/// A string that is not a status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a status: use ACTUAL, EXERCISE, TEST or SYSTEM")]
pub struct BadStatus(pub String);

impl std::str::FromStr for Status {
    type Err = BadStatus;

    fn from_str(s: &str) -> Result<Status, BadStatus> {
        [Status::Actual, Status::Exercise, Status::Test, Status::System]
            .into_iter()
            .find(|x| x.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| BadStatus(s.to_owned()))
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who wrote a message: a client of an agency at the node that accepted it, or for SYSTEM
/// messages the node itself.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Originator {
    /// The originator's agency (stable id).
    pub agency: AgencyId,
    /// The node that accepted the message from its client (or that wrote it).
    pub node: String,
    /// The client (certificate name); `None` for a node's own SYSTEM messages.
    pub client: Option<String>,
}

impl Originator {
    pub(crate) fn to_pb(&self) -> pb::Originator {
        pb::Originator {
            agency: self.agency.to_string(),
            node: self.node.clone(),
            client: self.client.clone().unwrap_or_default(),
        }
    }
}

impl fmt::Display for Originator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.client {
            Some(c) => write!(f, "{}/{c}", self.agency),
            None => write!(f, "{}/node/{}", self.agency, self.node),
        }
    }
}

/// One recipient of a message.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Addressee {
    /// The agency as the originator wrote it, in lowercase: its id or an alias, resolved by the
    /// agency directory when the message is routed.
    pub agency: String,
    /// The agency's inbox or one of its units.
    pub mailbox: Mailbox,
    /// Whether the addressee is expected to act (an action copy) or only informed.
    pub action: bool,
}

impl fmt::Display for Addressee {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.mailbox {
            Mailbox::Inbox => f.write_str(&self.agency),
            Mailbox::Unit(u) => write!(f, "{}/{u}", self.agency),
        }
    }
}

/// A node a message passed, as its hop record says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hop {
    /// The node's name.
    pub node: String,
    /// The node's agency.
    pub agency: String,
    /// When the node received the message.
    pub received_at: Option<SystemTime>,
    /// When it forwarded the message on, if it did.
    pub forwarded_at: Option<SystemTime>,
}

impl Hop {
    pub(crate) fn from_pb(h: &pb::HopRecord) -> Hop {
        Hop {
            node: h.node.clone(),
            agency: h.agency.clone(),
            received_at: h.received_at.as_ref().and_then(system_time),
            forwarded_at: h.forwarded_at.as_ref().and_then(system_time),
        }
    }
}

/// A signed message, parsed once from the exact envelope bytes its originator signed.
///
/// Clients see one in every [`Delivery`](crate::Delivery); nodes carry one with every copy they
/// queue. The fields are read from [`Message::envelope_bytes`], which are never re-encoded.
#[derive(Debug, Clone)]
pub struct Message {
    pub(crate) id: MessageId,
    pub(crate) originator: Originator,
    pub(crate) addressees: Vec<Addressee>,
    pub(crate) precedence: Precedence,
    pub(crate) status: Status,
    pub(crate) created_at: SystemTime,
    pub(crate) expires_at: SystemTime,
    pub(crate) respond_by: Option<SystemTime>,
    /// `HandlingPolicy.max_hops`: relay nodes allowed between the originator's node and the node
    /// that serves an addressee.
    pub(crate) max_relays: Option<u32>,
    pub(crate) case_id: String,
    pub(crate) in_reply_to: Option<MessageId>,
    pub(crate) payload_type: String,
    pub(crate) payload: Bytes,
    /// Whether the originator asked for a receipt per stage (not non-delivery reports only).
    pub(crate) stage_receipts: bool,
    /// The exact bytes the originator signed.
    pub(crate) envelope: Bytes,
    /// The originator's signature over `envelope` (single or batch).
    pub(crate) signature: Option<pb::Signature>,
}

impl Message {
    /// Parses and checks the structure of an envelope: every field a node relies on must be
    /// present and well-formed. `envelope` are the exact signed bytes; `signature` travels
    /// beside them. Refusals are `INVALID` with a reason naming the field.
    pub(crate) fn parse(
        envelope: Bytes,
        signature: Option<pb::Signature>,
    ) -> Result<Message, (Refusal, Option<MessageId>)> {
        let env = pb::Envelope::decode(envelope.clone()).map_err(|e| {
            let reason = format!("envelope bytes do not decode: {e}");
            (Refusal::invalid(reason), None)
        })?;
        let id = MessageId::from_slice(&env.message_id)
            .filter(MessageId::is_v7_or_v8)
            .ok_or_else(|| {
                let reason = "message_id must be a 16-byte UUIDv7 (or a derived UUIDv8)";
                (Refusal::invalid(reason), None)
            })?;
        let fail = |reason: String| (Refusal::invalid(reason), Some(id));
        let o = env
            .originator
            .as_ref()
            .ok_or_else(|| fail("originator is missing".into()))?;
        let originator = Originator {
            agency: AgencyId::new(&o.agency).map_err(|_| {
                fail(format!(
                    "originator agency {} is not an agency id",
                    clip(&o.agency)
                ))
            })?,
            node: name_field(&o.node, "originator node").map_err(&fail)?,
            client: match o.client.as_str() {
                "" => None,
                c => Some(name_field(c, "originator client").map_err(&fail)?),
            },
        };
        let precedence = Precedence::from_pb(env.precedence())
            .ok_or_else(|| fail("precedence is missing or unknown".into()))?;
        let status = Status::from_pb(env.status()).ok_or_else(|| {
            fail("status is missing or unknown (ACTUAL, EXERCISE, TEST or SYSTEM)".into())
        })?;
        let time = |t: &Option<prost_types::Timestamp>, what: &str| {
            t.as_ref()
                .and_then(system_time)
                .ok_or_else(|| fail(format!("{what} is missing")))
        };
        let created_at = time(&env.created_at, "created_at")?;
        let expires_at = time(&env.expires_at, "expires_at")?;
        let respond_by = env.respond_by.as_ref().and_then(system_time);
        if env.payload_type.is_empty() {
            return Err(fail("payload_type is missing".into()));
        }
        let in_reply_to = match env.in_reply_to.len() {
            0 => None,
            _ => Some(
                MessageId::from_slice(&env.in_reply_to)
                    .ok_or_else(|| fail("in_reply_to must be a 16-byte message id".into()))?,
            ),
        };
        if env.addressees.is_empty() {
            return Err(fail("no addressees".into()));
        }
        let mut addressees: Vec<Addressee> = Vec::with_capacity(env.addressees.len());
        for a in &env.addressees {
            // Agency names are compared without case ("FGR" is "fgr"); the directory resolves
            // aliases when the message is routed.
            let agency = a.agency.to_ascii_lowercase();
            if !is_name(&agency) {
                return Err(fail(format!(
                    "addressee {} is not an agency id or alias",
                    clip(&a.agency)
                )));
            }
            let mailbox = match a.unit.as_str() {
                "" => Mailbox::Inbox,
                u => Mailbox::unit(u).map_err(|_| {
                    fail(format!(
                        "addressee unit {} is not a valid name (lowercase letters, digits, '-')",
                        clip(u)
                    ))
                })?,
            };
            let action = a.copy_type() != pb::CopyType::Information;
            match addressees
                .iter_mut()
                .find(|x| x.agency == agency && x.mailbox == mailbox)
            {
                // Named twice: once as an action copy is enough to make it one.
                Some(x) => x.action |= action,
                None => addressees.push(Addressee {
                    agency,
                    mailbox,
                    action,
                }),
            }
        }
        Ok(Message {
            id,
            originator,
            addressees,
            precedence,
            status,
            created_at,
            expires_at,
            respond_by,
            max_relays: env.handling.as_ref().and_then(|h| h.max_hops),
            stage_receipts: env.receipts() != pb::ReceiptRequest::NonDeliveryOnly,
            case_id: env.case_id,
            in_reply_to,
            payload_type: env.payload_type,
            payload: env.payload,
            envelope,
            signature,
        })
    }

    /// The message id.
    pub fn id(&self) -> MessageId {
        self.id
    }

    /// Who wrote it.
    pub fn originator(&self) -> &Originator {
        &self.originator
    }

    /// Its addressees, in order, without duplicates.
    pub fn addressees(&self) -> &[Addressee] {
        &self.addressees
    }

    pub fn precedence(&self) -> Precedence {
        self.precedence
    }

    pub fn status(&self) -> Status {
        self.status
    }

    /// When the originator wrote it.
    pub fn created_at(&self) -> SystemTime {
        self.created_at
    }

    /// After this instant it is never delivered.
    pub fn expires_at(&self) -> SystemTime {
        self.expires_at
    }

    /// When a business response is due from each action addressee, if asked for.
    pub fn respond_by(&self) -> Option<SystemTime> {
        self.respond_by
    }

    /// The case it belongs to ("" if none).
    pub fn case_id(&self) -> &str {
        &self.case_id
    }

    /// The message it answers, updates, corrects or cancels.
    pub fn in_reply_to(&self) -> Option<MessageId> {
        self.in_reply_to
    }

    /// The fully qualified protobuf name of the payload, e.g. `enlace.v1.PrecursorChemicalAlert`.
    pub fn payload_type(&self) -> &str {
        &self.payload_type
    }

    /// The encoded payload.
    pub fn payload_bytes(&self) -> &Bytes {
        &self.payload
    }

    /// The exact envelope bytes the originator signed.
    pub fn envelope_bytes(&self) -> &Bytes {
        &self.envelope
    }

    /// The whole envelope as protobuf, decoded from [`Message::envelope_bytes`] (for fields this
    /// type does not expose, such as the handling policy).
    pub fn envelope(&self) -> pb::Envelope {
        // The bytes decoded once already, in `parse`.
        pb::Envelope::decode(self.envelope.clone()).unwrap_or_default()
    }

    /// Whether its originator is a client (not a node's own SYSTEM message).
    pub(crate) fn from_client(&self) -> bool {
        self.status != Status::System && self.originator.client.is_some()
    }

    /// The wire form of this message with the given transit records.
    pub(crate) fn signed(
        &self,
        hops: Vec<pb::HopRecord>,
        route_to: Vec<String>,
    ) -> pb::SignedEnvelope {
        pb::SignedEnvelope {
            envelope: self.envelope.clone(),
            signature: self.signature.clone(),
            hops,
            route_to,
        }
    }
}

/// Checks a name field (node or client name) of the originator.
fn name_field(v: &str, what: &str) -> Result<String, String> {
    if is_name(v) {
        Ok(v.to_owned())
    } else {
        Err(format!("{what} {} is not a valid name", clip(v)))
    }
}

/// A value quoted for a reason, cut to a length that keeps refusals and logs small whatever the
/// sender put there.
pub(crate) fn clip(s: &str) -> String {
    const MAX: usize = 64;
    if s.len() <= MAX {
        return format!("{s:?}");
    }
    let cut = (0..=MAX).rev().find(|&i| s.is_char_boundary(i)).unwrap_or(0);
    format!("{:?}… ({} bytes)", &s[..cut], s.len())
}

/// Converts a system time to a protobuf timestamp.
pub(crate) fn timestamp(t: SystemTime) -> prost_types::Timestamp {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    prost_types::Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

/// Converts a protobuf timestamp to a system time (None if before the epoch or malformed).
pub(crate) fn system_time(t: &prost_types::Timestamp) -> Option<SystemTime> {
    if t.seconds < 0 || !(0..1_000_000_000).contains(&t.nanos) {
        return None;
    }
    Some(UNIX_EPOCH + Duration::new(t.seconds as u64, t.nanos as u32))
}

/// Milliseconds since the Unix epoch, as the store keeps times.
pub(crate) fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

/// The time `ms` milliseconds after the Unix epoch.
pub(crate) fn from_millis(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// Formats a time as RFC 3339 UTC with milliseconds, e.g. `2026-11-28T05:40:00.123Z`.
///
/// ```
/// use std::time::{Duration, UNIX_EPOCH};
///
/// let t = UNIX_EPOCH + Duration::from_millis(1_795_000_000_123);
/// assert_eq!(enlace::rfc3339(t), "2026-11-19T10:26:40.123Z");
/// ```
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
    use crate::draft::Draft;

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    fn originator() -> Originator {
        Originator {
            agency: AgencyId::new("dea").unwrap(),
            node: "dea-1".into(),
            client: Some("duty-desk".into()),
        }
    }

    fn parse(env: &pb::Envelope) -> Result<Message, Refusal> {
        Message::parse(env.encode_to_vec().into(), None).map_err(|(r, _)| r)
    }

    #[test]
    fn uuid_v7_layout_and_order() {
        let t = UNIX_EPOCH + Duration::from_millis(1_700_000_000_000);
        let a = MessageId::new_v7(t);
        let b = MessageId::new_v7(t + Duration::from_millis(1));
        assert_eq!(a.as_bytes()[6] >> 4, 7);
        assert_eq!(a.as_bytes()[8] >> 6, 0b10);
        assert!(a < b);
        assert_eq!(a.to_string().parse::<MessageId>(), Ok(a));
        assert_eq!(a.to_string().len(), 36);
        assert!("ab".parse::<MessageId>().is_err());
        assert!("zz".repeat(16).parse::<MessageId>().is_err());
    }

    #[test]
    fn derived_ids_are_stable_and_distinct() {
        let a = MessageId::derived(b"file", b"1");
        assert_eq!(a, MessageId::derived(b"file", b"1"));
        assert_ne!(a, MessageId::derived(b"file", b"2"));
        assert_ne!(a, MessageId::derived(b"fil", b"e1"));
        assert!(a.is_v7_or_v8());
    }

    #[test]
    fn precedence_orders_flash_first() {
        assert!(Precedence::Flash > Precedence::Immediate);
        assert!(Precedence::Routine > Precedence::Bulk);
        assert!(Precedence::Priority.is_time_sensitive());
        assert!(!Precedence::Routine.is_time_sensitive());
        assert_eq!("flash".parse(), Ok(Precedence::Flash));
        assert!("urgent".parse::<Precedence>().is_err());
        assert!(Precedence::Flash.stream_priority() > Precedence::Bulk.stream_priority());
    }

    #[test]
    fn parse_reads_every_field_once_and_keeps_the_bytes() {
        let env = Draft::from_raw("enlace.v1.LiaisonMessage", Bytes::from_static(b"x"))
            .to("PGR")
            .to("pgr/desk")
            .info("cenapi")
            .to("pgr")
            .precedence(Precedence::Flash)
            .case_id("C-1")
            .expires_in(Duration::from_secs(60))
            .finish(&originator(), now());
        let bytes = Bytes::from(env.encode_to_vec());
        let m = Message::parse(bytes.clone(), None).unwrap();
        assert_eq!(m.envelope_bytes(), &bytes);
        assert_eq!(m.precedence(), Precedence::Flash);
        assert_eq!(m.status(), Status::Actual);
        assert_eq!(m.originator(), &originator());
        assert_eq!(m.expires_at(), now() + Duration::from_secs(60));
        assert_eq!(m.case_id(), "C-1");
        let to: Vec<String> = m.addressees().iter().map(|a| a.to_string()).collect();
        assert_eq!(to, ["pgr", "pgr/desk", "cenapi"]);
        assert!(m.addressees()[0].action && !m.addressees()[2].action);
        assert!(m.from_client() && m.stage_receipts);
    }

    #[test]
    fn parse_refuses_what_a_node_cannot_use() {
        let good = || {
            Draft::from_raw("enlace.v1.LiaisonMessage", Bytes::new())
                .to("pgr")
                .finish(&originator(), now())
        };
        let mut env = good();
        env.addressees.clear();
        assert!(parse(&env).unwrap_err().reason.contains("no addressees"));
        let mut env = good();
        env.precedence = 0;
        assert!(parse(&env).unwrap_err().reason.contains("precedence"));
        let mut env = good();
        env.precedence = 42;
        assert!(parse(&env).unwrap_err().reason.contains("precedence"));
        let mut env = good();
        env.status = 0;
        assert!(parse(&env).unwrap_err().reason.contains("status"));
        let mut env = good();
        env.message_id = Bytes::from_static(b"short");
        assert!(parse(&env).unwrap_err().reason.contains("UUIDv7"));
        let mut env = good();
        env.expires_at = None;
        assert!(parse(&env).unwrap_err().reason.contains("expires_at"));
        let mut env = good();
        env.addressees[0].unit = "Not A Unit".into();
        assert!(parse(&env).unwrap_err().reason.contains("unit"));
        let mut env = good();
        env.originator.as_mut().unwrap().client = "x".repeat(900_000);
        let r = parse(&env).unwrap_err();
        assert!(r.reason.len() < 200, "an attacker-sized field stays small: {}", r.reason);
        assert!(
            Message::parse(Bytes::from_static(b"\xff\xff"), None).is_err(),
            "garbage does not decode"
        );
    }
}
