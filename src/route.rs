//! Routing: which local mailboxes and which peer nodes an admitted message goes to.
//!
//! Sans-I/O. Addressee names (an agency id or alias, any case) are resolved through the
//! [`Directory`] here, at routing time only: the signed envelope is never rewritten. A message
//! from a client must be routable to every addressee, or it is refused (deny by default: an
//! unknown agency is a mistake the sender should hear about at once). A message from a peer node
//! is routed for the agencies that peer handed it for (`route_to`): delivered here for this
//! node's agency, forwarded onward for the others (this node is then a relay). Hop limits (the
//! message's handling policy) and loops (a next hop the message has already passed) are refused
//! here, before anything is queued.

use crate::address::Mailbox;
use crate::directory::Directory;
use crate::identity::AgencyId;
use crate::message::Addressee;
use crate::refusal::Refusal;
use crate::wire::pb::RefusalCode;

/// Where copies of one message go.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    /// Mailboxes of this node's agency, without duplicates.
    pub local: Vec<Mailbox>,
    /// Peer nodes, without duplicates, each with the agencies its copy is for.
    pub peers: Vec<PeerCopy>,
}

/// The copy for one peer node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCopy {
    pub node: String,
    /// Agency ids the peer delivers or relays this copy for.
    pub agencies: Vec<AgencyId>,
}

impl Plan {
    /// How many destinations (mailboxes and peers) the message goes to.
    pub fn fan_out(&self) -> usize {
        self.local.len() + self.peers.len()
    }
}

/// The next hop toward an agency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NextHop<'a> {
    pub node: &'a str,
    /// True when that node does not serve the agency itself but relays for it.
    pub relay: bool,
}

/// This node and its routing table.
pub struct Router<'a, F> {
    pub agency: &'a AgencyId,
    pub node: &'a str,
    pub directory: &'a Directory,
    /// The next hop toward an agency id, if there is a route.
    pub next_hop: F,
}

/// Where the message came from and how far it has travelled.
#[derive(Debug, Clone, Copy)]
pub struct Arrival<'a> {
    /// `Some(route_to)` when a peer node forwarded it: the agencies that peer handed it for.
    /// An empty list (a peer that does not say) means this node's own agency only.
    pub from_peer: Option<&'a [String]>,
    /// Nodes already passed (hop records, oldest first; empty for a client's submission).
    pub hops: &'a [String],
    /// The handling policy's limit on relay nodes between the originator's node and the node
    /// that serves an addressee (`HandlingPolicy.max_hops`), if any.
    pub max_relays: Option<u32>,
}

impl<F> Router<'_, F> {
    /// Decides where a message addressed to `addressees` (agency name as written, unit) goes.
    pub fn plan<'h>(&self, addressees: &[Addressee], arrival: Arrival<'_>) -> Result<Plan, Refusal>
    where
        F: Fn(&AgencyId) -> Option<NextHop<'h>>,
    {
        let mut plan = Plan::default();
        let mut unknown = Vec::new();
        // From a peer, the agencies its copy is for: their ids as the peer resolved them, so a
        // relay needs no alias it does not know. A peer that names none hands over this node's
        // own agency only.
        let handed: Option<Vec<AgencyId>> = arrival.from_peer.map(|route_to| {
            if route_to.is_empty() {
                vec![self.agency.clone()]
            } else {
                route_to
                    .iter()
                    .filter_map(|a| self.directory.resolve(a))
                    .collect()
            }
        });
        let mut onward: Vec<AgencyId> = Vec::new();
        for Addressee {
            agency: name,
            mailbox,
            ..
        } in addressees
        {
            let agency = self.directory.resolve(name);
            match (&agency, &handed) {
                (Some(a), _) if a == self.agency => {
                    let wanted = handed.as_ref().is_none_or(|h| h.contains(a));
                    if wanted && !plan.local.contains(mailbox) {
                        plan.local.push(mailbox.clone());
                    }
                }
                (Some(a), None) if !onward.contains(a) => onward.push(a.clone()),
                (Some(_), _) => {}
                (None, None) => unknown.push(name.clone()),
                // A name this node does not know, handed over under an id: the id decides.
                (None, Some(_)) => {}
            }
        }
        if let Some(handed) = handed {
            // A peer hands a copy over only for addressees: an agency no addressee names is
            // refused, unless some addressee is a name outside this node's directory (an alias
            // only the previous hop knows), which may be it.
            let ambiguous = addressees
                .iter()
                .any(|a| !self.directory.knows(&a.agency) && a.agency != self.agency.as_str());
            for a in handed {
                let addressed = addressees
                    .iter()
                    .any(|x| self.directory.resolve(&x.agency).as_ref() == Some(&a));
                if !ambiguous && !addressed {
                    return Err(Refusal::new(
                        RefusalCode::Unauthorized,
                        format!(
                            "route_to names agency {a}, which is not an addressee of the message"
                        ),
                    ));
                }
                if a != *self.agency && !onward.contains(&a) {
                    onward.push(a);
                }
            }
        }
        for agency in onward {
            let Some(hop) = (self.next_hop)(&agency) else {
                unknown.push(agency.to_string());
                continue;
            };
            self.check_hop(&agency, hop, arrival)?;
            match plan.peers.iter_mut().find(|p| p.node == hop.node) {
                Some(p) if !p.agencies.contains(&agency) => p.agencies.push(agency),
                Some(_) => {}
                None => plan.peers.push(PeerCopy {
                    node: hop.node.to_owned(),
                    agencies: vec![agency],
                }),
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
                format!(
                    "this node serves none of the addressees (it serves {})",
                    self.agency
                ),
            ));
        }
        Ok(plan)
    }

    /// Refuses a hop that would close a loop or pass more relays than the message allows.
    fn check_hop(
        &self,
        agency: &AgencyId,
        hop: NextHop<'_>,
        a: Arrival<'_>,
    ) -> Result<(), Refusal> {
        if hop.node == self.node || a.hops.iter().any(|h| h == hop.node) {
            let mut path: Vec<&str> = a.hops.iter().map(String::as_str).collect();
            path.extend([self.node, hop.node]);
            return Err(Refusal::new(
                RefusalCode::Unauthorized,
                format!(
                    "routing loop: the route to agency {agency} leads back to node {} ({})",
                    hop.node,
                    path.join(" → ")
                ),
            ));
        }
        // Relays the copy will have passed when it reaches the next node: every node so far but
        // the originator's (this one included, if it is not the originator's), plus the next
        // node if it only relays.
        let relays = a.hops.len() as u32 + u32::from(hop.relay);
        if let Some(limit) = a.max_relays
            && relays > limit
        {
            return Err(Refusal::new(
                RefusalCode::Unauthorized,
                format!(
                    "agency {agency} is reached through {relays} relay node(s) from here; the \
                     message's handling policy allows {limit}"
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::directory::Agency;

    fn a(s: &str) -> AgencyId {
        AgencyId::new(s).unwrap()
    }

    fn directory() -> Directory {
        let agency = |id: &str, aliases: &[&str]| Agency {
            id: a(id),
            display: id.to_uppercase(),
            aliases: aliases.iter().map(|s| s.to_string()).collect(),
            served_by: None,
        };
        Directory::build(vec![
            agency("afi", &["pfm", "cmi"]),
            agency("pgr", &["fgr"]),
        ])
        .unwrap()
    }

    /// DEA's table: PGR and CENAPI direct, AFI through CENAPI.
    fn dea(x: &AgencyId) -> Option<NextHop<'static>> {
        match x.as_str() {
            "pgr" => Some(NextHop {
                node: "pgr-1",
                relay: false,
            }),
            "cenapi" => Some(NextHop {
                node: "cenapi-1",
                relay: false,
            }),
            "afi" => Some(NextHop {
                node: "cenapi-1",
                relay: true,
            }),
            _ => None,
        }
    }

    /// CENAPI's table: everyone direct.
    fn cenapi(x: &AgencyId) -> Option<NextHop<'static>> {
        match x.as_str() {
            "pgr" => Some(NextHop {
                node: "pgr-1",
                relay: false,
            }),
            "afi" => Some(NextHop {
                node: "afi-1",
                relay: false,
            }),
            "dea" => Some(NextHop {
                node: "dea-1",
                relay: false,
            }),
            _ => None,
        }
    }

    fn to(list: &[(&str, &str)]) -> Vec<Addressee> {
        list.iter()
            .map(|(x, u)| Addressee {
                agency: x.to_ascii_lowercase(),
                mailbox: Mailbox::from_wire(u).unwrap(),
                action: true,
            })
            .collect()
    }

    const CLIENT: Arrival<'static> = Arrival {
        from_peer: None,
        hops: &[],
        max_relays: None,
    };

    fn strings(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn splits_local_and_peers_and_groups_agencies_by_next_hop() {
        let dir = directory();
        let r = Router {
            agency: &a("dea"),
            node: "dea-1",
            directory: &dir,
            next_hop: dea,
        };
        let p = r
            .plan(
                &to(&[
                    ("pgr", ""),
                    ("dea", "desk"),
                    ("afi", ""),
                    ("cenapi", "analyst"),
                ]),
                CLIENT,
            )
            .unwrap();
        assert_eq!(p.local, vec![Mailbox::unit("desk").unwrap()]);
        assert_eq!(
            p.peers,
            vec![
                PeerCopy {
                    node: "pgr-1".into(),
                    agencies: vec![a("pgr")]
                },
                PeerCopy {
                    node: "cenapi-1".into(),
                    agencies: vec![a("afi"), a("cenapi")]
                },
            ]
        );
    }

    #[test]
    fn aliases_resolve_to_ids_in_any_case() {
        let dir = directory();
        let r = Router {
            agency: &a("dea"),
            node: "dea-1",
            directory: &dir,
            next_hop: dea,
        };
        let p = r
            .plan(
                &to(&[("FGR", ""), ("PFM", ""), ("Cmi", ""), ("DEA", "")]),
                CLIENT,
            )
            .unwrap();
        assert_eq!(p.local, vec![Mailbox::Inbox]);
        assert_eq!(p.peers[0].agencies, vec![a("pgr")]);
        assert_eq!(p.peers[1].agencies, vec![a("afi")]);
    }

    #[test]
    fn unknown_agency_is_refused() {
        let dir = directory();
        let r = Router {
            agency: &a("dea"),
            node: "dea-1",
            directory: &dir,
            next_hop: dea,
        };
        let e = r
            .plan(&to(&[("pgr", ""), ("fbi", "")]), CLIENT)
            .unwrap_err();
        assert_eq!(e.code, RefusalCode::UnknownRecipient);
        assert!(e.reason.contains("fbi"));
        let e = r.plan(&to(&[("not an agency", "")]), CLIENT).unwrap_err();
        assert_eq!(e.code, RefusalCode::UnknownRecipient);
    }

    #[test]
    fn a_relay_forwards_only_the_agencies_it_was_handed() {
        let dir = directory();
        let r = Router {
            agency: &a("cenapi"),
            node: "cenapi-1",
            directory: &dir,
            next_hop: cenapi,
        };
        let hops = strings(&["dea-1"]);
        let route_to = strings(&["afi"]);
        let arrival = Arrival {
            from_peer: Some(&route_to),
            hops: &hops,
            max_relays: None,
        };
        // Addressed to PGR and AFI (as "PFM"): DEA sent PGR's copy direct, this one is AFI's.
        let p = r.plan(&to(&[("pgr", ""), ("PFM", "")]), arrival).unwrap();
        assert!(p.local.is_empty());
        assert_eq!(
            p.peers,
            vec![PeerCopy {
                node: "afi-1".into(),
                agencies: vec![a("afi")]
            }]
        );

        // The relay need not know the name the originator used: the id it was handed decides.
        let p = r.plan(&to(&[("afi-new-name", "")]), arrival).unwrap();
        assert_eq!(p.peers[0].node, "afi-1");

        // A peer that names no agencies hands over this node's own agency only.
        let legacy = Arrival {
            from_peer: Some(&[]),
            hops: &hops,
            max_relays: None,
        };
        let p = r.plan(&to(&[("cenapi", ""), ("afi", "")]), legacy).unwrap();
        assert_eq!(p.local, vec![Mailbox::Inbox]);
        assert!(p.peers.is_empty());
        assert!(r.plan(&to(&[("afi", "")]), legacy).is_err());
    }

    #[test]
    fn a_relay_refuses_route_to_an_agency_that_is_not_addressed() {
        let dir = directory();
        let r = Router {
            agency: &a("cenapi"),
            node: "cenapi-1",
            directory: &dir,
            next_hop: cenapi,
        };
        let hops = strings(&["dea-1"]);
        let route_to = strings(&["afi"]);
        let arrival = Arrival {
            from_peer: Some(&route_to),
            hops: &hops,
            max_relays: None,
        };
        // Addressed to PGR only; the peer asks for AFI as well.
        let e = r.plan(&to(&[("pgr", "")]), arrival).unwrap_err();
        assert_eq!(e.code, RefusalCode::Unauthorized);
        assert!(
            e.reason.contains("route_to names agency afi"),
            "{}",
            e.reason
        );
        // Handing over this node's own agency is no different.
        let own = strings(&["cenapi"]);
        let arrival = Arrival {
            from_peer: Some(&own),
            ..arrival
        };
        assert!(r.plan(&to(&[("pgr", "")]), arrival).is_err());
        assert!(r.plan(&to(&[("cenapi", "x")]), arrival).is_ok());
    }

    #[test]
    fn loops_are_refused() {
        let dir = directory();
        // Misconfigured: CENAPI sends AFI's traffic back to DEA.
        let back = |x: &AgencyId| {
            (x.as_str() == "afi").then_some(NextHop {
                node: "dea-1",
                relay: true,
            })
        };
        let r = Router {
            agency: &a("cenapi"),
            node: "cenapi-1",
            directory: &dir,
            next_hop: back,
        };
        let hops = strings(&["dea-1"]);
        let route_to = strings(&["afi"]);
        let arrival = Arrival {
            from_peer: Some(&route_to),
            hops: &hops,
            max_relays: None,
        };
        let e = r.plan(&to(&[("afi", "")]), arrival).unwrap_err();
        assert!(e.reason.contains("routing loop"), "{}", e.reason);
        assert!(
            e.reason.contains("dea-1 → cenapi-1 → dea-1"),
            "{}",
            e.reason
        );
    }

    #[test]
    fn relays_beyond_the_handling_policy_are_refused() {
        let dir = directory();
        let r = Router {
            agency: &a("dea"),
            node: "dea-1",
            directory: &dir,
            next_hop: dea,
        };
        // max_hops 0: direct delivery only, so AFI (through CENAPI) is refused at the origin.
        let direct_only = Arrival {
            max_relays: Some(0),
            ..CLIENT
        };
        assert!(r.plan(&to(&[("pgr", "")]), direct_only).is_ok());
        let e = r
            .plan(&to(&[("pgr", ""), ("afi", "")]), direct_only)
            .unwrap_err();
        assert_eq!(e.code, RefusalCode::Unauthorized);
        assert!(e.reason.contains("allows 0"), "{}", e.reason);
        assert!(
            r.plan(
                &to(&[("afi", "")]),
                Arrival {
                    max_relays: Some(1),
                    ..CLIENT
                }
            )
            .is_ok()
        );

        // At the relay, CENAPI counts itself.
        let r = Router {
            agency: &a("cenapi"),
            node: "cenapi-1",
            directory: &dir,
            next_hop: cenapi,
        };
        let hops = strings(&["dea-1"]);
        let route_to = strings(&["afi"]);
        let at_relay = |max| Arrival {
            from_peer: Some(&route_to),
            hops: &hops,
            max_relays: max,
        };
        assert!(r.plan(&to(&[("afi", "")]), at_relay(Some(1))).is_ok());
        assert!(r.plan(&to(&[("afi", "")]), at_relay(Some(0))).is_err());
    }
}
