//! `enlace`: the command line of Enlace. Send typed messages, read mailboxes and receipts,
//! manage dead letters and a development PKI, run the demo and the benchmark.
//!
//! Thin glue over the `enlace` library's public API: parse flags, call the library, print, map
//! errors to the exit codes in [`exit`]. Each subcommand is a module of its own.
#![forbid(unsafe_code)]

mod bench;
mod bulk;
mod connect;
mod demo;
mod dlq;
mod exit;
mod health;
mod inbox;
mod log;
mod pki;
mod policy;
mod send;
mod status;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use exit::Failure;

const AFTER_HELP: &str = "\
Exit codes: 0 ok, 1 failure, 2 usage, 3 cannot connect or connection refused,
4 message refused by the node, 5 node busy (queue full or shutting down): retry later.";

/// Enlace: secure exchange of typed messages between law-enforcement agencies.
#[derive(Debug, Parser)]
#[command(name = "enlace", version, after_help = AFTER_HELP)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Send a typed message (from flags, a JSON file or any file) through your agency's node.
    Send(Box<send::SendArgs>),
    /// Read your inbox: print deliveries as a table or JSON lines, acknowledging each.
    Inbox(inbox::InboxArgs),
    /// Show the receipts of a message you sent as a timeline (without consuming them).
    Status(status::StatusArgs),
    /// Inspect and redrive dead letters (operator certificate required).
    #[command(subcommand)]
    Dlq(dlq::DlqCommand),
    /// The delivery log (operators): tail, query, trace a message, verify, export.
    #[command(subcommand)]
    Log(log::LogCommand),
    /// Check a policy file (exchange agreements and rules), or explain a decision by it.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
    /// Create and maintain a development or test PKI.
    #[command(subcommand)]
    Pki(pki::PkiCommand),
    /// Run a small agency network on this machine and play a FLASH alert amid bulk traffic.
    Demo(demo::DemoArgs),
    /// Measure throughput and alert latency over real mTLS QUIC on loopback.
    Bench(bench::BenchArgs),
    /// Ask a node's health endpoint whether it is alive (or ready): exit 0 if it answers 200.
    Health(health::HealthArgs),
    /// Print the shell completion script for `enlace` (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
    /// Write the man pages of `enlace` and of each of its commands (roff, section 1) into a
    /// directory, for packaging.
    #[command(hide = true)]
    Manpages {
        /// Where to write enlace.1 and enlace-<command>.1.
        dir: std::path::PathBuf,
    },
}

/// Runs a parsed command line.
async fn run(cli: Cli) -> Result<(), Failure> {
    match cli.command {
        Command::Send(a) if a.bulk.is_some() => bulk::run(&a).await,
        Command::Send(a) => send::run(*a).await,
        Command::Inbox(a) => inbox::run(a).await,
        Command::Status(a) => status::run(a).await,
        Command::Dlq(c) => dlq::run(c).await,
        Command::Log(c) => log::run(c).await,
        Command::Pki(c) => pki::run(c).map_err(Failure::from),
        Command::Policy(c) => policy::run(c),
        Command::Demo(a) => demo::run(a).await,
        Command::Bench(a) => bench::run(a).await,
        Command::Health(a) => health::run(a).await,
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "enlace", &mut std::io::stdout());
            Ok(())
        }
        Command::Manpages { dir } => manpages(&dir).map_err(Failure::from),
    }
}

/// Writes `enlace.1` and one page per command (`enlace-send.1`...) into `dir`.
fn manpages(dir: &std::path::Path) -> anyhow::Result<()> {
    use anyhow::Context;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let cmd = <Cli as clap::CommandFactory>::command();
    let mut pages = vec![("enlace".to_owned(), cmd.clone())];
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("enlace-{}", sub.get_name());
        pages.push((
            name.clone(),
            sub.clone().display_name(name.clone()).bin_name(name),
        ));
    }
    for (name, page) in pages {
        let path = dir.join(format!("{name}.1"));
        let mut out = Vec::new();
        clap_mangen::Man::new(page).render(&mut out)?;
        std::fs::write(&path, out).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let verbose = matches!(&cli.command, Command::Demo(d) if d.verbose);
    // The demo shows refusals in its own tables; its nodes log them only with --verbose.
    let default = match &cli.command {
        _ if verbose => "info",
        Command::Demo(_) => "warn,enlace::event=error",
        _ => "warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ENLACE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default)),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("error: {:#}", f.error);
            ExitCode::from(f.code)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
