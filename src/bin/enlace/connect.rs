//! How the commands that talk to a node reach it: flags or `ENLACE_*` variables.

use std::path::PathBuf;
use std::time::Duration;

use enlace::{Client, ClientOptions};

use super::exit::{Failure, connect_failure};

/// How to reach your agency's node, shared by `send`, `inbox`, `status` and `dlq`.
#[derive(Debug, clap::Args)]
pub struct ConnectArgs {
    /// The node's address: host:port, or ip:port with --server-name.
    #[arg(long, env = "ENLACE_NODE")]
    pub node: String,
    /// The node certificate's DNS name, e.g. dea-1.dea.enlace.example (default: the host of
    /// --node).
    #[arg(long, env = "ENLACE_SERVER_NAME")]
    pub server_name: Option<String>,
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
    /// The client options these flags describe.
    pub fn options(&self) -> ClientOptions {
        let o = ClientOptions::new(self.node.clone())
            .identity(&self.cert, &self.key)
            .trust(&self.ca);
        match &self.server_name {
            Some(n) => o.server_name(n.clone()),
            None => o,
        }
    }

    /// Connects with these options.
    pub async fn connect(&self) -> Result<Client, Failure> {
        Client::connect(self.options())
            .await
            .map_err(connect_failure)
    }
}

/// Parses a duration such as `90s`, `15m`, `6h`, `2d` or `250ms`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 90s, 15m, 6h or 2d"))?;
    let secs = match unit {
        "ms" => return Ok(Duration::from_millis(n)),
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
    Ok(Duration::from_secs(secs))
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
}
