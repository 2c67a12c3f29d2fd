//! The rules of peer links: when to dial again, and which connection survives when two nodes
//! dial each other at once.
//!
//! Sans-I/O: the link task in `node::link` owns the connections and the timers; it asks this
//! module what to do. Randomness (the jitter) is a parameter, so the rules are tested with fixed
//! values.

use std::time::Duration;

/// Shortest wait before dialing a peer again after a failed dial.
pub(crate) const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest wait between dials of a peer that stays down.
pub(crate) const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Jittered exponential backoff between dials of one peer.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff { next: BACKOFF_MIN }
    }
}

impl Backoff {
    /// The wait before the next dial after a failed one, and the base of the one after, doubled
    /// up to [`BACKOFF_MAX`]. `random` in `0.0..=1.0` spreads the wait over ±25 %, so that many
    /// nodes do not retry in step.
    pub fn failed(&mut self, random: f64) -> Duration {
        let wait = self.next.mul_f64(0.75 + 0.5 * random.clamp(0.0, 1.0));
        self.next = (self.next * 2).min(BACKOFF_MAX);
        wait
    }

    /// A dial succeeded, or the link was lost after being up: start again from the minimum.
    pub fn reset(&mut self) {
        self.next = BACKOFF_MIN;
    }
}

/// Who dialed a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialer {
    Me,
    Peer,
}

/// Whether the connection in use survives a new one to the same peer.
///
/// Both nodes decide alike: **the connection dialed by the node whose name sorts first wins**
/// (`my_dials_win` is true on that node). Between two connections of the same dialer, the newer
/// one wins: that side dialed again because it gave the older one up. And a current connection
/// that no longer answers a probe (`current_alive` false: the peer restarted) always loses.
pub(crate) fn keep_current(
    my_dials_win: bool,
    current: Dialer,
    new: Dialer,
    current_alive: bool,
) -> bool {
    let wins = |d: Dialer| (d == Dialer::Me) == my_dials_win;
    wins(current) && !wins(new) && current_alive
}

/// Whether a probe of the current connection is needed to decide (it is only when the rule
/// would keep it).
pub(crate) fn needs_probe(my_dials_win: bool, current: Dialer, new: Dialer) -> bool {
    keep_current(my_dials_win, current, new, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap_and_resets() {
        let mut b = Backoff::default();
        assert_eq!(b.failed(0.5), Duration::from_millis(100));
        assert_eq!(b.failed(0.0), Duration::from_millis(150));
        assert_eq!(b.failed(1.0), Duration::from_millis(500));
        for _ in 0..20 {
            b.failed(0.5);
        }
        assert_eq!(b.failed(0.5), BACKOFF_MAX);
        assert_eq!(b.failed(1.0), BACKOFF_MAX.mul_f64(1.25));
        b.reset();
        assert_eq!(b.failed(0.5), BACKOFF_MIN);
    }

    #[test]
    fn the_dial_of_the_node_that_sorts_first_survives_on_both_sides() {
        use Dialer::{Me, Peer};
        // dea-1 < pgr-1: dea-1's dials win. Seen from dea-1 (my dials win) and from pgr-1.
        // dea-1 holds its own dial and gets pgr-1's: keeps its own.
        assert!(keep_current(true, Me, Peer, true));
        // pgr-1 holds its own dial and gets dea-1's: gives its own up.
        assert!(!keep_current(false, Me, Peer, true));
        // pgr-1 holds dea-1's dial and dials too: keeps dea-1's.
        assert!(keep_current(false, Peer, Me, true));
        // dea-1 holds pgr-1's dial and dials too: takes its own.
        assert!(!keep_current(true, Peer, Me, true));
        // The same dialer again: the newer one.
        assert!(!keep_current(true, Me, Me, true));
        assert!(!keep_current(false, Peer, Peer, true));
        // A winning current connection that no longer answers (the peer restarted) loses.
        assert!(!keep_current(true, Me, Peer, false));
        assert!(needs_probe(true, Me, Peer) && !needs_probe(true, Peer, Me));
    }
}
