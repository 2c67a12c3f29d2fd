//! `enlace health`: asks a node's health endpoint (`[metrics]`, plain HTTP on loopback) whether
//! it is alive (`/healthz`) or ready (`/readyz`). For container health checks and probes that
//! have no shell or curl: exit 0 on `200`, 1 with the status line (or the reason it could not
//! ask) otherwise.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, anyhow};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::exit::Failure;

/// The most of the answer read: a status line and a short reason.
const MAX_ANSWER: u64 = 4096;

#[derive(Debug, clap::Args)]
pub struct HealthArgs {
    /// The node's metrics and health endpoint (`[metrics] listen`).
    #[arg(long, default_value = "127.0.0.1:9464")]
    addr: SocketAddr,
    /// Ask whether the node takes new work (`/readyz`: 503 while it shuts down or after its
    /// store failed) instead of whether it is alive (`/healthz`).
    #[arg(long)]
    ready: bool,
    /// How long to wait for the answer, in milliseconds.
    #[arg(long, default_value_t = 2000)]
    timeout_ms: u64,
}

pub async fn run(a: HealthArgs) -> Result<(), Failure> {
    let path = if a.ready { "/readyz" } else { "/healthz" };
    let asked = tokio::time::timeout(Duration::from_millis(a.timeout_ms), ask(a.addr, path))
        .await
        .with_context(|| {
            format!(
                "no answer from http://{}{path} within {} ms",
                a.addr, a.timeout_ms
            )
        })?;
    let (status, line) = asked?;
    println!("{line}");
    if status != 200 {
        return Err(anyhow!("http://{}{path} answered {line:?}", a.addr).into());
    }
    Ok(())
}

/// Sends `GET path` and returns the status code and the status line (and body, if short).
async fn ask(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)
        .await
        .with_context(|| format!("cannot connect to the health endpoint {addr}"))?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut answer = Vec::new();
    s.take(MAX_ANSWER).read_to_end(&mut answer).await?;
    let text = String::from_utf8_lossy(&answer);
    let status_line = text.lines().next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("not an HTTP answer: {status_line:?}"))?;
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default().trim();
    Ok((status, format!("{status_line} {body}").trim().to_owned()))
}
