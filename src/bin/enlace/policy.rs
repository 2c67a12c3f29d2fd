//! `enlace policy`: check a policy file, and explain which rule allows or denies a message.
//!
//! Offline: it reads the file (and, for the agency directory, a node config) and asks the
//! library's policy core the same questions a node asks; nothing connects.

use std::path::PathBuf;
use std::time::SystemTime;

use enlace::Precedence;
use enlace::agreement::{Policy, Question};
use enlace::handling::{Handling, NativeCode, Permission, Tlp};

use super::exit::{self, Failure, fail};

/// Subcommands of `enlace policy`.
#[derive(Debug, clap::Subcommand)]
pub enum PolicyCommand {
    /// Validate a policy file and lint it: unknown agencies or payload types, shadowed or
    /// overlapping rules, agreements not in force. Exit 0 when clean, 1 otherwise.
    Check {
        /// The policy file.
        file: PathBuf,
        /// A node config whose agency directory and peers say which agencies exist (without
        /// it, agency names are not checked).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Agencies that exist, comma-separated (instead of, or besides, --config).
        #[arg(long, value_delimiter = ',')]
        agencies: Vec<String>,
        /// Judge validity dates at this day (YYYY-MM-DD) instead of today.
        #[arg(long)]
        at: Option<String>,
    },
    /// Say which rule of a policy file allows or denies a message, and why. Exit 0 if allowed,
    /// 4 if denied.
    Explain {
        /// The policy file.
        #[arg(long)]
        policy: PathBuf,
        /// The sender: an agency, or agency/client (the client's [[send]] rules apply when the
        /// agency is the policy's own).
        #[arg(long)]
        from: String,
        /// The addressee: an agency, or agency/client (that client's [[receive]] rules apply
        /// when the agency is the policy's own).
        #[arg(long)]
        to: String,
        /// The payload type, short (PrecursorChemicalAlert) or fully qualified.
        #[arg(long = "type")]
        payload_type: String,
        /// FLASH, IMMEDIATE, PRIORITY, ROUTINE or BULK.
        #[arg(long, default_value = "ROUTINE")]
        precedence: String,
        /// The TLP label (RED, AMBER+STRICT, AMBER, GREEN, CLEAR); default AMBER, as for an
        /// unlabelled message.
        #[arg(long, default_value = "AMBER")]
        tlp: String,
        /// Onward dissemination: allowed, consent or denied.
        #[arg(long, default_value = "allowed")]
        onward: String,
        /// A foreign handling code, scheme:code (e.g. europol:H2); repeatable.
        #[arg(long = "code")]
        codes: Vec<String>,
        /// Judge validity dates at this day (YYYY-MM-DD) instead of today.
        #[arg(long)]
        at: Option<String>,
    },
}

fn usage(e: impl std::fmt::Display) -> Failure {
    fail(exit::USAGE, anyhow::anyhow!("{e}"))
}

fn day(at: &Option<String>) -> Result<SystemTime, Failure> {
    match at {
        Some(d) => enlace::agreement::day(d).map_err(usage),
        None => Ok(SystemTime::now()),
    }
}

fn load(file: &std::path::Path) -> Result<Policy, Failure> {
    Policy::load(file).map_err(|e| fail(exit::FAILURE, e))
}

pub(super) fn run(cmd: PolicyCommand) -> Result<(), Failure> {
    match cmd {
        PolicyCommand::Check {
            file,
            config,
            agencies,
            at,
        } => {
            let now = day(&at)?;
            let policy = load(&file)?;
            let mut known = agencies;
            if let Some(c) = &config {
                let c = enlace::config::Config::load(c).map_err(|e| fail(exit::FAILURE, e))?;
                known.extend(c.known_agencies());
            }
            for line in policy.describe() {
                println!("{line}");
            }
            let findings = policy.lint((!known.is_empty()).then_some(&known[..]), now);
            for f in &findings {
                println!("warning: {f}");
            }
            if findings.is_empty() {
                println!("{}: valid, no findings", file.display());
                Ok(())
            } else {
                Err(fail(
                    exit::FAILURE,
                    anyhow::anyhow!("{}: {} finding(s)", file.display(), findings.len()),
                ))
            }
        }
        PolicyCommand::Explain {
            policy,
            from,
            to,
            payload_type,
            precedence,
            tlp,
            onward,
            codes,
            at,
        } => {
            let now = day(&at)?;
            let policy = load(&policy)?;
            let precedence: Precedence = precedence.parse().map_err(usage)?;
            let tlp =
                Tlp::parse(&tlp).ok_or_else(|| usage(format!("{tlp:?} is not a TLP label")))?;
            let onward = Permission::parse(&onward)
                .ok_or_else(|| usage(format!("{onward:?} is not allowed, consent or denied")))?;
            let native = codes
                .iter()
                .map(|c| {
                    c.split_once(':')
                        .map(|(scheme, code)| NativeCode {
                            scheme: scheme.to_ascii_lowercase(),
                            code: code.to_ascii_lowercase(),
                        })
                        .ok_or_else(|| usage(format!("{c:?} is not scheme:code")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let handling = Handling {
                tlp,
                onward,
                native,
                ..Handling::default()
            };
            let split = |s: &str| match s.split_once('/') {
                Some((a, c)) => (a.to_ascii_lowercase(), Some(c.to_owned())),
                None => (s.to_ascii_lowercase(), None),
            };
            let (from_agency, from_client) = split(&from);
            let (to_agency, to_client) = split(&to);
            let q = Question {
                from_agency: &from_agency,
                from_client: from_client.as_deref(),
                to_agency: &to_agency,
                to_client: to_client.as_deref(),
                payload_type: &payload_type,
                precedence,
                handling: &handling,
                now,
            };
            let answer = policy.explain(&q);
            let effective = policy.effective(&handling);
            if effective.tlp != handling.tlp || effective.onward != handling.onward {
                println!(
                    "handling: {} with onward dissemination {}, after the policy's table of \
                     foreign codes",
                    effective.tlp, effective.onward
                );
            }
            let mut allowed = true;
            for (step, d) in &answer {
                println!("{step}: {d}");
                allowed &= d.allowed;
            }
            if allowed {
                println!("allowed");
                Ok(())
            } else {
                Err(fail(exit::REFUSED, anyhow::anyhow!("denied")))
            }
        }
    }
}
