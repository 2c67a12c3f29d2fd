//! The client library: connect to your agency's node, send typed messages, read mailboxes and
//! receipts.
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use enlace::payloads::{Chemical, PrecursorAlert, Quantity};
//! use enlace::{Client, ClientOptions, Mailbox, Precedence, pb};
//!
//! let client = Client::connect(
//!     ClientOptions::new("dea-1.dea.enlace.example:7400")
//!         .identity("pki/clients/dea/duty-desk.pem", "pki/clients/dea/duty-desk.key.pem")
//!         .trust("pki/ca/root.pem"),
//! )
//! .await?;
//! let alert = PrecursorAlert::new(pb::PrecursorAlertKind::SuspiciousShipment)
//!     .chemical(Chemical::new("Pseudoephedrine hydrochloride")
//!         .cas("345-78-8".parse()?)
//!         .quantity(Quantity::kilograms(1200.0)));
//! let accepted = client
//!     .send(alert.into_draft().to("pgr").to("afi").precedence(Precedence::Flash)
//!         .expires_in(Duration::from_secs(3600)))
//!     .await? // handed over
//!     .await?; // accepted by the node
//! println!("accepted {}", accepted.id);
//!
//! let mut inbox = client.subscribe(Mailbox::Inbox).await?;
//! while let Some(delivery) = inbox.next().await {
//!     println!("{} {}", delivery.precedence(), delivery.id());
//!     delivery.ack().await?;
//! }
//! client.close().await;
//! # Ok(()) }
//! ```
//!
//! A client is one QUIC connection with one certificate. It signs every envelope it sends with
//! its certificate's key, so any node can tell who wrote it. [`Client::send`] hands a message
//! over and returns an [`Acceptance`] to await, so an application keeps many messages in flight
//! without a task each. A client reads any number of mailboxes on its one connection
//! ([`Client::subscribe`]), and its receipts too ([`Client::receipts`]); each delivery must be
//! [`Delivery::ack`]ed, or the node offers it again. The client drops redeliveries of messages
//! the application has already acknowledged, so each message is seen once.

mod inbox;
mod options;
mod receipts;

pub use inbox::{Dedup, Delivery, Inbox};
pub use options::{BusyRetry, ClientOptions};
pub use receipts::Receipts;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use prost::Message as _;
use quinn::{Connection, Endpoint, SendStream};
use tokio::sync::{mpsc, watch};

use crate::address::Mailbox;
use crate::draft::Draft;
use crate::error::{ClientError, SubmitError};
use crate::identity::{self, AgencyId};
use crate::message::{MessageId, Originator, Precedence};
use crate::pipeline::{self, Pipeline};
use crate::session::{self, Session};
use crate::signature::{Signer, VerifiedRoots};
use crate::signers::Signers;
use crate::tls;
use crate::wire::pb::{self, frame::Body};
use crate::wire::{CONTROL_FRAME_LIMIT, FRAME_SLACK};

/// The node's acceptance of a message: it has taken responsibility for it (it is on the node's
/// disk).
#[derive(Debug, Clone)]
pub struct Accepted {
    /// The id of the message accepted: the one its receipts will name.
    pub id: MessageId,
    /// How many destinations (local mailboxes and peer nodes) the node routed it to.
    pub routed: u32,
    /// When the node accepted it, by the node's clock; `None` if the node did not say.
    pub accepted_at: Option<SystemTime>,
    /// How many times the node refused it as busy before taking it (see [`BusyRetry`]).
    pub busy_retries: u32,
}

/// A message handed over to the node, and its acceptance to come.
///
/// Returned by [`Client::send`] once the message is on its way; await it for the node's
/// [`Accepted`] or its refusal. Keeping many in flight needs no task each:
///
/// ```no_run
/// # async fn example(client: enlace::Client, drafts: Vec<enlace::Draft>)
/// #     -> Result<(), enlace::SubmitError> {
/// let mut in_flight = std::collections::VecDeque::new();
/// for draft in drafts {
///     in_flight.push_back(client.send(draft).await?);
///     if in_flight.len() >= 512 {
///         let oldest: enlace::Acceptance = in_flight.pop_front().unwrap();
///         oldest.await?;
///     }
/// }
/// for acceptance in in_flight {
///     acceptance.await?;
/// }
/// # Ok(()) }
/// ```
///
/// Dropping it does not recall the message: the node may take it all the same.
#[must_use = "an acceptance says whether the node took the message"]
pub struct Acceptance {
    id: MessageId,
    answer: Pin<Box<dyn Future<Output = Result<Accepted, SubmitError>> + Send>>,
}

impl Acceptance {
    /// The id of the message handed over, known before the node answers.
    ///
    /// ```no_run
    /// # async fn example(client: enlace::Client, draft: enlace::Draft)
    /// #     -> Result<(), enlace::SubmitError> {
    /// let acceptance = client.send(draft).await?;
    /// println!("handed over {}", acceptance.id());
    /// let accepted = acceptance.await?;
    /// # let _ = accepted;
    /// # Ok(()) }
    /// ```
    pub fn id(&self) -> MessageId {
        self.id
    }
}

impl std::fmt::Debug for Acceptance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acceptance").field("id", &self.id).finish()
    }
}

impl Future for Acceptance {
    type Output = Result<Accepted, SubmitError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.answer.as_mut().poll(cx)
    }
}

/// What the acceptance futures share with the client: how to send (again).
struct Sender {
    connection: Connection,
    /// ROUTINE and BULK submissions, pipelined on one long-lived stream and signed in batches.
    analytical: Pipeline,
    signer: Arc<Signer>,
    busy_retry: BusyRetry,
}

/// An answer on its way.
enum Handed {
    /// A time-sensitive message's own stream.
    Alert(quinn::RecvStream),
    /// An analytical message's place in the pipeline.
    Analytical(pipeline::Answer),
}

impl Sender {
    /// Hands the envelope bytes over: a time-sensitive message signed alone on a stream of its
    /// own at its precedence's priority; an analytical one to the pipeline, signed in a batch.
    async fn hand_over(&self, p: Precedence, bytes: Bytes) -> Result<Handed, SubmitError> {
        if p.is_time_sensitive() {
            let signed = pb::SignedEnvelope {
                signature: Some(self.signer.sign(&bytes)),
                envelope: bytes,
                hops: Vec::new(),
                route_to: Vec::new(),
                signer_chain: Vec::new(),
            };
            let recv = session::hand_over(&self.connection, signed, p.stream_priority()).await?;
            Ok(Handed::Alert(recv))
        } else {
            Ok(Handed::Analytical(
                self.analytical.hand_over_unsigned(bytes).await?,
            ))
        }
    }

    /// Waits for the answer to a message handed over, sending it again while the node says it
    /// is busy (as [`BusyRetry`] allows).
    async fn accepted(
        self: Arc<Self>,
        p: Precedence,
        bytes: Bytes,
        mut handed: Handed,
    ) -> Result<Accepted, SubmitError> {
        let started = Instant::now();
        let mut retries = 0u32;
        loop {
            let answer = match handed {
                Handed::Alert(recv) => session::answer(recv).await,
                Handed::Analytical(answer) => answer.await,
            };
            let wait = match &answer {
                Err(SubmitError::Refused {
                    code: pb::RefusalCode::QueueFull,
                    retry_after,
                    ..
                }) => self.busy_retry.delay(retries + 1, *retry_after),
                _ => return accepted(answer, retries),
            };
            if started.elapsed() + wait > self.busy_retry.max_wait {
                return accepted(answer, retries);
            }
            retries += 1;
            tracing::debug!(retries, ?wait, "node busy (QUEUE_FULL); sending again");
            tokio::time::sleep(wait).await;
            handed = self.hand_over(p, bytes.clone()).await?;
        }
    }
}

fn accepted(
    answer: Result<pb::Accepted, SubmitError>,
    busy_retries: u32,
) -> Result<Accepted, SubmitError> {
    let a = answer?;
    Ok(Accepted {
        id: MessageId::from_slice(&a.message_id)
            .ok_or_else(|| SubmitError::Protocol("Accepted without a message id".into()))?,
        routed: a.routed,
        accepted_at: a.accepted_at.as_ref().and_then(crate::message::system_time),
        busy_retries,
    })
}

/// A connected client. Share it (`Arc<Client>`) between tasks: every method takes `&self`.
pub struct Client {
    endpoint: Endpoint,
    sender: Arc<Sender>,
    welcome: pb::Welcome,
    /// This client, as the originator of the messages it sends.
    originator: Originator,
    /// Where deliveries go, by mailbox.
    routes: inbox::Routes,
    inbox_capacity: usize,
    dedup: Dedup,
    close_timeout: Duration,
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
    /// ```no_run
    /// # async fn example() -> Result<(), enlace::ClientError> {
    /// let client = enlace::Client::connect(
    ///     enlace::ClientOptions::new("dea-1.dea.enlace.example:7400")
    ///         .identity("duty-desk.pem", "duty-desk.key.pem")
    ///         .trust("root.pem"),
    /// )
    /// .await?;
    /// println!("connected as {}", client.identity().name);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`ClientError::Tls`] for unreadable files, [`ClientError::Options`] for incomplete
    /// options, [`ClientError::Connect`] with the node's refusal (wrong agency, wrong role) or
    /// the TLS alert (unknown CA, expired or revoked certificate) in words.
    pub async fn connect(opts: ClientOptions) -> Result<Client, ClientError> {
        let tls_material = opts.material()?;
        let (addr, server_name) = opts.resolve().await?;
        let signer = Signer::from_pkcs8(tls_material.key_der(), tls_material.leaf_sha256())
            .map_err(|e| ClientError::Options(format!("the client key cannot sign: {e}")))?;
        let bind: SocketAddr = if addr.is_ipv6() {
            "[::]:0".parse().expect("literal address")
        } else {
            "0.0.0.0:0".parse().expect("literal address")
        };
        let endpoint = tls::endpoint(bind, None, None)?;
        let config = tls::quic_client_config(tls_material.client_config()?)?;
        // Act in the role our certificate grants (client or operator); the node checks it.
        let role = match identity::own_identity(&tls_material.chain[0]).map(|i| i.role) {
            Ok(identity::Role::Operator) => pb::Role::Operator,
            _ => pb::Role::Client,
        };
        let hello = pb::Hello {
            protocol_version: crate::wire::PROTOCOL_VERSION,
            role: role as i32,
        };
        let Session {
            connection,
            welcome,
            control,
        } = session::dial(
            &endpoint,
            config,
            addr,
            &server_name,
            hello,
            opts.connect_timeout,
        )
        .await?;
        let (you, node) = match (&welcome.you, &welcome.node) {
            (Some(you), Some(node)) => (you, node),
            _ => {
                let e = crate::error::ConnectError::Handshake(
                    "the node's Welcome names no identities".into(),
                );
                return Err(e.into());
            }
        };
        let originator = Originator {
            agency: AgencyId::new(&you.agency).map_err(|e| {
                ClientError::Options(format!("the node names our agency oddly: {e}"))
            })?,
            node: node.name.clone(),
            client: Some(you.name.clone()),
        };
        let (closing, _) = watch::channel(false);
        let (writers_done, writers_gone) = mpsc::channel::<()>(1);
        let routes = inbox::Routes::default();
        // Deliveries carry what the node accepted plus its hop records and delivery fields.
        let max = welcome.max_frame_bytes.max(CONTROL_FRAME_LIMIT) + FRAME_SLACK;
        let acks = inbox::AckWriters {
            closing: closing.subscribe(),
            done: writers_done,
        };
        let trust_domain = identity::own_identity(&tls_material.chain[0])
            .map(|i| i.trust_domain)
            .map_err(|e| ClientError::Options(format!("the client certificate: {e}")))?;
        let checks = Arc::new(inbox::Checks {
            signers: Signers::new(tls_material.signer_verifier()?, &trust_domain),
            verified: VerifiedRoots::default(),
        });
        tokio::spawn(inbox::receive(
            connection.clone(),
            routes.clone(),
            max,
            acks,
            checks,
        ));
        let signer = Arc::new(signer);
        let analytical = Pipeline::new(
            connection.clone(),
            u32::try_from(opts.window_bytes).unwrap_or(u32::MAX),
            Precedence::Routine.stream_priority(),
            Some(signer.clone()),
        );
        Ok(Client {
            sender: Arc::new(Sender {
                connection,
                analytical,
                signer,
                busy_retry: opts.busy_retry,
            }),
            endpoint,
            welcome,
            originator,
            routes,
            inbox_capacity: opts.inbox_capacity,
            dedup: opts.dedup,
            close_timeout: opts.close_timeout,
            _control: Mutex::new(control.0),
            closing,
            writers_gone: tokio::sync::Mutex::new(writers_gone),
        })
    }

    /// Who the node says we are (agency, role, name), from our certificate.
    ///
    /// ```no_run
    /// # fn example(client: &enlace::Client) {
    /// let me = client.identity();
    /// println!("{}/{}", me.agency, me.name);
    /// # }
    /// ```
    pub fn identity(&self) -> &pb::PeerIdentity {
        // `connect` checked that the node's Welcome names it.
        self.welcome.you.as_ref().expect("checked at connect")
    }

    /// The node's identity (agency, role, name), from its certificate.
    ///
    /// ```no_run
    /// # fn example(client: &enlace::Client) {
    /// println!("connected to node {} of {}", client.node().name, client.node().agency);
    /// # }
    /// ```
    pub fn node(&self) -> &pb::PeerIdentity {
        self.welcome.node.as_ref().expect("checked at connect")
    }

    /// The largest frame the node accepts, in bytes (its `limits.max_frame_bytes`, 1 MiB by
    /// default): a message whose signed envelope is larger is refused as `TOO_LARGE`.
    ///
    /// ```no_run
    /// # fn example(client: &enlace::Client, document: Vec<u8>) {
    /// if document.len() as u64 > client.max_frame_bytes() {
    ///     eprintln!("too large for this node: split it or send a reference");
    /// }
    /// # }
    /// ```
    pub fn max_frame_bytes(&self) -> u64 {
        self.welcome.max_frame_bytes
    }

    /// Completes, signs and hands over a message; returns once it is on its way, with the
    /// [`Acceptance`] to await for the node's answer.
    ///
    /// FLASH, IMMEDIATE and PRIORITY messages each go on a stream of their own, ahead of
    /// everything else; ROUTINE and BULK ones share the pipelined stream and wait here for room
    /// in its window ([`ClientOptions::window_bytes`]). A refusal as busy (`QUEUE_FULL`) is
    /// retried inside the acceptance, as [`ClientOptions::busy_retry`] says.
    ///
    /// ```no_run
    /// # async fn example(client: enlace::Client) -> Result<(), enlace::SubmitError> {
    /// let draft = enlace::Draft::from(enlace::pb::LiaisonMessage::default()).to("cenapi");
    /// let accepted = client.send(draft).await?.await?;
    /// println!("accepted {} for {} destination(s)", accepted.id, accepted.routed);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`SubmitError::Connection`] when the connection failed before the message was handed
    /// over. The acceptance fails with [`SubmitError::Refused`] (the node's reason: too large,
    /// expired, unknown recipient, still busy) or [`SubmitError::Connection`], after which the
    /// outcome is unknown: send the same draft again with the same id ([`Draft::id`]); a node
    /// that already took it answers `Accepted` without keeping a second copy.
    ///
    /// # Cancel safety
    /// Not cancel safe once the message is written: the node may take it all the same.
    pub async fn send(&self, draft: Draft) -> Result<Acceptance, SubmitError> {
        let env = draft.finish(&self.originator, SystemTime::now());
        let id = MessageId::from_slice(&env.message_id).expect("finish sets a 16-byte id");
        let precedence = Precedence::from_pb(env.precedence()).unwrap_or(Precedence::Routine);
        let bytes = Bytes::from(env.encode_to_vec());
        let handed = self.sender.hand_over(precedence, bytes.clone()).await?;
        let answer = self.sender.clone().accepted(precedence, bytes, handed);
        Ok(Acceptance {
            id,
            answer: Box::pin(answer),
        })
    }

    /// Reads a mailbox of this client's agency on this connection: its inbox, or a unit. A
    /// client reads as many mailboxes as it subscribes to, each from its own [`Inbox`].
    ///
    /// ```no_run
    /// # async fn example(client: enlace::Client) -> Result<(), enlace::ClientError> {
    /// let mut desk = client.subscribe(enlace::Mailbox::unit("24x7-desk").unwrap()).await?;
    /// let mut inbox = client.subscribe(enlace::Mailbox::Inbox).await?;
    /// # let _ = (&mut desk, &mut inbox);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`ClientError::Subscribe`] with the node's refusal (a mailbox this client may not read,
    /// one already read on this connection, too many mailboxes).
    pub async fn subscribe(&self, mailbox: Mailbox) -> Result<Inbox, ClientError> {
        let (tx, rx) = mpsc::channel(self.inbox_capacity);
        let refused = Arc::new(std::sync::atomic::AtomicU64::new(0));
        {
            let mut routes = self.routes.lock().expect("routes lock poisoned");
            if routes.contains_key(&mailbox) {
                return Err(ClientError::Subscribe(SubmitError::Refused {
                    code: pb::RefusalCode::Invalid,
                    reason: format!("this client already reads {mailbox}"),
                    retry_after: None,
                }));
            }
            routes.insert(
                mailbox.clone(),
                inbox::Route {
                    tx,
                    refused: refused.clone(),
                },
            );
        }
        let inbox = Inbox::new(
            mailbox.clone(),
            rx,
            self.dedup.clone(),
            self.routes.clone(),
            self.sender.connection.clone(),
            refused,
        );
        let body = Body::Subscribe(pb::Subscribe {
            unit: mailbox.wire_name().to_owned(),
        });
        match session::request(&self.sender.connection, body).await {
            Ok(Body::Subscribed(_)) => Ok(inbox),
            Ok(other) => Err(ClientError::Subscribe(unexpected(other))),
            Err(e) => Err(ClientError::Subscribe(e)),
        }
    }

    /// The mailbox where this client's receipts wait: its agency's unit `receipts-<client>`.
    /// [`Client::receipts`] reads it as typed receipts; subscribing to it directly reads the
    /// receipt messages themselves (`enlace status` does, without acknowledging them).
    ///
    /// ```no_run
    /// # fn example(client: &enlace::Client) {
    /// println!("receipts wait in {}", client.receipts_mailbox()); // e.g. receipts-duty-desk
    /// # }
    /// ```
    pub fn receipts_mailbox(&self) -> Mailbox {
        crate::receipt::receipts_mailbox(&self.identity().name)
    }

    /// This client's receipts: every stage of every message it sent, as typed receipts, on this
    /// connection (see [`Receipts`]).
    ///
    /// ```no_run
    /// # async fn example(client: enlace::Client) -> Result<(), enlace::ClientError> {
    /// let mut receipts = client.receipts().await?;
    /// while let Some(r) = receipts.next().await {
    ///     println!("{} {} {}", r.message_id, r.addressee, r.stage.name());
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`Client::subscribe`].
    pub async fn receipts(&self) -> Result<Receipts, ClientError> {
        Ok(Receipts::new(
            self.subscribe(self.receipts_mailbox()).await?,
        ))
    }

    /// Lists dead letters (operators only): of `queue`, or of every queue when it is empty.
    /// Queues are named `mailbox:<agency>[/<unit>]`, `outbox:<peer node>` or `orphans`.
    ///
    /// ```no_run
    /// # async fn example(operator: enlace::Client) -> Result<(), enlace::SubmitError> {
    /// for d in operator.dlq_list("outbox:pgr-1").await? {
    ///     println!("{:?}", d);
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`SubmitError::Refused`] for anyone whose certificate does not grant the operator role.
    pub async fn dlq_list(&self, queue: &str) -> Result<Vec<pb::DeadLetterInfo>, SubmitError> {
        let body = Body::DlqList(pb::DlqList {
            queue: queue.to_owned(),
        });
        match session::request(&self.sender.connection, body).await? {
            Body::DlqEntries(e) => Ok(e.entries),
            other => Err(unexpected(other)),
        }
    }

    /// Shows the dead-lettered copies of one message (operators only).
    ///
    /// ```no_run
    /// # async fn example(operator: enlace::Client) -> Result<(), Box<dyn std::error::Error>> {
    /// let id: enlace::MessageId = "01a220d3-7886-74d0-99d1-f57d343e1e76".parse()?;
    /// let copies = operator.dlq_show(id).await?;
    /// println!("{} dead-lettered copies", copies.len());
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`Client::dlq_list`].
    pub async fn dlq_show(&self, id: MessageId) -> Result<Vec<pb::DeadLetterInfo>, SubmitError> {
        let body = Body::DlqShow(pb::DlqShow {
            message_id: id.to_bytes(),
        });
        match session::request(&self.sender.connection, body).await? {
            Body::DlqEntries(e) => Ok(e.entries),
            other => Err(unexpected(other)),
        }
    }

    /// Puts dead letters back in their queues (operators only): one message's copies, or all
    /// (of `queue` when it is not empty). Returns the ids put back.
    ///
    /// ```no_run
    /// # async fn example(operator: enlace::Client) -> Result<(), enlace::SubmitError> {
    /// // Everything dead-lettered toward pgr-1, now that its link is back.
    /// let redriven = operator.dlq_redrive(None, "outbox:pgr-1").await?;
    /// println!("{} copies back in their queue", redriven.len());
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`Client::dlq_list`].
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
        match session::request(&self.sender.connection, body).await? {
            Body::DlqRedriven(r) => Ok(r
                .message_ids
                .iter()
                .filter_map(|b| MessageId::from_slice(b))
                .collect()),
            other => Err(unexpected(other)),
        }
    }

    /// Asks the node's delivery log (operators only; see [`crate::audit`]): records matching
    /// a query, records as they are written (`follow`), a message's trace across the nodes it
    /// passed (`trace`), or the log's files (`files`). Answers come as frames; the last has
    /// `done` set (a followed query never ends on its own: drop the [`LogAnswers`]).
    ///
    /// ```no_run
    /// # async fn example(operator: enlace::Client) -> Result<(), enlace::SubmitError> {
    /// use enlace::pb;
    ///
    /// let q = pb::LogQuery { event: "refused".into(), limit: 50, ..Default::default() };
    /// let mut answers = operator.log(q).await?;
    /// while let Some(frame) = answers.next().await? {
    ///     for line in frame.records {
    ///         println!("{line}");
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`SubmitError::Refused`] for anyone whose certificate does not grant the operator role;
    /// [`SubmitError::Connection`] when the connection fails.
    pub async fn log(&self, query: pb::LogQuery) -> Result<LogAnswers, SubmitError> {
        let (mut send, recv) = self
            .sender
            .connection
            .open_bi()
            .await
            .map_err(|e| SubmitError::Connection(tls::describe_connection_error(&e)))?;
        crate::wire::frame::write_body(&mut send, Body::LogQuery(query)).await?;
        let _ = send.finish();
        Ok(LogAnswers {
            reader: crate::wire::frame::FrameReader::new(recv, LOG_FRAME_LIMIT),
            done: false,
            _send: send,
        })
    }

    /// Closes the connection at once, without flushing anything: submissions in flight fail with
    /// [`SubmitError::Connection`] (outcome unknown: resend with the same id) and inboxes end.
    /// For giving up on a node that stopped answering, rather than waiting for the idle timeout.
    ///
    /// ```no_run
    /// # async fn example(client: enlace::Client, draft: enlace::Draft)
    /// #     -> Result<(), enlace::SubmitError> {
    /// let acceptance = client.send(draft).await?;
    /// match tokio::time::timeout(std::time::Duration::from_secs(30), acceptance).await {
    ///     Ok(answer) => println!("{:?}", answer?.id),
    ///     Err(_) => client.abort(), // resend later, on another connection, with the same id
    /// }
    /// # Ok(()) }
    /// ```
    pub fn abort(&self) {
        self.sender.connection.close(0u32.into(), b"client aborted");
    }

    /// Closes the connection at once like [`Client::abort`], without acknowledging anything,
    /// and waits until the node has been told: it then puts every unacknowledged delivery back
    /// for the next consumer, without counting a failed attempt. For reading a mailbox without
    /// consuming it (`enlace status`).
    ///
    /// ```no_run
    /// # async fn example(client: enlace::Client) -> Result<(), enlace::ClientError> {
    /// let mut inbox = client.subscribe(enlace::Mailbox::Inbox).await?;
    /// if let Some(d) = inbox.next().await {
    ///     println!("next waiting: {}", d.id()); // not acknowledged
    /// }
    /// client.abandon().await; // the node offers it again to the next reader
    /// # Ok(()) }
    /// ```
    pub async fn abandon(&self) {
        self.abort();
        let _ = tokio::time::timeout(self.close_timeout, self.endpoint.wait_idle()).await;
    }

    /// Closes the connection after flushing: each delivery stream's acknowledgements are
    /// written and the stream finished, and the node is given up to the close timeout
    /// ([`ClientOptions::close_timeout`], 2 s by default) to confirm receipt, so an acknowledged
    /// message is not offered again.
    ///
    /// ```no_run
    /// # async fn example(client: std::sync::Arc<enlace::Client>) {
    /// client.close().await; // also through an Arc shared with other tasks
    /// # }
    /// ```
    pub async fn close(&self) {
        let _ = self.closing.send(true);
        let mut gone = self.writers_gone.lock().await;
        let _ = tokio::time::timeout(self.close_timeout, gone.recv()).await;
        self.sender.connection.close(0u32.into(), b"client closed");
        let _ = tokio::time::timeout(self.close_timeout, self.endpoint.wait_idle()).await;
    }
}

impl Drop for Client {
    /// A client dropped without [`Client::close`] closes its connection at once, as
    /// [`Client::abort`] does: its inboxes end, and the node puts back what was not acknowledged.
    fn drop(&mut self) {
        self.abort();
    }
}

fn unexpected(body: Body) -> SubmitError {
    match body {
        Body::Refused(r) => SubmitError::from_refused(r),
        other => SubmitError::Protocol(format!("unexpected answer: {other:?}")),
    }
}

/// Largest delivery-log answer frame.
const LOG_FRAME_LIMIT: u64 = 8 << 20;

/// The answers to a delivery-log query ([`Client::log`]), frame by frame.
pub struct LogAnswers {
    reader: crate::wire::frame::FrameReader,
    done: bool,
    _send: SendStream,
}

impl LogAnswers {
    /// The next answer frame; `None` after the last.
    ///
    /// # Errors
    /// [`SubmitError::Refused`] when the node refused the query; [`SubmitError::Connection`] or
    /// [`SubmitError::Protocol`] when the stream failed.
    pub async fn next(&mut self) -> Result<Option<pb::LogRecords>, SubmitError> {
        if self.done {
            return Ok(None);
        }
        match self.reader.read().await {
            Ok(f) => match f.body {
                Some(Body::LogRecords(r)) => {
                    self.done = r.done;
                    Ok(Some(r))
                }
                Some(Body::Refused(r)) => {
                    self.done = true;
                    Err(SubmitError::from_refused(r))
                }
                other => Err(SubmitError::Protocol(format!(
                    "unexpected answer: {other:?}"
                ))),
            },
            Err(crate::wire::frame::FrameError::End) => {
                self.done = true;
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }
}
