//! The agency directory: stable agency ids, their display names and aliases, and which node serves
//! each agency.
//!
//! Agencies get renamed (AFI became PFM, then CMI; PGR became FGR). An agency keeps its id for
//! life; a new name is a new display name and alias in the config, never a migration of stored
//! messages. [`Directory::resolve`] turns whatever name an addressee uses (id or alias, any case)
//! into the id. Sans-I/O: built once from the config (which checks that no alias collides with
//! another agency's id or alias), then only read. It never rewrites an envelope: resolution
//! happens when a node routes a message.

use std::collections::BTreeMap;

use crate::identity::{AgencyId, is_name};

/// One agency of the directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agency {
    pub id: AgencyId,
    /// The name people know it by today, e.g. "CMI".
    pub display: String,
    /// Other names addressees may use, lowercase, e.g. ["pfm", "cmi"].
    pub aliases: Vec<String>,
    /// The node that serves the agency's clients, when the directory says.
    pub served_by: Option<String>,
}

/// Agencies by id, and every alias to its id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Directory {
    agencies: BTreeMap<AgencyId, Agency>,
    aliases: BTreeMap<String, AgencyId>,
}

/// Why an agency cannot join the directory.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DirectoryError {
    #[error("{0:?} is not a valid alias (letters, digits, '-'; compared without case)")]
    BadAlias(String),
    #[error("alias {alias:?} is already the id or an alias of agency {of}")]
    Collision { alias: String, of: AgencyId },
    #[error("agency {0} is listed twice")]
    Duplicate(AgencyId),
}

impl Directory {
    /// Adds an agency whose id is already reserved in `aliases` (see [`Directory::build`]).
    /// Aliases are compared without case; an alias that is another agency's id or alias is
    /// refused, so every name resolves to exactly one agency.
    fn insert(&mut self, agency: Agency) -> Result<(), DirectoryError> {
        let mut aliases = Vec::new();
        for raw in &agency.aliases {
            let alias = raw.to_ascii_lowercase();
            if !is_name(&alias) {
                return Err(DirectoryError::BadAlias(raw.clone()));
            }
            match self.aliases.get(&alias) {
                // Its own id, or an alias listed twice: it resolves to this agency anyway.
                Some(of) if *of == agency.id => continue,
                Some(of) => {
                    return Err(DirectoryError::Collision {
                        alias,
                        of: of.clone(),
                    });
                }
                None => {}
            }
            self.aliases.insert(alias.clone(), agency.id.clone());
            aliases.push(alias);
        }
        self.agencies
            .insert(agency.id.clone(), Agency { aliases, ..agency });
        Ok(())
    }

    /// Builds a directory; on error, the index of the offending agency and why.
    pub fn build(agencies: Vec<Agency>) -> Result<Directory, (usize, DirectoryError)> {
        let mut d = Directory::default();
        // Every id is a name that resolves to itself: reserve them first, so that an alias can
        // collide with an id listed after it.
        for (i, a) in agencies.iter().enumerate() {
            if d.aliases.insert(a.id.to_string(), a.id.clone()).is_some() {
                return Err((i, DirectoryError::Duplicate(a.id.clone())));
            }
        }
        for (i, a) in agencies.into_iter().enumerate() {
            d.insert(a).map_err(|e| (i, e))?;
        }
        Ok(d)
    }

    /// The agency id an addressee name stands for: an alias or id of the directory (any case),
    /// or else the name itself when it is a valid id (agencies outside the directory are
    /// addressed by id). `None` when the name cannot be an agency id at all.
    pub fn resolve(&self, name: &str) -> Option<AgencyId> {
        let lower = name.to_ascii_lowercase();
        if let Some(id) = self.aliases.get(&lower) {
            return Some(id.clone());
        }
        AgencyId::new(&lower).ok()
    }

    /// Whether `name` is an id or alias of an agency in the directory (any case), so that
    /// [`Directory::resolve`] gives the agency it means everywhere, not a guess.
    pub fn knows(&self, name: &str) -> bool {
        let lower = name.to_ascii_lowercase();
        self.aliases.contains_key(&lower)
            || AgencyId::new(&lower).is_ok_and(|id| self.agencies.contains_key(&id))
    }

    /// The ids of the agencies listed.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.agencies.keys().map(AgencyId::as_str)
    }

    #[cfg(test)]
    /// The directory entry of an agency.
    pub fn get(&self, id: &AgencyId) -> Option<&Agency> {
        self.agencies.get(id)
    }

    #[cfg(test)]
    /// How an agency is shown to people: its display name, or its id.
    pub fn display<'a>(&'a self, id: &'a AgencyId) -> &'a str {
        self.get(id).map_or(id.as_str(), |a| a.display.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agency(id: &str, display: &str, aliases: &[&str]) -> Agency {
        Agency {
            id: AgencyId::new(id).unwrap(),
            display: display.into(),
            aliases: aliases.iter().map(|s| s.to_string()).collect(),
            served_by: None,
        }
    }

    fn mexico() -> Directory {
        Directory::build(vec![
            agency("afi", "CMI", &["PFM", "cmi"]),
            agency("pgr", "FGR", &["fgr"]),
        ])
        .unwrap()
    }

    #[test]
    fn renamed_agencies_resolve_to_their_stable_ids() {
        let d = mexico();
        for name in ["afi", "AFI", "pfm", "PFM", "Cmi"] {
            assert_eq!(d.resolve(name).unwrap().as_str(), "afi", "{name}");
        }
        assert_eq!(d.resolve("FGR").unwrap().as_str(), "pgr");
        assert_eq!(d.resolve("PGR").unwrap().as_str(), "pgr");
        // Outside the directory, a valid id is itself; anything else is no agency.
        assert_eq!(d.resolve("DEA").unwrap().as_str(), "dea");
        assert_eq!(d.resolve("no such/agency"), None);
        assert_eq!(d.display(&AgencyId::new("afi").unwrap()), "CMI");
    }

    #[test]
    fn colliding_aliases_are_refused() {
        let e = Directory::build(vec![
            agency("afi", "CMI", &["pfm"]),
            agency("pgr", "FGR", &["PFM"]),
        ])
        .unwrap_err();
        assert_eq!(e.0, 1);
        assert!(
            matches!(e.1, DirectoryError::Collision { ref alias, ref of } if alias == "pfm" && of.as_str() == "afi")
        );

        // An alias that is another agency's id, even one listed later.
        let e = Directory::build(vec![
            agency("afi", "CMI", &["pgr"]),
            agency("pgr", "FGR", &[]),
        ])
        .unwrap_err();
        assert_eq!(e.0, 0);

        // Its own id as an alias is harmless.
        let d = Directory::build(vec![agency("afi", "CMI", &["AFI", "pfm"])]).unwrap();
        assert_eq!(
            d.get(&AgencyId::new("afi").unwrap()).unwrap().aliases,
            vec!["pfm"]
        );

        let e = Directory::build(vec![agency("afi", "CMI", &["not valid"])]).unwrap_err();
        assert!(matches!(e.1, DirectoryError::BadAlias(_)));

        let e =
            Directory::build(vec![agency("afi", "A", &[]), agency("afi", "B", &[])]).unwrap_err();
        assert!(matches!(e.1, DirectoryError::Duplicate(_)));
    }
}
