//! The node's policy file at run time: loaded at start, reloaded without a restart, and applied
//! where a message is taken (`check_take`) and before a copy is handed to a client
//! (`check_delivery`). The decisions are [`crate::agreement`]'s.
//!
//! A reload happens with the TLS reload (SIGHUP, [`RunningNode::reload`](super::RunningNode::reload))
//! and when the file changes on disk (looked at every [`super::trust::POLL`]). A file that does
//! not load is refused and the policy in force stays (logged, and recorded as
//! [`Event::ReloadRefused`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use super::events::Event;
use super::runtime::NodeError;
use super::state::Node;
use crate::address::Mailbox;
use crate::agreement::{Decision, Policy, PolicyError};
use crate::config::Config;
use crate::message::{Message, MessageId, Status};
use crate::provenance::{Deriver, Release, Restriction};
use crate::receipt::is_receipts_mailbox;
use crate::refusal::Refusal;
use crate::route::Plan;
use crate::wire::pb;
use crate::wire::pb::RefusalCode;
use prost::Message as _;

/// The payload type of a judicial instrument: a product of this type uses its sources in
/// judicial proceedings (their judicial-use permission applies).
const JUDICIAL: &str = "enlace.v1.MutualLegalAssistanceRequest";

/// The payload type of an answer to a message, the one client payload a receipts unit takes.
const BUSINESS_RESPONSE: &str = "enlace.v1.BusinessResponse";

/// The payload type of an originator's dissemination decision.
const DECISION: &str = "enlace.v1.DisseminationDecision";

/// The name decisions cite when the node has no policy file.
const NO_FILE: &str = "(no policy file)";

/// Loads the config's policy file (none: a policy that allows nothing) and checks that it is
/// this node's agency's.
pub(super) fn load(config: &Config) -> Result<Policy, NodeError> {
    let Some(path) = &config.policy else {
        return Ok(Policy::deny_all(NO_FILE));
    };
    let policy = Policy::load(path).map_err(NodeError::Policy)?;
    if let Some(a) = &policy.agency
        && a != config.agency.as_str()
    {
        return Err(NodeError::Policy(PolicyError {
            file: path.display().to_string(),
            key: "policy.agency".into(),
            reason: format!("is {a}, but this node serves {}", config.agency),
        }));
    }
    Ok(policy)
}

/// What `--check-config` and start-up say about the policy.
pub(super) fn warnings(config: &Config, policy: &Policy) -> Vec<String> {
    if config.policy.is_none() {
        return vec![
            "no policy file (node.policy): deny by default, so no client may send or receive \
             anything"
                .to_owned(),
        ];
    }
    let known = config.known_agencies();
    policy
        .lint(Some(&known), SystemTime::now())
        .into_iter()
        .map(|l| format!("policy: {l}"))
        .collect()
}

/// A fingerprint of the policy file: a change means a reload.
pub(super) fn fingerprint(config: &Config) -> Option<(PathBuf, u64, Option<SystemTime>)> {
    let path = config.policy.clone()?;
    let meta = std::fs::metadata(&path).ok();
    let len = meta.as_ref().map_or(0, |m| m.len());
    Some((path, len, meta.and_then(|m| m.modified().ok())))
}

/// Reloads the policy file; on failure the policy in force stays.
pub(super) fn reload(node: &Node, why: &str) -> Result<(), String> {
    match load(&node.config) {
        Ok(policy) => {
            let detail = format!(
                "{why}: {} agreement(s), {} send rule(s), {} receive rule(s)",
                policy.agreements.len(),
                policy.send.len(),
                policy.receive.len()
            );
            for w in warnings(&node.config, &policy) {
                tracing::warn!(node = %node.config.name, "{w}");
            }
            node.set_policy(policy);
            node.events().record(Event::Reloaded {
                what: "policy".into(),
                detail,
            });
            Ok(())
        }
        Err(e) => {
            let reason = e.to_string();
            node.events().record(Event::ReloadRefused {
                what: "policy".into(),
                reason: format!("{why}: {reason}; the policy in force stays"),
            });
            Err(reason)
        }
    }
}

/// Whether `message` is a node's own control traffic (a receipt or a non-delivery report,
/// SYSTEM, originated and signed by a node, as admission checked): the one kind the policy does
/// not govern. Anything else marked SYSTEM (which only a misbehaving node could forward) is
/// subject to it like any message.
fn node_control(message: &Message) -> bool {
    message.status == Status::System
        && message.originator.client.is_none()
        && crate::receipt::is_node_control(message)
}

/// Whether `kind` names `full` (`enlace.v1.X`), in any case, with or without a type-URL prefix
/// (`type.googleapis.com/enlace.v1.X`): for checks that must not fail open on a spelling.
fn is_type(kind: &str, full: &str) -> bool {
    kind.rsplit('/')
        .next()
        .is_some_and(|k| k.eq_ignore_ascii_case(full))
}

/// A denial as the sender hears it: `POLICY_DENIED`, naming the rule.
pub(super) fn refusal(d: &Decision) -> Refusal {
    Refusal::new(
        RefusalCode::PolicyDenied,
        format!("denied by {}: {}", d.rule, d.reason),
    )
}

impl Node {
    /// Whether this node's policy lets it take `message` as planned: from a client, the
    /// agency's send rules; for every agency it is taking the message towards (its own, for
    /// local copies; the agencies of each peer copy), an agreement from the originator's agency;
    /// and at a relay, the message's label must let a node of this agency carry it. The node's
    /// own SYSTEM traffic (receipts, reports) is not subject to it.
    ///
    /// What it returns is what the node will remember of the message, once taken (see
    /// [`Node::remember`]): its restrictions, for products derived from it here, if this node's
    /// agency sent or receives it.
    pub(super) fn check_take(
        &self,
        message: &Message,
        plan: &Plan,
        client: Option<&str>,
        now: SystemTime,
    ) -> Result<Option<Vec<Restriction>>, Refusal> {
        if node_control(message) {
            return Ok(None);
        }
        let policy = self.policy();
        let handling = policy.effective(&message.handling);
        let (kind, precedence) = (message.payload_type.as_str(), message.precedence);
        if let Some(client) = client {
            policy
                .check_send(client, kind, precedence)
                .map_err(|d| refusal(&d))?;
        }
        let own = self.config.agency.as_str();
        let from = message.originator.agency.as_str();
        let towards: Vec<&str> = plan
            .peers
            .iter()
            .flat_map(|p| p.agencies.iter().map(|a| a.as_str()))
            .chain((!plan.local.is_empty()).then_some(own))
            .collect();
        for to in &towards {
            policy
                .check_flow(from, to, kind, precedence, &handling, now)
                .map_err(|d| refusal(&d))?;
        }
        // A receipts unit holds node control traffic (which returned above) and answers to its
        // own client's messages: nothing else may be put there, and receive rules do not apply.
        for mailbox in &plan.local {
            if is_receipts_mailbox(mailbox) {
                if message.payload_type != BUSINESS_RESPONSE {
                    return Err(Refusal::new(
                        RefusalCode::PolicyDenied,
                        format!(
                            "unit {mailbox} holds receipts, reports and business responses \
                             only, not {kind}"
                        ),
                    ));
                }
                continue;
            }
            policy
                .receivable(mailbox, self.config.readers.potential(mailbox), kind)
                .map_err(|d| refusal(&d))?;
        }
        // Addressees as agency ids (an alias resolves; parsing made every name a valid one).
        let addressees: Vec<String> = message
            .addressees
            .iter()
            .map(|a| {
                self.config
                    .directory
                    .resolve(&a.agency)
                    .map_or_else(|| a.agency.clone(), |id| id.to_string())
            })
            .collect();
        let names: Vec<&str> = addressees.iter().map(String::as_str).collect();
        handling.may_transit(own, from, &names).map_err(|reason| {
            Refusal::new(
                RefusalCode::PolicyDenied,
                format!("denied by the message's own handling: {reason}"),
            )
        })?;
        // Remembered only where the agency sends or receives it: a relay derives nothing.
        if client.is_none() && plan.local.is_empty() {
            return Ok(None);
        }
        let provenance = self.provenance.lock().expect("provenance lock poisoned");
        if client.is_some() && !message.derived_from.is_empty() {
            let partner = |a: &str| policy.partners(own, a, now);
            let deriver = Deriver {
                agency: own,
                judicial: is_type(kind, JUDICIAL),
                must_inform: &policy.must_inform,
                partner: &partner,
            };
            provenance
                .check_derived(
                    &message.derived_from,
                    &deriver,
                    &towards,
                    &handling.purpose,
                    now,
                )
                .map_err(|d| {
                    let hint = if d.releasable {
                        format!(
                            "; {} may release it: send it a DisseminationRequest for {}",
                            d.owner, d.source
                        )
                    } else {
                        String::new()
                    };
                    Refusal::new(
                        RefusalCode::PolicyDenied,
                        format!(
                            "denied by the handling of source message {} (from {}): {}{hint}",
                            d.source, d.owner, d.reason
                        ),
                    )
                })?;
        }
        let own_restriction = Restriction::new(message.id, from, addressees, &handling);
        provenance
            .inherit(own_restriction, &message.derived_from)
            .map(Some)
            .map_err(|reason| Refusal::new(RefusalCode::PolicyDenied, reason))
    }

    /// Remembers a message just taken: its restrictions, and if it is an approving
    /// dissemination decision for this agency (`local`: it has copies here), the release it
    /// grants.
    pub(super) fn remember(&self, message: &Message, local: bool, restrictions: Vec<Restriction>) {
        let mut provenance = self.provenance.lock().expect("provenance lock poisoned");
        provenance.remember(message.id, restrictions);
        if !local || message.payload_type != DECISION {
            return;
        }
        let Ok(d) = pb::DisseminationDecision::decode(message.payload.clone()) else {
            return;
        };
        if d.approved {
            let recorded = provenance.release(Release {
                decision: message.id,
                by: message.originator.agency.to_string(),
                sources: d
                    .source_message_ids
                    .iter()
                    .filter_map(|s| MessageId::from_slice(s))
                    .collect(),
                to: d
                    .to_agencies
                    .iter()
                    // Named as the decision's writer knew them ("FGR"): agency ids here.
                    .filter_map(|a| self.config.directory.resolve(a))
                    .map(|id| id.to_string())
                    .collect(),
                purpose: d.purpose,
                valid_until: d.valid_until.as_ref().and_then(crate::message::system_time),
            });
            if !recorded {
                tracing::warn!(
                    node = %self.config.name, decision = %message.id,
                    "dissemination decision not recorded: its purpose is longer than {} bytes",
                    crate::provenance::MAX_RELEASE_PURPOSE
                );
            }
        }
    }

    /// Whether `client` (a client of this agency) reading `mailbox` may be handed `message` (see
    /// [`Policy::may_receive`]): node control traffic and anything in a receipts unit (answers
    /// to the client's own messages) always may.
    pub(super) fn may_deliver(&self, message: &Message, mailbox: &Mailbox, client: &str) -> bool {
        node_control(message)
            || is_receipts_mailbox(mailbox)
            || self.policy().allows_receive(client, &message.payload_type)
    }
}

/// The policy in force, shared by every task.
pub(super) type Shared = std::sync::RwLock<Arc<Policy>>;
