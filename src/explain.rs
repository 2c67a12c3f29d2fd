//! For the people who write agreements: a policy file described rule by rule, and the decisions
//! it makes about one message explained step by step (`enlace policy check` and `explain`).
//!
//! Sans-I/O, and the same decision functions a node uses ([`Policy::may_send`],
//! [`Policy::may_flow`], [`Policy::may_receive`]), so an explanation is what a node would do.

use std::time::SystemTime;

use crate::agreement::{Decision, Policy, Types};
use crate::handling::Handling;
use crate::message::Precedence;

/// A message to explain a decision about.
#[derive(Debug, Clone)]
pub struct Question<'a> {
    /// The sender's agency.
    pub from_agency: &'a str,
    /// The sending client, when the sender's agency is the policy's own.
    pub from_client: Option<&'a str>,
    /// The addressee agency.
    pub to_agency: &'a str,
    /// The client that would be handed it, when the addressee is the policy's own agency.
    pub to_client: Option<&'a str>,
    /// The payload type, short or fully qualified.
    pub payload_type: &'a str,
    /// Its precedence.
    pub precedence: Precedence,
    /// Its handling conditions, as the envelope would carry them.
    pub handling: &'a Handling,
    /// When.
    pub now: SystemTime,
}

/// The start (00:00 UTC) of a `YYYY-MM-DD` day, as policy files write dates.
///
/// ```
/// assert!(enlace::agreement::day("2026-12-31").is_ok());
/// assert!(enlace::agreement::day("2026-02-30").is_err());
/// ```
pub fn day(s: &str) -> Result<SystemTime, String> {
    crate::agreement::date(s)
}

fn types(t: &Types) -> String {
    match t {
        Types::Any => "every type".into(),
        Types::Only(set) => set
            .iter()
            .map(|t| t.strip_prefix("enlace.v1.").unwrap_or(t))
            .collect::<Vec<_>>()
            .join(", "),
    }
}

impl Policy {
    /// The decisions a node makes about `q`, in the order it makes them: the sender's
    /// `[[send]]` rules (when the sender is a client of this agency), the agreement between
    /// the two agencies (when they differ), and the receiving client's `[[receive]]` rules
    /// (when it is a client of this agency).
    pub fn explain(&self, q: &Question<'_>) -> Vec<(&'static str, Decision)> {
        let kind = if q.payload_type.contains('.') {
            q.payload_type.to_owned()
        } else {
            format!("enlace.v1.{}", q.payload_type)
        };
        let own = self.agency.as_deref();
        let mut out = Vec::new();
        if let Some(client) = q.from_client
            && own.is_none_or(|a| a == q.from_agency)
        {
            out.push(("send", self.may_send(client, &kind, q.precedence)));
        }
        let handling = self.effective(q.handling);
        out.push((
            "agreement",
            self.may_flow(
                q.from_agency,
                q.to_agency,
                &kind,
                q.precedence,
                &handling,
                q.now,
            ),
        ));
        if let Some(client) = q.to_client
            && own.is_none_or(|a| a == q.to_agency)
        {
            out.push(("receive", self.may_receive(client, &kind)));
        }
        out
    }

    /// The file, one line per rule.
    pub fn describe(&self) -> Vec<String> {
        let mut out = vec![format!(
            "{}: policy of {}; {} agreement(s), {} send rule(s), {} receive rule(s), {} foreign \
             code(s){}",
            self.file,
            self.agency.as_deref().unwrap_or("(agency not stated)"),
            self.agreements.len(),
            self.send.len(),
            self.receive.len(),
            self.native.len(),
            if self.must_inform.is_empty() {
                String::new()
            } else {
                format!("; must inform {}", self.must_inform.join(", "))
            }
        )];
        for a in &self.agreements {
            let dates = match (&a.dates.0, &a.dates.1) {
                (None, None) => String::new(),
                (f, u) => format!(
                    ", {} to {}",
                    f.as_deref().unwrap_or("always"),
                    u.as_deref().unwrap_or("open-ended")
                ),
            };
            out.push(format!(
                "  agreement {}: {} → {}: {} up to {}, nothing more permissive than {}; {} ({}){dates}",
                a.id,
                a.from,
                a.to,
                types(&a.types),
                a.max_precedence,
                a.most_permissive,
                a.legal_basis.reference,
                a.legal_basis.text
            ));
        }
        let who = |c: &[crate::policy::Reader]| {
            c.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        for s in &self.send {
            out.push(format!(
                "  send {}: {} may send {} up to {}",
                s.id,
                who(&s.clients),
                types(&s.types),
                s.max_precedence
            ));
        }
        for r in &self.receive {
            out.push(format!(
                "  receive {}: {} may receive {}",
                r.id,
                who(&r.clients),
                types(&r.types)
            ));
        }
        for (code, h) in &self.native {
            out.push(format!(
                "  code {code}: at least {}, onward dissemination {}, judicial use {}, \
                 operational action {}{}",
                h.tlp,
                h.onward,
                h.judicial,
                h.operational,
                h.max_relays
                    .map(|m| format!(", at most {m} relay(s)"))
                    .unwrap_or_default()
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handling::{NativeCode, Tlp};

    const FILE: &str = r#"
[policy]
agency = "cenapi"

[[agreements]]
id = "dea-cenapi"
from = "dea"
to = "cenapi"
payload_types = ["PrecursorChemicalAlert"]
max_precedence = "PRIORITY"
most_permissive_tlp = "AMBER"
legal_basis = { text = "MoU on precursor analysis", reference = "MOU-7" }
valid_from = "2026-01-01"

[[send]]
id = "analysts"
clients = ["analyst"]
payload_types = ["AnalyticalReport"]
max_precedence = "ROUTINE"

[[receive]]
id = "desk"
clients = ["duty-desk"]
payload_types = ["*"]

[native_codes.europol]
H3 = { tlp = "RED", onward_dissemination = "denied" }
"#;

    #[test]
    fn an_explanation_walks_the_rules_a_node_applies() {
        let p = Policy::parse(FILE, "cenapi.policy.toml").unwrap();
        let h = Handling::default();
        let now = day("2026-06-01").unwrap();
        let q = Question {
            from_agency: "dea",
            from_client: None,
            to_agency: "cenapi",
            to_client: Some("duty-desk"),
            payload_type: "PrecursorChemicalAlert",
            precedence: Precedence::Flash,
            handling: &h,
            now,
        };
        let answer = p.explain(&q);
        let steps: Vec<&str> = answer.iter().map(|(s, _)| *s).collect();
        assert_eq!(steps, ["agreement", "receive"]);
        assert!(!answer[0].1.allowed);
        assert_eq!(
            answer[0].1.rule.to_string(),
            "cenapi.policy.toml#dea-cenapi"
        );
        assert!(answer[1].1.allowed);
        // At PRIORITY it is allowed; a Europol H3 code makes it RED, still within the cap.
        let coded = Handling {
            native: vec![NativeCode {
                scheme: "europol".into(),
                code: "h3".into(),
            }],
            tlp: Tlp::Clear,
            ..Handling::default()
        };
        let q = Question {
            precedence: Precedence::Priority,
            handling: &coded,
            ..q
        };
        assert!(p.explain(&q).iter().all(|(_, d)| d.allowed));
        // Before the agreement's first day it is not.
        let early = Question {
            now: day("2025-12-31").unwrap(),
            ..q.clone()
        };
        assert!(
            p.explain(&early)[0]
                .1
                .reason
                .contains("in force from 2026-01-01")
        );
        // A client of this agency sending: its send rules come first.
        let out = Question {
            from_agency: "cenapi",
            from_client: Some("analyst"),
            to_agency: "cenapi",
            to_client: None,
            payload_type: "AnalyticalReport",
            precedence: Precedence::Flash,
            ..q
        };
        let answer = p.explain(&out);
        assert_eq!(answer[0].0, "send");
        assert!(answer[0].1.reason.contains("ROUTINE at most"));
    }

    #[test]
    fn a_description_names_every_rule() {
        let p = Policy::parse(FILE, "cenapi.policy.toml").unwrap();
        let text = p.describe().join("\n");
        for needle in [
            "policy of cenapi; 1 agreement(s), 1 send rule(s), 1 receive rule(s), 1 foreign code(s)",
            "agreement dea-cenapi: dea → cenapi: PrecursorChemicalAlert up to PRIORITY, nothing more permissive than TLP:AMBER; MOU-7",
            "2026-01-01 to open-ended",
            "send analysts: analyst may send AnalyticalReport up to ROUTINE",
            "receive desk: duty-desk may receive every type",
            "code europol:h3: at least TLP:RED, onward dissemination denied",
        ] {
            assert!(text.contains(needle), "{needle:?} in\n{text}");
        }
    }
}
