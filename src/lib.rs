//! Enlace: a secure information-exchange broker for law-enforcement agencies.
//!
//! Agency nodes (`enlaced`) exchange typed, signed envelopes over mutually authenticated QUIC;
//! applications use [`Client`]. The crate is laid out as a sans-I/O core that decides
//! ([`policy`], [`validate`], [`route`], [`lanes`]), the wire format ([`wire`]), and thin async
//! glue ([`node`], [`client`], [`session`]). See ARCHITECTURE.md for the map and invariants.
#![forbid(unsafe_code)]

pub mod cli;
pub mod client;
pub mod config;
pub mod directory;
pub mod identity;
pub mod lanes;
pub mod merkle;
pub mod message;
pub mod network;
pub mod node;
pub mod payloads;
pub mod pipeline;
pub mod pki;
pub mod policy;
pub mod receipt;
pub mod respond;
pub mod route;
pub mod session;
pub mod signature;
pub mod store;
pub mod tls;
pub mod validate;
pub mod wire;

pub use client::{Client, ClientOptions, Delivery, Inbox, Receipts};
pub use message::{Draft, MessageId, Precedence};
