//! Test harness: nodes on loopback with the committed test PKI (certs/test), real QUIC, real
//! config files and data directories in a temporary directory.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use enlace::network::LocalNetwork;
use enlace::node::{Event, RunningNode};
use enlace::{Accepted, Client, ClientOptions, Draft, Inbox, Mailbox, SubmitError};
use tokio::sync::broadcast;

pub mod netns;
pub mod raw;

/// Sending and waiting for the node's answer in one call, as most tests want it.
#[allow(async_fn_in_trait)]
pub trait SendAndWait {
    /// Hands `draft` over and waits for the node's acceptance (or refusal).
    async fn submit(&self, draft: Draft) -> Result<Accepted, SubmitError>;
}

impl SendAndWait for Client {
    async fn submit(&self, draft: Draft) -> Result<Accepted, SubmitError> {
        self.send(draft).await?.await
    }
}

/// A client that subscribed to its agency's inbox when it connected; its inbox is taken once.
pub struct Subscriber {
    pub client: Client,
    inbox: std::sync::Mutex<Option<Inbox>>,
}

impl Subscriber {
    /// The inbox (once).
    pub fn inbox(&self) -> Option<Inbox> {
        self.inbox.lock().unwrap().take()
    }
}

impl std::ops::Deref for Subscriber {
    type Target = Client;

    fn deref(&self) -> &Client {
        &self.client
    }
}

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

    /// One node `<agency>-1` per agency, linked only as `links` says (pairs of node names), each
    /// node's config extended with `extra` (by node name), all started.
    pub async fn federation(
        agencies: &[&str],
        links: &[(&str, &str)],
        extra: &[(&str, String)],
        limits: &[&str],
    ) -> TestNet {
        init_logging();
        let dir = tempfile::tempdir().unwrap();
        let mut net =
            LocalNetwork::mesh_with_limits(dir.path(), &certs(), agencies, limits).unwrap();
        for (node, text) in extra {
            net.extra.insert(node.to_string(), text.clone());
        }
        net.links(links).unwrap();
        let mut nodes = BTreeMap::new();
        for name in net.nodes.keys() {
            nodes.insert(name.clone(), net.start(name).await.unwrap());
        }
        TestNet { dir, net, nodes }
    }

    /// Writes the configs of a planned network and starts every node of it.
    pub async fn start(dir: tempfile::TempDir, net: LocalNetwork) -> TestNet {
        init_logging();
        net.write_configs().unwrap();
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
        let base = certs();
        self.options(agency, "duty-desk").identity(
            base.join(format!("{cert_stem}.pem")),
            base.join(format!("{cert_stem}.key.pem")),
        )
    }

    pub async fn client(&self, agency: &str, client: &str) -> Client {
        Client::connect(self.options(agency, client)).await.unwrap()
    }

    /// A client reading its agency's inbox.
    pub async fn subscriber(&self, agency: &str, client: &str) -> Subscriber {
        let client = self.client(agency, client).await;
        let inbox = client.subscribe(Mailbox::Inbox).await.unwrap();
        Subscriber {
            client,
            inbox: std::sync::Mutex::new(Some(inbox)),
        }
    }

    /// The address of the first node of `agency`.
    pub fn addr(&self, agency: &str) -> std::net::SocketAddr {
        self.net.node_of(agency).unwrap().addr
    }

    /// The certificate name of the first node of `agency`.
    pub fn server_name(&self, agency: &str) -> String {
        let node = &self.net.node_of(agency).unwrap().name;
        self.net.server_name(agency, node)
    }

    /// Dials `agency`'s node with the raw client, presenting `cert_stem` and claiming `role`.
    pub async fn raw(
        &self,
        agency: &str,
        cert_stem: &str,
        role: enlace::pb::Role,
    ) -> Result<raw::Raw, raw::DialError> {
        let quic = raw::quic(raw::tls_config(cert_stem));
        raw::dial(self.addr(agency), &self.server_name(agency), quic, role).await
    }

    /// The `ENLACE_*` environment that points the `enlace` CLI at `agency`'s node as `client`.
    pub fn cli_env(&self, agency: &str, client: &str) -> Vec<(&'static str, String)> {
        let c = certs().join(format!("clients/{agency}/{client}"));
        vec![
            ("ENLACE_NODE", self.addr(agency).to_string()),
            ("ENLACE_SERVER_NAME", self.server_name(agency)),
            ("ENLACE_CERT", format!("{}.pem", c.display())),
            ("ENLACE_KEY", format!("{}.key.pem", c.display())),
            (
                "ENLACE_CA",
                certs().join("ca/root.pem").display().to_string(),
            ),
        ]
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

/// A real `enlaced` process.
pub struct Daemon {
    pub child: std::process::Child,
    pub logs: std::sync::mpsc::Receiver<String>,
    /// The lines it logged while starting, up to `node listening`.
    pub startup: Vec<String>,
}

impl Daemon {
    /// Starts `enlaced --config <config>` and waits until it logs that it listens.
    pub fn start(config: &Path) -> Daemon {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_enlaced"));
        cmd.arg("--config").arg(config);
        Daemon::spawn(cmd)
    }

    /// Runs `cmd`, which must start `enlaced` (possibly through a wrapper that execs it, such
    /// as `ip netns exec`), and waits until it logs that it listens.
    pub fn spawn(mut cmd: std::process::Command) -> Daemon {
        use std::io::{BufRead, BufReader};
        let mut child = cmd
            .env("NO_COLOR", "1")
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().expect("stderr is piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut d = Daemon {
            child,
            logs: rx,
            startup: Vec::new(),
        };
        loop {
            match d.logs.recv_timeout(Duration::from_secs(30)) {
                Ok(line) if line.contains("node listening") => return d,
                Ok(line) => d.startup.push(line),
                Err(e) => {
                    d.kill9();
                    panic!("enlaced did not start: {e}");
                }
            }
        }
    }

    /// Forgets the log lines read so far, so that [`Daemon::wait_log`] sees only later ones.
    pub fn skip_logs(&self) {
        while self.logs.try_recv().is_ok() {}
    }

    /// Waits (bounded) for a log line containing every one of `words`, consuming the lines
    /// before it; `None` if none came in time. Blocks the thread: call it through
    /// `tokio::task::block_in_place` from an async test.
    pub fn wait_log(&self, limit: Duration, words: &[&str]) -> Option<String> {
        let deadline = std::time::Instant::now() + limit;
        loop {
            let left = deadline.checked_duration_since(std::time::Instant::now())?;
            match self.logs.recv_timeout(left) {
                Ok(line) if words.iter().all(|w| line.contains(w)) => return Some(line),
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
    }

    /// Kills the process with SIGKILL (no chance to clean up) and reaps it.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM, waits for the exit status, and returns it with the log lines not yet read.
    pub fn terminate_keep_logs(mut self) -> (std::process::ExitStatus, Vec<String>) {
        let pid = self.child.id().to_string();
        let ok = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        assert!(ok.success());
        let status = self.child.wait().unwrap();
        // The stderr reader ends with the process; collect everything it read.
        let mut lines = Vec::new();
        while let Ok(l) = self.logs.recv_timeout(Duration::from_secs(5)) {
            lines.push(l);
        }
        (status, lines)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // A test that fails midway must not leave a daemon running.
        if matches!(self.child.try_wait(), Ok(None)) {
            self.kill9();
        }
    }
}
