//! Routing: which local mailboxes and which peer nodes an admitted message goes to.
//!
//! Sans-I/O. A message from a client must be routable to every addressee, or it is refused
//! (deny by default: an unknown agency is a mistake the sender should hear about at once). A
//! message from a peer node is delivered to the addressees this node serves; the forwarding node
//! sends each peer only the copy it is responsible for.

use crate::identity::AgencyId;
use crate::validate::Refusal;
use crate::wire::pb::RefusalCode;

/// Where copies of one message go.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    /// Units of this node's agency ("" is the agency inbox), without duplicates.
    pub local_units: Vec<String>,
    /// Peer node names, without duplicates.
    pub peers: Vec<String>,
}

impl Plan {
    /// How many destinations (mailboxes and peers) the message goes to.
    pub fn fan_out(&self) -> usize {
        self.local_units.len() + self.peers.len()
    }
}

/// Decides where a message goes.
///
/// `peer_for` names the peer node that serves an agency. `from_peer` is true when a peer node
/// forwarded the message (it is then only delivered locally).
pub fn plan<'a>(
    addressees: &[(AgencyId, String)],
    own_agency: &AgencyId,
    peer_for: impl Fn(&AgencyId) -> Option<&'a str>,
    from_peer: bool,
) -> Result<Plan, Refusal> {
    let mut plan = Plan::default();
    let mut unknown = Vec::new();
    for (agency, unit) in addressees {
        if agency == own_agency {
            if !plan.local_units.contains(unit) {
                plan.local_units.push(unit.clone());
            }
        } else if from_peer {
            // Another node's addressee: the forwarding node routes that copy itself.
        } else if let Some(peer) = peer_for(agency) {
            if !plan.peers.iter().any(|p| p == peer) {
                plan.peers.push(peer.to_owned());
            }
        } else {
            unknown.push(agency.as_str());
        }
    }
    if !unknown.is_empty() {
        return Err(Refusal::new(
            RefusalCode::UnknownRecipient,
            format!("no route to agency {}", unknown.join(", ")),
        ));
    }
    if plan.fan_out() == 0 {
        return Err(Refusal::new(
            RefusalCode::UnknownRecipient,
            format!("this node serves none of the addressees (it serves {own_agency})"),
        ));
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> AgencyId {
        AgencyId::new(s).unwrap()
    }

    fn peers(x: &AgencyId) -> Option<&'static str> {
        match x.as_str() {
            "pgr" => Some("pgr-1"),
            "afi" => Some("afi-1"),
            _ => None,
        }
    }

    #[test]
    fn splits_local_and_peers() {
        let to = [
            (a("pgr"), "".into()),
            (a("dea"), "desk".into()),
            (a("afi"), "".into()),
        ];
        let p = plan(&to, &a("dea"), peers, false).unwrap();
        assert_eq!(p.local_units, vec!["desk".to_string()]);
        assert_eq!(p.peers, vec!["pgr-1".to_string(), "afi-1".to_string()]);
    }

    #[test]
    fn unknown_agency_is_refused() {
        let to = [(a("pgr"), "".into()), (a("fbi"), "".into())];
        let r = plan(&to, &a("dea"), peers, false).unwrap_err();
        assert_eq!(r.code, RefusalCode::UnknownRecipient);
        assert!(r.reason.contains("fbi"));
    }

    #[test]
    fn from_peer_delivers_only_local_copies() {
        let to = [(a("pgr"), "".into()), (a("afi"), "".into())];
        let p = plan(&to, &a("pgr"), peers, true).unwrap();
        assert_eq!(p.local_units, vec!["".to_string()]);
        assert!(p.peers.is_empty());
        assert!(plan(&to, &a("cenapi"), peers, true).is_err());
    }
}
