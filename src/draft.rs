//! [`Draft`]: how a Rust user writes a message before the client signs and sends it.
//!
//! A draft holds a typed payload, addressees, precedence, expiry and handling. The client
//! completes it ([`Draft::finish`]: id, originator, times) into the protobuf `Envelope` whose exact
//! bytes the originator signs. Nothing here does I/O; the time is a parameter.

use std::time::{Duration, SystemTime};

use bytes::Bytes;

use crate::message::{MessageId, Originator, Precedence, Status, timestamp};
use crate::wire::pb;

/// A message being written: typed payload, addressees, precedence, expiry and handling.
///
/// Start from any payload type of the schema (or from a typed builder of
/// [`payloads`](crate::payloads)), add addressees, and hand it to
/// [`Client::send`](crate::Client::send):
///
/// ```
/// use std::time::Duration;
/// use enlace::{Draft, Precedence, pb};
///
/// let report = pb::LiaisonMessage::default();
/// let draft = Draft::from(report)
///     .to("pgr")
///     .to("cenapi/analyst")
///     .info("afi")
///     .precedence(Precedence::Flash)
///     .expires_in(Duration::from_secs(6 * 3600))
///     .case_id("DEA-2026-0142");
/// assert_eq!(draft.payload_type(), "enlace.v1.LiaisonMessage");
/// ```
///
/// Defaults: ROUTINE, ACTUAL, an original message, every receipt, expires in 7 days, a fresh
/// UUIDv7 id when sent.
#[derive(Debug, Clone)]
pub struct Draft {
    envelope: pb::Envelope,
    expires_in: Duration,
    respond_within: Option<Duration>,
    id: Option<MessageId>,
}

/// How long a message lives unless [`Draft::expires_in`] says otherwise.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);

impl<P: prost::Message + prost::Name> From<P> for Draft {
    /// A draft carrying `payload`, typed by its protobuf name.
    fn from(payload: P) -> Draft {
        Draft::new(&payload)
    }
}

impl Draft {
    /// Starts a message with a typed payload (any message of the schema, such as
    /// [`pb::PrecursorChemicalAlert`]).
    ///
    /// ```
    /// use enlace::{Draft, pb};
    ///
    /// let d = Draft::new(&pb::AnalyticalReport::default()).to("cenapi");
    /// assert_eq!(d.payload_type(), "enlace.v1.AnalyticalReport");
    /// ```
    pub fn new<P: prost::Message + prost::Name>(payload: &P) -> Draft {
        Draft::from_raw(P::full_name(), payload.encode_to_vec().into())
    }

    /// Starts a message whose payload is already encoded, with its fully qualified type name.
    ///
    /// ```
    /// use enlace::Draft;
    ///
    /// let d = Draft::from_raw("enlace.v1.LiaisonMessage", bytes::Bytes::new()).to("pgr");
    /// assert_eq!(d.payload_type(), "enlace.v1.LiaisonMessage");
    /// ```
    pub fn from_raw(payload_type: impl Into<String>, payload: Bytes) -> Draft {
        Draft {
            envelope: pb::Envelope {
                precedence: pb::Precedence::Routine as i32,
                status: pb::Status::Actual as i32,
                kind: pb::MessageKind::Original as i32,
                payload_type: payload_type.into(),
                payload,
                ..Default::default()
            },
            expires_in: DEFAULT_LIFETIME,
            respond_within: None,
            id: None,
        }
    }

    /// Adds an action addressee: an agency id or alias (`pgr`, `FGR`), or `agency/unit`.
    ///
    /// ```
    /// # let draft = enlace::Draft::from(enlace::pb::LiaisonMessage::default());
    /// let draft = draft.to("pgr").to("afi/24x7-desk");
    /// ```
    pub fn to(self, addressee: &str) -> Draft {
        self.addressee(addressee, pb::CopyType::Action)
    }

    /// Adds an information-copy addressee (informed, not expected to act).
    ///
    /// ```
    /// # let draft = enlace::Draft::from(enlace::pb::LiaisonMessage::default());
    /// let draft = draft.to("pgr").info("cenapi");
    /// ```
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

    /// Sets the precedence (default ROUTINE).
    ///
    /// ```
    /// # let draft = enlace::Draft::from(enlace::pb::LiaisonMessage::default());
    /// let draft = draft.precedence(enlace::Precedence::Flash);
    /// ```
    pub fn precedence(mut self, p: Precedence) -> Draft {
        self.envelope.precedence = p.to_pb() as i32;
        self
    }

    /// Sets the status (default ACTUAL): exercise traffic never looks operational.
    ///
    /// ```
    /// # let draft = enlace::Draft::from(enlace::pb::LiaisonMessage::default());
    /// let draft = draft.status(enlace::Status::Exercise);
    /// ```
    pub fn status(mut self, s: Status) -> Draft {
        self.envelope.status = s.to_pb() as i32;
        self
    }

    /// Says what this message is in relation to earlier ones (default ORIGINAL).
    ///
    /// ```
    /// # let draft = enlace::Draft::from(enlace::pb::LiaisonMessage::default());
    /// let draft = draft.kind(enlace::pb::MessageKind::Update);
    /// ```
    pub fn kind(mut self, k: pb::MessageKind) -> Draft {
        self.envelope.kind = k as i32;
        self
    }

    /// Sets the lifetime (default 7 days); the message is never delivered after it.
    ///
    /// ```
    /// # let draft = enlace::Draft::from(enlace::pb::LiaisonMessage::default());
    /// let draft = draft.expires_in(std::time::Duration::from_secs(6 * 3600));
    /// ```
    pub fn expires_in(mut self, d: Duration) -> Draft {
        self.expires_in = d;
        self
    }

    /// Asks each action addressee for a business response within `d` (`respond_by`): without
    /// one by then, the originator gets an overdue receipt and the addressee agency's escalation
    /// unit a reminder.
    ///
    /// ```
    /// # let draft = enlace::Draft::from(enlace::pb::LiaisonMessage::default());
    /// let draft = draft.respond_within(std::time::Duration::from_secs(600));
    /// ```
    pub fn respond_within(mut self, d: Duration) -> Draft {
        self.respond_within = Some(d);
        self
    }

    /// Threads the message into a case.
    ///
    /// ```
    /// # let draft = enlace::Draft::from(enlace::pb::LiaisonMessage::default());
    /// let draft = draft.case_id("DEA-2026-0142");
    /// ```
    pub fn case_id(mut self, id: &str) -> Draft {
        self.envelope.case_id = id.to_owned();
        self
    }

    /// Names the message this one answers, updates, corrects or cancels.
    ///
    /// ```
    /// # let draft = enlace::Draft::from(enlace::pb::LiaisonMessage::default());
    /// let earlier: enlace::MessageId = "01a220d3-7886-74d0-99d1-f57d343e1e76".parse().unwrap();
    /// let draft = draft.in_reply_to(earlier);
    /// ```
    pub fn in_reply_to(mut self, id: MessageId) -> Draft {
        self.envelope.in_reply_to = id.to_bytes();
        self
    }

    /// Names a message this one was derived from (repeat for several).
    ///
    /// ```
    /// # let draft = enlace::Draft::from(enlace::pb::AnalyticalReport::default());
    /// let source: enlace::MessageId = "01a220d3-7886-74d0-99d1-f57d343e1e76".parse().unwrap();
    /// let draft = draft.derived_from(source);
    /// ```
    pub fn derived_from(mut self, id: MessageId) -> Draft {
        self.envelope.derived_from.push(id.to_bytes());
        self
    }

    /// Asks for a non-delivery report only, instead of a receipt for every stage: for
    /// high-volume analytical feeds (`enlace send --bulk`, the benchmark's records).
    ///
    /// ```
    /// # let draft = enlace::Draft::from(enlace::pb::AnalyticalReport::default());
    /// let draft = draft.non_delivery_receipts_only();
    /// ```
    pub fn non_delivery_receipts_only(mut self) -> Draft {
        self.envelope.receipts = pb::ReceiptRequest::NonDeliveryOnly as i32;
        self
    }

    /// Sets the handling conditions that travel with the message.
    ///
    /// ```
    /// use enlace::pb;
    /// # let draft = enlace::Draft::from(pb::LiaisonMessage::default());
    /// let draft = draft.handling(pb::HandlingPolicy {
    ///     tlp: pb::TlpLabel::AmberStrict as i32,
    ///     max_hops: Some(0),
    ///     ..Default::default()
    /// });
    /// ```
    pub fn handling(mut self, h: pb::HandlingPolicy) -> Draft {
        self.envelope.handling = Some(h);
        self
    }

    /// Fixes the message id (default: a fresh UUIDv7 at send time). Sending a draft again with
    /// the same id is safe: a node that already took it answers `Accepted` without a second copy.
    ///
    /// ```
    /// use enlace::MessageId;
    /// # let draft = enlace::Draft::from(enlace::pb::LiaisonMessage::default());
    /// let draft = draft.id(MessageId::derived(b"my-feed", b"record 1"));
    /// ```
    pub fn id(mut self, id: MessageId) -> Draft {
        self.id = Some(id);
        self
    }

    /// The payload's fully qualified type name.
    ///
    /// ```
    /// let draft = enlace::Draft::from(enlace::pb::LiaisonMessage::default());
    /// assert_eq!(draft.payload_type(), "enlace.v1.LiaisonMessage");
    /// ```
    pub fn payload_type(&self) -> &str {
        &self.envelope.payload_type
    }

    /// Completes the envelope for sending at `now` by `originator`.
    pub(crate) fn finish(mut self, originator: &Originator, now: SystemTime) -> pb::Envelope {
        let id = self.id.unwrap_or_else(|| MessageId::new_v7(now));
        self.envelope.message_id = id.to_bytes();
        self.envelope.originator = Some(originator.to_pb());
        self.envelope.created_at = Some(timestamp(now));
        self.envelope.expires_at = Some(timestamp(now + self.expires_in));
        if let Some(d) = self.respond_within {
            self.envelope.respond_by = Some(timestamp(now + d));
        }
        self.envelope
    }
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;
    use crate::identity::AgencyId;
    use crate::message::system_time;

    #[test]
    fn draft_finishes_with_id_times_and_originator() {
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let o = Originator {
            agency: AgencyId::new("dea").unwrap(),
            node: "dea-1".into(),
            client: Some("desk".into()),
        };
        let env = Draft::from_raw("enlace.v1.LiaisonMessage", Bytes::new())
            .to("pgr/desk")
            .info("cenapi")
            .expires_in(Duration::from_secs(60))
            .respond_within(Duration::from_secs(30))
            .finish(&o, now);
        assert_eq!(env.message_id.len(), 16);
        assert_eq!(env.addressees[0].unit, "desk");
        assert_eq!(env.addressees[1].copy_type(), pb::CopyType::Information);
        assert_eq!(
            system_time(env.expires_at.as_ref().unwrap()),
            Some(now + Duration::from_secs(60))
        );
        assert_eq!(
            system_time(env.respond_by.as_ref().unwrap()),
            Some(now + Duration::from_secs(30))
        );
        assert_eq!(env.originator.unwrap().client, "desk");
    }
}
