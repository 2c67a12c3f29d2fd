//! `enlace send`: one typed message from flags or a JSON payload file.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

use super::{ConnectArgs, Failure, exit, fail, parse_duration};
use crate::client::Client;
use crate::message::{Draft, Precedence};
use crate::session::SubmitError;
use crate::wire::json;
use crate::wire::pb::{self, RefusalCode};

/// Arguments of `enlace send`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  enlace send --to pgr --to afi --precedence flash --expires-in 6h \\
      --type PrecursorChemicalAlert --payload alert.json
  enlace send --to cenapi --text 'Reunión de enlace el martes' --lang es-MX

The payload file holds the payload message in proto3 JSON (field names in lowerCamelCase,
enums by name), e.g. {\"kind\": \"PRECURSOR_ALERT_KIND_SUSPICIOUS_SHIPMENT\", ...}.")]
pub struct SendArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Action addressee: an agency id, or agency/unit. Repeat for several.
    #[arg(long, required = true)]
    pub to: Vec<String>,
    /// Information-copy addressee. Repeat for several.
    #[arg(long)]
    pub info: Vec<String>,
    /// FLASH, IMMEDIATE, PRIORITY, ROUTINE or BULK.
    #[arg(long, default_value = "routine", value_parser = parse_precedence)]
    pub precedence: Precedence,
    /// Lifetime, e.g. 90s, 15m, 6h, 2d: the message is never delivered after it.
    #[arg(long, default_value = "7d", value_parser = parse_duration)]
    pub expires_in: Duration,
    /// Ask action addressees for a business response within this time (respond_by): without
    /// one, you get an overdue receipt and their escalation unit a reminder.
    #[arg(long, value_parser = parse_duration)]
    pub respond_within: Option<Duration>,
    /// ACTUAL, EXERCISE, TEST or SYSTEM.
    #[arg(long, default_value = "actual", value_parser = parse_status)]
    pub status: pb::Status,
    /// Case identifier, to thread related messages.
    #[arg(long)]
    pub case_id: Option<String>,
    /// Payload type, e.g. PrecursorChemicalAlert (with --payload).
    #[arg(long, requires = "payload", conflicts_with = "text")]
    pub r#type: Option<String>,
    /// JSON file holding the payload (proto3 JSON of --type).
    #[arg(long, requires = "type")]
    pub payload: Option<PathBuf>,
    /// Free text: sends a LiaisonMessage with this body.
    #[arg(long, required_unless_present_any = ["payload", "bulk"])]
    pub text: Option<String>,
    /// Stream a file of analytical records, one JSON object per line:
    /// {"type": "AnalyticalReport", "payload": {...}} (optional per line: "to", "precedence",
    /// "caseId"). Message ids derive from the file and line, and progress is saved beside the
    /// file (FILE.enlace-progress): run it again after an interruption and it resumes without
    /// sending anything twice.
    #[arg(long, conflicts_with_all = ["text", "type", "payload"])]
    pub bulk: Option<PathBuf>,
    /// BCP-47 language tag of --text.
    #[arg(long, default_value = "en")]
    pub lang: String,
    /// Print the acceptance as JSON.
    #[arg(long)]
    pub json: bool,
}

pub(super) fn parse_precedence(s: &str) -> Result<Precedence, String> {
    Precedence::parse(s)
        .ok_or_else(|| format!("{s:?}: use FLASH, IMMEDIATE, PRIORITY, ROUTINE or BULK"))
}

fn parse_status(s: &str) -> Result<pb::Status, String> {
    pb::Status::from_str_name(&format!("STATUS_{}", s.to_ascii_uppercase()))
        .filter(|s| *s != pb::Status::Unspecified)
        .ok_or_else(|| format!("{s:?}: use ACTUAL, EXERCISE, TEST or SYSTEM"))
}

pub(super) async fn run(a: SendArgs) -> Result<(), Failure> {
    if let Some(file) = &a.bulk {
        return super::bulk::run(&a, file).await;
    }
    let (type_name, payload) = match (&a.r#type, &a.payload, &a.text) {
        (Some(t), Some(path), _) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            let value: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("{} is not JSON", path.display()))?;
            let full = json::descriptor(t)?.full_name().to_owned();
            (full, json::encode_json(t, &value)?)
        }
        (_, _, Some(text)) => {
            let lt = |t: &str| pb::LocalizedText {
                language: a.lang.clone(),
                text: t.to_owned(),
                translations: vec![],
            };
            let msg = pb::LiaisonMessage {
                topic: pb::LiaisonTopic::Other as i32,
                subject: Some(lt(&text.chars().take(80).collect::<String>())),
                body: Some(lt(text)),
                references: vec![],
            };
            (
                <pb::LiaisonMessage as prost::Name>::full_name(),
                prost::Message::encode_to_vec(&msg),
            )
        }
        _ => {
            return Err(fail(
                exit::USAGE,
                anyhow::anyhow!("give --type with --payload, or --text"),
            ));
        }
    };
    let mut draft = Draft::from_raw(type_name, payload.into())
        .precedence(a.precedence)
        .status(a.status)
        .expires_in(a.expires_in);
    for t in &a.to {
        draft = draft.to(t);
    }
    for i in &a.info {
        draft = draft.info(i);
    }
    if let Some(c) = &a.case_id {
        draft = draft.case_id(c);
    }
    if let Some(d) = a.respond_within {
        draft = draft.respond_within(d);
    }
    let client = Client::connect(a.connect.options()?)
        .await
        .map_err(|e| fail(exit::CONNECT, e))?;
    let result = client.send(draft).await;
    client.close().await;
    match result {
        Ok(acc) => {
            if a.json {
                println!(
                    "{}",
                    serde_json::json!({"accepted": acc.id.to_string(), "routed": acc.routed})
                );
            } else {
                println!(
                    "accepted {} (routed to {} destination(s))",
                    acc.id, acc.routed
                );
            }
            Ok(())
        }
        Err(e) => Err(submit_failure(e)),
    }
}

/// The exit code and error for a failed submission.
pub(super) fn submit_failure(e: SubmitError) -> Failure {
    match e {
        SubmitError::Refused { code, .. } => {
            let busy = matches!(code, RefusalCode::QueueFull | RefusalCode::ShuttingDown);
            fail(if busy { exit::RETRY } else { exit::REFUSED }, e)
        }
        e => fail(exit::CONNECT, e),
    }
}
