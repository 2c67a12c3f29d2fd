//! The connecting side of the node protocol, shared by clients and by nodes dialing peers.
//!
//! [`dial`] connects, sends `Hello` on the control stream and waits for `Welcome`: in TLS 1.3 a
//! QUIC connection can look established before the node has checked the client certificate, so a
//! connection is only authorized once the node's first frame says so. [`submit`] sends one signed
//! envelope on its own stream and waits for the node's answer.

use std::net::SocketAddr;
use std::time::Duration;

use quinn::{Connection, Endpoint, RecvStream, SendStream};

use crate::tls::describe_connection_error;
use crate::wire::frame::{self, FrameError, FrameReader};
use crate::wire::pb::{self, frame::Body};

/// Largest control frame (Hello, Welcome, Accepted, Refused, Ack) either side accepts.
pub const CONTROL_FRAME_LIMIT: u64 = 64 * 1024;

/// Why a connection could not be established or was not authorized.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: SocketAddr, reason: String },
    #[error("the node refused the connection ({code:?}): {reason}")]
    Refused {
        code: pb::RefusalCode,
        reason: String,
    },
    #[error("the connection failed during the handshake: {0}")]
    Handshake(String),
    #[error("no answer from the node within {0:?}")]
    Timeout(Duration),
    #[error("the node's certificate is not the expected identity: {0}")]
    WrongPeer(String),
}

/// Why a submission did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// The node refused the message; `code` says why and whether to retry.
    #[error("refused ({code:?}): {reason}")]
    Refused {
        code: pb::RefusalCode,
        reason: String,
        retry_after: Option<Duration>,
    },
    /// The connection or stream failed; the message may or may not have been accepted.
    #[error("connection failed: {0}")]
    Connection(String),
    /// The node answered with something other than `Accepted` or `Refused`.
    #[error("protocol error: {0}")]
    Protocol(String),
}

impl From<FrameError> for SubmitError {
    fn from(e: FrameError) -> SubmitError {
        SubmitError::Connection(e.to_string())
    }
}

/// An authorized connection: the node's `Welcome` and the open control stream.
pub struct Session {
    pub connection: Connection,
    pub welcome: pb::Welcome,
    /// Kept open for the life of the session; closing it tells the node we are leaving.
    pub control: (SendStream, RecvStream),
}

/// Connects to a node and completes the `Hello`/`Welcome` exchange.
pub async fn dial(
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
            .map_err(|e| ConnectError::Connect {
                addr,
                reason: e.to_string(),
            })?;
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

/// Submits one signed envelope on its own stream and waits for `Accepted` or `Refused`.
///
/// `priority` is the QUIC stream priority (higher is sent first).
///
/// # Cancel safety
/// Not cancel safe: if cancelled after the frame was written, the node may still accept the
/// message. Resubmitting the same envelope (same message id) is the remedy.
pub async fn submit(
    connection: &Connection,
    envelope: pb::SignedEnvelope,
    priority: i32,
) -> Result<pb::Accepted, SubmitError> {
    let conn_err =
        |e: quinn::ConnectionError| SubmitError::Connection(describe_connection_error(&e));
    let (mut send, recv) = connection.open_bi().await.map_err(conn_err)?;
    // Only fails if the stream is already closed, which the write below reports.
    let _ = send.set_priority(priority);
    let body = Body::Submit(pb::Submit {
        envelope: Some(envelope),
    });
    match frame::write_body(&mut send, body).await {
        // Only fails if the node already stopped the stream; its answer is read below.
        Ok(()) => drop(send.finish()),
        // The node refused the frame part-way (e.g. too large); its answer follows.
        Err(FrameError::Write(quinn::WriteError::Stopped(_))) => {}
        Err(e) => return Err(e.into()),
    }
    let mut reader = FrameReader::new(recv, CONTROL_FRAME_LIMIT);
    match reader.read().await?.body {
        Some(Body::Accepted(a)) => Ok(a),
        Some(Body::Refused(r)) => Err(SubmitError::Refused {
            code: r.code(),
            retry_after: (r.retry_after_ms > 0).then(|| Duration::from_millis(r.retry_after_ms)),
            reason: r.reason,
        }),
        other => Err(SubmitError::Protocol(format!(
            "expected Accepted or Refused, got {other:?}"
        ))),
    }
}

/// Sends one request frame on its own stream and returns the node's one answer frame.
pub async fn request(connection: &Connection, body: Body) -> Result<Body, SubmitError> {
    let conn_err =
        |e: quinn::ConnectionError| SubmitError::Connection(describe_connection_error(&e));
    let (mut send, recv) = connection.open_bi().await.map_err(conn_err)?;
    frame::write_body(&mut send, body).await?;
    // Only fails if the node already stopped the stream; its answer is read below.
    let _ = send.finish();
    FrameReader::new(recv, ANSWER_FRAME_LIMIT)
        .read()
        .await?
        .body
        .ok_or_else(|| SubmitError::Protocol("empty answer".into()))
}

/// Largest answer frame to an operator request (a list of dead letters).
const ANSWER_FRAME_LIMIT: u64 = 16 * 1024 * 1024;
