//! `enlace bench --scenario raw-quic`: what quinn alone moves between two endpoints set up as
//! two nodes' are, the ceiling a bulk transfer between two Enlace nodes is measured against.
//!
//! Two quinn endpoints on loopback, each on a runtime of its own with two worker threads (as the
//! bench runs a node), with the nodes' own TLS material (`dea-1` dialing `cenapi-1` with its node
//! certificate, mutual TLS 1.3 through ring), transport settings and UDP buffers
//! ([`LocalNetwork::raw_quic`]). One connection, one unidirectional stream, as a
//! link carries analytical traffic on one stream. The sender writes as fast as the stream takes
//! it; the receiver reads and counts. Twice: in 64 KiB writes (quinn's ceiling), then in frames
//! of a 1 KiB record's size, each its own `write_all` with a 4-byte length (the ceiling for
//! unbatched messages). Nothing is stored, signed or parsed.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use enlace::network::LocalNetwork;

use super::{BenchArgs, WARMUP, node_runtime};

/// The bytes of one framed message: a 1 KiB record and what an envelope adds around it.
const FRAMED: usize = 1024 + 4;

/// The scenario's numbers, and its JSON line.
#[derive(Debug, serde::Serialize)]
pub struct Report {
    scenario: &'static str,
    duration_s: f64,
    /// Stream bytes received per second, written 64 KiB at a time, in MB/s (1e6 bytes).
    large_writes_mb_per_s: f64,
    /// The same with one `write_all` per 1,028-byte frame.
    framed_1k_mb_per_s: f64,
    /// Those frames per second.
    framed_1k_msgs_per_s: f64,
}

pub async fn run(dir: &Path, pki: &Path, a: &BenchArgs) -> anyhow::Result<Report> {
    let net = LocalNetwork::mesh(dir, pki, &["dea", "cenapi"])?;
    let large = transfer(&net, 64 * 1024, a.duration).await?;
    eprintln!("  64 KiB writes: {:.1} MB/s", large / 1e6);
    let framed = transfer(&net, FRAMED, a.duration).await?;
    eprintln!("  1 KiB frames: {:.1} MB/s", framed / 1e6);
    let round = |x: f64| (x * 10.0).round() / 10.0;
    Ok(Report {
        scenario: "raw-quic",
        duration_s: a.duration.as_secs_f64(),
        large_writes_mb_per_s: round(large / 1e6),
        framed_1k_mb_per_s: round(framed / 1e6),
        framed_1k_msgs_per_s: round(framed / FRAMED as f64),
    })
}

/// A runtime standing in for one node's process, shut down in the background when dropped
/// (a runtime dropped within the bench's asynchronous context would panic).
struct NodeRuntime(Option<tokio::runtime::Runtime>);

impl NodeRuntime {
    fn new(name: &str) -> anyhow::Result<NodeRuntime> {
        Ok(NodeRuntime(Some(node_runtime(format!("quic-{name}"))?)))
    }
}

impl std::ops::Deref for NodeRuntime {
    type Target = tokio::runtime::Runtime;

    fn deref(&self) -> &tokio::runtime::Runtime {
        self.0.as_ref().expect("present until dropped")
    }
}

impl Drop for NodeRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// Sends `write`-byte writes from `dea-1`'s endpoint to `cenapi-1`'s for the warm-up and
/// `window`; returns the bytes per second received over the window.
async fn transfer(net: &LocalNetwork, write: usize, window: Duration) -> anyhow::Result<f64> {
    let (srt, crt) = (NodeRuntime::new("server")?, NodeRuntime::new("client")?);
    let received = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));

    let receiving = {
        let received = received.clone();
        let _guard = srt.enter();
        let (endpoint, _) = net.raw_quic("cenapi-1")?;
        let addr = endpoint.local_addr()?;
        let task = srt.spawn(async move {
            let conn = endpoint.accept().await.context("no connection")?.await?;
            let mut stream = conn.accept_uni().await?;
            while let Some(chunk) = stream.read_chunk(usize::MAX, true).await? {
                received.fetch_add(chunk.bytes.len() as u64, Ordering::Relaxed);
            }
            conn.close(0u32.into(), b"done");
            endpoint.wait_idle().await;
            anyhow::Ok(())
        });
        (task, addr)
    };
    let (receiver, addr) = receiving;
    let server_name = net.server_name("cenapi", "cenapi-1");
    let sender = {
        let stop = stop.clone();
        let _guard = crt.enter();
        let (endpoint, cconfig) = net.raw_quic("dea-1")?;
        crt.spawn(async move {
            let conn = endpoint.connect_with(cconfig, addr, &server_name)?.await?;
            let mut stream = conn.open_uni().await?;
            let mut buf = vec![0x5a; write];
            if write == FRAMED {
                buf[..4].copy_from_slice(&(1024u32).to_be_bytes());
            }
            while !stop.load(Ordering::Relaxed) {
                stream.write_all(&buf).await?;
            }
            stream.finish()?;
            // Until the receiver has read everything and closed.
            conn.closed().await;
            anyhow::Ok(())
        })
    };
    tokio::time::sleep(WARMUP).await;
    let (from, started) = (received.load(Ordering::Relaxed), Instant::now());
    tokio::time::sleep(window).await;
    let moved = received.load(Ordering::Relaxed) - from;
    let rate = moved as f64 / started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let sent = sender.await;
    if !matches!(sent, Ok(Ok(()))) {
        // The receiver may still be waiting for a connection that never came.
        receiver.abort();
    }
    let got = receiver.await;
    sent.context("the sending task failed")??;
    got.context("the receiving task failed")??;
    Ok(rate)
}
