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
use crate::store::Op;
use crate::wire::pb::{self, frame::Body};

/// Answers one operator request frame.
pub(super) async fn handle(node: &Arc<Node>, by: &str, request: Body) -> Body {
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
                // Orphans have no consumer: redriving them would only park them again.
                if (!r.queue.is_empty() && q.name() != r.queue) || q.name() == "orphans" {
                    continue;
                }
                let wanted =
                    |d: &DeadLetter| r.all || d.entry.item.id.as_bytes()[..] == r.message_id[..];
                match redrive(node, &q, q.take_dead(wanted), by).await {
                    Ok(mut redriven) => ids.append(&mut redriven),
                    Err(refused) => return refused,
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

/// Puts dead letters back in their queue as fresh copies (one store write for all of them).
async fn redrive(
    node: &Arc<Node>,
    q: &Arc<Queue>,
    dead: Vec<DeadLetter>,
    by: &str,
) -> Result<Vec<bytes::Bytes>, Body> {
    if dead.is_empty() {
        return Ok(Vec::new());
    }
    // A dead letter whose copy is not on disk yet (a time-sensitive copy, queued while its write
    // was in flight) stays parked: it can be redriven once it is.
    let (dead, unwritten): (Vec<_>, Vec<_>) = dead
        .into_iter()
        .partition(|d| d.entry.item.seq.get().is_some());
    for d in unwritten {
        q.dead_letter(d.entry, d.reason, d.at);
    }
    let ops = dead
        .iter()
        .filter_map(|d| d.entry.item.seq.get().map(Op::Redrive))
        .collect();
    let seqs = match node.store.commit(ops).await {
        Ok(seqs) => seqs,
        Err(e) => {
            for d in dead {
                q.dead_letter(d.entry, d.reason, d.at);
            }
            let r = if e.is_fatal() {
                node.storage_failed(&e)
            } else {
                crate::validate::Refusal::new(pb::RefusalCode::Invalid, e.to_string())
            };
            return Err(Body::Refused(r.to_pb(None)));
        }
    };
    let mut ids = Vec::new();
    for (mut d, seq) in dead.into_iter().zip(seqs) {
        let id = d.entry.item.id;
        d.entry.item.seq = super::queue::Seq::durable(seq);
        d.entry.item.attempts = 0;
        q.requeue(d.entry);
        node.events.record(Event::Redriven {
            id,
            queue: q.name().to_owned(),
            by: by.to_owned(),
        });
        ids.push(id.to_bytes());
    }
    Ok(ids)
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
