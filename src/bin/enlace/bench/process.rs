//! A node the bench runs as a process of its own (`enlaced`, next to this binary), so that its
//! memory is its own and a restart is a new process, as in production.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use enlace::Client;
use enlace::network::LocalNetwork;

/// How long a node process may take to serve after it was started.
const READY_LIMIT: Duration = Duration::from_secs(60);

/// How long a node process may take to exit after SIGTERM (its shutdown grace and closing the
/// store) before it is killed.
const STOP_LIMIT: Duration = Duration::from_secs(30);

/// A node running as an `enlaced` process, its stderr in a file.
pub struct NodeProcess {
    child: Child,
    log: PathBuf,
}

impl NodeProcess {
    /// Starts `node` of `net` as a process, logging at `filter` (`ENLACE_LOG`, which must let
    /// `enlace::node::runtime`'s info lines through for [`NodeProcess::ready`]) into `log`.
    pub fn spawn(
        net: &LocalNetwork,
        node: &str,
        log: &Path,
        filter: &str,
    ) -> anyhow::Result<NodeProcess> {
        let exe = std::env::current_exe()?.with_file_name("enlaced");
        anyhow::ensure!(
            exe.exists(),
            "this scenario runs a node as a process: {} not found (build it with `cargo build \
             --release`)",
            exe.display()
        );
        let file = std::fs::File::create(log)?;
        let child = Command::new(&exe)
            .arg("--config")
            .arg(net.config_path(node))
            .env("ENLACE_LOG", filter)
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .with_context(|| format!("cannot start {}", exe.display()))?;
        Ok(NodeProcess {
            child,
            log: log.to_owned(),
        })
    }

    /// Waits until the node says it is listening (its log, store and queues open), then until
    /// `agency/client` can connect to it (its `Welcome` received). The log is watched first: a
    /// connection tried before the node's socket is bound would wait out its handshake timeout.
    pub async fn ready(
        &mut self,
        net: &LocalNetwork,
        agency: &str,
        client: &str,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_LIMIT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                anyhow::bail!("the node exited: {status} (see {})", self.log.display());
            }
            if self.log_text().contains("node listening") {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the node did not start listening within {READY_LIMIT:?} (see {})",
                self.log.display()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        loop {
            if let Some(status) = self.child.try_wait()? {
                anyhow::bail!("the node exited: {status} (see {})", self.log.display());
            }
            match Client::connect(net.client_options(agency, client)?).await {
                Ok(c) => {
                    c.close().await;
                    return Ok(());
                }
                Err(e) if Instant::now() > deadline => return Err(e.into()),
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    }

    /// Its process id, as `/proc` names it.
    pub fn pid(&self) -> String {
        self.child.id().to_string()
    }

    /// A memory figure of the process (`VmRSS`, `VmHWM`), in MB.
    pub fn rss_mb(&self, field: &str) -> f64 {
        status_mb(&self.pid(), field)
    }

    /// The text the process has logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Stops it as an operator does (SIGTERM: the shutdown grace, then the store closed) and
    /// waits for it to exit; kills it past [`STOP_LIMIT`] (by dropping it).
    pub async fn terminate(mut self) -> anyhow::Result<()> {
        let pid = rustix::process::Pid::from_child(&self.child);
        rustix::process::kill_process(pid, rustix::process::Signal::TERM)
            .context("cannot signal the node")?;
        let deadline = Instant::now() + STOP_LIMIT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                anyhow::ensure!(status.success(), "the node exited with {status}");
                return Ok(());
            }
            if Instant::now() > deadline {
                anyhow::bail!("the node did not exit within {STOP_LIMIT:?} of SIGTERM");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Kills it (SIGKILL) and reaps it, as dropping it does.
    pub fn kill(self) {}
}

/// A node process never outlives the bench: an error that drops it kills it.
impl Drop for NodeProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A `/proc/<pid>/status` memory figure (`VmRSS`, `VmHWM`) of process `pid` (`self` for this
/// one), in MB; 0 where /proc cannot say.
pub fn status_mb(pid: &str, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}
