//! Receipts: what the originator's client learns about each addressee of a message, as typed
//! values, and the rules that say which messages get receipts, where they go and how urgent they
//! are.
//!
//! Sans-I/O. Nodes send receipts as small signed SYSTEM messages (payload `enlace.v1.Receipt`,
//! or `enlace.v1.NonDelivery`); an addressee's application answers with a `BusinessResponse`.
//! This module turns any of the three, as an envelope, into one [`Receipt`], and decides
//! [`wants_receipts`], [`receipts_unit`] and [`precedence_for`]. It sends nothing: the node's
//! `node::receipts` does.

use std::time::SystemTime;

use prost::{Message, Name};

use crate::message::{MessageId, Precedence, system_time};
use crate::wire::pb;

/// The stage a receipt reports, in the order a message normally goes through them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stage {
    /// Accepted by the originator's node.
    Accepted,
    /// Persisted by the node that serves the addressee.
    Persisted,
    /// Written to a client of the addressee.
    Delivered,
    /// Acknowledged by a named client of the addressee (`Receipt::by`).
    Acknowledged,
    /// The addressee's business answer.
    Response {
        outcome: pb::BusinessOutcome,
        /// For NEED_MORE_TIME: the new deadline.
        need_until: Option<SystemTime>,
    },
    /// No business response by `respond_by` (`Receipt::detail` says which deadline).
    Overdue,
    /// The message will not reach this addressee.
    NonDelivery(pb::NonDeliveryReason),
}

impl Stage {
    /// A short lowercase name, for timelines and logs.
    pub fn name(&self) -> String {
        match self {
            Stage::Accepted => "accepted".into(),
            Stage::Persisted => "persisted".into(),
            Stage::Delivered => "delivered".into(),
            Stage::Acknowledged => "acknowledged".into(),
            Stage::Overdue => "overdue".into(),
            Stage::Response { outcome, .. } => {
                let o = outcome.as_str_name();
                let o = o.strip_prefix("BUSINESS_OUTCOME_").unwrap_or(o);
                format!("response:{}", o.to_ascii_lowercase().replace('_', "-"))
            }
            Stage::NonDelivery(r) => {
                let r = r.as_str_name();
                let r = r.strip_prefix("NON_DELIVERY_REASON_").unwrap_or(r);
                format!("non-delivery:{}", r.to_ascii_lowercase().replace('_', "-"))
            }
        }
    }
}

/// One stage of one message for one addressee.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// The message this receipt is about.
    pub message_id: MessageId,
    /// The addressee agency (id), as the reporting node resolved it.
    pub addressee: String,
    /// The addressee's unit, when the stage concerns one.
    pub unit: String,
    pub stage: Stage,
    /// The node, or for acknowledgements and responses the client, that produced the stage.
    pub by: String,
    pub at: Option<SystemTime>,
    /// Free text: a non-delivery's detail, a rejection's reason, the deadline an overdue notice
    /// is about.
    pub detail: String,
    /// The nodes the receipt itself passed, from its hop records (filled in by the client that
    /// received it; empty from [`Receipt::from_envelope`]).
    pub path: Vec<String>,
}

impl Receipt {
    /// Reads a receipt from a delivered envelope: a `Receipt` or `NonDelivery` from a node, or a
    /// `BusinessResponse` from an addressee's client. `None` for anything else, or a payload that
    /// does not decode.
    pub fn from_envelope(env: &pb::Envelope) -> Option<Receipt> {
        let t = env.payload_type.as_str();
        if t == pb::Receipt::full_name() {
            let r = pb::Receipt::decode(env.payload.clone()).ok()?;
            let stage = match r.stage() {
                pb::ReceiptStage::Accepted => Stage::Accepted,
                pb::ReceiptStage::Persisted => Stage::Persisted,
                pb::ReceiptStage::Delivered => Stage::Delivered,
                pb::ReceiptStage::Acknowledged => Stage::Acknowledged,
                pb::ReceiptStage::Overdue => Stage::Overdue,
                pb::ReceiptStage::Unspecified => return None,
            };
            Some(Receipt {
                message_id: MessageId::from_slice(&r.message_id)?,
                addressee: r.addressee_agency,
                unit: r.addressee_unit,
                stage,
                by: r.by,
                at: r.at.as_ref().and_then(system_time),
                detail: r.detail,
                path: Vec::new(),
            })
        } else if t == pb::NonDelivery::full_name() {
            let r = pb::NonDelivery::decode(env.payload.clone()).ok()?;
            Some(Receipt {
                message_id: MessageId::from_slice(&r.message_id)?,
                stage: Stage::NonDelivery(r.reason()),
                addressee: r.addressee_agency,
                unit: String::new(),
                by: r.node,
                at: r.at.as_ref().and_then(system_time),
                detail: r.detail,
                path: Vec::new(),
            })
        } else if t == pb::BusinessResponse::full_name() {
            let r = pb::BusinessResponse::decode(env.payload.clone()).ok()?;
            let o = env.originator.clone().unwrap_or_default();
            Some(Receipt {
                message_id: MessageId::from_slice(&r.message_id)?,
                stage: Stage::Response {
                    outcome: r.outcome(),
                    need_until: r.need_until.as_ref().and_then(system_time),
                },
                addressee: o.agency.clone(),
                unit: String::new(),
                by: format!("{}/{}", o.agency, o.client),
                at: env.created_at.as_ref().and_then(system_time),
                detail: r.reason,
                path: Vec::new(),
            })
        } else {
            None
        }
    }
}

/// Whether a message is a client's own: not SYSTEM traffic (receipts, non-delivery reports,
/// overdue notices) nor a business response (which is the receipt of the message it answers).
fn from_a_client(env: &pb::Envelope) -> bool {
    env.status() != pb::Status::System
        && env.payload_type != pb::BusinessResponse::full_name()
        && env
            .originator
            .as_ref()
            .is_some_and(|o| !o.client.is_empty())
}

/// Whether a message gets stage receipts: a client's message (so receipts never cause
/// receipts) whose originator did not ask for non-delivery reports only
/// ([`pb::ReceiptRequest::NonDeliveryOnly`], as bulk feeds do).
pub fn wants_receipts(env: &pb::Envelope) -> bool {
    from_a_client(env) && env.receipts() != pb::ReceiptRequest::NonDeliveryOnly
}

/// Whether a message is tracked for its `respond_by` deadline: a client's message with a
/// deadline (whichever receipts it asked for).
pub fn wants_response(env: &pb::Envelope) -> bool {
    from_a_client(env) && env.respond_by.is_some()
}

/// Where the receipts of a message from `originator` go: its agency, the receipts unit of its
/// client (`dea/receipts-duty-desk`).
pub fn receipts_address(originator: &pb::Originator) -> String {
    format!(
        "{}/{}",
        originator.agency,
        receipts_unit(&originator.client)
    )
}

/// The unit of the originator's agency whose mailbox holds a client's receipts:
/// `receipts-<client>`, or `receipts` when the client's name is too long for that to be a unit
/// name (every such client then shares it).
pub fn receipts_unit(client: &str) -> String {
    let unit = format!("receipts-{client}");
    if crate::identity::is_name(&unit) {
        unit
    } else {
        "receipts".into()
    }
}

/// Whether a unit is a receipts unit (`receipts`, `receipts-<client>`): these names are
/// reserved for receipts.
pub fn is_receipts_unit(unit: &str) -> bool {
    unit == "receipts" || unit.starts_with("receipts-")
}

/// The precedence of a message's receipts: a time-sensitive message's receipts travel at its own
/// precedence (an alert's receipts are alerts); an analytical message's at ROUTINE.
pub fn precedence_for(original: Precedence) -> Precedence {
    if original.is_time_sensitive() {
        original
    } else {
        Precedence::Routine
    }
}

/// Reads the business response carried by an envelope, if it is one.
pub fn business_response(env: &pb::Envelope) -> Option<pb::BusinessResponse> {
    (env.payload_type == pb::BusinessResponse::full_name())
        .then(|| pb::BusinessResponse::decode(env.payload.clone()).ok())
        .flatten()
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::message::{Draft, timestamp};

    fn originator(client: &str) -> pb::Originator {
        pb::Originator {
            agency: "dea".into(),
            node: "dea-1".into(),
            client: client.into(),
        }
    }

    #[test]
    fn receipts_and_responses_get_no_receipts() {
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let alert = Draft::new(&pb::LiaisonMessage::default())
            .to("afi")
            .finish(originator("duty-desk"), now);
        assert!(wants_receipts(&alert));
        let receipt = Draft::new(&pb::Receipt::default())
            .to("dea")
            .status(pb::Status::System)
            .finish(originator(""), now);
        assert!(!wants_receipts(&receipt));
        let response = Draft::new(&pb::BusinessResponse::default())
            .to("dea")
            .finish(originator("duty-desk"), now);
        assert!(!wants_receipts(&response));
        assert!(!wants_response(&alert));
        // A bulk feed asks for non-delivery reports only, and still gets a respond-by.
        let feed = Draft::new(&pb::LiaisonMessage::default())
            .to("afi")
            .non_delivery_receipts_only()
            .respond_within(Duration::from_secs(60))
            .finish(originator("analyst"), now);
        assert!(!wants_receipts(&feed));
        assert!(wants_response(&feed));
    }

    #[test]
    fn each_payload_becomes_its_stage() {
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let id = MessageId::new_v7(now);
        let r = pb::Receipt {
            message_id: id.to_bytes(),
            addressee_agency: "afi".into(),
            stage: pb::ReceiptStage::Persisted as i32,
            by: "afi-1".into(),
            at: Some(timestamp(now)),
            ..Default::default()
        };
        let env = Draft::new(&r).finish(originator(""), now);
        let got = Receipt::from_envelope(&env).unwrap();
        assert_eq!((got.message_id, got.stage.clone()), (id, Stage::Persisted));
        assert_eq!((got.at, got.by.as_str()), (Some(now), "afi-1"));

        let later = now + Duration::from_secs(3600);
        let b = pb::BusinessResponse {
            message_id: id.to_bytes(),
            outcome: pb::BusinessOutcome::NeedMoreTime as i32,
            need_until: Some(timestamp(later)),
            reason: "checking the manifest".into(),
        };
        let env = Draft::new(&b).finish(
            pb::Originator {
                agency: "afi".into(),
                node: "afi-1".into(),
                client: "duty-desk".into(),
            },
            now,
        );
        let got = Receipt::from_envelope(&env).unwrap();
        assert_eq!(
            got.stage,
            Stage::Response {
                outcome: pb::BusinessOutcome::NeedMoreTime,
                need_until: Some(later)
            }
        );
        assert_eq!(got.stage.name(), "response:need-more-time");
        assert_eq!(
            (got.addressee.as_str(), got.by.as_str()),
            ("afi", "afi/duty-desk")
        );

        let n = pb::NonDelivery {
            message_id: id.to_bytes(),
            reason: pb::NonDeliveryReason::Expired as i32,
            ..Default::default()
        };
        let env = Draft::new(&n).finish(originator(""), now);
        assert_eq!(
            Receipt::from_envelope(&env).unwrap().stage.name(),
            "non-delivery:expired"
        );
        let other = Draft::new(&pb::LiaisonMessage::default()).finish(originator("x"), now);
        assert_eq!(Receipt::from_envelope(&other), None);
    }

    #[test]
    fn units_and_precedence() {
        assert_eq!(receipts_unit("duty-desk"), "receipts-duty-desk");
        assert_eq!(receipts_unit(&"a".repeat(60)), "receipts");
        assert!(is_receipts_unit("receipts-duty-desk") && !is_receipts_unit("desk"));
        assert_eq!(precedence_for(Precedence::Flash), Precedence::Flash);
        assert_eq!(precedence_for(Precedence::Bulk), Precedence::Routine);
    }
}
