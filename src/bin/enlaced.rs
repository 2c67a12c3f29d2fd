//! `enlaced`, the agency node daemon: `enlaced --config node.toml [--check-config]`.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use enlace::config::{Config, LogFormat};

/// The Enlace agency node daemon.
#[derive(Debug, Parser)]
#[command(
    name = "enlaced",
    version,
    after_help = "\
Exit codes: 0 stopped cleanly, 1 runtime failure, 2 bad usage or invalid configuration.
Logs go to stderr; set ENLACE_LOG (e.g. ENLACE_LOG=debug) to override the configured level."
)]
struct Args {
    /// The node's configuration file (TOML; see deploy/ for annotated examples).
    #[arg(long, short, required_unless_present = "manpage")]
    config: Option<PathBuf>,
    /// Validate the configuration and TLS material, then exit without binding.
    #[arg(long)]
    check_config: bool,
    /// Print this program's man page (roff), for packaging, and exit.
    #[arg(long, hide = true)]
    manpage: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let Some(path) = args.config.as_deref().filter(|_| !args.manpage) else {
        let man = clap_mangen::Man::new(<Args as clap::CommandFactory>::command()).section("8");
        return match man.render(&mut std::io::stdout()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("enlaced: cannot write the man page: {e}");
                ExitCode::FAILURE
            }
        };
    };
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("enlaced: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(&config);
    if args.check_config {
        return match enlace::node::check(&config) {
            Ok(warnings) => {
                for w in &warnings {
                    println!("warning: {w}");
                }
                println!(
                    "{}: configuration is valid (node {}/node/{})",
                    path.display(),
                    config.agency(),
                    config.name()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("enlaced: invalid configuration: {e}");
                ExitCode::from(2)
            }
        };
    }
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("enlaced: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(enlace::node::run(config, shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "node failed");
            eprintln!("enlaced: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("ENLACE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(config.log_level()));
    // Colours only on a terminal: a file, a pipe or journald gets plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match config.log_format() {
        LogFormat::Json => builder.json().init(),
        LogFormat::Human => builder.init(),
    }
}

/// Completes on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = int.recv() => tracing::info!("SIGINT received"),
            }
        }
        _ => {
            // Without signal handlers the daemon can only be killed; say so and wait forever.
            tracing::error!("cannot install signal handlers; stop the node with SIGKILL");
            std::future::pending::<()>().await
        }
    }
}
