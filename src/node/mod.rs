//! The node daemon's runtime: connections, subscriptions, peer links, receipts and shutdown.
//!
//! Thin async glue. Decisions are made by the sans-I/O core (`policy`, `validate`, `route`,
//! `dispatch`, `lanes`, `receipt`, `respond`); every change of a copy's fate goes through the
//! ledger (`ledger`), which owns the node's store and queues. Files, by job:
//!
//! - `runtime`: start, run, check, and shutdown;
//! - `state`: the state every task of a node shares;
//! - `server`: accepting connections and authorizing them;
//! - `conn`: an authorized connection: who, and which mailboxes it reads;
//! - `streams`: serving the request streams of a connection (submissions, subscriptions,
//!   operator requests);
//! - `intake`: routing an admitted message, checking it against the policy, and handing it to
//!   the ledger;
//! - `memory`: what the node remembers for derived products, kept in its data directory;
//! - `rules`: the policy file in force (agreements, send and receive rules), and its reload;
//! - `ledger` (with `ledger::queue`): the one place a copy's fate changes;
//! - `consume`: the one loop that drives a consumer of a queue, with the dispatcher;
//! - `deliver`: what a subscribed client's consumer does with its copies;
//! - `link` and `links`: one connection per peer node, and its state;
//! - `forward`: what a peer link's consumer does with its copies;
//! - `receipts`: receipts, non-delivery reports and respond-by deadlines;
//! - `operator`: dead-letter requests;
//! - `events`: the hook every event passes through;
//! - `metrics`: counters and histograms fed by that hook and the ledger, gauges read when
//!   scraped, and the HTTP endpoint serving them with the health checks.

mod audit;
mod bulk;
mod conn;
mod consume;
mod deadlines;
mod deliver;
mod events;
mod files;
mod forward;
mod intake;
mod ledger;
mod link;
mod links;
mod logview;
mod memory;
mod metrics;
mod operator;
mod receipts;
mod registry;
mod rules;
mod runtime;
mod server;
mod state;
mod streams;
mod trust;
mod witness;

pub use events::Event;
pub use links::{LinkState, LinkStatus};
pub use runtime::{NodeError, RunningNode, check, run, start};
