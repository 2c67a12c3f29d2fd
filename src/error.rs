//! The errors of the client library, by operation: connecting, submitting, decoding a payload.
//!
//! Each names what the caller can act on: a refusal with its code (and, for a busy node, when to
//! retry), a lost connection whose outcome is unknown (resend with the same id), a certificate
//! the node would not accept. A node's refusal of a message is a [`SubmitError::Refused`], not a
//! panic or a string.

use std::net::SocketAddr;
use std::time::Duration;

use crate::wire::frame::FrameError;
use crate::wire::pb;

/// Why a connection could not be established or was not authorized.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The node's address could not be resolved or reached. Check the address and port in
    /// [`ClientOptions::new`](crate::ClientOptions::new) and that the node is running; trying
    /// again later may succeed.
    #[error("cannot connect to {addr}: {reason}")]
    Connect {
        /// The address as given, or as resolved.
        addr: String,
        /// What failed: resolving the name, or reaching the node.
        reason: String,
    },
    /// The node refused the connection after the handshake (wrong role, wrong agency, not in
    /// its peer table). Trying again with the same certificate gets the same answer: use a
    /// certificate the node accepts, or the node of the certificate's agency.
    #[error("the node refused the connection ({code:?}): {reason}")]
    Refused {
        /// The node's refusal code: `UNAUTHORIZED`, or `UNSUPPORTED_VERSION` when the client's
        /// protocol version is one the node does not speak.
        code: pb::RefusalCode,
        /// The node's reason, in words.
        reason: String,
    },
    /// The TLS handshake failed (unknown CA, expired or revoked certificate), in words.
    #[error("the connection failed during the handshake: {0}")]
    Handshake(String),
    /// The node did not authorize the connection in time.
    #[error("no answer from the node within {0:?}")]
    Timeout(Duration),
    /// The node's certificate names another identity than the one expected.
    #[error("the node's certificate is not the expected identity: {0}")]
    WrongPeer(String),
}

impl ConnectError {
    pub(crate) fn connect(addr: SocketAddr, reason: impl ToString) -> ConnectError {
        ConnectError::Connect {
            addr: addr.to_string(),
            reason: reason.to_string(),
        }
    }
}

/// Why a submission (or another request) did not succeed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SubmitError {
    /// The node refused the message; `code` says why and whether to retry
    /// ([`SubmitError::is_busy`]). A busy refusal may be sent again after `retry_after`; any
    /// other needs the message (or its addressees, or this client's rights) changed first.
    #[error("refused ({code:?}): {reason}")]
    Refused {
        /// Why, as a code: `QUEUE_FULL`, `SHUTTING_DOWN`, `STORE_FULL` and `STORE_FAILED`
        /// mean busy (try again later, or by another route); the others (`INVALID`, `EXPIRED`, `UNKNOWN_RECIPIENT`, `TOO_LARGE`, ...) are final for
        /// this message as it is.
        code: pb::RefusalCode,
        /// The node's reason, in words, naming the field or limit at fault.
        reason: String,
        /// For a busy refusal: when the node suggests trying again.
        retry_after: Option<Duration>,
    },
    /// The connection or stream failed; the message may or may not have been accepted: resend
    /// it with the same id.
    #[error("connection failed: {0}")]
    Connection(String),
    /// The node answered with something other than `Accepted` or `Refused`.
    #[error("protocol error: {0}")]
    Protocol(String),
}

impl SubmitError {
    /// Whether the node was busy (`QUEUE_FULL`, `SHUTTING_DOWN`, `STORE_FULL`,
    /// `STORE_FAILED`): the same message may be sent again later.
    pub fn is_busy(&self) -> bool {
        matches!(self, SubmitError::Refused { code, .. } if crate::refusal::is_busy(*code))
    }

    pub(crate) fn from_refused(r: pb::Refused) -> SubmitError {
        SubmitError::Refused {
            code: r.code(),
            retry_after: (r.retry_after_ms > 0).then(|| Duration::from_millis(r.retry_after_ms)),
            reason: r.reason,
        }
    }
}

impl From<FrameError> for SubmitError {
    fn from(e: FrameError) -> SubmitError {
        SubmitError::Connection(e.to_string())
    }
}

/// Why a client could not be created.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Its certificate, key or trust bundle could not be loaded.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// The node could not be reached, or did not authorize this client (see [`ConnectError`]).
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The options are incomplete or the key cannot sign.
    #[error("{0}")]
    Options(String),
    /// The node refused a subscription (an unknown or forbidden mailbox).
    #[error("subscription refused: {0}")]
    Subscribe(SubmitError),
}

/// A payload was not of the requested type or did not decode. Check
/// [`Message::payload_type`](crate::Message::payload_type) before decoding, or decode it as the
/// type it declares.
#[derive(Debug, thiserror::Error)]
#[error("payload is {actual}, not {expected} (or does not decode): {reason}")]
pub struct PayloadError {
    /// The fully qualified protobuf name asked for, e.g. `enlace.v1.PrecursorChemicalAlert`.
    pub expected: String,
    /// The payload type the message declares.
    pub actual: String,
    /// `type mismatch`, or why the bytes did not decode as the expected type.
    pub reason: String,
}
