//! What a client receives: subscriptions ([`Inbox`]), deliveries ([`Delivery`]) and their
//! acknowledgements, and the memory of acknowledged ids that drops redeliveries ([`Dedup`]).
//!
//! The node opens a stream per time-sensitive delivery and one long-lived stream for analytical
//! ones. The client accepts each and reads it in its own task (streams are accepted in the order
//! they were opened, so reading them one after another would put an alert behind the
//! analytical stream), routes each `Deliver` frame to the subscription of its mailbox, and
//! writes the application's acknowledgements back on the stream it came on.

use std::collections::{HashMap, HashSet, VecDeque};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::SystemTime;

use bytes::Bytes;
use quinn::{Connection, SendStream};
use tokio::sync::{mpsc, watch};

use crate::address::Mailbox;
use crate::error::{PayloadError, SubmitError};
use crate::message::{Hop, Message, MessageId, Precedence, clip};
use crate::session;
use crate::signature::VerifiedRoots;
use crate::signers::Signers;
use crate::wire::frame::{self, FrameError, FrameReader};
use crate::wire::pb::{self, frame::Body};

/// How many acknowledged ids a [`Dedup`] remembers.
pub const SEEN_CAPACITY: usize = 100_000;

/// Acknowledgements waiting to be written on one delivery stream.
const ACK_QUEUE: usize = 1024;

/// Most acknowledgements written at once.
const ACK_BATCH: usize = 256;

/// Message ids the application has acknowledged (bounded: the oldest are forgotten first). An id
/// is remembered at acknowledgement, not at hand-out: a message the application did not
/// acknowledge is offered to it again.
#[derive(Default)]
struct Seen {
    set: HashSet<MessageId>,
    order: VecDeque<MessageId>,
}

impl Seen {
    fn insert(&mut self, id: MessageId) {
        if !self.set.insert(id) {
            return;
        }
        self.order.push_back(id);
        if self.order.len() > SEEN_CAPACITY
            && let Some(old) = self.order.pop_front()
        {
            self.set.remove(&old);
        }
    }
}

/// The ids an application has acknowledged, shared by the clients it uses one after another
/// (see [`ClientOptions::dedup`](crate::ClientOptions::dedup)). Bounded: it keeps the 100,000
/// most recently acknowledged ids and forgets the oldest first.
///
/// ```
/// let seen = enlace::Dedup::default();
/// let first = enlace::ClientOptions::new("dea-1.dea.enlace.example:7400").dedup(seen.clone());
/// let replacement = enlace::ClientOptions::new("dea-1.dea.enlace.example:7400").dedup(seen);
/// ```
#[derive(Clone, Default)]
pub struct Dedup(Arc<Mutex<Seen>>);

impl std::fmt::Debug for Dedup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.0.lock().map(|s| s.set.len()).unwrap_or(0);
        write!(f, "Dedup({n} ids)")
    }
}

impl Dedup {
    fn contains(&self, id: &MessageId) -> bool {
        self.0.lock().expect("seen lock poisoned").set.contains(id)
    }

    fn insert(&self, id: MessageId) {
        self.0.lock().expect("seen lock poisoned").insert(id);
    }
}

/// What a client checks of every delivery before the application sees it: the signer's chain
/// (to the federation root), that the signer is the originator, the originator's signature over
/// the exact bytes, and that a control payload names its sender honestly. A delivery that fails
/// is not handed over (and not acknowledged): it is logged, and the node offers it again until
/// it dead-letters it.
pub(crate) struct Checks {
    pub signers: Signers,
    pub verified: VerifiedRoots,
}

impl Checks {
    fn check(&self, m: &Message, chain: &[Bytes]) -> Result<(), String> {
        let signer = self
            .signers
            .signer_for(m.signature.as_ref(), chain, SystemTime::now())?;
        crate::validate::signed_by_originator(m, &signer.cert)?;
        crate::signature::verify(
            &m.envelope,
            m.signature.as_ref(),
            &signer.cert.sha256,
            signer.cert.ed25519_public_key.as_deref(),
            Some(&self.verified),
        )
        .map_err(|e| format!("originator signature: {e}"))?;
        crate::receipt::check_control(m)
    }
}

/// Where each subscribed mailbox's deliveries go, by mailbox.
pub(crate) type Routes = Arc<Mutex<HashMap<Mailbox, Route>>>;

/// One subscription's channel, and its count of deliveries refused by [`Checks`].
#[derive(Clone)]
pub(crate) struct Route {
    pub tx: mpsc::Sender<Delivery>,
    pub refused: Arc<AtomicU64>,
}

/// The deliveries of one mailbox, in the order the node sent them: a [`Stream`] of
/// [`Delivery`].
///
/// Dropping it unsubscribes: the node stops delivering the mailbox on this connection and puts
/// back what was not acknowledged.
///
/// ```no_run
/// # async fn example(client: enlace::Client) -> Result<(), Box<dyn std::error::Error>> {
/// let mut inbox = client.subscribe(enlace::Mailbox::Inbox).await?;
/// while let Some(delivery) = inbox.next().await {
///     println!("{} from {}", delivery.id(), delivery.message().originator());
///     delivery.ack().await?;
/// }
/// # Ok(()) }
/// ```
///
/// [`Stream`]: futures_core::Stream
pub struct Inbox {
    mailbox: Mailbox,
    rx: mpsc::Receiver<Delivery>,
    seen: Dedup,
    routes: Routes,
    connection: Connection,
    refused: Arc<AtomicU64>,
}

impl Inbox {
    pub(crate) fn new(
        mailbox: Mailbox,
        rx: mpsc::Receiver<Delivery>,
        seen: Dedup,
        routes: Routes,
        connection: Connection,
        refused: Arc<AtomicU64>,
    ) -> Inbox {
        Inbox {
            mailbox,
            rx,
            seen,
            routes,
            connection,
            refused,
        }
    }

    /// How many deliveries of this mailbox the client library refused because they are not
    /// what they claim to be (a signature that does not verify against a certificate of the
    /// federation, a signer who is not the originator, a receipt not signed by whoever it
    /// names). Each is logged, and none is acknowledged, so the node offers it again until it
    /// dead-letters it for operators to examine.
    ///
    /// ```no_run
    /// # async fn example(inbox: enlace::Inbox) {
    /// if inbox.refused() > 0 {
    ///     eprintln!("{} deliveries refused as not authentic", inbox.refused());
    /// }
    /// # }
    /// ```
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// The mailbox it reads.
    ///
    /// ```no_run
    /// # async fn example(client: enlace::Client) -> Result<(), enlace::ClientError> {
    /// let inbox = client.subscribe(enlace::Mailbox::Inbox).await?;
    /// assert_eq!(inbox.mailbox(), &enlace::Mailbox::Inbox);
    /// # Ok(()) }
    /// ```
    pub fn mailbox(&self) -> &Mailbox {
        &self.mailbox
    }

    /// The next delivery, or `None` when the connection has ended.
    ///
    /// A redelivery of a message the application already acknowledged (the acknowledgement was
    /// lost, or the node restarted before recording it) is acknowledged again and skipped.
    ///
    /// ```no_run
    /// # async fn example(mut inbox: enlace::Inbox) -> Result<(), enlace::SubmitError> {
    /// while let Some(delivery) = inbox.next().await {
    ///     println!("{} {}", delivery.precedence(), delivery.message().payload_type());
    ///     delivery.ack().await?;
    /// }
    /// // The connection has ended: connect again to read on.
    /// # Ok(()) }
    /// ```
    ///
    /// # Cancel safety
    /// Cancel safe: no delivery is lost if the future is dropped.
    pub async fn next(&mut self) -> Option<Delivery> {
        std::future::poll_fn(|cx| self.poll_delivery(cx)).await
    }

    fn poll_delivery(&mut self, cx: &mut Context<'_>) -> Poll<Option<Delivery>> {
        loop {
            let Some(mut d) = std::task::ready!(self.rx.poll_recv(cx)) else {
                return Poll::Ready(None);
            };
            if !self.seen.contains(&d.id) {
                d.seen = Some(self.seen.clone());
                return Poll::Ready(Some(d));
            }
            // Already seen: tell the node so it stops offering it. If the acknowledgement
            // cannot be queued, the node offers it again, and it is skipped again.
            let _ = d.ack.try_send(d.id);
        }
    }
}

impl futures_core::Stream for Inbox {
    type Item = Delivery;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Delivery>> {
        self.get_mut().poll_delivery(cx)
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        self.routes
            .lock()
            .expect("routes lock poisoned")
            .remove(&self.mailbox);
        // Best effort: without it, the node stops when the connection ends.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let (conn, unit) = (self.connection.clone(), self.mailbox.wire_name().to_owned());
            rt.spawn(async move {
                let body = Body::Unsubscribe(pb::Unsubscribe { unit });
                let _ = session::request(&conn, body).await;
            });
        }
    }
}

/// One delivered message. Call [`Delivery::ack`] once it has been processed, or the node offers
/// it again.
pub struct Delivery {
    id: MessageId,
    message: Message,
    hops: Vec<pb::HopRecord>,
    signer_chain: Vec<Bytes>,
    attempt: u32,
    mailbox: Mailbox,
    received_at: SystemTime,
    ack: mpsc::Sender<MessageId>,
    seen: Option<Dedup>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("id", &self.id)
            .field("precedence", &self.message.precedence)
            .field("attempt", &self.attempt)
            .field("mailbox", &self.mailbox)
            .finish_non_exhaustive()
    }
}

impl Delivery {
    /// The message id: the same for every copy and redelivery of the message.
    ///
    /// ```no_run
    /// # fn example(delivery: &enlace::Delivery) {
    /// println!("message {}", delivery.id());
    /// # }
    /// ```
    pub fn id(&self) -> MessageId {
        self.id
    }

    /// The message's precedence, as its originator set it.
    ///
    /// ```no_run
    /// # fn example(delivery: &enlace::Delivery) {
    /// if delivery.precedence() == enlace::Precedence::Flash {
    ///     println!("FLASH: page the duty officer");
    /// }
    /// # }
    /// ```
    pub fn precedence(&self) -> Precedence {
        self.message.precedence
    }

    /// 1 for the first delivery, higher for redeliveries.
    ///
    /// ```no_run
    /// # fn example(delivery: &enlace::Delivery) {
    /// if delivery.attempt() > 1 {
    ///     println!("offered again: it may have been processed before");
    /// }
    /// # }
    /// ```
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The mailbox it was delivered to.
    ///
    /// ```no_run
    /// # fn example(delivery: &enlace::Delivery) {
    /// println!("for {}", delivery.mailbox()); // "(inbox)" or a unit name
    /// # }
    /// ```
    pub fn mailbox(&self) -> &Mailbox {
        &self.mailbox
    }

    /// When this client received it, by this machine's clock.
    ///
    /// ```no_run
    /// # fn example(delivery: &enlace::Delivery) {
    /// println!("received {}", enlace::rfc3339(delivery.received_at()));
    /// # }
    /// ```
    pub fn received_at(&self) -> SystemTime {
        self.received_at
    }

    /// The message: originator, addressees, times, case, payload type.
    ///
    /// ```no_run
    /// # fn example(delivery: &enlace::Delivery) {
    /// let m = delivery.message();
    /// println!("{} from {} in case {:?}", m.payload_type(), m.originator(), m.case_id());
    /// # }
    /// ```
    pub fn message(&self) -> &Message {
        &self.message
    }

    /// The nodes it passed, oldest first, from their hop records.
    ///
    /// ```no_run
    /// # fn example(delivery: &enlace::Delivery) {
    /// for hop in delivery.hops() {
    ///     println!("{} ({}) received it at {:?}", hop.node, hop.agency, hop.received_at);
    /// }
    /// # }
    /// ```
    pub fn hops(&self) -> Vec<Hop> {
        self.hops.iter().map(Hop::from_pb).collect()
    }

    /// The names of the nodes it passed, oldest first.
    ///
    /// ```no_run
    /// # fn example(delivery: &enlace::Delivery) {
    /// println!("via {}", delivery.path().join(" → ")); // e.g. dea-1 → pgr-1
    /// # }
    /// ```
    pub fn path(&self) -> Vec<&str> {
        self.hops.iter().map(|h| h.node.as_str()).collect()
    }

    /// Decodes the payload as `P`, checking the declared type.
    ///
    /// ```no_run
    /// # fn show(delivery: &enlace::Delivery) -> Result<(), enlace::PayloadError> {
    /// let alert: enlace::pb::PrecursorChemicalAlert = delivery.payload()?;
    /// println!("{} chemical line(s)", alert.chemicals.len());
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`PayloadError`] when the payload is of another type or does not decode.
    pub fn payload<P: prost::Message + prost::Name + Default>(&self) -> Result<P, PayloadError> {
        let err = |reason: String| PayloadError {
            expected: P::full_name(),
            actual: self.message.payload_type.clone(),
            reason,
        };
        if self.message.payload_type != P::full_name() {
            return Err(err("type mismatch".into()));
        }
        P::decode(self.message.payload.clone()).map_err(|e| err(e.to_string()))
    }

    /// The signed envelope as delivered: the originator's exact bytes and signature, and the
    /// hop records of the nodes it passed: what to archive as evidence of what was received.
    ///
    /// ```no_run
    /// # fn example(delivery: &enlace::Delivery) {
    /// use prost::Message as _;
    ///
    /// let evidence: Vec<u8> = delivery.signed_envelope().encode_to_vec();
    /// # let _ = evidence;
    /// # }
    /// ```
    pub fn signed_envelope(&self) -> pb::SignedEnvelope {
        self.message
            .signed(self.hops.clone(), Vec::new(), &self.signer_chain)
    }

    /// Acknowledges the message: the node will not offer it again.
    ///
    /// The id is remembered first, whatever happens to the acknowledgement on the wire: the
    /// application has processed the message, so a redelivery (the acknowledgement was lost with
    /// the connection, or the node restarted before recording it) is dropped, not shown again.
    ///
    /// ```no_run
    /// # async fn example(delivery: enlace::Delivery) -> Result<(), enlace::SubmitError> {
    /// // Process (store, display, forward) the message first, then:
    /// delivery.ack().await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// The delivery stream has ended; the node will offer the message again, and this client
    /// (or one sharing its [`Dedup`]) will drop it.
    pub async fn ack(self) -> Result<(), SubmitError> {
        if let Some(seen) = &self.seen {
            seen.insert(self.id);
        }
        self.ack
            .send(self.id)
            .await
            .map_err(|_| SubmitError::Connection("the delivery stream has ended".into()))
    }
}

/// What each acknowledgement writer needs to take part in a graceful close.
#[derive(Clone)]
pub(crate) struct AckWriters {
    pub closing: watch::Receiver<bool>,
    /// Held by every writer; the client learns that all are done when the last is dropped.
    pub done: mpsc::Sender<()>,
}

/// Accepts delivery streams from the node and reads each in its own task.
pub(crate) async fn receive(
    connection: Connection,
    routes: Routes,
    max_frame: u64,
    acks: AckWriters,
    checks: Arc<Checks>,
) {
    let mut closing = acks.closing.clone();
    loop {
        let (send, recv) = tokio::select! {
            s = connection.accept_bi() => match s {
                Ok(s) => s,
                Err(_) => break,
            },
            _ = is_closing(&mut closing) => break,
        };
        tokio::spawn(read_deliveries(
            send,
            recv,
            routes.clone(),
            max_frame,
            acks.clone(),
            checks.clone(),
        ));
    }
    // Closing waits for the writers, not for this task.
    drop(acks);
    // Deliveries end with the connection: every inbox then ends, once what it holds is read.
    connection.closed().await;
    routes.lock().expect("routes lock poisoned").clear();
}

/// Reads `Deliver` frames from one stream (one, for an alert; many, for analytical traffic) and
/// writes the application's acknowledgements back on it. The stream is finished once the node has
/// finished its side and every delivery from it was acknowledged or dropped.
async fn read_deliveries(
    mut send: SendStream,
    recv: quinn::RecvStream,
    routes: Routes,
    max_frame: u64,
    acks: AckWriters,
    checks: Arc<Checks>,
) {
    let (ack_tx, mut ack_rx) = mpsc::channel::<MessageId>(ACK_QUEUE);
    let AckWriters { mut closing, done } = acks;
    tokio::spawn(async move {
        loop {
            let id = tokio::select! {
                id = ack_rx.recv() => id,
                _ = is_closing(&mut closing) => {
                    // Flush what the application already acknowledged, then stop.
                    ack_rx.close();
                    let mut ids = Vec::new();
                    while let Ok(id) = ack_rx.try_recv() {
                        ids.push(id);
                    }
                    if write_acks(&mut send, &ids).await.is_err() {
                        return;
                    }
                    None
                }
            };
            let Some(id) = id else { break };
            // Acknowledgements already waiting go out in the same write.
            let mut ids = vec![id];
            while ids.len() < ACK_BATCH
                && let Ok(more) = ack_rx.try_recv()
            {
                ids.push(more);
            }
            if write_acks(&mut send, &ids).await.is_err() {
                return;
            }
        }
        // Only fails if the node already gave up on the stream.
        let _ = send.finish();
        // Wait (bounded by Client::close) until the node has received every acknowledgement.
        let _ = send.stopped().await;
        drop(done);
    });
    let mut reader = FrameReader::new(recv, max_frame);
    loop {
        let d = match reader.read().await {
            Ok(pb::Frame {
                body: Some(Body::Deliver(d)),
            }) => d,
            Err(FrameError::End) => return,
            Ok(_) => {
                tracing::warn!("node sent a frame that is not a delivery; stream ignored");
                return;
            }
            Err(e) => {
                tracing::debug!(error = %e, "delivery stream ended");
                return;
            }
        };
        let Some(delivery) = to_delivery(d, ack_tx.clone()) else {
            tracing::warn!("node delivered an envelope that does not parse; ignored");
            continue;
        };
        let route = routes
            .lock()
            .expect("routes lock poisoned")
            .get(&delivery.mailbox)
            .cloned();
        if let Err(reason) = checks.check(&delivery.message, &delivery.signer_chain) {
            tracing::warn!(id = %delivery.id, mailbox = %delivery.mailbox, reason = %clip(&reason), "delivery refused: it is not what it claims to be");
            if let Some(r) = route {
                r.refused.fetch_add(1, Ordering::Relaxed);
            }
            continue;
        }
        match route {
            Some(Route { tx, .. }) => {
                if tx.send(delivery).await.is_err() {
                    return;
                }
            }
            // A mailbox this client no longer reads: not acknowledged, so the node offers it
            // again elsewhere.
            None => {
                tracing::debug!(id = %delivery.id, mailbox = %delivery.mailbox, "delivery for a mailbox no longer read")
            }
        }
    }
}

/// Completes once the client is closing.
pub(crate) async fn is_closing(closing: &mut watch::Receiver<bool>) {
    // An error means the client is gone, which is closing too.
    let _ = closing.wait_for(|c| *c).await;
}

/// Writes one `Ack` frame per id, with one write.
async fn write_acks(send: &mut SendStream, ids: &[MessageId]) -> Result<(), FrameError> {
    let mut buf = bytes::BytesMut::new();
    for id in ids {
        let ack = pb::Ack {
            message_id: id.to_bytes(),
        };
        frame::encode_into(
            &pb::Frame {
                body: Some(Body::Ack(ack)),
            },
            &mut buf,
        );
    }
    send.write_all(&buf).await?;
    Ok(())
}

fn to_delivery(d: pb::Deliver, ack: mpsc::Sender<MessageId>) -> Option<Delivery> {
    let signed = d.envelope?;
    let message = Message::parse(signed.envelope, signed.signature).ok()?;
    Some(Delivery {
        id: message.id,
        message,
        hops: signed.hops,
        signer_chain: signed.signer_chain,
        attempt: d.attempt,
        mailbox: Mailbox::from_wire(&d.unit).ok()?,
        received_at: SystemTime::now(),
        ack,
        seen: None,
    })
}
