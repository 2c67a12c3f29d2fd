//! Mailbox addresses inside an agency: its inbox, or one of its units.
//!
//! An addressee is an agency plus a [`Mailbox`]; a client reads mailboxes of its own agency. Unit
//! names follow the same rule as agency ids (lowercase letters, digits and `-`), so a mailbox
//! can always be written as `agency/unit`. Pure values: no I/O, no policy (who may read which
//! mailbox is decided by the node).

use std::fmt;

use crate::identity::is_name;

/// A mailbox of an agency: its inbox, or a named unit (a desk, a team, a role).
///
/// ```
/// use enlace::Mailbox;
///
/// let desk: Mailbox = "24x7-desk".parse().unwrap();
/// assert_eq!(desk, Mailbox::unit("24x7-desk").unwrap());
/// assert_eq!(desk.to_string(), "24x7-desk");
/// assert_eq!(Mailbox::Inbox.to_string(), "(inbox)");
/// assert!(Mailbox::unit("Not a unit").is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Mailbox {
    /// The agency's inbox: messages addressed to the agency as a whole.
    Inbox,
    /// A named unit of the agency.
    Unit(Unit),
}

/// A unit name: 1 to 63 lowercase letters, digits and `-`, not starting or ending with `-`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Unit(String);

impl Unit {
    /// The unit's name, e.g. `24x7-desk`.
    ///
    /// ```
    /// use enlace::Mailbox;
    ///
    /// let Mailbox::Unit(unit) = Mailbox::unit("24x7-desk").unwrap() else { unreachable!() };
    /// assert_eq!(unit.as_str(), "24x7-desk");
    /// ```
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Unit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A name that cannot be a unit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a unit name (1 to 63 lowercase letters, digits and '-')")]
pub struct BadUnit(pub String);

impl Mailbox {
    /// The mailbox of a named unit.
    ///
    /// ```
    /// use enlace::Mailbox;
    ///
    /// let desk = Mailbox::unit("24x7-desk").unwrap();
    /// assert_eq!(desk.to_string(), "24x7-desk");
    /// assert!(Mailbox::unit("-desk").is_err());
    /// ```
    ///
    /// # Errors
    /// [`BadUnit`] when `name` is not a valid unit name.
    pub fn unit(name: &str) -> Result<Mailbox, BadUnit> {
        if is_name(name) {
            Ok(Mailbox::Unit(Unit(name.to_owned())))
        } else {
            Err(BadUnit(name.chars().take(80).collect()))
        }
    }

    /// The unit's name, or "" for the inbox: the form the protocol carries.
    pub(crate) fn wire_name(&self) -> &str {
        match self {
            Mailbox::Inbox => "",
            Mailbox::Unit(u) => u.as_str(),
        }
    }

    /// The mailbox a protocol field names ("" is the inbox).
    pub(crate) fn from_wire(name: &str) -> Result<Mailbox, BadUnit> {
        match name {
            "" => Ok(Mailbox::Inbox),
            u => Mailbox::unit(u),
        }
    }

    /// `agency` or `agency/unit`.
    pub(crate) fn address(&self, agency: &str) -> String {
        match self {
            Mailbox::Inbox => agency.to_owned(),
            Mailbox::Unit(u) => format!("{agency}/{u}"),
        }
    }
}

impl std::str::FromStr for Mailbox {
    type Err = BadUnit;

    /// Parses a unit name (the inbox has none: use [`Mailbox::Inbox`]).
    fn from_str(s: &str) -> Result<Mailbox, BadUnit> {
        Mailbox::unit(s)
    }
}

impl fmt::Display for Mailbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mailbox::Inbox => f.write_str("(inbox)"),
            Mailbox::Unit(u) => f.write_str(u.as_str()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_names_round_trip() {
        assert_eq!(Mailbox::from_wire(""), Ok(Mailbox::Inbox));
        let u = Mailbox::unit("analyst").unwrap();
        assert_eq!(Mailbox::from_wire(u.wire_name()), Ok(u.clone()));
        assert_eq!(u.address("cenapi"), "cenapi/analyst");
        assert_eq!(Mailbox::Inbox.address("cenapi"), "cenapi");
        assert!(Mailbox::from_wire("-bad").is_err());
    }
}
