//! The originator's side of receipts: a stream of typed [`Receipt`]s for the messages this
//! client sent, per message if wanted, and [`Client::respond`] for an addressee's business
//! response.
//!
//! Receipts are durable messages in the originator client's receipts unit
//! (`receipts-<client>`), so they wait there until read: [`Receipts`] is a subscription to that
//! unit on the client's own connection ([`Client::receipts`]). It consumes what it reads (each
//! receipt is acknowledged as it is taken from the node); `enlace status` reads without
//! consuming. Receipts of one message can arrive in any order (they come from different nodes and
//! take separate streams): order them by [`Receipt::at`]. A stage may be reported twice (a copy
//! put back for another client is delivered again); nothing here removes such duplicates.

use std::collections::VecDeque;

use super::{Acceptance, Client, Inbox};
use crate::draft::Draft;
use crate::error::SubmitError;
use crate::message::{Message, MessageId};
use crate::receipt::{Receipt, precedence_for, receipts_address};
use crate::wire::pb;

/// Receipts of other messages that [`Receipts::next_for`] holds while it waits for one message;
/// beyond this, the oldest held receipt is dropped (and logged).
pub const HELD_CAPACITY: usize = 10_000;

/// A stream of the receipts (stages, business responses, non-delivery reports, overdue notices)
/// of the messages one client sent, from [`Client::receipts`].
///
/// ```no_run
/// # async fn example(client: enlace::Client, draft: enlace::Draft)
/// #     -> Result<(), Box<dyn std::error::Error>> {
/// let mut receipts = client.receipts().await?;
/// let accepted = client.send(draft).await?.await?;
/// while let Some(r) = receipts.next_for(accepted.id).await {
///     println!("{} {} by {}", r.addressee, r.stage.name(), r.by);
///     if matches!(r.stage, enlace::Stage::Response { .. }) {
///         break;
///     }
/// }
/// # Ok(()) }
/// ```
pub struct Receipts {
    inbox: Inbox,
    held: VecDeque<Receipt>,
    /// Messages in the receipts unit that are not receipts.
    not_receipts: u64,
}

impl Receipts {
    pub(crate) fn new(inbox: Inbox) -> Receipts {
        Receipts {
            inbox,
            held: VecDeque::new(),
            not_receipts: 0,
        }
    }

    /// How many items of the receipts unit this stream dropped instead of returning: those
    /// that are not authentic (see [`Inbox::refused`]: a receipt must be signed by the node or
    /// client it names, a business response must come from a client of an addressed agency),
    /// and messages that are not receipts at all. Each is logged.
    ///
    /// ```no_run
    /// # async fn example(receipts: enlace::Receipts) {
    /// assert_eq!(receipts.dropped(), 0, "someone is sending junk to my receipts unit");
    /// # }
    /// ```
    pub fn dropped(&self) -> u64 {
        self.inbox.refused() + self.not_receipts
    }

    /// The next receipt of any message, or `None` when the connection has ended.
    ///
    /// ```no_run
    /// # async fn example(mut receipts: enlace::Receipts) {
    /// while let Some(r) = receipts.next().await {
    ///     if let enlace::Stage::NonDelivery(why) = r.stage {
    ///         eprintln!("{} will not reach {}: {why:?}", r.message_id, r.addressee);
    ///     }
    /// }
    /// # }
    /// ```
    ///
    /// # Cancel safety
    /// Cancel safe: a receipt is taken from the node only once it can be returned.
    pub async fn next(&mut self) -> Option<Receipt> {
        if let Some(r) = self.held.pop_front() {
            return Some(r);
        }
        self.read().await
    }

    /// The next receipt of message `id`; receipts of other messages that arrive meanwhile are
    /// held for [`Receipts::next`] and later calls (up to 10,000 of them; beyond that the oldest
    /// held receipt is dropped and logged).
    ///
    /// ```no_run
    /// # async fn example(client: enlace::Client, draft: enlace::Draft)
    /// #     -> Result<(), Box<dyn std::error::Error>> {
    /// let mut receipts = client.receipts().await?;
    /// let accepted = client.send(draft).await?.await?;
    /// if let Some(first) = receipts.next_for(accepted.id).await {
    ///     println!("{} by {}", first.stage.name(), first.by);
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Cancel safety
    /// Cancel safe: receipts read while waiting are held, not lost.
    pub async fn next_for(&mut self, id: MessageId) -> Option<Receipt> {
        if let Some(i) = self.held.iter().position(|r| r.message_id == id) {
            return self.held.remove(i);
        }
        loop {
            let r = self.read().await?;
            if r.message_id == id {
                return Some(r);
            }
            if self.held.len() >= HELD_CAPACITY
                && let Some(old) = self.held.pop_front()
            {
                tracing::warn!(id = %old.message_id, stage = %old.stage.name(), "too many held receipts; oldest dropped");
            }
            self.held.push_back(r);
        }
    }

    /// Reads, acknowledges and decodes the next receipt from the node.
    async fn read(&mut self) -> Option<Receipt> {
        loop {
            let d = self.inbox.next().await?;
            let r = Receipt::from_message(d.message()).map(|mut r| {
                r.path = d.path().into_iter().map(str::to_owned).collect();
                r
            });
            let payload_type = d.message().payload_type().to_owned();
            // A failed acknowledgement only means the node offers it again, and the inbox
            // drops the redelivery.
            let _ = d.ack().await;
            match r {
                Some(r) => return Some(r),
                None => {
                    self.not_receipts += 1;
                    tracing::warn!(
                    payload = %payload_type,
                    "message in the receipts unit is not a receipt; skipped"
                    )
                }
            }
        }
    }
}

impl Client {
    /// Sends the business response to a message this client's agency received: to its
    /// originator's receipts unit, in reply to it, with its status (an exercise's answer is an
    /// exercise) and its receipts' precedence. `response.message_id` is set to the original's.
    /// The node that serves this client settles the original's respond-by deadline with it (a
    /// NEED_MORE_TIME with `need_until` moves it; any other outcome ends it).
    ///
    /// ```no_run
    /// # async fn example(client: enlace::Client, delivery: enlace::Delivery)
    /// #     -> Result<(), enlace::SubmitError> {
    /// let response = enlace::pb::BusinessResponse {
    ///     outcome: enlace::pb::BusinessOutcome::ActionTaken as i32,
    ///     reason: "interception team dispatched".into(),
    ///     ..Default::default()
    /// };
    /// client.respond(delivery.message(), response).await?.await?;
    /// delivery.ack().await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`Client::send`]; [`SubmitError::Protocol`] if `original` has no originator client.
    pub async fn respond(
        &self,
        original: &Message,
        mut response: pb::BusinessResponse,
    ) -> Result<Acceptance, SubmitError> {
        let id = original.id();
        let to = receipts_address(original.originator())
            .ok_or_else(|| SubmitError::Protocol("the original has no originator client".into()))?;
        response.message_id = id.to_bytes();
        let draft = Draft::new(&response)
            .to(&to)
            .precedence(precedence_for(original.precedence()))
            .status(original.status())
            .kind(pb::MessageKind::Response)
            .in_reply_to(id)
            .case_id(original.case_id());
        self.send(draft).await
    }
}
