//! A refusal: the answer a node gives when it will not take something, with a code a program can
//! act on and a reason a person can read.
//!
//! A refusal is a value, not an error: admission, routing and connection authorization return
//! one when they deny, and the node sends it back (`Refused` frame) and records it. Nothing here
//! decides anything.

use bytes::Bytes;

use crate::wire::pb::{self, RefusalCode};

/// A refusal: a code for programs and a reason for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub code: RefusalCode,
    pub reason: String,
}

impl Refusal {
    pub fn new(code: RefusalCode, reason: impl Into<String>) -> Refusal {
        Refusal {
            code,
            reason: reason.into(),
        }
    }

    /// An `INVALID` refusal: the envelope is malformed or incomplete.
    pub fn invalid(reason: impl Into<String>) -> Refusal {
        Refusal::new(RefusalCode::Invalid, reason)
    }

    /// The wire form, with the refused message's id (16 bytes, or empty when unknown).
    pub fn to_pb(&self, message_id: Bytes) -> pb::Refused {
        pb::Refused {
            code: self.code as i32,
            reason: self.reason.clone(),
            message_id,
            retry_after_ms: 0,
        }
    }

    /// Whether the sender should try again later (the node is busy or stopping).
    pub fn is_busy(&self) -> bool {
        is_busy(self.code)
    }
}

/// Whether a refusal code means "try again later": `QUEUE_FULL`, `SHUTTING_DOWN`,
/// `STORE_FULL` or `STORE_FAILED`.
pub(crate) fn is_busy(code: RefusalCode) -> bool {
    matches!(
        code,
        RefusalCode::QueueFull
            | RefusalCode::ShuttingDown
            | RefusalCode::StoreFull
            | RefusalCode::StoreFailed
    )
}
