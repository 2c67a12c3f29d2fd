//! The `enlace` command line: send, inbox, status, dlq, pki, demo, bench.
//!
//! Thin glue over the client library and the PKI module: parse flags, call the library, print.
//! Exit codes are documented in [`exit`] and in `enlace --help`.

mod bench;
mod bulk;
mod demo;
mod dlq;
mod inbox;
pub mod pki;
mod send;
mod status;

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::client::ClientOptions;

/// Exit codes of the `enlace` command.
pub mod exit {
    /// Success.
    pub const OK: u8 = 0;
    /// An error not covered below (bad input file, I/O).
    pub const FAILURE: u8 = 1;
    /// Bad command-line usage (clap's convention).
    pub const USAGE: u8 = 2;
    /// The node could not be reached, or refused the connection (certificate, role, agency).
    pub const CONNECT: u8 = 3;
    /// The node refused the message (invalid, expired, unknown recipient, too large...).
    pub const REFUSED: u8 = 4;
    /// The node is busy (queue full, shutting down): retry later.
    pub const RETRY: u8 = 5;
}

const AFTER_HELP: &str = "\
Exit codes: 0 ok, 1 failure, 2 usage, 3 cannot connect or connection refused,
4 message refused by the node, 5 node busy (queue full or shutting down): retry later.";

/// Enlace: secure exchange of typed messages between law-enforcement agencies.
#[derive(Debug, Parser)]
#[command(name = "enlace", version, after_help = AFTER_HELP)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Send a typed message (from flags or a JSON file) through your agency's node.
    Send(send::SendArgs),
    /// Read your inbox: print deliveries as a table or JSON lines, acknowledging each.
    Inbox(inbox::InboxArgs),
    /// Show the receipts of a message you sent as a timeline (without consuming them).
    Status(status::StatusArgs),
    /// Inspect and redrive dead letters (operator certificate required).
    #[command(subcommand)]
    Dlq(dlq::DlqCommand),
    /// Create and maintain a development or test PKI.
    #[command(subcommand)]
    Pki(pki::PkiCommand),
    /// Run a small agency network on this machine and play a FLASH alert amid bulk traffic.
    Demo(demo::DemoArgs),
    /// Measure throughput and alert latency over real mTLS QUIC on loopback.
    Bench(bench::BenchArgs),
}

/// How to reach your agency's node, shared by `send` and `inbox`.
#[derive(Debug, clap::Args)]
pub struct ConnectArgs {
    /// The node's address.
    #[arg(long, env = "ENLACE_NODE")]
    pub node: SocketAddr,
    /// The node certificate's DNS name, e.g. dea-1.dea.enlace.example.
    #[arg(long, env = "ENLACE_SERVER_NAME")]
    pub server_name: String,
    /// Your certificate chain (PEM: leaf, then your agency's CA).
    #[arg(long, env = "ENLACE_CERT")]
    pub cert: PathBuf,
    /// Your private key (PEM, PKCS#8).
    #[arg(long, env = "ENLACE_KEY")]
    pub key: PathBuf,
    /// The federation's CA bundle (PEM).
    #[arg(long, env = "ENLACE_CA")]
    pub ca: PathBuf,
}

impl ConnectArgs {
    fn options(&self) -> anyhow::Result<ClientOptions> {
        Ok(ClientOptions::from_files(
            self.node,
            &self.server_name,
            &self.cert,
            &self.key,
            &self.ca,
        )?)
    }
}

/// An error with the exit code it maps to.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub error: anyhow::Error,
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(e: E) -> Failure {
        Failure {
            code: exit::FAILURE,
            error: e.into(),
        }
    }
}

fn fail(code: u8, error: impl Into<anyhow::Error>) -> Failure {
    Failure {
        code,
        error: error.into(),
    }
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> Result<(), Failure> {
    match cli.command {
        Command::Send(a) => send::run(a).await,
        Command::Inbox(a) => inbox::run(a).await,
        Command::Status(a) => status::run(a).await,
        Command::Dlq(c) => dlq::run(c).await,
        Command::Pki(c) => pki::run(c).map_err(Failure::from),
        Command::Demo(a) => demo::run(a).await,
        Command::Bench(a) => bench::run(a).await,
    }
}

/// Parses a duration such as `90s`, `15m`, `6h` or `2d`.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 90s, 15m, 6h or 2d"))?;
    let secs = match unit {
        "ms" => return Ok(std::time::Duration::from_millis(n)),
        "s" | "" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86400,
        _ => {
            return Err(format!(
                "{s:?}: unknown unit {unit:?} (use ms, s, m, h or d)"
            ));
        }
    };
    Ok(std::time::Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s").unwrap().as_secs(), 90);
        assert_eq!(parse_duration("6h").unwrap().as_secs(), 6 * 3600);
        assert_eq!(parse_duration("250ms").unwrap().as_millis(), 250);
        assert!(parse_duration("6 hours").is_err());
        assert!(parse_duration("h").is_err());
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
