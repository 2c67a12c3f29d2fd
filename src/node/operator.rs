//! Operator requests: inspect and redrive dead letters.
//!
//! Only connections whose certificate grants the operator role get here (checked by the caller).
//! Answers carry identifiers and metadata, never payload content. Redriving is a change of fate,
//! so it is the ledger's.

use std::sync::Arc;

use super::ledger::{DeadLetter, Queue};
use super::state::Node;
use crate::message::{MessageId, timestamp};
use crate::wire::pb::{self, frame::Body};

/// Answers one operator request frame.
pub(super) async fn handle(node: &Arc<Node>, by: &str, request: Body) -> Body {
    let is = |d: &DeadLetter, id: &[u8]| d.entry.item.id().as_bytes()[..] == id[..];
    match request {
        Body::DlqList(r) => Body::DlqEntries(pb::DlqEntries {
            entries: list(node, |q, _| r.queue.is_empty() || q.name() == r.queue),
        }),
        Body::DlqShow(r) => Body::DlqEntries(pb::DlqEntries {
            entries: list(node, |_, d| is(d, &r.message_id)),
        }),
        Body::DlqRedrive(r) => {
            let queue = (!r.queue.is_empty()).then_some(r.queue.as_str());
            let wanted = |d: &DeadLetter| r.all || is(d, &r.message_id);
            match node.ledger.redrive(queue, wanted, by).await {
                Ok(ids) => Body::DlqRedriven(pb::DlqRedriven {
                    message_ids: ids.into_iter().map(MessageId::to_bytes).collect(),
                }),
                Err(refusal) => Body::Refused(refusal.to_pb(Default::default())),
            }
        }
        other => Body::Refused(pb::Refused {
            code: pb::RefusalCode::Malformed as i32,
            reason: format!("not an operator request: {other:?}"),
            ..Default::default()
        }),
    }
}

fn list(node: &Node, pred: impl Fn(&Queue, &DeadLetter) -> bool) -> Vec<pb::DeadLetterInfo> {
    node.ledger
        .dead_letters(pred)
        .iter()
        .map(|(q, d)| info(q, d))
        .collect()
}

fn info(q: &Queue, d: &DeadLetter) -> pb::DeadLetterInfo {
    let c = &d.entry.item;
    let m = &c.message;
    pb::DeadLetterInfo {
        queue: q.name().to_owned(),
        message_id: c.id().to_bytes(),
        reason: d.reason.clone(),
        dead_at: Some(timestamp(d.at)),
        attempts: c.attempts,
        precedence: d.entry.precedence.to_pb() as i32,
        originator: Some(m.originator.to_pb()),
        addressees: m
            .addressees
            .iter()
            .map(|a| pb::Addressee {
                agency: a.agency.clone(),
                unit: a.mailbox.wire_name().to_owned(),
                copy_type: if a.action {
                    pb::CopyType::Action
                } else {
                    pb::CopyType::Information
                } as i32,
            })
            .collect(),
        payload_type: m.payload_type.clone(),
        size_bytes: m.envelope.len() as u64,
        expires_at: Some(timestamp(d.entry.expires_at)),
    }
}
