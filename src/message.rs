//! Messages as Enlace knows them: [`Message`], the one domain type a signed envelope becomes, with
//! its originator, addressees and hops, and the time conversions of the protobuf fields. (Ids are
//! in `id`, precedence and status in `precedence`; both are re-exported here.)
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
use crate::handling::Handling;
pub use crate::id::{BadMessageId, MessageId};
use crate::identity::{AgencyId, is_name};
pub use crate::precedence::{BadPrecedence, BadStatus, Precedence, Status};
use crate::refusal::Refusal;
use crate::wire::pb;

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

/// Most addressees any envelope may name (a node may allow fewer: `limits.max_addressees`).
pub const MAX_ADDRESSEES: usize = 1024;

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
    /// The handling conditions the originator set (`HandlingPolicy`), as the envelope says them.
    pub(crate) handling: Handling,
    /// The messages this one was derived from.
    pub(crate) derived_from: Vec<MessageId>,
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
    /// The SHA-256 of `envelope`, computed when first asked for (the delivery log).
    pub(crate) sha256: std::sync::OnceLock<[u8; 32]>,
    /// The message's part of a delivery-log record, written once (see `node::events`).
    pub(crate) audit: std::sync::OnceLock<std::sync::Arc<[u8]>>,
}

impl Message {
    /// When the node lets go of every copy: at its expiry, or when its originator's retention
    /// period (`retain_until`) ends, if that is sooner.
    pub(crate) fn deadline(&self) -> SystemTime {
        self.handling
            .retain_until
            .map_or(self.expires_at, |r| r.min(self.expires_at))
    }

    /// Whether the message is past its retention period (`retain_until`) at `now`.
    pub(crate) fn retention_over(&self, now: SystemTime) -> bool {
        self.handling.retain_until.is_some_and(|r| r <= now)
    }

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
        let derived_from = env
            .derived_from
            .iter()
            .map(|d| MessageId::from_slice(d))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| fail("derived_from must list 16-byte message ids".into()))?;
        if env.addressees.is_empty() {
            return Err(fail("no addressees".into()));
        }
        if env.addressees.len() > MAX_ADDRESSEES {
            return Err((
                Refusal::new(
                    pb::RefusalCode::Limit,
                    format!(
                        "{} addressees; an envelope names at most {MAX_ADDRESSEES}",
                        env.addressees.len()
                    ),
                ),
                Some(id),
            ));
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
            handling: Handling::from_pb(env.handling.as_ref()),
            derived_from,
            stage_receipts: env.receipts() != pb::ReceiptRequest::NonDeliveryOnly,
            case_id: env.case_id,
            in_reply_to,
            payload_type: env.payload_type,
            payload: env.payload,
            envelope,
            signature,
            sha256: std::sync::OnceLock::new(),
            audit: std::sync::OnceLock::new(),
        })
    }

    /// The SHA-256 of the exact envelope bytes, computed once.
    pub(crate) fn sha256(&self) -> &[u8; 32] {
        self.sha256.get_or_init(|| {
            let mut h = [0u8; 32];
            h.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, &self.envelope).as_ref());
            h
        })
    }

    /// The message id.
    ///
    /// ```
    /// # fn example(delivery: &enlace::Delivery) {
    /// let m = delivery.message();
    /// assert_eq!(m.id(), delivery.id());
    /// # }
    /// ```
    pub fn id(&self) -> MessageId {
        self.id
    }

    /// Who wrote it.
    ///
    /// ```
    /// # fn example(delivery: &enlace::Delivery) {
    /// let m = delivery.message();
    /// println!("from {}", m.originator()); // e.g. dea/duty-desk
    /// # }
    /// ```
    pub fn originator(&self) -> &Originator {
        &self.originator
    }

    /// Its addressees, in order, without duplicates.
    ///
    /// ```
    /// # fn example(delivery: &enlace::Delivery) {
    /// let m = delivery.message();
    /// for a in m.addressees() {
    ///     println!("{a}{}", if a.action { "" } else { " (for information)" });
    /// }
    /// # }
    /// ```
    pub fn addressees(&self) -> &[Addressee] {
        &self.addressees
    }

    /// How urgent it is, as its originator set it.
    ///
    /// ```
    /// # fn example(delivery: &enlace::Delivery) {
    /// let m = delivery.message();
    /// if m.precedence().is_time_sensitive() {
    ///     println!("handle now");
    /// }
    /// # }
    /// ```
    pub fn precedence(&self) -> Precedence {
        self.precedence
    }

    /// What kind of traffic it is: actual, exercise, test, or a node's own system message.
    ///
    /// ```
    /// # fn example(delivery: &enlace::Delivery) {
    /// let m = delivery.message();
    /// if m.status() == enlace::Status::Exercise {
    ///     println!("EXERCISE EXERCISE EXERCISE");
    /// }
    /// # }
    /// ```
    pub fn status(&self) -> Status {
        self.status
    }

    /// When the originator wrote it.
    ///
    /// ```
    /// # fn example(delivery: &enlace::Delivery) {
    /// let m = delivery.message();
    /// println!("written {}", enlace::rfc3339(m.created_at()));
    /// # }
    /// ```
    pub fn created_at(&self) -> SystemTime {
        self.created_at
    }

    /// After this instant it is never delivered.
    ///
    /// ```
    /// # fn example(delivery: &enlace::Delivery) {
    /// let m = delivery.message();
    /// println!("valid until {}", enlace::rfc3339(m.expires_at()));
    /// # }
    /// ```
    pub fn expires_at(&self) -> SystemTime {
        self.expires_at
    }

    /// When a business response is due from each action addressee, if asked for.
    ///
    /// ```
    /// # fn example(delivery: &enlace::Delivery) {
    /// let m = delivery.message();
    /// if let Some(due) = m.respond_by() {
    ///     println!("answer by {}", enlace::rfc3339(due));
    /// }
    /// # }
    /// ```
    pub fn respond_by(&self) -> Option<SystemTime> {
        self.respond_by
    }

    /// The case it belongs to ("" if none).
    ///
    /// ```
    /// # fn example(delivery: &enlace::Delivery) {
    /// let m = delivery.message();
    /// if !m.case_id().is_empty() {
    ///     println!("case {}", m.case_id());
    /// }
    /// # }
    /// ```
    pub fn case_id(&self) -> &str {
        &self.case_id
    }

    /// The message it answers, updates, corrects or cancels.
    ///
    /// ```
    /// # fn example(delivery: &enlace::Delivery) {
    /// let m = delivery.message();
    /// if let Some(earlier) = m.in_reply_to() {
    ///     println!("about {earlier} ({:?})", m.envelope().kind());
    /// }
    /// # }
    /// ```
    pub fn in_reply_to(&self) -> Option<MessageId> {
        self.in_reply_to
    }

    /// The fully qualified protobuf name of the payload, e.g. `enlace.v1.PrecursorChemicalAlert`.
    ///
    /// ```
    /// use prost::Name as _;
    ///
    /// # fn example(delivery: &enlace::Delivery) {
    /// let m = delivery.message();
    /// if m.payload_type() == enlace::pb::PrecursorChemicalAlert::full_name() {
    ///     println!("a precursor alert");
    /// }
    /// # }
    /// ```
    pub fn payload_type(&self) -> &str {
        &self.payload_type
    }

    /// The encoded payload.
    ///
    /// ```
    /// # fn example(delivery: &enlace::Delivery) {
    /// let m = delivery.message();
    /// let json = enlace::json::decode_json(m.payload_type(), m.payload_bytes());
    /// # let _ = json;
    /// # }
    /// ```
    pub fn payload_bytes(&self) -> &Bytes {
        &self.payload
    }

    /// The exact envelope bytes the originator signed.
    ///
    /// ```
    /// # fn example(delivery: &enlace::Delivery) {
    /// let m = delivery.message();
    /// println!("{} signed bytes", m.envelope_bytes().len());
    /// # }
    /// ```
    pub fn envelope_bytes(&self) -> &Bytes {
        &self.envelope
    }

    /// The whole envelope as protobuf, decoded from [`Message::envelope_bytes`] (for fields this
    /// type does not expose, such as the handling policy).
    ///
    /// ```
    /// # fn example(delivery: &enlace::Delivery) {
    /// let m = delivery.message();
    /// if let Some(h) = m.envelope().handling {
    ///     println!("TLP {:?}", h.tlp());
    /// }
    /// # }
    /// ```
    pub fn envelope(&self) -> pb::Envelope {
        // The bytes decoded once already, in `parse`.
        pb::Envelope::decode(self.envelope.clone()).unwrap_or_default()
    }

    /// Whether its originator is a client (not a node's own SYSTEM message).
    pub(crate) fn is_from_client(&self) -> bool {
        self.status != Status::System && self.originator.client.is_some()
    }

    /// The wire form of this message with the given transit records.
    pub(crate) fn signed(
        &self,
        hops: Vec<pb::HopRecord>,
        route_to: Vec<String>,
        signer_chain: &[Bytes],
    ) -> pb::SignedEnvelope {
        pb::SignedEnvelope {
            envelope: self.envelope.clone(),
            signature: self.signature.clone(),
            hops,
            route_to,
            signer_chain: signer_chain.to_vec(),
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
    let cut = (0..=MAX)
        .rev()
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(0);
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
/// assert_eq!(enlace::rfc3339(t), "2026-11-18T11:06:40.123Z");
/// ```
pub fn rfc3339(t: SystemTime) -> String {
    utc(t, 3)
}

/// As [`rfc3339`], to the microsecond (the delivery log's records).
pub(crate) fn rfc3339_micros(t: SystemTime) -> String {
    utc(t, 6)
}

/// RFC 3339 UTC with `digits` (3 or 6) of the second's fraction.
fn utc(t: SystemTime, digits: usize) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let odt = time::OffsetDateTime::from_unix_timestamp(d.as_secs() as i64)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let fraction = match digits {
        3 => d.subsec_millis(),
        _ => d.subsec_micros(),
    };
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{fraction:0digits$}Z",
        odt.year(),
        u8::from(odt.month()),
        odt.day(),
        odt.hour(),
        odt.minute(),
        odt.second(),
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
        assert!(m.is_from_client() && m.stage_receipts);
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
        assert!(
            r.reason.len() < 200,
            "an attacker-sized field stays small: {}",
            r.reason
        );
        assert!(
            Message::parse(Bytes::from_static(b"\xff\xff"), None).is_err(),
            "garbage does not decode"
        );
    }
}
