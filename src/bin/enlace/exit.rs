//! Exit codes, the error type that carries one, and how the library's errors map to them.

use enlace::{ClientError, SubmitError};

/// An error not covered below (bad input file, I/O).
pub const FAILURE: u8 = 1;
/// Bad command-line usage (clap's convention).
pub const USAGE: u8 = 2;
/// The node could not be reached, or refused the connection (certificate, role, agency).
pub const CONNECT: u8 = 3;
/// The node refused the message (invalid, expired, unknown recipient, too large...).
pub const REFUSED: u8 = 4;
/// The node is busy (queue full, shutting down): retry later.
pub const RETRY: u8 = 5;

/// An error with the exit code it maps to.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub error: anyhow::Error,
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(e: E) -> Failure {
        Failure {
            code: FAILURE,
            error: e.into(),
        }
    }
}

/// A failure with exit code `code`.
pub fn fail(code: u8, error: impl Into<anyhow::Error>) -> Failure {
    Failure {
        code,
        error: error.into(),
    }
}

/// The exit code and error for a failed submission.
pub fn submit_failure(e: SubmitError) -> Failure {
    match e {
        SubmitError::Refused { .. } if e.is_busy() => fail(RETRY, e),
        SubmitError::Refused { .. } => fail(REFUSED, e),
        e => fail(CONNECT, e),
    }
}

/// The exit code and error for a client that could not connect (or subscribe).
pub fn connect_failure(e: ClientError) -> Failure {
    match e {
        ClientError::Tls(_) | ClientError::Options(_) => fail(FAILURE, e),
        ClientError::Subscribe(SubmitError::Refused { .. }) => fail(REFUSED, e),
        e => fail(CONNECT, e),
    }
}
