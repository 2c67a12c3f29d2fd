//! `enlace send`: one typed message from flags, a JSON payload file, or any file as a document.
//! (`--bulk`, a file of records, is `bulk`.)

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use enlace::payloads::Document;
use enlace::{Draft, Precedence, Status, json, pb};

use super::connect::{ConnectArgs, parse_duration};
use super::exit::{self, Failure, fail, submit_failure};

/// Arguments of `enlace send`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  enlace send --to pgr --to afi --precedence flash --expires-in 6h \\
      --type PrecursorChemicalAlert --payload alert.json
  enlace send --to cenapi --text 'Reunión de enlace el martes' --lang es-MX
  enlace send --to pgr --file manifest.pdf --media-type application/pdf

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
    #[arg(long, default_value = "routine")]
    pub precedence: Precedence,
    /// Lifetime, e.g. 90s, 15m, 6h, 2d: the message is never delivered after it.
    #[arg(long, default_value = "7d", value_parser = parse_duration)]
    pub expires_in: Duration,
    /// Ask action addressees for a business response within this time (respond_by): without
    /// one, you get an overdue receipt and their escalation unit a reminder.
    #[arg(long, value_parser = parse_duration)]
    pub respond_within: Option<Duration>,
    /// ACTUAL, EXERCISE, TEST or SYSTEM.
    #[arg(long, default_value = "actual")]
    pub status: Status,
    /// Case identifier, to thread related messages.
    #[arg(long)]
    pub case_id: Option<String>,
    /// Payload type, e.g. PrecursorChemicalAlert (with --payload).
    #[arg(long, requires = "payload", conflicts_with_all = ["text", "file"])]
    pub r#type: Option<String>,
    /// JSON file holding the payload (proto3 JSON of --type).
    #[arg(long, requires = "type")]
    pub payload: Option<PathBuf>,
    /// Free text: sends a LiaisonMessage with this body.
    #[arg(long, required_unless_present_any = ["payload", "bulk", "file"], conflicts_with = "file")]
    pub text: Option<String>,
    /// Any file (a scanned manifest, a photograph, a PDF): sends it as a Document with its
    /// name, media type and SHA-256.
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// The media type of --file (default: guessed from its extension, else
    /// application/octet-stream).
    #[arg(long, requires = "file")]
    pub media_type: Option<String>,
    /// Stream a file of analytical records, one JSON object per line:
    /// {"type": "AnalyticalReport", "payload": {...}} (optional per line: "to", "precedence",
    /// "caseId"). Message ids derive from the file and line, and progress is saved beside the
    /// file (FILE.enlace-progress): run it again after an interruption and it resumes without
    /// sending anything twice.
    #[arg(long, conflicts_with_all = ["text", "type", "payload", "file"])]
    pub bulk: Option<PathBuf>,
    /// BCP-47 language tag of --text.
    #[arg(long, default_value = "en")]
    pub lang: String,
    /// Print the acceptance as JSON.
    #[arg(long)]
    pub json: bool,
}

pub(super) async fn run(a: SendArgs) -> Result<(), Failure> {
    let (type_name, payload) = match (&a.r#type, &a.payload, &a.text, &a.file) {
        (_, _, _, Some(path)) => {
            let content =
                std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
            let media = a
                .media_type
                .clone()
                .unwrap_or_else(|| media_type(path).into());
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
            let doc = Document::new(name, &media, content).build();
            (
                <pb::Document as prost::Name>::full_name(),
                prost::Message::encode_to_vec(&doc),
            )
        }
        (Some(t), Some(path), _, _) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            let value: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("{} is not JSON", path.display()))?;
            let full = json::descriptor(t)?.full_name().to_owned();
            (full, json::encode_json(t, &value)?)
        }
        (_, _, Some(text), _) => {
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
    let client = a.connect.connect().await?;
    let result = match client.send(draft).await {
        Ok(acceptance) => acceptance.await,
        Err(e) => Err(e),
    };
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

/// A media type for a file, from its extension.
fn media_type(path: &std::path::Path) -> &'static str {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    match ext.as_str() {
        "pdf" => "application/pdf",
        "jpg" | "jpeg" => "image/jpeg",
        "png" => "image/png",
        "tif" | "tiff" => "image/tiff",
        "txt" => "text/plain",
        "csv" => "text/csv",
        "json" => "application/json",
        "xml" => "application/xml",
        "zip" => "application/zip",
        "docx" => "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        "xlsx" => "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        _ => "application/octet-stream",
    }
}
