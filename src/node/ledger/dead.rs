//! Dead letters: listing them for an operator, and **redriving** them back into their queue.

use std::sync::Arc;

use super::{DeadLetter, Ledger, Queue, QueueId, Seq};
use crate::message::MessageId;
use crate::node::events::Event;
use crate::refusal::Refusal;
use crate::store::Op;

impl Ledger {
    /// **Redriven**: dead letters matching `wanted` (of the queue named `queue`, if given) go
    /// back to their queue as fresh copies (one store write for all of them), attempts reset.
    /// Orphans have no consumer and stay. Returns the ids put back.
    ///
    /// # Errors
    /// The refusal to send the operator when the store cannot write.
    pub async fn redrive(
        &self,
        queue: Option<&str>,
        wanted: impl Fn(&DeadLetter) -> bool,
        by: &str,
    ) -> Result<Vec<MessageId>, Refusal> {
        // A dead letter's own record may still be on its way to the store.
        self.flush().await;
        let mut ids = Vec::new();
        for q in self.queues() {
            if queue.is_some_and(|n| q.name() != n) || *q.id() == QueueId::Orphans {
                continue;
            }
            // A dead letter whose copy is not on disk yet (a time-sensitive copy, queued while
            // its write was in flight) stays parked: it can be redriven once it is.
            let dead = q.take_dead(|d| wanted(d) && d.entry.item.seq.get().is_some());
            if dead.is_empty() {
                continue;
            }
            let ops = dead
                .iter()
                .filter_map(|d| d.entry.item.seq.get().map(Op::Redrive))
                .collect();
            let seqs = match self.0.store.commit(ops).await {
                Ok(seqs) => seqs,
                Err(e) => {
                    for d in dead {
                        q.dead_letter(d);
                    }
                    return Err(self.store_refusal(&e));
                }
            };
            for (mut d, seq) in dead.into_iter().zip(seqs) {
                let id = d.entry.item.id();
                d.entry.item.seq = Seq::durable(seq);
                d.entry.item.attempts = 0;
                let message = d.entry.item.message.clone();
                q.requeue(d.entry);
                self.0.events.record_about(
                    &message,
                    Event::Redriven {
                        id,
                        queue: q.name().to_owned(),
                        by: by.to_owned(),
                    },
                );
                ids.push(id);
            }
        }
        Ok(ids)
    }

    /// The dead letters matching `pred`, with their queues (read only).
    pub fn dead_letters(
        &self,
        pred: impl Fn(&Queue, &DeadLetter) -> bool,
    ) -> Vec<(Arc<Queue>, DeadLetter)> {
        let mut out = Vec::new();
        for q in self.queues() {
            for d in q.dead_letters() {
                if pred(&q, &d) {
                    out.push((q.clone(), d));
                }
            }
        }
        out
    }
}
