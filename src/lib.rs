//! Enlace: a secure information-exchange broker for law-enforcement agencies.
//!
//! Agency nodes (`enlaced`) exchange typed, signed envelopes over mutually authenticated QUIC.
//! Applications use a [`Client`]: connect to their agency's node with their certificate,
//! [`send`](Client::send) [`Draft`]s, read mailboxes ([`Client::subscribe`]) and the receipts of
//! what they sent ([`Client::receipts`]).
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use enlace::{Client, ClientOptions, Draft, Mailbox, Precedence, pb};
//!
//! let client = Client::connect(
//!     ClientOptions::new("dea-1.dea.enlace.example:7400")
//!         .identity("duty-desk.pem", "duty-desk.key.pem")
//!         .trust("root.pem"),
//! )
//! .await?;
//! let alert = pb::PrecursorChemicalAlert::default();
//! let accepted = client
//!     .send(Draft::from(alert).to("pgr").precedence(Precedence::Flash))
//!     .await?
//!     .await?;
//! let mut inbox = client.subscribe(Mailbox::Inbox).await?;
//! # let _ = (accepted, &mut inbox);
//! # Ok(()) }
//! ```
//!
//! The public API is what applications and operators touch: the client ([`Client`],
//! [`ClientOptions`], [`Draft`], [`Inbox`], [`Delivery`], [`Receipts`]), message types
//! ([`Message`], [`MessageId`], [`Precedence`]), typed [`payloads`] and the protobuf schema
//! ([`pb`], with proto3 JSON in [`json`]), the node ([`node`], [`config`]), a local federation
//! for demos and tests ([`network`]) and a development PKI ([`pki`]). Everything else, the
//! sans-I/O core that decides (admission, routing, dispatching, policy) and the async glue
//! around it, is internal: see ARCHITECTURE.md for the map and invariants.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod address;
pub mod agreement;
pub mod audit;
mod client;
pub mod config;
mod dedup;
mod directory;
mod dispatch;
mod draft;
mod error;
mod explain;
#[cfg(feature = "fuzzing")]
pub mod fuzz;
pub mod handling;
mod id;
mod identity;
mod lanes;
mod latest;
pub mod merkle;
mod message;
pub mod network;
pub mod node;
pub mod note;
pub mod payloads;
mod peering;
mod pipeline;
pub mod pki;
mod policy;
mod precedence;
mod provenance;
mod receipt;
mod refusal;
mod respond;
mod route;
mod session;
mod signature;
mod signers;
mod store;
mod tls;
mod validate;
mod wire;

pub use address::{BadUnit, Mailbox, Unit};
pub use client::{
    Acceptance, Accepted, BusyRetry, Client, ClientOptions, Dedup, Delivery, Inbox, LogAnswers,
    Receipts,
};
pub use config::ConfigError;
pub use draft::Draft;
pub use error::{ClientError, ConnectError, PayloadError, SubmitError};
pub use identity::{AgencyId, IdentityError, Role};
pub use message::{
    Addressee, BadMessageId, BadPrecedence, BadStatus, Hop, Message, MessageId, Originator,
    Precedence, Status, rfc3339,
};
pub use network::NetworkError;
pub use node::NodeError;
pub use pki::PkiError;
pub use receipt::{Receipt, Stage};
pub use tls::TlsError;
pub use wire::{json, pb};

/// Constants of the node protocol.
pub mod protocol {
    pub use crate::wire::{ALPN, CONTROL_FRAME_LIMIT, FRAME_SLACK, PROTOCOL_VERSION};
}
