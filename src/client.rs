//! The client library: connect to your agency's node, send typed messages, read your inbox.
//!
//! ```no_run
//! # async fn example() -> anyhow::Result<()> {
//! use std::time::Duration;
//! use enlace::{Client, ClientOptions, Draft, Precedence};
//! use enlace::wire::pb;
//!
//! let client = Client::connect(ClientOptions::from_files(
//!     "127.0.0.1:7401".parse()?,
//!     "dea-1.dea.enlace.test",
//!     "certs/test/clients/dea/duty-desk.pem",
//!     "certs/test/clients/dea/duty-desk.key.pem",
//!     "certs/test/ca/root.pem",
//! )?)
//! .await?;
//! let alert = pb::PrecursorChemicalAlert::default();
//! let accepted = client
//!     .send(Draft::new(&alert).to("pgr").to("afi").precedence(Precedence::Flash)
//!         .expires_in(Duration::from_secs(3600)))
//!     .await?;
//! println!("accepted {}", accepted.id);
//! # Ok(()) }
//! ```
//!
//! A client is one QUIC connection with one certificate. It signs every envelope it sends with
//! its certificate's key, so any node can tell who wrote it. Deliveries arrive on an [`Inbox`];
//! each must be [`Delivery::ack`]ed, or the node offers it again. The client drops redeliveries
//! of messages it has already handed to the application, so each message is seen once.

mod receipts;

pub use receipts::{HELD_CAPACITY, Receipts};

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use prost::Message;
use quinn::{Connection, Endpoint, SendStream};
use tokio::sync::{mpsc, watch};

use crate::identity;
use crate::message::{Draft, MessageId, Precedence};
use crate::pipeline::{DEFAULT_WINDOW_BYTES, Pipeline};
use crate::session::{self, CONTROL_FRAME_LIMIT, ConnectError, Session, SubmitError};
use crate::signature::Signer;
use crate::tls::{self, TlsError, TlsMaterial};
use crate::validate::seal;
use crate::wire::frame::{self, FrameError, FrameReader};
use crate::wire::pb::{self, frame::Body};

/// How to reach and authenticate to a node.
#[derive(Clone)]
pub struct ClientOptions {
    pub node: SocketAddr,
    /// The node certificate's DNS name, e.g. `dea-1.dea.enlace.test`.
    pub server_name: String,
    pub tls: TlsMaterial,
    /// Receive deliveries on this connection.
    pub subscribe: bool,
    /// With `subscribe`: the unit whose mailbox to read ("" for the agency inbox).
    pub unit: String,
    /// How long to wait for the node to authorize the connection.
    pub connect_timeout: Duration,
    /// Deliveries buffered for the application before the client stops taking more.
    pub inbox_capacity: usize,
    /// Acknowledged message ids, to drop redeliveries. Pass the same [`Dedup`] to the client that
    /// replaces one whose connection was lost, so a redelivery after a node restart is dropped too.
    pub dedup: Dedup,
}

impl ClientOptions {
    /// Options from PEM files: certificate chain, private key, CA bundle.
    pub fn from_files(
        node: SocketAddr,
        server_name: &str,
        cert: impl AsRef<Path>,
        key: impl AsRef<Path>,
        ca: impl AsRef<Path>,
    ) -> Result<ClientOptions, TlsError> {
        Ok(ClientOptions::new(
            node,
            server_name,
            TlsMaterial::load(cert.as_ref(), key.as_ref(), ca.as_ref(), &[])?,
        ))
    }

    pub fn new(node: SocketAddr, server_name: &str, tls: TlsMaterial) -> ClientOptions {
        ClientOptions {
            node,
            server_name: server_name.to_owned(),
            tls,
            subscribe: false,
            unit: String::new(),
            connect_timeout: Duration::from_secs(10),
            inbox_capacity: 1024,
            dedup: Dedup::default(),
        }
    }

    /// Receive deliveries for `unit` ("" for the agency inbox).
    pub fn subscribe(mut self, unit: &str) -> ClientOptions {
        self.subscribe = true;
        self.unit = unit.to_owned();
        self
    }
}

/// Why the client could not be created.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("the client key cannot sign envelopes: {0}")]
    Key(String),
}

/// The node's acceptance of a message.
#[derive(Debug, Clone)]
pub struct Accepted {
    pub id: MessageId,
    /// How many destinations (local mailboxes and peer nodes) the node routed it to.
    pub routed: u32,
    pub accepted_at: Option<SystemTime>,
}

/// A connected client.
pub struct Client {
    endpoint: Endpoint,
    connection: Connection,
    /// ROUTINE and BULK submissions, pipelined on one long-lived stream.
    bulk: Pipeline,
    welcome: pb::Welcome,
    signer: Arc<Signer>,
    inbox: Mutex<Option<Inbox>>,
    // Held so the control stream stays open for the life of the client.
    _control: Mutex<SendStream>,
    /// Tells acknowledgement writers to flush and finish their streams.
    closing: watch::Sender<bool>,
    /// Yields `None` once every acknowledgement writer has finished.
    writers_gone: tokio::sync::Mutex<mpsc::Receiver<()>>,
}

impl Client {
    /// Connects and waits until the node has authorized this client.
    ///
    /// # Errors
    /// [`ClientError::Connect`] with the node's refusal (wrong agency, wrong role) or the TLS
    /// alert (unknown CA, expired or revoked certificate) in words.
    pub async fn connect(opts: ClientOptions) -> Result<Client, ClientError> {
        let signer = Signer::from_pkcs8(opts.tls.key_der(), opts.tls.leaf_sha256())
            .map_err(|e| ClientError::Key(e.to_string()))?;
        let signer = Arc::new(signer);
        let bind: SocketAddr = if opts.node.is_ipv6() {
            "[::]:0".parse().expect("literal address")
        } else {
            "0.0.0.0:0".parse().expect("literal address")
        };
        let endpoint = tls::endpoint(bind, None)?;
        let config = tls::quic_client_config(opts.tls.client_config()?)?;
        // Act in the role our certificate grants (client or operator); the node checks it.
        let role = match identity::own_identity(&opts.tls.chain[0]).map(|i| i.role) {
            Ok(identity::Role::Operator) => pb::Role::Operator,
            _ => pb::Role::Client,
        };
        let hello = pb::Hello {
            protocol_version: crate::wire::PROTOCOL_VERSION,
            role: role as i32,
            subscribe: opts.subscribe,
            unit: opts.unit.clone(),
        };
        let Session {
            connection,
            welcome,
            control,
        } = session::dial(
            &endpoint,
            config,
            opts.node,
            &opts.server_name,
            hello,
            opts.connect_timeout,
        )
        .await?;
        let (closing, _) = watch::channel(false);
        let (writers_done, writers_gone) = mpsc::channel::<()>(1);
        let inbox = opts.subscribe.then(|| {
            let (tx, rx) = mpsc::channel(opts.inbox_capacity.max(1));
            // Deliveries carry what the node accepted plus its hop records and delivery fields.
            let max = welcome.max_frame_bytes.max(CONTROL_FRAME_LIMIT) + crate::node::FRAME_SLACK;
            let acks = AckWriters {
                closing: closing.subscribe(),
                done: writers_done.clone(),
            };
            tokio::spawn(receive(connection.clone(), tx, max, acks));
            Inbox {
                rx,
                seen: opts.dedup.0.clone(),
            }
        });
        drop(writers_done);
        Ok(Client {
            closing,
            writers_gone: tokio::sync::Mutex::new(writers_gone),
            endpoint,
            bulk: Pipeline::new(
                connection.clone(),
                DEFAULT_WINDOW_BYTES,
                stream_priority(Precedence::Routine),
                Some(signer.clone()),
            ),
            connection,
            welcome,
            signer,
            inbox: Mutex::new(inbox),
            _control: Mutex::new(control.0),
        })
    }

    /// Who the node says we are (agency, role, name), from our certificate.
    pub fn identity(&self) -> &pb::PeerIdentity {
        // The node always fills `you` in Welcome; a default identity would only hide a bug.
        self.welcome
            .you
            .as_ref()
            .expect("Welcome carries the client's identity")
    }

    /// The node's identity.
    pub fn node(&self) -> &pb::PeerIdentity {
        self.welcome
            .node
            .as_ref()
            .expect("Welcome carries the node's identity")
    }

    /// The largest frame the node accepts.
    pub fn max_frame_bytes(&self) -> u64 {
        self.welcome.max_frame_bytes
    }

    /// Completes, signs and sends a message; returns when the node has accepted or refused it.
    ///
    /// # Errors
    /// [`SubmitError::Refused`] carries the node's reason (too large, expired, unknown
    /// recipient, queue full with a retry-after...). [`SubmitError::Connection`] means the
    /// outcome is unknown: resend the same draft with the same id (see [`Draft::id`]).
    pub async fn send(&self, draft: Draft) -> Result<Accepted, SubmitError> {
        let me = self.identity();
        let originator = pb::Originator {
            agency: me.agency.clone(),
            node: self.node().name.clone(),
            client: me.name.clone(),
        };
        let env = draft.finish(originator, SystemTime::now());
        self.send_envelope(&env).await
    }

    /// Signs and sends a complete envelope.
    pub async fn send_envelope(&self, env: &pb::Envelope) -> Result<Accepted, SubmitError> {
        let precedence = Precedence::from_pb(env.precedence()).unwrap_or(Precedence::Routine);
        // Time-sensitive messages get a stream of their own, ahead of everything else, and a
        // signature of their own; analytical ones share the pipelined stream, whose bounded
        // window keeps them from crowding alerts, and are signed there in batches.
        let a = if precedence.is_time_sensitive() {
            let signed = seal(env, &self.signer);
            session::submit(&self.connection, signed, stream_priority(precedence)).await?
        } else {
            self.bulk
                .submit_unsigned(env.encode_to_vec().into())
                .await?
        };
        Ok(Accepted {
            id: MessageId::from_slice(&a.message_id)
                .ok_or_else(|| SubmitError::Protocol("Accepted without a message id".into()))?,
            routed: a.routed,
            accepted_at: a.accepted_at.as_ref().and_then(crate::message::system_time),
        })
    }

    /// Lists dead letters (operators only): of `queue`, or of every queue when it is empty.
    pub async fn dlq_list(&self, queue: &str) -> Result<Vec<pb::DeadLetterInfo>, SubmitError> {
        let body = Body::DlqList(pb::DlqList {
            queue: queue.to_owned(),
        });
        match session::request(&self.connection, body).await? {
            Body::DlqEntries(e) => Ok(e.entries),
            other => Err(unexpected(other)),
        }
    }

    /// Shows the dead-lettered copies of one message (operators only).
    pub async fn dlq_show(&self, id: MessageId) -> Result<Vec<pb::DeadLetterInfo>, SubmitError> {
        let body = Body::DlqShow(pb::DlqShow {
            message_id: id.to_bytes(),
        });
        match session::request(&self.connection, body).await? {
            Body::DlqEntries(e) => Ok(e.entries),
            other => Err(unexpected(other)),
        }
    }

    /// Puts dead letters back in their queues (operators only): one message's copies, or all
    /// (of `queue` when it is not empty). Returns the ids put back.
    pub async fn dlq_redrive(
        &self,
        id: Option<MessageId>,
        queue: &str,
    ) -> Result<Vec<MessageId>, SubmitError> {
        let body = Body::DlqRedrive(pb::DlqRedrive {
            message_id: id.map(MessageId::to_bytes).unwrap_or_default(),
            all: id.is_none(),
            queue: queue.to_owned(),
        });
        match session::request(&self.connection, body).await? {
            Body::DlqRedriven(r) => Ok(r
                .message_ids
                .iter()
                .filter_map(|b| MessageId::from_slice(b))
                .collect()),
            other => Err(unexpected(other)),
        }
    }

    /// Takes the inbox (once). `None` if the client did not subscribe or it was taken.
    pub fn inbox(&self) -> Option<Inbox> {
        self.inbox.lock().expect("inbox lock poisoned").take()
    }

    /// Closes the connection and waits for the node to be told.
    /// Closes the connection at once, without flushing anything: submissions in flight fail with
    /// [`SubmitError::Connection`] (outcome unknown: resend with the same id) and the inbox ends.
    /// For giving up on a node that stopped answering, rather than waiting for the idle timeout.
    pub fn abort(&self) {
        self.connection.close(0u32.into(), b"client aborted");
    }

    /// Closes the connection at once like [`Client::abort`], without acknowledging anything,
    /// and waits until the node has been told: it then puts every unacknowledged delivery back
    /// for the next consumer, without counting a failed attempt. For reading a mailbox without
    /// consuming it (`enlace status`).
    pub async fn abandon(self) {
        self.abort();
        self.endpoint.wait_idle().await;
    }

    /// Closes the connection after flushing acknowledgements: each delivery stream is finished
    /// and the node given up to [`CLOSE_FLUSH`] to confirm receipt, so an acknowledged message is
    /// not offered again.
    pub async fn close(self) {
        let _ = self.closing.send(true);
        let mut gone = self.writers_gone.lock().await;
        let _ = tokio::time::timeout(CLOSE_FLUSH, gone.recv()).await;
        self.connection.close(0u32.into(), b"client closed");
        self.endpoint.wait_idle().await;
    }
}

fn unexpected(body: Body) -> SubmitError {
    match body {
        Body::Refused(r) => SubmitError::Refused {
            code: r.code(),
            retry_after: None,
            reason: r.reason,
        },
        other => SubmitError::Protocol(format!("unexpected answer: {other:?}")),
    }
}

/// QUIC stream priority for a precedence: more urgent is sent first.
pub fn stream_priority(p: Precedence) -> i32 {
    match p {
        Precedence::Flash => 100,
        Precedence::Immediate => 80,
        Precedence::Priority => 60,
        Precedence::Routine => 20,
        Precedence::Bulk => 0,
    }
}

/// Message ids the application has acknowledged, to drop redeliveries (bounded: the oldest ids
/// are forgotten first, after [`SEEN_CAPACITY`]). An id is remembered at acknowledgement, not at
/// hand-out: a message the application did not acknowledge is offered to it again.
#[derive(Default)]
struct Seen {
    set: HashSet<MessageId>,
    order: VecDeque<MessageId>,
}

/// The ids an application has acknowledged, shared by the clients it uses one after another
/// (see [`ClientOptions::dedup`]). Bounded: the oldest ids are forgotten after [`SEEN_CAPACITY`].
#[derive(Clone, Default)]
pub struct Dedup(Arc<Mutex<Seen>>);

impl std::fmt::Debug for Dedup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.0.lock().map(|s| s.set.len()).unwrap_or(0);
        write!(f, "Dedup({n} ids)")
    }
}

/// How many delivered ids the client remembers for duplicate suppression.
pub const SEEN_CAPACITY: usize = 100_000;

impl Seen {
    fn insert(&mut self, id: MessageId) -> bool {
        if !self.set.insert(id) {
            return false;
        }
        self.order.push_back(id);
        if self.order.len() > SEEN_CAPACITY
            && let Some(old) = self.order.pop_front()
        {
            self.set.remove(&old);
        }
        true
    }
}

/// Deliveries from the node, in the order the node sent them.
pub struct Inbox {
    rx: mpsc::Receiver<Delivery>,
    seen: Arc<Mutex<Seen>>,
}

impl Inbox {
    /// The next delivery, or `None` when the connection has ended.
    ///
    /// A redelivery of a message the application already acknowledged (the acknowledgement was
    /// lost, or the node restarted before recording it) is acknowledged again and skipped.
    ///
    /// # Cancel safety
    /// Cancel safe: no delivery is lost if the future is dropped.
    pub async fn next(&mut self) -> Option<Delivery> {
        loop {
            let mut d = self.rx.recv().await?;
            if !self
                .seen
                .lock()
                .expect("seen lock poisoned")
                .set
                .contains(&d.id)
            {
                d.seen = Some(self.seen.clone());
                return Some(d);
            }
            // Already seen: tell the node so it stops offering it. A failure here only means the
            // node will offer it again, and it will be skipped again.
            let _ = d.ack().await;
        }
    }
}

/// One delivered message. Call [`Delivery::ack`] once it has been processed.
pub struct Delivery {
    pub id: MessageId,
    pub precedence: Precedence,
    /// 1 for the first delivery, higher for redeliveries.
    pub attempt: u32,
    /// The decoded envelope.
    pub envelope: pb::Envelope,
    /// The signed envelope exactly as the originator signed it, with hop records.
    pub signed: pb::SignedEnvelope,
    /// When the client received it.
    pub received_at: SystemTime,
    ack: mpsc::Sender<MessageId>,
    seen: Option<Arc<Mutex<Seen>>>,
}

/// The payload was not of the requested type or did not decode.
#[derive(Debug, thiserror::Error)]
#[error("payload is {actual}, not {expected} (or does not decode): {reason}")]
pub struct PayloadError {
    pub expected: String,
    pub actual: String,
    pub reason: String,
}

impl Delivery {
    /// Decodes the payload as `P`, checking the declared type.
    pub fn payload<P: prost::Message + prost::Name + Default>(&self) -> Result<P, PayloadError> {
        let err = |reason: String| PayloadError {
            expected: P::full_name(),
            actual: self.envelope.payload_type.clone(),
            reason,
        };
        if self.envelope.payload_type != P::full_name() {
            return Err(err("type mismatch".into()));
        }
        P::decode(self.envelope.payload.clone()).map_err(|e| err(e.to_string()))
    }

    /// Acknowledges the message: the node will not offer it again.
    ///
    /// The id is remembered first, whatever happens to the acknowledgement on the wire: the
    /// application has processed the message, so a redelivery (the acknowledgement was lost with
    /// the connection, or the node restarted before recording it) is dropped, not shown again.
    ///
    /// # Errors
    /// The connection or stream failed; the node will offer the message again, and this client
    /// (or one sharing its [`Dedup`]) will drop it.
    pub async fn ack(self) -> Result<(), SubmitError> {
        if let Some(seen) = &self.seen {
            seen.lock().expect("seen lock poisoned").insert(self.id);
        }
        self.ack
            .send(self.id)
            .await
            .map_err(|_| SubmitError::Connection("the delivery stream has ended".into()))
    }
}

/// Acknowledgements waiting to be written on one delivery stream.
const ACK_QUEUE: usize = 1024;

/// How long [`Client::close`] waits for acknowledgements to reach the node.
pub const CLOSE_FLUSH: Duration = Duration::from_secs(2);

/// What each acknowledgement writer needs to take part in a graceful close.
#[derive(Clone)]
struct AckWriters {
    closing: watch::Receiver<bool>,
    /// Held by every writer; the client learns that all are done when the last is dropped.
    done: mpsc::Sender<()>,
}

/// Accepts delivery streams from the node and reads each in its own task: streams are accepted
/// in the order they were opened, so reading them one after another would put an alert behind
/// the long-lived analytical stream.
async fn receive(
    connection: Connection,
    tx: mpsc::Sender<Delivery>,
    max_frame: u64,
    acks: AckWriters,
) {
    let mut closing = acks.closing.clone();
    loop {
        let (send, recv) = tokio::select! {
            s = connection.accept_bi() => match s {
                Ok(s) => s,
                Err(_) => return,
            },
            _ = is_closing(&mut closing) => return,
        };
        tokio::spawn(read_deliveries(
            send,
            recv,
            tx.clone(),
            max_frame,
            acks.clone(),
        ));
    }
}

/// Reads `Deliver` frames from one stream (one, for an alert; many, for analytical traffic) and
/// writes the application's acknowledgements back on it. The stream is finished once the node has
/// finished its side and every delivery from it was acknowledged or dropped.
async fn read_deliveries(
    mut send: SendStream,
    recv: quinn::RecvStream,
    tx: mpsc::Sender<Delivery>,
    max_frame: u64,
    acks: AckWriters,
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
            tracing::warn!("node delivered an envelope that does not decode; ignored");
            continue;
        };
        if tx.send(delivery).await.is_err() {
            return;
        }
    }
}

/// Completes once the client is closing.
async fn is_closing(closing: &mut watch::Receiver<bool>) {
    // An error means the client is gone, which is closing too.
    let _ = closing.wait_for(|c| *c).await;
}

/// Most acknowledgements written at once.
const ACK_BATCH: usize = 256;

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
    let envelope = pb::Envelope::decode(signed.envelope.clone()).ok()?;
    Some(Delivery {
        id: MessageId::from_slice(&envelope.message_id)?,
        precedence: Precedence::from_pb(envelope.precedence()).unwrap_or(Precedence::Routine),
        attempt: d.attempt,
        envelope,
        signed,
        received_at: SystemTime::now(),
        ack,
        seen: None,
    })
}
