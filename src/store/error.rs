//! The store's error type: one enum, with each variant named for what the caller can do about it.
//!
//! Two kinds matter to the node. [`StoreError::Failed`] is fatal (the store accepts nothing more;
//! restart to recover from disk). The caller errors ([`StoreError::NotLive`],
//! [`StoreError::NotDead`], [`StoreError::Duplicate`], [`StoreError::Invalid`]) and
//! [`StoreError::Full`] mean nothing of that request was written and the store goes on.

use std::path::PathBuf;
use std::sync::Arc;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// I/O failed while opening (listing, reading, cutting a torn tail).
    #[error("store {op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The store hit a fatal I/O error (this one or an earlier one) and accepts nothing more.
    /// Nothing was committed by the call that gets this. Restart to recover from disk.
    #[error("the store has failed and accepts nothing more: {0}")]
    Failed(Arc<String>),
    /// A sealed (not newest) segment is damaged: acknowledged data is unreadable, and the store
    /// refuses to open rather than silently drop it. Needs an operator.
    #[error("corrupt store segment {} at offset {offset}: {reason}", path.display())]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    /// The store was closed.
    #[error("the store is closed")]
    Closed,
    /// Another handle or process has this directory open.
    #[error("store {} is in use by another process", .0.display())]
    Locked(PathBuf),
    /// An op named a copy that is not live (already finished, or never stored). Nothing of the
    /// request was written.
    #[error("record {0} is not live in the store")]
    NotLive(u64),
    /// [`super::Op::Redrive`] of a copy that is not dead-lettered. Nothing was written.
    #[error("record {0} is not dead-lettered")]
    NotDead(u64),
    /// A unique [`super::Store::commit_each`] found this message already in this queue.
    /// Nothing was written.
    #[error(
        "message {} is already in queue {queue}",
        crate::audit::hex(message_id)
    )]
    Duplicate { queue: String, message_id: [u8; 16] },
    /// The disk has no room for this request. Nothing of it was written, and the store goes
    /// on: it accepts again once space returns. Requests that only finish copies (and so free
    /// space) still go through while the newest segment has room for them. The message names
    /// no path: it reaches senders.
    #[error("no space left on the node's disk")]
    Full,
    /// A record or an option out of bounds. Nothing was written.
    #[error("invalid store input: {0}")]
    Invalid(String),
}

impl StoreError {
    /// True when the store will accept nothing more ([`StoreError::Failed`]).
    pub fn is_fatal(&self) -> bool {
        matches!(self, StoreError::Failed(_))
    }
}
