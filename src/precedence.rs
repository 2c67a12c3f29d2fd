//! How urgent a message is ([`Precedence`]) and what kind of traffic it is ([`Status`]), with
//! their protobuf forms. Pure values.

use std::fmt;

use crate::wire::pb;

/// Precedence, ordered so that a more urgent level compares greater.
///
/// FLASH, IMMEDIATE and PRIORITY are time-sensitive: they travel one per stream, ahead of
/// everything else; ROUTINE and BULK are analytical traffic.
///
/// ```
/// use enlace::Precedence;
///
/// assert!(Precedence::Flash > Precedence::Routine);
/// assert!(Precedence::Priority.is_time_sensitive());
/// assert_eq!("flash".parse::<Precedence>(), Ok(Precedence::Flash));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Precedence {
    /// The least urgent analytical level, for high-volume feeds (`enlace send --bulk`): served
    /// after everything else.
    Bulk,
    /// Ordinary analytical traffic, and the default of a [`Draft`](crate::Draft).
    Routine,
    /// The least urgent time-sensitive level: still ahead of all analytical traffic.
    Priority,
    /// Time-sensitive, ahead of PRIORITY.
    Immediate,
    /// The most urgent level, ahead of everything else (e.g. a precursor alert whose shipment
    /// is about to arrive).
    Flash,
}

impl Precedence {
    /// All levels, most urgent first.
    ///
    /// ```
    /// use enlace::Precedence;
    ///
    /// assert_eq!(Precedence::ALL[0], Precedence::Flash);
    /// assert!(Precedence::ALL.is_sorted_by(|a, b| a > b));
    /// ```
    pub const ALL: [Precedence; 5] = [
        Precedence::Flash,
        Precedence::Immediate,
        Precedence::Priority,
        Precedence::Routine,
        Precedence::Bulk,
    ];

    /// FLASH, IMMEDIATE and PRIORITY are time-sensitive: they travel one per stream, ahead of
    /// ROUTINE and BULK.
    ///
    /// ```
    /// use enlace::Precedence;
    ///
    /// assert!(Precedence::Immediate.is_time_sensitive());
    /// assert!(!Precedence::Routine.is_time_sensitive());
    /// ```
    pub fn is_time_sensitive(self) -> bool {
        self >= Precedence::Priority
    }

    /// The level a protobuf precedence names; `None` for `UNSPECIFIED`.
    pub(crate) fn from_pb(p: pb::Precedence) -> Option<Precedence> {
        Some(match p {
            pb::Precedence::Flash => Precedence::Flash,
            pb::Precedence::Immediate => Precedence::Immediate,
            pb::Precedence::Priority => Precedence::Priority,
            pb::Precedence::Routine => Precedence::Routine,
            pb::Precedence::Bulk => Precedence::Bulk,
            pb::Precedence::Unspecified => return None,
        })
    }

    pub(crate) fn to_pb(self) -> pb::Precedence {
        match self {
            Precedence::Flash => pb::Precedence::Flash,
            Precedence::Immediate => pb::Precedence::Immediate,
            Precedence::Priority => pb::Precedence::Priority,
            Precedence::Routine => pb::Precedence::Routine,
            Precedence::Bulk => pb::Precedence::Bulk,
        }
    }

    /// The level's name in capitals, e.g. `FLASH` (also what [`Display`](fmt::Display) prints).
    ///
    /// ```
    /// assert_eq!(enlace::Precedence::Immediate.as_str(), "IMMEDIATE");
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            Precedence::Flash => "FLASH",
            Precedence::Immediate => "IMMEDIATE",
            Precedence::Priority => "PRIORITY",
            Precedence::Routine => "ROUTINE",
            Precedence::Bulk => "BULK",
        }
    }

    /// QUIC stream priority for this level: more urgent is sent first.
    pub(crate) fn stream_priority(self) -> i32 {
        match self {
            Precedence::Flash => 100,
            Precedence::Immediate => 80,
            Precedence::Priority => 60,
            Precedence::Routine => 20,
            Precedence::Bulk => 0,
        }
    }
}

/// A string that is not a precedence level.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a precedence: use FLASH, IMMEDIATE, PRIORITY, ROUTINE or BULK")]
pub struct BadPrecedence(pub String);

impl std::str::FromStr for Precedence {
    type Err = BadPrecedence;

    /// Parses a level name, case-insensitively.
    fn from_str(s: &str) -> Result<Precedence, BadPrecedence> {
        Precedence::ALL
            .into_iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| BadPrecedence(s.to_owned()))
    }
}

impl fmt::Display for Precedence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What kind of traffic a message is: exercise and test traffic never looks operational.
///
/// ```
/// use enlace::Status;
///
/// assert_eq!("exercise".parse::<Status>(), Ok(Status::Exercise));
/// assert_eq!(Status::Actual.to_string(), "ACTUAL");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    /// Real operational traffic.
    Actual,
    /// Traffic of an exercise.
    Exercise,
    /// Technical test traffic.
    Test,
    /// Traffic nodes generate themselves: receipts, non-delivery reports, overdue notices.
    System,
}

impl Status {
    pub(crate) fn from_pb(s: pb::Status) -> Option<Status> {
        Some(match s {
            pb::Status::Actual => Status::Actual,
            pb::Status::Exercise => Status::Exercise,
            pb::Status::Test => Status::Test,
            pb::Status::System => Status::System,
            pb::Status::Unspecified => return None,
        })
    }

    pub(crate) fn to_pb(self) -> pb::Status {
        match self {
            Status::Actual => pb::Status::Actual,
            Status::Exercise => pb::Status::Exercise,
            Status::Test => pb::Status::Test,
            Status::System => pb::Status::System,
        }
    }

    /// The status in capitals, e.g. `EXERCISE`.
    ///
    /// ```
    /// assert_eq!(enlace::Status::Test.as_str(), "TEST");
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Actual => "ACTUAL",
            Status::Exercise => "EXERCISE",
            Status::Test => "TEST",
            Status::System => "SYSTEM",
        }
    }
}

/// A string that is not a status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a status: use ACTUAL, EXERCISE, TEST or SYSTEM")]
pub struct BadStatus(pub String);

impl std::str::FromStr for Status {
    type Err = BadStatus;

    fn from_str(s: &str) -> Result<Status, BadStatus> {
        [
            Status::Actual,
            Status::Exercise,
            Status::Test,
            Status::System,
        ]
        .into_iter()
        .find(|x| x.as_str().eq_ignore_ascii_case(s))
        .ok_or_else(|| BadStatus(s.to_owned()))
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precedence_orders_flash_first() {
        assert!(Precedence::Flash > Precedence::Immediate);
        assert!(Precedence::Routine > Precedence::Bulk);
        assert!(Precedence::Priority.is_time_sensitive());
        assert!(!Precedence::Routine.is_time_sensitive());
        assert_eq!("flash".parse(), Ok(Precedence::Flash));
        assert!("urgent".parse::<Precedence>().is_err());
        assert!(Precedence::Flash.stream_priority() > Precedence::Bulk.stream_priority());
        assert_eq!("system".parse(), Ok(Status::System));
    }
}
