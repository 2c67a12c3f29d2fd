//! Operator requests: inspect and redrive dead letters.
//!
//! Only connections whose certificate grants the operator role get here (checked by the caller).
//! Answers carry identifiers and metadata, never payload content.

use std::sync::Arc;

use prost::Message;

use super::Node;
use super::events::Event;
use super::queue::{DeadLetter, Queue};
use crate::message::{MessageId, timestamp};
use crate::wire::pb::{self, frame::Body};

/// Answers one operator request frame.
pub(super) fn handle(node: &Arc<Node>, by: &str, request: Body) -> Body {
    match request {
        Body::DlqList(r) => Body::DlqEntries(pb::DlqEntries {
            entries: list(node, |q, _| r.queue.is_empty() || q.name() == r.queue),
        }),
        Body::DlqShow(r) => Body::DlqEntries(pb::DlqEntries {
            entries: list(node, |_, d| {
                d.entry.item.id.as_bytes()[..] == r.message_id[..]
            }),
        }),
        Body::DlqRedrive(r) => {
            let mut ids = Vec::new();
            for q in node.queues() {
                if !r.queue.is_empty() && q.name() != r.queue {
                    continue;
                }
                let redriven =
                    q.redrive(|d| r.all || d.entry.item.id.as_bytes()[..] == r.message_id[..]);
                for id in redriven {
                    node.events.record(Event::Redriven {
                        id,
                        queue: q.name().to_owned(),
                        by: by.to_owned(),
                    });
                    ids.push(id.to_bytes());
                }
            }
            Body::DlqRedriven(pb::DlqRedriven { message_ids: ids })
        }
        other => Body::Refused(pb::Refused {
            code: pb::RefusalCode::Malformed as i32,
            reason: format!("not an operator request: {other:?}"),
            ..Default::default()
        }),
    }
}

fn list(node: &Node, pred: impl Fn(&Queue, &DeadLetter) -> bool) -> Vec<pb::DeadLetterInfo> {
    let mut out = Vec::new();
    for q in node.queues() {
        for d in q.dead_letters() {
            if pred(&q, &d) {
                out.push(info(&q, &d));
            }
        }
    }
    out
}

fn info(q: &Queue, d: &DeadLetter) -> pb::DeadLetterInfo {
    let env = pb::Envelope::decode(d.entry.item.signed.envelope.clone()).unwrap_or_default();
    pb::DeadLetterInfo {
        queue: q.name().to_owned(),
        message_id: MessageId::to_bytes(d.entry.item.id),
        reason: d.reason.clone(),
        dead_at: Some(timestamp(d.at)),
        attempts: d.entry.item.attempts,
        precedence: d.entry.precedence.to_pb() as i32,
        originator: env.originator,
        addressees: env.addressees,
        payload_type: env.payload_type,
        size_bytes: d.entry.item.signed.envelope.len() as u64,
        expires_at: Some(timestamp(d.entry.expires_at)),
    }
}
