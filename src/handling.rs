//! The handling conditions a message carries ([`Handling`]), and what they allow: who may see a
//! copy on its way (the scope of its TLP label) and how conditions combine (the strictest wins).
//!
//! Sans-I/O and pure. The envelope's `HandlingPolicy` is read once, when the message is parsed;
//! foreign codes (Europol H-codes, UK 3x5x2) travel losslessly as (scheme, code) pairs and are
//! given their meaning by a node's policy file ([`crate::agreement`]), never here.
//!
//! FIRST TLP 2.0, as Enlace applies it to nodes: RED is for the named recipients only and
//! AMBER+STRICT for the recipient agencies only, so neither may pass a relay of an agency that
//! is not an addressee; AMBER, GREEN and CLEAR may be relayed. A recipient never forwards a
//! message: it can only send a new one derived from it, and then the source's label limits who
//! that derived message may go to ([`Handling::onward_scope`]).

use std::fmt;
use std::time::SystemTime;

use crate::wire::pb;

/// A FIRST TLP 2.0 label, ordered from the most restrictive (RED) to the most permissive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Tlp {
    /// For the named recipients only.
    Red,
    /// For the recipient agencies only.
    AmberStrict,
    /// For the recipient agencies and those they must inform.
    Amber,
    /// For the community (every agency of the federation).
    Green,
    /// For anyone.
    Clear,
}

impl Tlp {
    /// Every label, most restrictive first.
    pub const ALL: [Tlp; 5] = [
        Tlp::Red,
        Tlp::AmberStrict,
        Tlp::Amber,
        Tlp::Green,
        Tlp::Clear,
    ];

    /// The label's name as TLP 2.0 writes it (`TLP:` left out): `RED`, `AMBER+STRICT`...
    pub fn as_str(self) -> &'static str {
        match self {
            Tlp::Red => "RED",
            Tlp::AmberStrict => "AMBER+STRICT",
            Tlp::Amber => "AMBER",
            Tlp::Green => "GREEN",
            Tlp::Clear => "CLEAR",
        }
    }

    /// Parses `RED`, `AMBER+STRICT` (or `AMBER_STRICT`), `AMBER`, `GREEN`, `CLEAR`, with or
    /// without `TLP:`, in any case.
    pub fn parse(s: &str) -> Option<Tlp> {
        let s = s.trim();
        let s = s
            .get(..4)
            .filter(|p| p.eq_ignore_ascii_case("tlp:"))
            .map_or(s, |_| &s[4..]);
        let s = s.replace('_', "+");
        Tlp::ALL
            .into_iter()
            .find(|t| t.as_str().eq_ignore_ascii_case(&s))
    }

    /// An unlabelled message is handled as TLP:AMBER: its recipients' agencies and those they
    /// must inform, never the community.
    fn from_pb(t: pb::TlpLabel) -> Tlp {
        match t {
            pb::TlpLabel::Red => Tlp::Red,
            pb::TlpLabel::AmberStrict => Tlp::AmberStrict,
            pb::TlpLabel::Amber | pb::TlpLabel::Unspecified => Tlp::Amber,
            pb::TlpLabel::Green => Tlp::Green,
            pb::TlpLabel::Clear => Tlp::Clear,
        }
    }
}

impl fmt::Display for Tlp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TLP:{}", self.as_str())
    }
}

/// Whether an action (onward dissemination, judicial use, operational action) needs the
/// originator's consent, ordered from the most permissive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Permission {
    /// Allowed without asking.
    Allowed,
    /// Only with the originator's recorded consent.
    Consent,
    /// Not allowed.
    Denied,
}

impl Permission {
    /// `allowed`, `consent`, `denied`.
    pub fn as_str(self) -> &'static str {
        match self {
            Permission::Allowed => "allowed",
            Permission::Consent => "consent",
            Permission::Denied => "denied",
        }
    }

    /// Parses `allowed`, `consent` (or `originator_consent`) and `denied`, in any case.
    pub fn parse(s: &str) -> Option<Permission> {
        match s.to_ascii_lowercase().as_str() {
            "allowed" => Some(Permission::Allowed),
            "consent" | "originator_consent" | "originator-consent" => Some(Permission::Consent),
            "denied" | "prohibited" => Some(Permission::Denied),
            _ => None,
        }
    }

    /// Unspecified means allowed: the label alone then limits who may see the message.
    fn from_pb(p: pb::Permission) -> Permission {
        match p {
            pb::Permission::Unspecified | pb::Permission::Allowed => Permission::Allowed,
            pb::Permission::OriginatorConsent => Permission::Consent,
            pb::Permission::Denied => Permission::Denied,
        }
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A foreign handling code, kept as the envelope carries it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NativeCode {
    /// The scheme, e.g. `europol` or `uk-3x5x2`, compared without case.
    pub scheme: String,
    /// The code in that scheme, e.g. `H2`, compared without case.
    pub code: String,
}

impl fmt::Display for NativeCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.scheme, self.code)
    }
}

/// The handling conditions of a message: its `HandlingPolicy`, read once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handling {
    /// The TLP label (an envelope without one is TLP:AMBER).
    pub tlp: Tlp,
    /// Foreign handling codes, as the envelope carries them (lower case).
    pub native: Vec<NativeCode>,
    /// `max_hops`: relay nodes allowed between the originator's node and the node that serves
    /// an addressee (`None`: no limit beyond the nodes' own).
    pub max_relays: Option<u32>,
    /// Whether recipients may pass it on, in products derived from it.
    pub onward: Permission,
    /// Whether it may be used in judicial proceedings.
    pub judicial: Permission,
    /// Whether it may be acted on operationally.
    pub operational: Permission,
    /// What it may be used for ("" when unstated).
    pub purpose: String,
    /// When recipients must erase it; queued copies are purged then.
    pub retain_until: Option<SystemTime>,
}

impl Default for Handling {
    /// What an envelope without a `HandlingPolicy` gets: TLP:AMBER, everything else allowed.
    fn default() -> Handling {
        Handling::from_pb(None)
    }
}

impl Handling {
    /// Reads an envelope's handling policy (absent: TLP:AMBER, everything allowed).
    pub fn from_pb(h: Option<&pb::HandlingPolicy>) -> Handling {
        let Some(h) = h else {
            return Handling {
                tlp: Tlp::Amber,
                native: Vec::new(),
                max_relays: None,
                onward: Permission::Allowed,
                judicial: Permission::Allowed,
                operational: Permission::Allowed,
                purpose: String::new(),
                retain_until: None,
            };
        };
        Handling {
            tlp: Tlp::from_pb(h.tlp()),
            native: h
                .native_codes
                .iter()
                .map(|c| NativeCode {
                    scheme: c.scheme.to_ascii_lowercase(),
                    code: c.code.to_ascii_lowercase(),
                })
                .collect(),
            max_relays: h.max_hops,
            onward: Permission::from_pb(h.onward_dissemination()),
            judicial: Permission::from_pb(h.judicial_use()),
            operational: Permission::from_pb(h.operational_action()),
            purpose: h.purpose.clone(),
            retain_until: h
                .retain_until
                .as_ref()
                .and_then(crate::message::system_time),
        }
    }

    /// The conditions that satisfy both: the stricter label, the stricter permissions, the
    /// lower hop limit, the earlier erasure; the native codes of both; `self`'s purpose (or the
    /// other's, when `self` states none).
    pub fn strictest(&self, other: &Handling) -> Handling {
        let mut native = self.native.clone();
        for c in &other.native {
            if !native.contains(c) {
                native.push(c.clone());
            }
        }
        Handling {
            tlp: self.tlp.min(other.tlp),
            native,
            max_relays: match (self.max_relays, other.max_relays) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            },
            onward: self.onward.max(other.onward),
            judicial: self.judicial.max(other.judicial),
            operational: self.operational.max(other.operational),
            purpose: if self.purpose.is_empty() {
                other.purpose.clone()
            } else {
                self.purpose.clone()
            },
            retain_until: match (self.retain_until, other.retain_until) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            },
        }
    }

    /// Whether a node of `agency` may hold a copy on its way to `addressees` (agency ids): RED
    /// and AMBER+STRICT only at the addressees' own nodes (and the originator's), the rest at
    /// any relay. `Err` says why not.
    pub fn may_transit(
        &self,
        agency: &str,
        originator: &str,
        addressees: &[&str],
    ) -> Result<(), String> {
        if self.tlp > Tlp::AmberStrict || agency == originator || addressees.contains(&agency) {
            return Ok(());
        }
        Err(format!(
            "{} is for its addressees' agencies only, and {agency} is not one of them: it may \
             not pass this relay",
            self.tlp
        ))
    }

    /// Whether a product derived from a message with these conditions may go to `to`, sent by
    /// `deriver`: the source's originator and the source's own addressees may always get it;
    /// others as the label and onward dissemination allow. `must_inform` lists the agencies
    /// the deriving agency must inform (its TLP:AMBER circle); `federation` says whether `to`
    /// belongs to the community (has an agreement with the deriver).
    pub fn onward_scope(&self, to: &Onward<'_>) -> Scope {
        if to.agency == to.source_originator || to.source_addressees.iter().any(|a| a == to.agency)
        {
            return Scope::Within;
        }
        let label = match self.tlp {
            Tlp::Red | Tlp::AmberStrict => to.agency == to.deriver,
            Tlp::Amber => to.agency == to.deriver || to.must_inform.iter().any(|a| a == to.agency),
            Tlp::Green => to.federation,
            Tlp::Clear => true,
        };
        match (label, self.onward) {
            (_, Permission::Denied) => Scope::Prohibited(format!(
                "onward dissemination of the source is prohibited; {} may not get it",
                to.agency
            )),
            (true, Permission::Allowed) => Scope::Within,
            (true, Permission::Consent) => Scope::NeedsConsent(format!(
                "onward dissemination of the source needs its originator's consent ({} \
                 has not released it to {})",
                to.source_originator, to.agency
            )),
            (false, _) => Scope::NeedsConsent(format!(
                "the source is {}: {} is outside its scope without its originator's release",
                self.tlp, to.agency
            )),
        }
    }
}

/// Who a derived product is going to, relative to one of its sources.
#[derive(Debug, Clone)]
pub struct Onward<'a> {
    /// The agency the derived product is addressed to.
    pub agency: &'a str,
    /// The agency deriving (the derived product's originator).
    pub deriver: &'a str,
    /// The source's originator agency.
    pub source_originator: &'a str,
    /// The source's addressee agencies.
    pub source_addressees: &'a [String],
    /// The deriving agency's TLP:AMBER circle.
    pub must_inform: &'a [String],
    /// Whether `agency` is of the community (the deriver has an agreement with it).
    pub federation: bool,
}

/// Whether a derived product may reach an agency, as far as one source is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Yes.
    Within,
    /// Only with the source's originator's release (a dissemination decision); why.
    NeedsConsent(String),
    /// Never; why.
    Prohibited(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tlp(t: Tlp) -> Handling {
        Handling {
            tlp: t,
            ..Handling::default()
        }
    }

    #[test]
    fn labels_parse_in_any_spelling_and_order_from_strict_to_permissive() {
        assert_eq!(Tlp::parse("TLP:AMBER+STRICT"), Some(Tlp::AmberStrict));
        assert_eq!(Tlp::parse("amber_strict"), Some(Tlp::AmberStrict));
        assert_eq!(Tlp::parse("red"), Some(Tlp::Red));
        assert_eq!(Tlp::parse("white"), None);
        assert!(Tlp::Red < Tlp::AmberStrict && Tlp::Amber < Tlp::Green && Tlp::Green < Tlp::Clear);
        assert_eq!(Tlp::AmberStrict.to_string(), "TLP:AMBER+STRICT");
        assert_eq!(
            Permission::parse("originator_consent"),
            Some(Permission::Consent)
        );
    }

    #[test]
    fn an_envelope_without_handling_is_amber_and_codes_are_kept() {
        assert_eq!(Handling::from_pb(None).tlp, Tlp::Amber);
        let h = Handling::from_pb(Some(&pb::HandlingPolicy {
            tlp: pb::TlpLabel::Red as i32,
            native_codes: vec![pb::NativeHandlingCode {
                scheme: "Europol".into(),
                code: "H3".into(),
            }],
            max_hops: Some(0),
            onward_dissemination: pb::Permission::OriginatorConsent as i32,
            ..Default::default()
        }));
        assert_eq!(h.tlp, Tlp::Red);
        assert_eq!(h.max_relays, Some(0));
        assert_eq!(h.onward, Permission::Consent);
        assert_eq!(h.native[0].to_string(), "europol:h3");
    }

    #[test]
    fn the_strictest_of_two_takes_the_stricter_of_each_condition() {
        let a = Handling {
            tlp: Tlp::Green,
            max_relays: Some(3),
            onward: Permission::Consent,
            purpose: "interdiction".into(),
            ..Handling::default()
        };
        let b = Handling {
            tlp: Tlp::AmberStrict,
            max_relays: None,
            judicial: Permission::Denied,
            retain_until: Some(SystemTime::UNIX_EPOCH),
            ..Handling::default()
        };
        let s = a.strictest(&b);
        assert_eq!(s.tlp, Tlp::AmberStrict);
        assert_eq!(s.max_relays, Some(3));
        assert_eq!(s.onward, Permission::Consent);
        assert_eq!(s.judicial, Permission::Denied);
        assert_eq!(s.purpose, "interdiction");
        assert_eq!(s.retain_until, Some(SystemTime::UNIX_EPOCH));
        assert_eq!(s, b.strictest(&a).with_purpose("interdiction"));
    }

    impl Handling {
        fn with_purpose(mut self, p: &str) -> Handling {
            self.purpose = p.into();
            self
        }
    }

    #[test]
    fn red_and_amber_strict_never_pass_a_relay_of_another_agency() {
        let to = ["afi"];
        for t in [Tlp::Red, Tlp::AmberStrict] {
            assert!(tlp(t).may_transit("cenapi", "dea", &to).is_err());
            assert!(tlp(t).may_transit("afi", "dea", &to).is_ok());
            assert!(tlp(t).may_transit("dea", "dea", &to).is_ok());
        }
        for t in [Tlp::Amber, Tlp::Green, Tlp::Clear] {
            assert!(tlp(t).may_transit("cenapi", "dea", &to).is_ok());
        }
    }

    #[test]
    fn a_derived_product_reaches_third_agencies_as_the_source_label_allows() {
        let addressees = vec!["cenapi".to_owned()];
        let inform = vec!["sat".to_owned()];
        let onward = |agency: &'static str, federation: bool| Onward {
            agency,
            deriver: "cenapi",
            source_originator: "dea",
            source_addressees: &addressees,
            must_inform: &inform,
            federation,
        };
        // Back to the originator, or to the source's own addressees: always.
        for t in Tlp::ALL {
            assert_eq!(tlp(t).onward_scope(&onward("dea", true)), Scope::Within);
            assert_eq!(tlp(t).onward_scope(&onward("cenapi", true)), Scope::Within);
        }
        let pgr = onward("pgr", true);
        assert!(matches!(
            tlp(Tlp::Red).onward_scope(&pgr),
            Scope::NeedsConsent(_)
        ));
        assert!(matches!(
            tlp(Tlp::AmberStrict).onward_scope(&pgr),
            Scope::NeedsConsent(_)
        ));
        assert!(matches!(
            tlp(Tlp::Amber).onward_scope(&pgr),
            Scope::NeedsConsent(_)
        ));
        assert_eq!(
            tlp(Tlp::Amber).onward_scope(&onward("sat", true)),
            Scope::Within
        );
        assert_eq!(tlp(Tlp::Green).onward_scope(&pgr), Scope::Within);
        assert!(matches!(
            tlp(Tlp::Green).onward_scope(&onward("pgr", false)),
            Scope::NeedsConsent(_)
        ));
        assert_eq!(
            tlp(Tlp::Clear).onward_scope(&onward("pgr", false)),
            Scope::Within
        );
        // Onward dissemination: consent needs a release even within the label's scope;
        // prohibited stays prohibited.
        let consent = Handling {
            tlp: Tlp::Clear,
            onward: Permission::Consent,
            ..Handling::default()
        };
        assert!(matches!(consent.onward_scope(&pgr), Scope::NeedsConsent(_)));
        let denied = Handling {
            tlp: Tlp::Clear,
            onward: Permission::Denied,
            ..Handling::default()
        };
        assert!(matches!(denied.onward_scope(&pgr), Scope::Prohibited(_)));
        assert_eq!(denied.onward_scope(&onward("dea", true)), Scope::Within);
    }
}
