//! The state of each peer link, for operators: a gauge (current state, since when, which side
//! dialed the connection in use) and counters (ups, downs, failed dials, duplicate connections
//! closed), kept per peer and readable in-process ([`crate::node::RunningNode::links`]).
//!
//! Every state change goes through [`Links::set`], which also records it as an [`Event::Link`]
//! (the log line). It decides nothing: the link task ([`super::link`]) does.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::SystemTime;

use super::events::{Event, Events};

/// Where a peer link is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    /// Dialing the peer (and accepting its connection meanwhile).
    Connecting,
    /// One authorized connection carries traffic both ways.
    Up,
    /// The connection was lost or a dial failed.
    Down,
    /// Waiting before the next dial (after failed dials).
    Backoff,
}

impl LinkState {
    /// The state's name as events and logs write it: `connecting`, `up`, `down` or `backoff`.
    ///
    /// ```
    /// use enlace::node::LinkState;
    ///
    /// assert_eq!(LinkState::Backoff.as_str(), "backoff");
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            LinkState::Connecting => "connecting",
            LinkState::Up => "up",
            LinkState::Down => "down",
            LinkState::Backoff => "backoff",
        }
    }
}

/// One peer link's gauge and counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkStatus {
    /// The peer node's name, as in the config's `[[peers]] node`.
    pub peer: String,
    /// Where the link is now.
    pub state: LinkState,
    /// Why it is in this state (the peer's address, a close reason, a dial error, the delay).
    pub detail: String,
    /// When the link entered its current state (or its detail last changed).
    pub since: SystemTime,
    /// The node that dialed the connection in use, while up.
    pub dialed_by: Option<String>,
    /// Times the link came up (not counting one connection replacing another).
    pub ups: u64,
    /// Times an up link went down.
    pub downs: u64,
    /// Dials that failed.
    pub dial_failures: u64,
    /// Second connections closed because both nodes dialed (or a peer dialed again).
    pub duplicates_closed: u64,
    /// Failed dials since the link was last up or lost.
    failing: u64,
}

/// Every peer link's status.
#[derive(Debug)]
pub struct Links {
    events: Events,
    table: Mutex<BTreeMap<String, LinkStatus>>,
}

/// What changed, for the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Change {
    Dialing,
    Up,
    Lost,
    DialFailed,
    Backoff,
}

impl Links {
    pub(super) fn new(events: Events, peers: impl Iterator<Item = String>) -> Links {
        let now = SystemTime::now();
        let table = peers
            .map(|peer| {
                let s = LinkStatus {
                    peer: peer.clone(),
                    state: LinkState::Down,
                    detail: "not connected yet".into(),
                    since: now,
                    dialed_by: None,
                    ups: 0,
                    downs: 0,
                    dial_failures: 0,
                    duplicates_closed: 0,
                    failing: 0,
                };
                (peer, s)
            })
            .collect();
        Links {
            events,
            table: Mutex::new(table),
        }
    }

    /// Records a change of a peer link; `dialed_by` names the connection's dialer when it comes
    /// up. A failed dial while already down is counted, logged at debug, and not repeated as an
    /// event, so a peer that stays down is not logged at every retry.
    pub(super) fn set(&self, peer: &str, change: Change, detail: String, dialed_by: Option<&str>) {
        let state = match change {
            Change::Dialing => LinkState::Connecting,
            Change::Up => LinkState::Up,
            Change::Lost | Change::DialFailed => LinkState::Down,
            Change::Backoff => LinkState::Backoff,
        };
        let announce = {
            let mut t = self.table.lock().expect("link table lock poisoned");
            let Some(s) = t.get_mut(peer) else { return };
            match change {
                // A connection replacing another (a duplicate) is not the link coming up again.
                Change::Up if s.state == LinkState::Up => {}
                Change::Up => s.ups += 1,
                Change::Lost => s.downs += 1,
                Change::DialFailed => s.dial_failures += 1,
                Change::Dialing | Change::Backoff => {}
            }
            // Retrying a peer that stays down cycles connecting → down → backoff; only the
            // first round is announced.
            match change {
                Change::Up | Change::Lost => s.failing = 0,
                Change::DialFailed => s.failing += 1,
                Change::Dialing | Change::Backoff => {}
            }
            let announce = match change {
                Change::Up | Change::Lost => true,
                Change::Dialing => s.failing == 0,
                Change::DialFailed | Change::Backoff => s.failing == 1,
            };
            s.state = state;
            s.detail = detail.clone();
            s.since = SystemTime::now();
            s.dialed_by = dialed_by.map(str::to_owned);
            announce
        };
        if announce {
            self.events.record(Event::Link {
                peer: peer.to_owned(),
                state: state.as_str(),
                detail,
            });
        } else {
            tracing::debug!(peer, state = state.as_str(), %detail, "peer link still down");
        }
    }

    /// Counts a duplicate connection closed (the link itself stays as it was) and records it.
    pub(super) fn duplicate_closed(&self, peer: &str, reason: String) {
        if let Some(s) = self
            .table
            .lock()
            .expect("link table lock poisoned")
            .get_mut(peer)
        {
            s.duplicates_closed += 1;
        }
        self.events.record(Event::Link {
            peer: peer.to_owned(),
            state: "duplicate-closed",
            detail: reason,
        });
    }

    /// Every peer link's status, by peer name.
    pub fn snapshot(&self) -> Vec<LinkStatus> {
        self.table
            .lock()
            .expect("link table lock poisoned")
            .values()
            .cloned()
            .collect()
    }
}
