//! Pipelined submission of analytical traffic on one long-lived stream.
//!
//! ROUTINE and BULK messages do not get a stream each: they travel as length-prefixed `Submit`
//! frames on one long-lived, low-priority stream, and the node answers each with `Accepted` or
//! `Refused` in the same order. At most [`Pipeline::new`]'s `window_bytes` of submissions are
//! unanswered at any time (admission control), so bulk can never fill the connection's send
//! buffer ahead of a FLASH alert, which travels on its own high-priority stream.
//!
//! Used by clients and by nodes forwarding to peers. If the stream fails, every unanswered
//! submission fails with [`SubmitError::Connection`] (its outcome is unknown: resubmit with the
//! same message id) and the next submission opens a new stream.
//!
//! A client's pipeline also signs: envelopes handed over unsigned ([`Pipeline::submit_unsigned`])
//! are signed in batches of whatever is waiting, up to [`MAX_BATCH`], with one signature over the
//! batch's Merkle root ([`Signer::sign_batch`]). Under load that divides the originator's
//! signing cost, and the node's verification cost, by the batch size; a lone message is signed
//! alone and waits for nothing.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use prost::Message;
use quinn::Connection;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use crate::error::SubmitError;
use crate::signature::Signer;
use crate::tls::describe_connection_error;
use crate::wire::CONTROL_FRAME_LIMIT;
use crate::wire::frame::{self, FrameReader};
use crate::wire::pb::{self, frame::Body};

type Reply = oneshot::Sender<Result<pb::Accepted, SubmitError>>;

/// What to send: a signed envelope (forwarded as it is) or envelope bytes to sign first.
enum Envelope {
    Signed(pb::SignedEnvelope),
    Unsigned(Bytes),
}

struct Request {
    envelope: Envelope,
    answer: Reply,
    permit: OwnedSemaphorePermit,
}

/// A long-lived submission stream with a bound on unanswered bytes.
pub(crate) struct Pipeline {
    tx: mpsc::Sender<Request>,
    window: Arc<Semaphore>,
    window_bytes: u32,
    signs: bool,
}

/// Most envelopes signed with one signature, and written with one write.
pub(crate) const MAX_BATCH: usize = 256;

/// Most yields a batch waits for more submissions, as long as each brings more.
const GATHER_YIELDS: u32 = 4;

/// Batches unanswered at once. While this many are in flight, what is handed over waits and
/// goes out together in the next batch, once the oldest is answered (as Nagle's algorithm does
/// for TCP segments): an idle pipeline sends a lone message at once, a busy one sends batches as
/// large as what arrives in a round trip (up to [`MAX_BATCH`]), so that signing, every hop's
/// verification and the writes cost little per message. Four, so that the node works on a
/// batch while the next ones are on their way and its store's group commit has more than one
/// batch to take.
const BATCHES_IN_FLIGHT: usize = 4;

/// What a signature with a proof for a batch of [`MAX_BATCH`] adds to an envelope's frame, at
/// most: the signature, the certificate hash, eight 32-byte hashes and their framing.
const SIGNATURE_BYTES: usize = 512;

/// Default bound on unanswered bulk bytes: well below quinn's send window, so bulk never fills
/// the connection ahead of an alert. Larger windows were measured (1 MiB: bulk alone about 10 %
/// faster, but alert p99 under bulk twice as long through one node and through two, the node's
/// worker threads having hundreds of bulk frames queued ahead of an alert).
pub(crate) const DEFAULT_WINDOW_BYTES: u32 = 128 * 1024;

impl Pipeline {
    /// Starts the pipeline's task on `connection`. `priority` is the stream's QUIC priority.
    /// With a `signer`, [`Pipeline::submit_unsigned`] is available.
    pub fn new(
        connection: Connection,
        window_bytes: u32,
        priority: i32,
        signer: Option<Arc<Signer>>,
    ) -> Pipeline {
        // Requests are few at a time (the window bounds them); the channel only hands them over.
        let (tx, rx) = mpsc::channel(256);
        let signs = signer.is_some();
        tokio::spawn(run(connection, rx, priority, signer));
        Pipeline {
            tx,
            window: Arc::new(Semaphore::new(window_bytes as usize)),
            window_bytes,
            signs,
        }
    }

    /// Hands one signed envelope over for sending and returns its [`Answer`], to await.
    ///
    /// Waits first for room in the window (backpressure). A frame larger than the window still
    /// goes through, alone. Envelopes handed over go out in the order they were handed over.
    ///
    /// # Cancel safety
    /// Cancel safe until it returns: nothing is sent for a cancelled call.
    pub async fn hand_over(&self, envelope: pb::SignedEnvelope) -> Result<Answer, SubmitError> {
        let cost = envelope.encoded_len() + 16;
        self.enqueue(Envelope::Signed(envelope), cost).await
    }

    /// Hands the exact `envelope` bytes over to be signed (in a batch with whatever else is
    /// waiting) and sent. As [`Pipeline::hand_over`] otherwise.
    ///
    /// # Panics
    /// If the pipeline was made without a signer.
    pub async fn hand_over_unsigned(&self, envelope: Bytes) -> Result<Answer, SubmitError> {
        assert!(
            self.signs,
            "hand_over_unsigned on a pipeline without a signer"
        );
        let cost = envelope.len() + SIGNATURE_BYTES;
        self.enqueue(Envelope::Unsigned(envelope), cost).await
    }

    async fn enqueue(&self, envelope: Envelope, cost: usize) -> Result<Answer, SubmitError> {
        let cost = u32::try_from(cost)
            .unwrap_or(u32::MAX)
            .clamp(1, self.window_bytes);
        let permit = self
            .window
            .clone()
            .acquire_many_owned(cost)
            .await
            .map_err(|_| SubmitError::Connection("pipeline closed".into()))?;
        let (answer, rx) = oneshot::channel();
        self.tx
            .send(Request {
                envelope,
                answer,
                permit,
            })
            .await
            .map_err(|_| SubmitError::Connection("pipeline closed".into()))?;
        Ok(Answer(rx))
    }
}

/// The node's answer to one envelope handed to a [`Pipeline`]: `Accepted`, or why not.
#[must_use = "an answer says whether the node took the message"]
pub(crate) struct Answer(oneshot::Receiver<Result<pb::Accepted, SubmitError>>);

impl Future for Answer {
    type Output = Result<pb::Accepted, SubmitError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0)
            .poll(cx)
            .map(|r| r.unwrap_or_else(|_| Err(SubmitError::Connection("pipeline closed".into()))))
    }
}

/// The submissions sent and not yet answered, in order: each with its share of the window, and
/// the last of each batch with the batch's slot (see [`BATCHES_IN_FLIGHT`]).
type Pending = Arc<Mutex<VecDeque<(Reply, OwnedSemaphorePermit, Option<OwnedSemaphorePermit>)>>>;

async fn run(
    connection: Connection,
    mut rx: mpsc::Receiver<Request>,
    priority: i32,
    signer: Option<Arc<Signer>>,
) {
    let batches = Arc::new(Semaphore::new(BATCHES_IN_FLIGHT));
    while let Some(first) = rx.recv().await {
        let (mut send, recv) = match connection.open_bi().await {
            Ok(s) => s,
            Err(e) => {
                let err = SubmitError::Connection(describe_connection_error(&e));
                let _ = first.answer.send(Err(err.clone()));
                while let Some(r) = rx.recv().await {
                    let _ = r.answer.send(Err(err.clone()));
                }
                return;
            }
        };
        // Only fails on a stream that is already closed; the write below reports that.
        let _ = send.set_priority(priority);
        let pending: Pending = Arc::default();
        let (done_tx, mut done_rx) = oneshot::channel();
        let reading = pending.clone();
        tokio::spawn(async move {
            let _ = done_tx.send(read_answers(recv, reading).await);
        });
        // Why the stream ended, once known.
        let mut ended: Option<Option<String>> = None;
        let mut next = Some(first);
        while let Some(req) = next.take() {
            // Wait for a batch slot; what arrives meanwhile goes out with this one.
            let slot = tokio::select! {
                slot = batches.clone().acquire_owned() => slot.expect("never closed"),
                r = &mut done_rx => {
                    ended = Some(r.unwrap_or_else(|_| Some("answer reader failed".into())));
                    // Failed below, with the unanswered ones.
                    let mut pending = pending.lock().expect("pending lock poisoned");
                    pending.push_back((req.answer, req.permit, None));
                    break;
                }
            };
            // Whatever else is already waiting goes out with it: one signature, one write.
            // Yields let the submitters woken with this one (by answers freeing the window)
            // hand theirs over, for as long as each yield brings more (at most
            // `GATHER_YIELDS`): a lone message waits one yield, a busy stream gets batches
            // large enough that signing and every hop's verification cost little per message.
            let mut batch = vec![req];
            let mut yields = 0;
            loop {
                while batch.len() < MAX_BATCH
                    && let Ok(more) = rx.try_recv()
                {
                    batch.push(more);
                }
                if batch.len() >= MAX_BATCH || yields >= GATHER_YIELDS {
                    break;
                }
                let before = batch.len();
                tokio::task::yield_now().await;
                yields += 1;
                if rx.is_empty() && (yields > 1 || before > 1) {
                    break;
                }
            }
            let frames = encode_batch(batch, slot, signer.as_deref(), &pending);
            if let Err(e) = send.write_all(&frames).await {
                ended = Some(Some(e.to_string()));
                break;
            }
            next = tokio::select! {
                r = rx.recv() => r,
                r = &mut done_rx => {
                    ended = Some(r.unwrap_or_else(|_| Some("answer reader failed".into())));
                    None
                }
            };
        }
        let reason = match ended {
            Some(r) => r,
            None => {
                // All senders are gone: close our side and let the answers drain.
                let _ = send.finish();
                done_rx
                    .await
                    .unwrap_or_else(|_| Some("answer reader failed".into()))
            }
        };
        let reason = reason.unwrap_or_else(|| "the node closed the stream".into());
        for (answer, _, _) in pending.lock().expect("pending lock poisoned").drain(..) {
            let _ = answer.send(Err(SubmitError::Connection(reason.clone())));
        }
        if rx.is_closed() {
            return;
        }
    }
}

/// Signs the batch's unsigned envelopes together, encodes every request as a `Submit` frame, in
/// order, into one buffer, and queues the requests' answers as pending, the batch's `slot` with
/// the last.
fn encode_batch(
    batch: Vec<Request>,
    slot: OwnedSemaphorePermit,
    signer: Option<&Signer>,
    pending: &Pending,
) -> Bytes {
    let unsigned: Vec<&[u8]> = batch
        .iter()
        .filter_map(|r| match &r.envelope {
            Envelope::Unsigned(b) => Some(b.as_ref()),
            Envelope::Signed(_) => None,
        })
        .collect();
    let mut signatures = match signer {
        Some(s) if !unsigned.is_empty() => s.sign_batch(&unsigned),
        _ => Vec::new(),
    }
    .into_iter();
    let mut out = BytesMut::new();
    let mut pending = pending.lock().expect("pending lock poisoned");
    for r in batch {
        let signed = match r.envelope {
            Envelope::Signed(s) => s,
            Envelope::Unsigned(envelope) => pb::SignedEnvelope {
                envelope,
                signature: signatures.next(),
                hops: Vec::new(),
                route_to: Vec::new(),
                signer_chain: Vec::new(),
            },
        };
        let submit = Body::Submit(pb::Submit {
            envelope: Some(signed),
        });
        frame::encode_into(&pb::Frame { body: Some(submit) }, &mut out);
        pending.push_back((r.answer, r.permit, None));
    }
    // The batch's slot is given back with its last answer.
    if let Some(last) = pending.back_mut() {
        last.2 = Some(slot);
    }
    out.freeze()
}

/// Reads answers in order and completes the oldest pending submission with each. Returns why the
/// stream ended, if abnormally.
async fn read_answers(recv: quinn::RecvStream, pending: Pending) -> Option<String> {
    let mut reader = FrameReader::new(recv, CONTROL_FRAME_LIMIT);
    loop {
        let frame = match reader.read().await {
            Ok(f) => f,
            Err(frame::FrameError::End) => return None,
            Err(e) => return Some(e.to_string()),
        };
        let result = crate::session::accepted(frame.body);
        let Some((answer, permit, slot)) =
            pending.lock().expect("pending lock poisoned").pop_front()
        else {
            return Some("the node answered a submission that was never sent".into());
        };
        drop((permit, slot));
        let _ = answer.send(result);
    }
}
