//! The connecting side of the node protocol, shared by clients and by nodes dialing peers.
//!
//! [`dial`] connects, sends `Hello` on the control stream and waits for `Welcome`: in TLS 1.3 a
//! QUIC connection can look established before the node has checked the client certificate, so a
//! connection is only authorized once the node's first frame says so. [`hand_over`] sends one
//! signed envelope on its own stream and returns the stream its answer comes on ([`answer`]),
//! so a sender can keep many in flight; [`request`] is one request and its one answer.

use std::net::SocketAddr;
use std::time::Duration;

use quinn::{Connection, Endpoint, RecvStream, SendStream};

use crate::error::{ConnectError, SubmitError};
use crate::tls::describe_connection_error;
use crate::wire::CONTROL_FRAME_LIMIT;
use crate::wire::frame::{self, FrameError, FrameReader};
use crate::wire::pb::{self, frame::Body};

/// An authorized connection: the node's `Welcome` and the open control stream.
pub(crate) struct Session {
    pub connection: Connection,
    pub welcome: pb::Welcome,
    /// Kept open for the life of the session; closing it tells the node we are leaving.
    pub control: (SendStream, RecvStream),
}

/// Connects to a node and completes the `Hello`/`Welcome` exchange.
pub(crate) async fn dial(
    endpoint: &Endpoint,
    config: quinn::ClientConfig,
    addr: SocketAddr,
    server_name: &str,
    hello: pb::Hello,
    timeout: Duration,
) -> Result<Session, ConnectError> {
    let fut = async {
        let connecting = endpoint
            .connect_with(config, addr, server_name)
            .map_err(|e| ConnectError::connect(addr, e))?;
        let connection = connecting
            .await
            .map_err(|e| ConnectError::Handshake(describe_connection_error(&e)))?;
        let closed =
            |e: &quinn::ConnectionError| ConnectError::Handshake(describe_connection_error(e));
        let (mut send, recv) = connection.open_bi().await.map_err(|e| closed(&e))?;
        let hs = |e: FrameError| match &e {
            FrameError::Write(quinn::WriteError::ConnectionLost(c))
            | FrameError::Read(quinn::ReadError::ConnectionLost(c)) => closed(c),
            _ => ConnectError::Handshake(e.to_string()),
        };
        frame::write_body(&mut send, Body::Hello(hello))
            .await
            .map_err(hs)?;
        let mut reader = FrameReader::new(recv, CONTROL_FRAME_LIMIT);
        let welcome = match reader.read().await.map_err(hs)?.body {
            Some(Body::Welcome(w)) => w,
            Some(Body::Refused(r)) => {
                return Err(ConnectError::Refused {
                    code: r.code(),
                    reason: r.reason,
                });
            }
            other => {
                return Err(ConnectError::Handshake(format!(
                    "expected Welcome, got {other:?}"
                )));
            }
        };
        Ok(Session {
            connection,
            welcome,
            control: (send, reader.into_inner()),
        })
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| ConnectError::Timeout(timeout))?
}

/// Sends one signed envelope on a stream of its own at QUIC stream priority `priority` (higher
/// is sent first) and returns the stream its answer will come on.
///
/// # Cancel safety
/// Not cancel safe: if cancelled after the frame was written, the node may still accept the
/// message. Resubmitting the same envelope (same message id) is the remedy.
pub(crate) async fn hand_over(
    connection: &Connection,
    envelope: pb::SignedEnvelope,
    priority: i32,
) -> Result<RecvStream, SubmitError> {
    let (mut send, recv) = connection
        .open_bi()
        .await
        .map_err(|e| SubmitError::Connection(describe_connection_error(&e)))?;
    // Only fails if the stream is already closed, which the write below reports.
    let _ = send.set_priority(priority);
    let body = Body::Submit(pb::Submit {
        envelope: Some(envelope),
    });
    match frame::write_body(&mut send, body).await {
        // Only fails if the node already stopped the stream; its answer is read after.
        Ok(()) => drop(send.finish()),
        // The node refused the frame part-way (e.g. too large); its answer follows.
        Err(FrameError::Write(quinn::WriteError::Stopped(_))) => {}
        Err(e) => return Err(e.into()),
    }
    Ok(recv)
}

/// Reads the node's answer to a submission: `Accepted` or `Refused`.
pub(crate) async fn answer(recv: RecvStream) -> Result<pb::Accepted, SubmitError> {
    let mut reader = FrameReader::new(recv, CONTROL_FRAME_LIMIT);
    accepted(reader.read().await?.body)
}

/// An answer frame's body as the outcome of a submission.
pub(crate) fn accepted(body: Option<Body>) -> Result<pb::Accepted, SubmitError> {
    match body {
        Some(Body::Accepted(a)) => Ok(a),
        Some(Body::Refused(r)) => Err(SubmitError::from_refused(r)),
        other => Err(SubmitError::Protocol(format!(
            "expected Accepted or Refused, got {other:?}"
        ))),
    }
}

/// Submits one signed envelope on its own stream and waits for `Accepted` or `Refused`.
pub(crate) async fn submit(
    connection: &Connection,
    envelope: pb::SignedEnvelope,
    priority: i32,
) -> Result<pb::Accepted, SubmitError> {
    answer(hand_over(connection, envelope, priority).await?).await
}

/// Sends one request frame on its own stream and returns the node's one answer frame (a
/// `Refused` answer becomes [`SubmitError::Refused`]).
pub(crate) async fn request(connection: &Connection, body: Body) -> Result<Body, SubmitError> {
    let (mut send, recv) = connection
        .open_bi()
        .await
        .map_err(|e| SubmitError::Connection(describe_connection_error(&e)))?;
    frame::write_body(&mut send, body).await?;
    // Only fails if the node already stopped the stream; its answer is read below.
    let _ = send.finish();
    match FrameReader::new(recv, ANSWER_FRAME_LIMIT)
        .read()
        .await?
        .body
    {
        Some(Body::Refused(r)) => Err(SubmitError::from_refused(r)),
        Some(b) => Ok(b),
        None => Err(SubmitError::Protocol("empty answer".into())),
    }
}

/// Largest answer frame to a request (a list of dead letters).
const ANSWER_FRAME_LIMIT: u64 = 16 * 1024 * 1024;
