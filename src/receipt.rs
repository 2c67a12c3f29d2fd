//! Receipts: what the originator's client learns about each addressee of a message, as typed
//! values, and the rules that say which messages get receipts, where they go and how urgent they
//! are.
//!
//! Sans-I/O. Nodes send receipts as small signed SYSTEM messages (payload `enlace.v1.Receipt`,
//! or `enlace.v1.NonDelivery`); an addressee's application answers with a `BusinessResponse`.
//! This module turns any of the three, as a [`Message`], into one [`Receipt`], and decides which
//! messages get receipts, which mailbox they go to and how urgent they are. It sends nothing: the
//! node's `node::receipts` does.

use std::time::SystemTime;

use prost::{Message as _, Name};

use crate::address::Mailbox;
use crate::message::{Message, MessageId, Originator, Precedence, system_time};
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
        /// The addressee's answer: action taken, a positive or negative hit, more time
        /// needed, or rejected.
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
    ///
    /// ```
    /// use enlace::{Stage, pb};
    ///
    /// assert_eq!(Stage::Delivered.name(), "delivered");
    /// let late = Stage::NonDelivery(pb::NonDeliveryReason::Expired);
    /// assert_eq!(late.name(), "non-delivery:expired");
    /// ```
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
    /// What happened to the message for this addressee.
    pub stage: Stage,
    /// The node, or for acknowledgements and responses the client, that produced the stage.
    pub by: String,
    /// When the stage happened, by the clock of the node (or client) that reports it; `None` if
    /// the receipt does not say.
    pub at: Option<SystemTime>,
    /// Free text: a non-delivery's detail, a rejection's reason, the deadline an overdue notice
    /// is about.
    pub detail: String,
    /// The nodes the receipt itself passed, from its hop records (filled in by the client that
    /// received it; empty from [`Receipt::from_message`]).
    pub path: Vec<String>,
}

impl Receipt {
    /// Reads a receipt from a delivered message: a `Receipt` or `NonDelivery` from a node, or a
    /// `BusinessResponse` from an addressee's client. `None` for anything else, or a payload that
    /// does not decode.
    ///
    /// ```
    /// # fn show(delivery: &enlace::Delivery) {
    /// if let Some(r) = enlace::Receipt::from_message(delivery.message()) {
    ///     println!("{} {} by {}", r.message_id, r.stage.name(), r.by);
    /// }
    /// # }
    /// ```
    pub fn from_message(m: &Message) -> Option<Receipt> {
        let t = m.payload_type.as_str();
        if t == pb::Receipt::full_name() {
            let r = pb::Receipt::decode(m.payload.clone()).ok()?;
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
            let r = pb::NonDelivery::decode(m.payload.clone()).ok()?;
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
            let r = pb::BusinessResponse::decode(m.payload.clone()).ok()?;
            let o = &m.originator;
            Some(Receipt {
                message_id: MessageId::from_slice(&r.message_id)?,
                stage: Stage::Response {
                    outcome: r.outcome(),
                    need_until: r.need_until.as_ref().and_then(system_time),
                },
                addressee: o.agency.to_string(),
                unit: String::new(),
                by: o.to_string(),
                at: Some(m.created_at),
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
fn from_a_client(m: &Message) -> bool {
    m.is_from_client() && m.payload_type != pb::BusinessResponse::full_name()
}

/// Whether a message gets stage receipts: a client's message (so receipts never cause
/// receipts) whose originator did not ask for non-delivery reports only
/// ([`pb::ReceiptRequest::NonDeliveryOnly`], as bulk feeds do).
pub(crate) fn wants_receipts(m: &Message) -> bool {
    from_a_client(m) && m.stage_receipts
}

/// Whether a message gets a non-delivery report when it will not arrive: any client's message
/// (receipts and reports never cause reports).
pub(crate) fn wants_non_delivery(m: &Message) -> bool {
    m.is_from_client()
}

/// Whether a message is tracked for its `respond_by` deadline: a client's message with a
/// deadline (whichever receipts it asked for).
pub(crate) fn wants_response(m: &Message) -> bool {
    from_a_client(m) && m.respond_by.is_some()
}

/// Where the receipts of a message from the client `originator` go: its agency, the receipts
/// unit of its client (`dea/receipts-duty-desk`). `None` for a node's own messages.
pub(crate) fn receipts_address(originator: &Originator) -> Option<String> {
    let client = originator.client.as_deref()?;
    Some(receipts_mailbox(client).address(originator.agency.as_str()))
}

/// The unit of the originator's agency whose mailbox holds a client's receipts:
/// `receipts-<client>`; for a client whose name is too long for that to be a unit name, its
/// first 45 characters and 8 hex digits of the SHA-256 of the whole name, so that no two
/// clients share one.
pub(crate) fn receipts_mailbox(client: &str) -> Mailbox {
    Mailbox::unit(&format!("receipts-{client}"))
        .or_else(|_| {
            let d = ring::digest::digest(&ring::digest::SHA256, client.as_bytes());
            let tag: String = d.as_ref()[..4].iter().map(|b| format!("{b:02x}")).collect();
            let head: String = client.chars().take(45).collect();
            Mailbox::unit(&format!("receipts-{head}-{tag}"))
        })
        .expect("a shortened receipts unit is a unit name")
}

/// Whether a mailbox is a receipts unit (`receipts`, `receipts-<client>`): these names are
/// reserved for receipts.
pub(crate) fn is_receipts_mailbox(m: &Mailbox) -> bool {
    match m {
        Mailbox::Inbox => false,
        Mailbox::Unit(u) => u.as_str() == "receipts" || u.as_str().starts_with("receipts-"),
    }
}

/// The precedence of a message's receipts: a time-sensitive message's receipts travel at its own
/// precedence (an alert's receipts are alerts); an analytical message's at ROUTINE.
pub(crate) fn precedence_for(original: Precedence) -> Precedence {
    if original.is_time_sensitive() {
        original
    } else {
        Precedence::Routine
    }
}

/// Whether a message carries a payload only nodes send: a `Receipt` or a `NonDelivery`.
pub(crate) fn is_node_control(m: &Message) -> bool {
    m.payload_type == pb::Receipt::full_name() || m.payload_type == pb::NonDelivery::full_name()
}

/// Checks that a control message names its sender honestly, so that no one can speak for
/// another: a receipt or non-delivery report is SYSTEM traffic of the node that signed it, a
/// receipt is given by that node (or, for an acknowledgement, by a client of that node's agency)
/// and, past acceptance, about that node's own agency; a report names that node; a business
/// response comes from a client. Anything else passes.
///
/// # Errors
/// Why the message is not what it claims to be.
pub(crate) fn check_control(m: &Message) -> Result<(), String> {
    let o = &m.originator;
    let from_node = m.status == crate::message::Status::System && o.client.is_none();
    let t = m.payload_type.as_str();
    if t == pb::Receipt::full_name() {
        if !from_node {
            return Err("receipts come only from nodes, as SYSTEM traffic".into());
        }
        let r = pb::Receipt::decode(m.payload.clone())
            .map_err(|e| format!("the receipt does not decode: {e}"))?;
        let client_of_agency = r.by.starts_with(&format!("{}/client/", o.agency))
            || r.by.starts_with(&format!("{}/operator/", o.agency));
        if r.by != o.node && !(client_of_agency && r.stage() == pb::ReceiptStage::Acknowledged) {
            return Err(format!(
                "a receipt from node {} cannot be given by {}",
                o.node,
                crate::message::clip(&r.by)
            ));
        }
        if r.stage() != pb::ReceiptStage::Accepted && r.addressee_agency != o.agency.as_str() {
            return Err(format!(
                "node {} of agency {} cannot report a stage of agency {}",
                o.node,
                o.agency,
                crate::message::clip(&r.addressee_agency)
            ));
        }
    } else if t == pb::NonDelivery::full_name() {
        if !from_node {
            return Err("non-delivery reports come only from nodes, as SYSTEM traffic".into());
        }
        let r = pb::NonDelivery::decode(m.payload.clone())
            .map_err(|e| format!("the report does not decode: {e}"))?;
        if r.node != o.node {
            return Err(format!(
                "a report from node {} cannot name node {}",
                o.node,
                crate::message::clip(&r.node)
            ));
        }
    } else if t == pb::BusinessResponse::full_name() && from_node {
        return Err("business responses come from clients".into());
    }
    Ok(())
}

/// Reads the business response carried by a message, if it is one.
pub(crate) fn business_response(m: &Message) -> Option<pb::BusinessResponse> {
    (m.payload_type == pb::BusinessResponse::full_name())
        .then(|| pb::BusinessResponse::decode(m.payload.clone()).ok())
        .flatten()
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::draft::Draft;
    use crate::identity::AgencyId;
    use crate::message::{Status, timestamp};

    fn originator(client: Option<&str>) -> Originator {
        Originator {
            agency: AgencyId::new("dea").unwrap(),
            node: "dea-1".into(),
            client: client.map(str::to_owned),
        }
    }

    fn message(d: Draft, o: &Originator, now: SystemTime) -> Message {
        let env = d.finish(o, now);
        Message::parse(prost::Message::encode_to_vec(&env).into(), None).unwrap()
    }

    #[test]
    fn receipts_and_responses_get_no_receipts() {
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let desk = originator(Some("duty-desk"));
        let alert = message(
            Draft::new(&pb::LiaisonMessage::default()).to("afi"),
            &desk,
            now,
        );
        assert!(wants_receipts(&alert) && wants_non_delivery(&alert));
        let receipt = Draft::new(&pb::Receipt::default())
            .to("dea")
            .status(Status::System);
        let receipt = message(receipt, &originator(None), now);
        assert!(!wants_receipts(&receipt) && !wants_non_delivery(&receipt));
        let response = message(
            Draft::new(&pb::BusinessResponse::default()).to("dea"),
            &desk,
            now,
        );
        assert!(!wants_receipts(&response));
        assert!(!wants_response(&alert));
        // A bulk feed asks for non-delivery reports only, and still gets a respond-by.
        let feed = Draft::new(&pb::LiaisonMessage::default())
            .to("afi")
            .non_delivery_receipts_only()
            .respond_within(Duration::from_secs(60));
        let feed = message(feed, &originator(Some("analyst")), now);
        assert!(!wants_receipts(&feed) && wants_non_delivery(&feed));
        assert!(wants_response(&feed));
    }

    #[test]
    fn each_payload_becomes_its_stage() {
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let id = MessageId::new_v7(now);
        let node = originator(None);
        let r = pb::Receipt {
            message_id: id.to_bytes(),
            addressee_agency: "afi".into(),
            stage: pb::ReceiptStage::Persisted as i32,
            by: "afi-1".into(),
            at: Some(timestamp(now)),
            ..Default::default()
        };
        let m = message(Draft::new(&r).to("dea"), &node, now);
        let got = Receipt::from_message(&m).unwrap();
        assert_eq!((got.message_id, got.stage.clone()), (id, Stage::Persisted));
        assert_eq!((got.at, got.by.as_str()), (Some(now), "afi-1"));

        let later = now + Duration::from_secs(3600);
        let b = pb::BusinessResponse {
            message_id: id.to_bytes(),
            outcome: pb::BusinessOutcome::NeedMoreTime as i32,
            need_until: Some(timestamp(later)),
            reason: "checking the manifest".into(),
        };
        let afi = Originator {
            agency: AgencyId::new("afi").unwrap(),
            node: "afi-1".into(),
            client: Some("duty-desk".into()),
        };
        let got = Receipt::from_message(&message(Draft::new(&b).to("dea"), &afi, now)).unwrap();
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
        let m = message(Draft::new(&n).to("dea"), &node, now);
        assert_eq!(
            Receipt::from_message(&m).unwrap().stage.name(),
            "non-delivery:expired"
        );
        let other = message(
            Draft::new(&pb::LiaisonMessage::default()).to("dea"),
            &originator(Some("x")),
            now,
        );
        assert_eq!(Receipt::from_message(&other), None);
    }

    #[test]
    fn units_and_precedence() {
        assert_eq!(
            receipts_mailbox("duty-desk"),
            Mailbox::unit("receipts-duty-desk").unwrap()
        );
        // Long names are shortened, never shared.
        let long = receipts_mailbox(&"a".repeat(60));
        assert_ne!(long, receipts_mailbox(&format!("{}b", "a".repeat(59))));
        assert!(long.to_string().starts_with("receipts-aaaa"), "{long}");
        assert!(is_receipts_mailbox(&receipts_mailbox("duty-desk")));
        assert!(!is_receipts_mailbox(&Mailbox::unit("desk").unwrap()));
        assert!(!is_receipts_mailbox(&Mailbox::Inbox));
        assert_eq!(
            receipts_address(&originator(Some("duty-desk"))).as_deref(),
            Some("dea/receipts-duty-desk")
        );
        assert_eq!(receipts_address(&originator(None)), None);
        assert_eq!(precedence_for(Precedence::Flash), Precedence::Flash);
        assert_eq!(precedence_for(Precedence::Bulk), Precedence::Routine);
    }
}
