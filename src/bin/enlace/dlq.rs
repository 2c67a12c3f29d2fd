//! `enlace dlq`: list, show and redrive dead letters (needs an operator certificate).

use std::time::{Duration, UNIX_EPOCH};

use enlace::{Client, MessageId, SubmitError, pb};

use super::connect::ConnectArgs;
use super::exit::{self, Failure, fail};
use super::inbox::utc;

/// Subcommands of `enlace dlq`.
#[derive(Debug, clap::Subcommand)]
pub enum DlqCommand {
    /// List dead letters: id, queue, attempts, reason.
    List {
        #[command(flatten)]
        connect: ConnectArgs,
        /// Only this queue (e.g. mailbox:cenapi or outbox:pgr-1).
        #[arg(long, default_value = "")]
        queue: String,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Show every dead-lettered copy of one message, with its metadata (never its content).
    Show {
        #[command(flatten)]
        connect: ConnectArgs,
        /// The message id.
        id: String,
    },
    /// Put dead letters back in their queues with attempts reset: one message, or --all.
    Redrive {
        #[command(flatten)]
        connect: ConnectArgs,
        /// The message id to redrive.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<String>,
        /// Redrive every dead letter (of --queue, if given).
        #[arg(long)]
        all: bool,
        /// Only this queue.
        #[arg(long, default_value = "")]
        queue: String,
    },
}

fn parse_id(s: &str) -> Result<MessageId, Failure> {
    s.parse().map_err(|e| fail(exit::USAGE, e))
}

async fn connect(c: &ConnectArgs) -> Result<Client, Failure> {
    c.connect().await
}

fn refused(e: SubmitError) -> Failure {
    fail(exit::REFUSED, e)
}

pub(super) async fn run(cmd: DlqCommand) -> Result<(), Failure> {
    match cmd {
        DlqCommand::List {
            connect: c,
            queue,
            json,
        } => {
            let client = connect(&c).await?;
            let entries = client.dlq_list(&queue).await.map_err(refused)?;
            client.close().await;
            if json {
                for e in &entries {
                    println!("{}", to_json(e));
                }
            } else {
                println!("{:<36} {:<22} {:>8}  REASON", "ID", "QUEUE", "ATTEMPTS");
                for e in &entries {
                    println!(
                        "{:<36} {:<22} {:>8}  {}",
                        id(e),
                        e.queue,
                        e.attempts,
                        e.reason
                    );
                }
                println!("{} dead letter(s)", entries.len());
            }
            Ok(())
        }
        DlqCommand::Show { connect: c, id: s } => {
            let message = parse_id(&s)?;
            let client = connect(&c).await?;
            let entries = client.dlq_show(message).await.map_err(refused)?;
            client.close().await;
            if entries.is_empty() {
                return Err(fail(
                    exit::FAILURE,
                    anyhow::anyhow!("no dead letter with id {message}"),
                ));
            }
            for e in &entries {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&to_json(e)).unwrap_or_default()
                );
            }
            Ok(())
        }
        DlqCommand::Redrive {
            connect: c,
            id,
            all: _,
            queue,
        } => {
            let message = id.as_deref().map(parse_id).transpose()?;
            let client = connect(&c).await?;
            let ids = client.dlq_redrive(message, &queue).await.map_err(refused)?;
            client.close().await;
            for i in &ids {
                println!("redriven {i}");
            }
            println!("{} message(s) put back", ids.len());
            if message.is_some() && ids.is_empty() {
                return Err(fail(
                    exit::FAILURE,
                    anyhow::anyhow!("no dead letter with that id"),
                ));
            }
            Ok(())
        }
    }
}

fn id(e: &pb::DeadLetterInfo) -> String {
    MessageId::from_slice(&e.message_id)
        .map(|i| i.to_string())
        .unwrap_or_default()
}

fn to_json(e: &pb::DeadLetterInfo) -> serde_json::Value {
    let time = |t: &Option<prost_types::Timestamp>| {
        let t = t.as_ref().filter(|t| t.seconds >= 0)?;
        let d = Duration::new(t.seconds as u64, t.nanos.clamp(0, 999_999_999) as u32);
        Some(utc(UNIX_EPOCH + d))
    };
    serde_json::json!({
        "id": id(e),
        "queue": e.queue,
        "reason": e.reason,
        "deadAt": time(&e.dead_at),
        "attempts": e.attempts,
        "precedence": e.precedence().as_str_name().trim_start_matches("PRECEDENCE_"),
        "from": e.originator.as_ref().map(|o| format!("{}/{}", o.agency, o.client)),
        "to": e.addressees.iter().map(|a| if a.unit.is_empty() { a.agency.clone() } else { format!("{}/{}", a.agency, a.unit) }).collect::<Vec<_>>(),
        "payloadType": e.payload_type,
        "sizeBytes": e.size_bytes,
        "expiresAt": time(&e.expires_at),
    })
}
