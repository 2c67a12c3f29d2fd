//! Test harness: nodes on loopback with the committed test PKI (certs/test), real QUIC, real
//! config files and data directories in a temporary directory.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use enlace::client::{Client, ClientOptions};
use enlace::network::LocalNetwork;
use enlace::node::{Event, RunningNode};
use enlace::tls::TlsMaterial;
use tokio::sync::broadcast;

pub fn certs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("certs/test")
}

/// A running local network; nodes stop when it is dropped via [`TestNet::stop`].
pub struct TestNet {
    pub dir: tempfile::TempDir,
    pub net: LocalNetwork,
    pub nodes: BTreeMap<String, RunningNode>,
}

impl TestNet {
    /// One node `<agency>-1` per agency, fully meshed, all started.
    pub async fn mesh(agencies: &[&str]) -> TestNet {
        TestNet::mesh_with_limits(agencies, &[]).await
    }

    /// A mesh whose nodes get extra `[limits]` lines, e.g. `"ack_timeout_ms = 200"`.
    pub async fn mesh_with_limits(agencies: &[&str], limits: &[&str]) -> TestNet {
        init_logging();
        let dir = tempfile::tempdir().unwrap();
        let net = LocalNetwork::mesh_with_limits(dir.path(), &certs(), agencies, limits).unwrap();
        let mut nodes = BTreeMap::new();
        for name in net.nodes.keys() {
            nodes.insert(name.clone(), net.start(name).await.unwrap());
        }
        TestNet { dir, net, nodes }
    }

    pub fn node(&self, name: &str) -> &RunningNode {
        &self.nodes[name]
    }

    pub fn options(&self, agency: &str, client: &str) -> ClientOptions {
        self.net.client_options(agency, client).unwrap()
    }

    /// Options for `agency`'s node but with another certificate (relative to certs/test).
    pub fn options_with(&self, agency: &str, cert_stem: &str) -> ClientOptions {
        let mut o = self.options(agency, "duty-desk");
        o.tls = material(cert_stem);
        o
    }

    pub async fn client(&self, agency: &str, client: &str) -> Client {
        Client::connect(self.options(agency, client)).await.unwrap()
    }

    pub async fn subscriber(&self, agency: &str, client: &str) -> Client {
        Client::connect(self.options(agency, client).subscribe(""))
            .await
            .unwrap()
    }

    /// Stops every node (concurrently) and waits for them.
    pub async fn stop(self) {
        let mut set = tokio::task::JoinSet::new();
        for (_, n) in self.nodes {
            set.spawn(n.stop());
        }
        while set.join_next().await.is_some() {}
    }
}

/// TLS material for `<stem>.pem` / `<stem>.key.pem` under certs/test, trusting the test root.
pub fn material(stem: &str) -> TlsMaterial {
    let base = certs();
    TlsMaterial::load(
        &base.join(format!("{stem}.pem")),
        &base.join(format!("{stem}.key.pem")),
        &base.join("ca/root.pem"),
        &[],
    )
    .unwrap()
}

/// Waits (bounded) for the first event matching `pred`.
pub async fn wait_event(
    rx: &mut broadcast::Receiver<Event>,
    pred: impl Fn(&Event) -> bool,
) -> Event {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match rx.recv().await {
                Ok(e) if pred(&e) => return e,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => panic!("event channel closed"),
            }
        }
    })
    .await
    .expect("expected event did not occur within 10 s")
}

/// Bounded wait for a future (a test must fail, not hang).
pub async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(15), fut)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

/// With `ENLACE_TEST_LOG=debug` (or any filter), tests print the nodes' logs.
pub fn init_logging() {
    if let Ok(filter) = std::env::var("ENLACE_TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    }
}
