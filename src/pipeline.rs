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

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quinn::Connection;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use crate::session::{CONTROL_FRAME_LIMIT, SubmitError};
use crate::tls::describe_connection_error;
use crate::wire::frame::{self, FrameReader};
use crate::wire::pb::{self, frame::Body};

type Answer = oneshot::Sender<Result<pb::Accepted, SubmitError>>;

struct Request {
    frame: bytes::Bytes,
    answer: Answer,
    permit: OwnedSemaphorePermit,
}

/// A long-lived submission stream with a bound on unanswered bytes.
pub struct Pipeline {
    tx: mpsc::Sender<Request>,
    window: Arc<Semaphore>,
    window_bytes: u32,
}

/// Default bound on unanswered bulk bytes: well below quinn's send window, so bulk never fills
/// the connection ahead of an alert.
pub const DEFAULT_WINDOW_BYTES: u32 = 128 * 1024;

impl Pipeline {
    /// Starts the pipeline's task on `connection`. `priority` is the stream's QUIC priority.
    pub fn new(connection: Connection, window_bytes: u32, priority: i32) -> Pipeline {
        // Requests are few at a time (the window bounds them); the channel only hands them over.
        let (tx, rx) = mpsc::channel(256);
        tokio::spawn(run(connection, rx, priority));
        Pipeline {
            tx,
            window: Arc::new(Semaphore::new(window_bytes as usize)),
            window_bytes,
        }
    }

    /// Submits one signed envelope and waits for the node's answer.
    ///
    /// Waits first for room in the window (backpressure). A frame larger than the window still
    /// goes through, alone.
    ///
    /// # Cancel safety
    /// Not cancel safe once the frame is handed over: the node may accept it anyway.
    pub async fn submit(&self, envelope: pb::SignedEnvelope) -> Result<pb::Accepted, SubmitError> {
        let frame = frame::encode(&pb::Frame {
            body: Some(Body::Submit(pb::Submit {
                envelope: Some(envelope),
            })),
        });
        let cost = (frame.len() as u32).clamp(1, self.window_bytes);
        let permit = self
            .window
            .clone()
            .acquire_many_owned(cost)
            .await
            .map_err(|_| SubmitError::Connection("pipeline closed".into()))?;
        let (answer, rx) = oneshot::channel();
        self.tx
            .send(Request {
                frame,
                answer,
                permit,
            })
            .await
            .map_err(|_| SubmitError::Connection("pipeline closed".into()))?;
        rx.await
            .map_err(|_| SubmitError::Connection("pipeline closed".into()))?
    }
}

type Pending = Arc<Mutex<VecDeque<(Answer, OwnedSemaphorePermit)>>>;

async fn run(connection: Connection, mut rx: mpsc::Receiver<Request>, priority: i32) {
    while let Some(first) = rx.recv().await {
        let (mut send, recv) = match connection.open_bi().await {
            Ok(s) => s,
            Err(e) => {
                let err = SubmitError::Connection(describe_connection_error(&e));
                let _ = first.answer.send(Err(clone_err(&err)));
                while let Some(r) = rx.recv().await {
                    let _ = r.answer.send(Err(clone_err(&err)));
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
            pending
                .lock()
                .expect("pending lock poisoned")
                .push_back((req.answer, req.permit));
            if let Err(e) = send.write_all(&req.frame).await {
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
        for (answer, _) in pending.lock().expect("pending lock poisoned").drain(..) {
            let _ = answer.send(Err(SubmitError::Connection(reason.clone())));
        }
        if rx.is_closed() {
            return;
        }
    }
}

fn clone_err(e: &SubmitError) -> SubmitError {
    SubmitError::Connection(e.to_string())
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
        let result = match frame.body {
            Some(Body::Accepted(a)) => Ok(a),
            Some(Body::Refused(r)) => Err(SubmitError::Refused {
                code: r.code(),
                retry_after: (r.retry_after_ms > 0)
                    .then(|| Duration::from_millis(r.retry_after_ms)),
                reason: r.reason,
            }),
            other => Err(SubmitError::Protocol(format!(
                "expected Accepted or Refused, got {other:?}"
            ))),
        };
        let Some((answer, permit)) = pending.lock().expect("pending lock poisoned").pop_front()
        else {
            return Some("the node answered a submission that was never sent".into());
        };
        drop(permit);
        let _ = answer.send(result);
    }
}
