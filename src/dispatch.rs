//! Dispatching: what a consumer sends next, and what becomes of each copy after its attempt.
//!
//! A consumer is a subscribed client reading a mailbox, or a peer link forwarding an outbox. Both
//! send time-sensitive copies (FLASH, IMMEDIATE, PRIORITY) one per stream and analytical copies
//! (ROUTINE, BULK) pipelined on one stream, each class within a window of copies in flight of its
//! own, so that analytical traffic never holds a slot an alert needs. [`Dispatcher::next`] takes
//! the next copy from the queue's [`Lanes`] given the windows in flight: from every lane when both
//! windows have room (so the lanes' minimum share for lower lanes holds), from one class when
//! only its window has room, from none when both are full. [`Dispatcher::settle`] frees the
//! copy's slot and says what to do with it after its attempt's [`Outcome`] (finish it, put it
//! back, defer it, retry it with backoff, dead-letter it, or give it up with a non-delivery
//! report).
//!
//! A peer link also keeps the outbox's order across classes on the wire: an analytical copy is
//! released to the pipeline only once the peer has answered every alert taken before it
//! ([`Ticket::barrier`], [`Dispatcher::released`]), so after an outage the alerts reach the peer
//! before the backlog queued behind them.
//!
//! Sans-I/O: no tasks, no sockets, no clock of its own; the time is a parameter. The async loops
//! in `node::deliver` and `node::forward` own a dispatcher each and do what it says.

use std::time::{Duration, SystemTime};

use crate::lanes::{Class, ColdItem, Entry, Lanes};
use crate::message::Precedence;
use crate::wire::pb::{self, RefusalCode};

/// Copies in flight a consumer may have, per class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Windows {
    /// Time-sensitive copies in flight (each on its own stream).
    pub alerts: usize,
    /// Analytical copies in flight (on the shared stream).
    pub analytical: usize,
}

/// Unacknowledged deliveries per subscribed client: 64 alerts, 256 analytical copies.
pub(crate) const CLIENT_WINDOWS: Windows = Windows {
    alerts: 64,
    analytical: 256,
};

/// Unanswered forwards per peer link: 64 alerts, 1024 analytical copies (the pipeline's byte
/// window bounds the latter further).
pub(crate) const PEER_WINDOWS: Windows = Windows {
    alerts: 64,
    analytical: 1024,
};

/// How long a copy waits after a busy refusal that carries no retry-after.
pub(crate) const BUSY_WAIT: Duration = Duration::from_millis(500);

/// Which window a copy in flight holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Slot {
    Alert,
    Analytical,
}

/// A copy's place in its consumer's windows, from [`Dispatcher::next`] to
/// [`Dispatcher::settle`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ticket {
    pub slot: Slot,
    /// For an analytical copy of an ordered consumer: how many alerts were taken before it. It is
    /// released once that many alerts are settled.
    pub barrier: Option<u64>,
}

/// How one attempt to deliver or forward a copy ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The client acknowledged it, or the peer accepted it.
    Done,
    /// The peer is busy (`QUEUE_FULL`, `SHUTTING_DOWN`): try again after this long, or after
    /// [`BUSY_WAIT`] when it did not say.
    Busy(Option<Duration>),
    /// The peer refused it for good.
    Refused { code: RefusalCode, reason: String },
    /// The client did not acknowledge it within the ack timeout.
    TimedOut,
    /// The client did not acknowledge a time-sensitive copy within the alert deadline: the copy
    /// goes back for another reader (no attempt counted), and this consumer gets no more
    /// time-sensitive copies until [`Dispatcher::resume_alerts`].
    Late,
    /// Its stream failed while the connection lived on.
    Failed(String),
    /// The connection went away: not the message's fault.
    Lost,
}

/// What to do with a copy after an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action {
    /// It is done: acknowledged, or accepted by the peer.
    Finish,
    /// Back to the head of its lane, no attempt counted.
    Return,
    /// Parked until then, no attempt counted.
    Defer(SystemTime),
    /// The attempt counted; parked until `at` for the next one.
    Retry {
        at: SystemTime,
        attempts: u32,
        reason: String,
    },
    /// Too many attempts failed: to the queue's dead letters, for an operator.
    DeadLetter { attempts: u32, reason: String },
    /// It will never get there: finished, and its originator told why.
    Undeliverable {
        why: pb::NonDeliveryReason,
        code: RefusalCode,
        reason: String,
    },
}

/// Redelivery policy: exponential backoff from `base`, capped at `max_delay`, and a dead letter
/// after `max_attempts` attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RetryPolicy {
    pub base: Duration,
    pub max_delay: Duration,
    pub max_attempts: u32,
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy {
            base: Duration::from_secs(1),
            max_delay: Duration::from_secs(60),
            max_attempts: 10,
        }
    }
}

impl RetryPolicy {
    /// The delay before the next attempt after `attempts` failed ones (1 after the first
    /// failure), or `None` to give up.
    pub fn delay(&self, attempts: u32) -> Option<Duration> {
        if attempts >= self.max_attempts {
            return None;
        }
        let factor = 1u32 << attempts.saturating_sub(1).min(16);
        Some((self.base * factor).min(self.max_delay))
    }
}

/// The non-delivery reason a peer's refusal code means for the originator.
pub(crate) fn non_delivery_reason(code: RefusalCode) -> pb::NonDeliveryReason {
    match code {
        RefusalCode::Expired => pb::NonDeliveryReason::Expired,
        RefusalCode::Revoked => pb::NonDeliveryReason::Revoked,
        RefusalCode::PolicyDenied => pb::NonDeliveryReason::PolicyDenied,
        RefusalCode::UnknownRecipient => pb::NonDeliveryReason::UnknownRecipient,
        RefusalCode::Invalid | RefusalCode::Malformed | RefusalCode::TooLarge => {
            pb::NonDeliveryReason::Invalid
        }
        _ => pb::NonDeliveryReason::Refused,
    }
}

/// What [`Dispatcher::next`] found (`S`: the copy to send).
#[derive(Debug)]
pub(crate) enum Next<S> {
    /// Send this copy now.
    Send(S, Ticket),
    /// Nothing to send: wait for the queue to change, or until `wake_at` (a parked copy falls
    /// due), or for a copy in flight to settle.
    Wait { wake_at: Option<SystemTime> },
    /// Both windows are full: wait for a copy in flight to settle.
    Full,
}

/// One consumer's windows and rules. See the module docs.
#[derive(Debug)]
pub(crate) struct Dispatcher {
    windows: Windows,
    retry: RetryPolicy,
    alerts_in_flight: usize,
    analytical_in_flight: usize,
    /// Keep the queue's order across classes (peer links): see [`Ticket::barrier`].
    ordered: bool,
    alerts_taken: u64,
    alerts_settled: u64,
    /// Set by a [`Outcome::Late`] alert: time-sensitive copies go to other consumers.
    alerts_paused: bool,
}

impl Dispatcher {
    pub fn new(windows: Windows, retry: RetryPolicy, ordered: bool) -> Dispatcher {
        Dispatcher {
            windows,
            retry,
            alerts_in_flight: 0,
            analytical_in_flight: 0,
            ordered,
            alerts_taken: 0,
            alerts_settled: 0,
            alerts_paused: false,
        }
    }

    /// Lets this consumer have time-sensitive copies again after a [`Outcome::Late`] one (its
    /// reader acknowledged the late copy after all: it is slow, not gone).
    pub fn resume_alerts(&mut self) {
        self.alerts_paused = false;
    }

    /// Which lanes may be taken from now, if any.
    pub fn class(&self) -> Option<Class> {
        let alerts = !self.alerts_paused && self.alerts_in_flight < self.windows.alerts;
        let analytical = self.analytical_in_flight < self.windows.analytical;
        match (alerts, analytical) {
            (true, true) => Some(Class::Any),
            (true, false) => Some(Class::TimeSensitive),
            (false, true) => Some(Class::Analytical),
            (false, false) => None,
        }
    }

    /// Takes the next copy to send from `lanes` at `now`, if the windows allow one, among the
    /// copies `accept` takes (those the consumer may have). Expired copies met on the way are
    /// appended to `expired`, for the caller to report.
    pub fn next<T, C: ColdItem>(
        &mut self,
        lanes: &mut Lanes<T, C>,
        now: SystemTime,
        expired: &mut Vec<Entry<T>>,
        accept: impl Fn(&T) -> bool,
    ) -> Next<Entry<T>> {
        let Some(class) = self.class() else {
            return Next::Full;
        };
        let popped = lanes.pop_where(now, class, accept);
        expired.extend(popped.expired);
        match popped.next {
            Some(entry) => {
                let ticket = self.taken(entry.precedence);
                Next::Send(entry, ticket)
            }
            None => Next::Wait {
                wake_at: popped.wake_at,
            },
        }
    }

    /// Counts a copy of precedence `p` in its window.
    fn taken(&mut self, p: Precedence) -> Ticket {
        if p.is_time_sensitive() {
            self.alerts_in_flight += 1;
            self.alerts_taken += 1;
            Ticket {
                slot: Slot::Alert,
                barrier: None,
            }
        } else {
            self.analytical_in_flight += 1;
            Ticket {
                slot: Slot::Analytical,
                barrier: self.ordered.then_some(self.alerts_taken),
            }
        }
    }

    /// Whether an analytical copy with this barrier may go on the wire: every alert taken before
    /// it has been settled.
    pub fn released(&self, barrier: Option<u64>) -> bool {
        barrier.is_none_or(|b| self.alerts_settled >= b)
    }

    /// Frees the window slot of a copy whose attempt ended with `outcome`, and decides what
    /// becomes of it. `attempts` counts the failed attempts before this one.
    pub fn settle(
        &mut self,
        ticket: Ticket,
        outcome: Outcome,
        attempts: u32,
        now: SystemTime,
    ) -> Action {
        match ticket.slot {
            Slot::Alert => {
                self.alerts_in_flight = self.alerts_in_flight.saturating_sub(1);
                self.alerts_settled += 1;
            }
            Slot::Analytical => {
                self.analytical_in_flight = self.analytical_in_flight.saturating_sub(1)
            }
        }
        let failed = |reason: String| {
            let attempts = attempts + 1;
            match self.retry.delay(attempts) {
                Some(delay) => Action::Retry {
                    at: now + delay,
                    attempts,
                    reason,
                },
                None => Action::DeadLetter {
                    attempts,
                    reason: format!("{attempts} attempts failed; last: {reason}"),
                },
            }
        };
        match outcome {
            Outcome::Done => Action::Finish,
            Outcome::Lost => Action::Return,
            Outcome::Busy(after) => Action::Defer(now + after.unwrap_or(BUSY_WAIT)),
            // A busy refusal that came without its retry-after.
            Outcome::Refused { code, .. } if crate::refusal::is_busy(code) => {
                Action::Defer(now + BUSY_WAIT)
            }
            Outcome::Refused { code, reason } => Action::Undeliverable {
                why: non_delivery_reason(code),
                code,
                reason,
            },
            Outcome::TimedOut => failed("did not acknowledge in time".into()),
            Outcome::Late => {
                self.alerts_paused = true;
                Action::Return
            }
            Outcome::Failed(reason) => failed(reason),
        }
    }

    /// Copies in flight, per class (alerts, analytical).
    #[cfg(test)]
    fn in_flight(&self) -> (usize, usize) {
        (self.alerts_in_flight, self.analytical_in_flight)
    }
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;
    use crate::lanes::SHARE_EVERY;

    fn t(s: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(s)
    }

    fn entry(p: Precedence, item: u32) -> Entry<u32> {
        Entry {
            precedence: p,
            expires_at: t(1000),
            item,
        }
    }

    fn small() -> Dispatcher {
        let w = Windows {
            alerts: 2,
            analytical: 3,
        };
        Dispatcher::new(w, RetryPolicy::default(), false)
    }

    fn send<T>(n: Next<Entry<T>>) -> (Entry<T>, Ticket) {
        match n {
            Next::Send(e, t) => (e, t),
            Next::Wait { .. } => panic!("expected a copy, got Wait"),
            Next::Full => panic!("expected a copy, got Full"),
        }
    }

    #[test]
    fn each_class_has_its_own_window() {
        let mut d = small();
        let mut lanes = Lanes::<_>::new(100);
        for i in 0..10 {
            lanes.push(entry(Precedence::Bulk, i)).unwrap();
        }
        let mut expired = Vec::new();
        for _ in 0..3 {
            send(d.next(&mut lanes, t(1), &mut expired, |_| true));
        }
        assert_eq!(d.in_flight(), (0, 3));
        // The analytical window is full: bulk waits, an alert still goes.
        assert_eq!(d.class(), Some(Class::TimeSensitive));
        assert!(matches!(
            d.next(&mut lanes, t(1), &mut expired, |_| true),
            Next::Wait { wake_at: None }
        ));
        lanes.push(entry(Precedence::Flash, 100)).unwrap();
        let (e, ticket) = send(d.next(&mut lanes, t(1), &mut expired, |_| true));
        assert_eq!((e.item, ticket.slot), (100, Slot::Alert));
        // With the alert window full but room for bulk, bulk goes (alerts do not block it).
        lanes.push(entry(Precedence::Flash, 101)).unwrap();
        send(d.next(&mut lanes, t(1), &mut expired, |_| true));
        assert_eq!(d.in_flight(), (2, 3));
        assert!(matches!(
            d.next(&mut lanes, t(1), &mut expired, |_| true),
            Next::Full
        ));
        let a = d.settle(
            Ticket {
                slot: Slot::Analytical,
                barrier: None,
            },
            Outcome::Done,
            0,
            t(1),
        );
        assert_eq!(a, Action::Finish);
        assert_eq!(d.class(), Some(Class::Analytical));
        let (e, _) = send(d.next(&mut lanes, t(1), &mut expired, |_| true));
        assert_eq!(e.item, 3);
        assert!(expired.is_empty());
    }

    #[test]
    fn a_late_alert_goes_back_and_pauses_alerts_for_that_consumer_only() {
        let mut d = small();
        let mut lanes = Lanes::<_>::new(100);
        lanes.push(entry(Precedence::Flash, 1)).unwrap();
        lanes.push(entry(Precedence::Routine, 2)).unwrap();
        let mut expired = Vec::new();
        let (e, ticket) = send(d.next(&mut lanes, t(1), &mut expired, |_| true));
        assert_eq!(e.item, 1);
        // Not acknowledged within the alert deadline: back, no attempt counted.
        assert_eq!(d.settle(ticket, Outcome::Late, 0, t(3)), Action::Return);
        lanes.requeue(e);
        // Analytical copies still flow to it; the alert waits for another consumer.
        assert_eq!(d.class(), Some(Class::Analytical));
        let (e, _) = send(d.next(&mut lanes, t(3), &mut expired, |_| true));
        assert_eq!(e.item, 2);
        assert!(matches!(
            d.next(&mut lanes, t(3), &mut expired, |_| true),
            Next::Wait { .. }
        ));
        let mut other = small();
        let (e, _) = send(other.next(&mut lanes, t(3), &mut expired, |_| true));
        assert_eq!(e.item, 1);
        lanes.requeue(e);
        // The slow reader acknowledged after all: it gets alerts again.
        d.resume_alerts();
        let (e, ticket) = send(d.next(&mut lanes, t(4), &mut expired, |_| true));
        assert_eq!((e.item, ticket.slot), (1, Slot::Alert));
    }

    #[test]
    fn lower_lanes_keep_their_share_on_the_real_path() {
        // A consumer that settles every copy at once, under a flood of alerts with bulk waiting:
        // the path a client or link takes when both windows have room.
        let mut d = Dispatcher::new(CLIENT_WINDOWS, RetryPolicy::default(), false);
        let mut lanes = Lanes::<_>::new(10_000);
        for i in 0..1000 {
            lanes.push(entry(Precedence::Flash, i)).unwrap();
        }
        for i in 0..10 {
            lanes.push(entry(Precedence::Bulk, 5000 + i)).unwrap();
        }
        let mut order = Vec::new();
        let mut expired = Vec::new();
        for _ in 0..(10 * (SHARE_EVERY as usize + 1)) {
            let (e, ticket) = send(d.next(&mut lanes, t(1), &mut expired, |_| true));
            order.push(e.item);
            d.settle(ticket, Outcome::Done, 0, t(1));
        }
        let bulk = order.iter().filter(|i| **i >= 5000).count();
        assert_eq!(bulk, 10, "one bulk copy in every {} taken", SHARE_EVERY + 1);
        let first = order.iter().position(|i| *i >= 5000);
        assert_eq!(first, Some(SHARE_EVERY as usize));
    }

    #[test]
    fn outcomes_become_actions() {
        let mut d = small();
        let alert = Ticket {
            slot: Slot::Alert,
            barrier: None,
        };
        let now = t(10);
        assert_eq!(d.settle(alert, Outcome::Done, 0, now), Action::Finish);
        assert_eq!(d.settle(alert, Outcome::Lost, 3, now), Action::Return);
        assert_eq!(
            d.settle(alert, Outcome::Busy(Some(Duration::from_secs(2))), 0, now),
            Action::Defer(t(12))
        );
        assert_eq!(
            d.settle(alert, Outcome::Busy(None), 0, now),
            Action::Defer(now + BUSY_WAIT)
        );
        assert_eq!(
            d.settle(
                alert,
                Outcome::Refused {
                    code: RefusalCode::QueueFull,
                    reason: "full".into()
                },
                0,
                now
            ),
            Action::Defer(now + BUSY_WAIT)
        );
        // A refusal for good becomes a non-delivery report with the reason it maps to.
        for (code, why) in [
            (RefusalCode::Expired, pb::NonDeliveryReason::Expired),
            (
                RefusalCode::PolicyDenied,
                pb::NonDeliveryReason::PolicyDenied,
            ),
            (
                RefusalCode::UnknownRecipient,
                pb::NonDeliveryReason::UnknownRecipient,
            ),
            (RefusalCode::TooLarge, pb::NonDeliveryReason::Invalid),
            (RefusalCode::Malformed, pb::NonDeliveryReason::Invalid),
            (RefusalCode::Unauthorized, pb::NonDeliveryReason::Refused),
        ] {
            let a = d.settle(
                alert,
                Outcome::Refused {
                    code,
                    reason: "no".into(),
                },
                0,
                now,
            );
            assert_eq!(
                a,
                Action::Undeliverable {
                    why,
                    code,
                    reason: "no".into()
                }
            );
        }
        // Failures count attempts, back off exponentially, then dead-letter.
        assert_eq!(
            d.settle(alert, Outcome::TimedOut, 0, now),
            Action::Retry {
                at: now + Duration::from_secs(1),
                attempts: 1,
                reason: "did not acknowledge in time".into()
            }
        );
        assert!(matches!(
            d.settle(alert, Outcome::Failed("reset".into()), 3, now),
            Action::Retry { at, attempts: 4, .. } if at == now + Duration::from_secs(8)
        ));
        assert_eq!(
            d.settle(alert, Outcome::Failed("reset".into()), 9, now),
            Action::DeadLetter {
                attempts: 10,
                reason: "10 attempts failed; last: reset".into()
            }
        );
    }

    #[test]
    fn retry_policy_backs_off_then_gives_up() {
        let p = RetryPolicy {
            base: Duration::from_secs(1),
            max_delay: Duration::from_secs(5),
            max_attempts: 4,
        };
        assert_eq!(p.delay(1), Some(Duration::from_secs(1)));
        assert_eq!(p.delay(2), Some(Duration::from_secs(2)));
        assert_eq!(p.delay(3), Some(Duration::from_secs(4)));
        assert_eq!(p.delay(4), None);
        let long = RetryPolicy {
            max_attempts: 100,
            ..p
        };
        assert_eq!(long.delay(40), Some(Duration::from_secs(5)));
    }

    #[test]
    fn an_ordered_consumer_releases_analytical_copies_after_the_alerts_before_them() {
        let mut d = Dispatcher::new(PEER_WINDOWS, RetryPolicy::default(), true);
        let mut lanes = Lanes::<_>::new(100);
        let mut expired = Vec::new();
        lanes.push(entry(Precedence::Flash, 1)).unwrap();
        lanes.push(entry(Precedence::Flash, 2)).unwrap();
        lanes.push(entry(Precedence::Routine, 3)).unwrap();
        let (_, a1) = send(d.next(&mut lanes, t(1), &mut expired, |_| true));
        let (_, a2) = send(d.next(&mut lanes, t(1), &mut expired, |_| true));
        let (_, r) = send(d.next(&mut lanes, t(1), &mut expired, |_| true));
        assert_eq!(r.barrier, Some(2));
        assert!(!d.released(r.barrier));
        d.settle(a2, Outcome::Done, 0, t(1));
        assert!(!d.released(r.barrier));
        // Any answer counts, a refusal too: the alert is no longer in the way.
        d.settle(a1, Outcome::Lost, 0, t(1));
        assert!(d.released(r.barrier));
        // An alert taken later does not hold back the copy taken before it.
        lanes.push(entry(Precedence::Flash, 4)).unwrap();
        send(d.next(&mut lanes, t(1), &mut expired, |_| true));
        assert!(d.released(r.barrier));
        // An unordered consumer never holds a copy back.
        let mut u = Dispatcher::new(CLIENT_WINDOWS, RetryPolicy::default(), false);
        lanes.push(entry(Precedence::Flash, 5)).unwrap();
        lanes.push(entry(Precedence::Bulk, 6)).unwrap();
        send(u.next(&mut lanes, t(1), &mut expired, |_| true));
        let (_, b) = send(u.next(&mut lanes, t(1), &mut expired, |_| true));
        assert!(b.barrier.is_none() && u.released(b.barrier));
    }

    #[test]
    fn expired_copies_are_handed_back_and_parked_ones_wake_the_consumer() {
        let mut d = small();
        let mut lanes = Lanes::<_>::new(10);
        lanes
            .push(Entry {
                precedence: Precedence::Flash,
                expires_at: t(5),
                item: 1,
            })
            .unwrap();
        lanes.retry_at(entry(Precedence::Routine, 2), t(20));
        let mut expired = Vec::new();
        match d.next(&mut lanes, t(6), &mut expired, |_| true) {
            Next::Wait { wake_at } => assert_eq!(wake_at, Some(t(20))),
            other => panic!("expected Wait, got {other:?}"),
        }
        assert_eq!(expired.len(), 1);
        let (e, _) = send(d.next(&mut lanes, t(20), &mut expired, |_| true));
        assert_eq!(e.item, 2);
    }
}
