//! Taking a message: routing an admitted message with this node's directory and routing table,
//! and handing it to the ledger, which persists and queues it.
//!
//! Used for what clients and peers submit (`streams`) and for the node's own SYSTEM messages
//! (`receipts`). Admission (who may send what) happens before, in `validate`; routing decisions
//! are the sans-I/O `route`'s.

use std::sync::Arc;
use std::time::SystemTime;

use super::ledger::Taking;
use super::state::Node;
use crate::identity::AgencyId;
use crate::message::{Message, MessageId};
use crate::refusal::Refusal;
use crate::route::{self, Plan};
use crate::validate::Admitted;
use crate::wire::pb;

/// A message of this node's own clients, and the agencies it is addressed to (who may answer it).
type Responders = (MessageId, Vec<AgencyId>);

impl Node {
    /// Routes admitted messages from one sender and has the ledger take them, with one store
    /// request for all of them (see [`super::ledger::Ledger::take_all`]): one answer per
    /// message, in order; a message answered `Ok` is on disk and queued, so its sender may hear
    /// `Accepted`. A refusal (no route, a loop, a full queue, a store failure) is for the
    /// sender; recording it is the caller's business.
    pub async fn take_many(
        &self,
        admitted: Vec<Admitted>,
        from: &str,
        from_peer: bool,
        now: SystemTime,
    ) -> Vec<Result<pb::Accepted, Refusal>> {
        let mut answers: Vec<Option<Result<pb::Accepted, Refusal>>> = Vec::new();
        let mut takings = Vec::new();
        let mut slots = Vec::new();
        let mut addressed = Vec::new();
        for a in admitted {
            answers.push(None);
            match self.prepare(a, from, from_peer, now) {
                Ok((taking, who)) => {
                    slots.push(answers.len() - 1);
                    takings.push(taking);
                    addressed.push(who);
                }
                Err(r) => *answers.last_mut().expect("pushed above") = Some(Err(r)),
            }
        }
        let taken = self.ledger.take_all(takings, true).await;
        for ((slot, answer), who) in slots.into_iter().zip(taken).zip(addressed) {
            if let (Ok(_), Some((id, agencies))) = (&answer, who) {
                self.responders
                    .lock()
                    .expect("responders lock poisoned")
                    .remember(id, agencies);
            }
            answers[slot] = Some(answer);
        }
        answers.into_iter().map(|a| a.expect("answered")).collect()
    }

    /// What comes before the ledger takes a message: the responder check, its route, the
    /// exchange rules (remembered before it is queued: an alert is handed to its reader while
    /// its write is in flight, and a product derived from it may come back at once), and, for a
    /// message of this node's own clients, who may answer it.
    fn prepare<'a>(
        &self,
        admitted: Admitted,
        from: &'a str,
        from_peer: bool,
        now: SystemTime,
    ) -> Result<(Taking<'a>, Option<Responders>), Refusal> {
        let Admitted {
            message,
            hops,
            route_to,
            signer_chain,
        } = admitted;
        self.check_responder(&message)?;
        let plan = self.plan(&message, &hops, from_peer.then_some(&route_to[..]))?;
        let client = message.originator.client.as_deref().filter(|_| !from_peer);
        if let Some(r) = self.check_take(&message, &plan, client, now)? {
            self.remember(&message, !plan.local.is_empty(), r);
        }
        let addressed = (!from_peer && message.originator.client.is_some()).then(|| {
            let mut agencies: Vec<AgencyId> =
                plan.peers.iter().flat_map(|p| p.agencies.clone()).collect();
            if !plan.local.is_empty() {
                agencies.push(self.config.agency.clone());
            }
            (message.id, agencies)
        });
        let taking = Taking {
            message,
            hops,
            signer_chain,
            plan,
            from,
            from_peer,
            now,
        };
        Ok((taking, addressed))
    }

    /// A business response is admitted only from a client of an agency the message it answers
    /// was addressed to, as far as this node knows (it knows the messages its own clients sent;
    /// see [`crate::respond::Responders`]).
    fn check_responder(&self, message: &Message) -> Result<(), Refusal> {
        let Some(r) = crate::receipt::business_response(message) else {
            return Ok(());
        };
        let Some(id) = crate::message::MessageId::from_slice(&r.message_id) else {
            return Err(Refusal::invalid(
                "the business response does not name a valid message id",
            ));
        };
        let agency = &message.originator.agency;
        let known = self
            .responders
            .lock()
            .expect("responders lock poisoned")
            .may_respond(&id, agency);
        match known {
            Some(false) => Err(Refusal::new(
                pb::RefusalCode::Unauthorized,
                format!(
                    "a business response to message {id} from agency {agency}, which that \
                     message was not addressed to"
                ),
            )),
            _ => Ok(()),
        }
    }

    /// Routes this node's own messages (receipts, reports, fresh ids) and has the ledger take
    /// them all with one store write; one answer per message, in order.
    pub async fn take_own(
        &self,
        messages: Vec<Arc<Message>>,
        signer_chain: &Arc<[bytes::Bytes]>,
        from: &str,
        now: SystemTime,
    ) -> Vec<Result<pb::Accepted, Refusal>> {
        let mut answers: Vec<Option<Result<pb::Accepted, Refusal>>> = Vec::new();
        let mut takings = Vec::new();
        let mut slots = Vec::new();
        for message in messages {
            answers.push(None);
            match self.plan(&message, &[], None) {
                Ok(plan) => {
                    slots.push(answers.len() - 1);
                    takings.push(Taking {
                        message,
                        hops: Vec::new(),
                        signer_chain: signer_chain.clone(),
                        plan,
                        from,
                        from_peer: false,
                        now,
                    });
                }
                Err(r) => *answers.last_mut().expect("pushed above") = Some(Err(r)),
            }
        }
        let taken = self.ledger.take_all(takings, false).await;
        for (slot, answer) in slots.into_iter().zip(taken) {
            answers[slot] = Some(answer);
        }
        answers.into_iter().map(|a| a.expect("answered")).collect()
    }

    /// Where a message goes: local mailboxes and next-hop peers (see [`route::Router`]).
    fn plan(
        &self,
        message: &Message,
        hops: &[pb::HopRecord],
        route_to: Option<&[String]>,
    ) -> Result<Plan, Refusal> {
        let config = &self.config;
        let router = route::Router {
            agency: &config.agency,
            node: &config.name,
            directory: &config.directory,
            next_hop: |a: &AgencyId| {
                config.next_hop(a).map(|p| route::NextHop {
                    node: p.node.as_str(),
                    relay: p.agency != *a,
                })
            },
        };
        let hops: Vec<String> = hops.iter().map(|h| h.node.clone()).collect();
        let arrival = route::Arrival {
            from_peer: route_to,
            hops: &hops,
            max_relays: message.handling.max_relays,
        };
        router.plan(&message.addressees, arrival)
    }
}
