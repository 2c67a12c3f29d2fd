//! [`ClientOptions`]: where a client's node is, who the client is, and how it behaves.
//!
//! A builder: start from the node's address, add the client's certificate and key and the
//! federation's trust bundle, adjust the rest if the defaults do not suit. Files are read when
//! the client connects, so building options does no I/O.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::inbox::Dedup;
use crate::error::{ClientError, ConnectError};
use crate::tls::TlsMaterial;

/// How long a client waits for its node to authorize the connection, by default.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Analytical bytes a client keeps unanswered on its pipelined stream, by default.
pub const DEFAULT_WINDOW_BYTES: usize = 128 * 1024;

/// How long [`Client::close`](crate::Client::close) waits for acknowledgements to reach the
/// node, by default.
pub const DEFAULT_CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Deliveries buffered per subscription before the client stops taking more, by default.
pub const DEFAULT_INBOX_CAPACITY: usize = 1024;

/// How a client retries a message its node refused as busy (`QUEUE_FULL`): after the node's
/// retry-after (or `initial`, doubling up to `max_delay`), for at most `max_wait` in all. The
/// acceptance then reports how many retries it took ([`Accepted::busy_retries`]); past
/// `max_wait` the refusal is returned.
///
/// ```
/// use std::time::Duration;
/// use enlace::BusyRetry;
///
/// let patient = BusyRetry { max_wait: Duration::from_secs(300), ..BusyRetry::default() };
/// assert!(patient.max_wait > BusyRetry::default().max_wait);
/// assert_eq!(BusyRetry::never().max_wait, Duration::ZERO);
/// ```
///
/// [`Accepted::busy_retries`]: crate::Accepted::busy_retries
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BusyRetry {
    /// The first wait when the node did not say how long (default 100 ms); it doubles with
    /// each further retry.
    pub initial: Duration,
    /// The longest single wait, whatever the node suggests (default 2 s).
    pub max_delay: Duration,
    /// The most time spent retrying one message (default 60 s); zero never retries.
    pub max_wait: Duration,
}

impl Default for BusyRetry {
    fn default() -> BusyRetry {
        BusyRetry {
            initial: Duration::from_millis(100),
            max_delay: Duration::from_secs(2),
            max_wait: Duration::from_secs(60),
        }
    }
}

impl BusyRetry {
    /// Never retry: a busy refusal is returned at once.
    ///
    /// ```
    /// let opts = enlace::ClientOptions::new("dea-1.dea.enlace.example:7400")
    ///     .busy_retry(enlace::BusyRetry::never());
    /// ```
    pub fn never() -> BusyRetry {
        BusyRetry {
            max_wait: Duration::ZERO,
            ..BusyRetry::default()
        }
    }

    /// The wait before retry number `n` (1 for the first), given the node's suggestion.
    pub(crate) fn delay(&self, n: u32, suggested: Option<Duration>) -> Duration {
        let backoff = self.initial * (1u32 << n.saturating_sub(1).min(16));
        suggested.unwrap_or(backoff).min(self.max_delay)
    }
}

/// How to reach and authenticate to a node, and how the client behaves.
///
/// ```
/// use enlace::ClientOptions;
///
/// let opts = ClientOptions::new("dea-1.dea.enlace.example:7400")
///     .identity("pki/clients/dea/duty-desk.pem", "pki/clients/dea/duty-desk.key.pem")
///     .trust("pki/ca/root.pem");
/// ```
///
/// With an IP address instead of a host name, name the node certificate's DNS name:
///
/// ```
/// use enlace::ClientOptions;
///
/// let opts = ClientOptions::new("192.0.2.10:7400")
///     .server_name("dea-1.dea.enlace.example")
///     .identity("duty-desk.pem", "duty-desk.key.pem")
///     .trust("root.pem");
/// ```
#[derive(Clone)]
pub struct ClientOptions {
    pub(crate) node: String,
    pub(crate) server_name: Option<String>,
    identity: Option<(PathBuf, PathBuf)>,
    trust: Option<PathBuf>,
    pub(crate) connect_timeout: Duration,
    pub(crate) inbox_capacity: usize,
    pub(crate) window_bytes: usize,
    pub(crate) busy_retry: BusyRetry,
    pub(crate) close_timeout: Duration,
    pub(crate) dedup: Dedup,
}

impl std::fmt::Debug for ClientOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientOptions")
            .field("node", &self.node)
            .field("server_name", &self.server_name)
            .field("identity", &self.identity)
            .field("trust", &self.trust)
            .finish_non_exhaustive()
    }
}

impl ClientOptions {
    /// Options for the node at `node`: `host:port` (a DNS name, resolved when connecting, which
    /// is also the name its certificate must carry) or `ip:port` (then give
    /// [`ClientOptions::server_name`]).
    ///
    /// ```
    /// let opts = enlace::ClientOptions::new("dea-1.dea.enlace.example:7400");
    /// ```
    pub fn new(node: impl Into<String>) -> ClientOptions {
        ClientOptions {
            node: node.into(),
            server_name: None,
            identity: None,
            trust: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            inbox_capacity: DEFAULT_INBOX_CAPACITY,
            window_bytes: DEFAULT_WINDOW_BYTES,
            busy_retry: BusyRetry::default(),
            close_timeout: DEFAULT_CLOSE_TIMEOUT,
            dedup: Dedup::default(),
        }
    }

    /// The client's certificate chain (PEM: leaf, then its agency's CA) and private key (PEM,
    /// PKCS#8). Required. The client signs every envelope it sends with this key.
    ///
    /// ```
    /// # let opts = enlace::ClientOptions::new("dea-1.dea.enlace.example:7400");
    /// let opts = opts.identity("duty-desk.pem", "duty-desk.key.pem");
    /// ```
    pub fn identity(mut self, cert: impl AsRef<Path>, key: impl AsRef<Path>) -> ClientOptions {
        self.identity = Some((cert.as_ref().to_owned(), key.as_ref().to_owned()));
        self
    }

    /// The federation's trust bundle (PEM). Required.
    ///
    /// ```
    /// # let opts = enlace::ClientOptions::new("dea-1.dea.enlace.example:7400");
    /// let opts = opts.trust("pki/ca/root.pem");
    /// ```
    pub fn trust(mut self, ca: impl AsRef<Path>) -> ClientOptions {
        self.trust = Some(ca.as_ref().to_owned());
        self
    }

    /// The DNS name in the node's certificate (default: the host of the address).
    ///
    /// ```
    /// # let opts = enlace::ClientOptions::new("127.0.0.1:7400");
    /// let opts = opts.server_name("dea-1.dea.enlace.test");
    /// ```
    pub fn server_name(mut self, name: impl Into<String>) -> ClientOptions {
        self.server_name = Some(name.into());
        self
    }

    /// How long to wait for the node to authorize the connection (default 10 s).
    ///
    /// ```
    /// # let opts = enlace::ClientOptions::new("dea-1.dea.enlace.example:7400");
    /// let opts = opts.connect_timeout(std::time::Duration::from_secs(3));
    /// ```
    pub fn connect_timeout(mut self, d: Duration) -> ClientOptions {
        self.connect_timeout = d;
        self
    }

    /// Deliveries buffered per subscription before the client stops taking more (default 1024).
    /// When the application does not read, the node's delivery windows fill and it waits.
    ///
    /// ```
    /// # let opts = enlace::ClientOptions::new("dea-1.dea.enlace.example:7400");
    /// let opts = opts.inbox_capacity(256);
    /// ```
    pub fn inbox_capacity(mut self, n: usize) -> ClientOptions {
        self.inbox_capacity = n.max(1);
        self
    }

    /// Analytical (ROUTINE, BULK) bytes kept unanswered on the pipelined stream (default
    /// 128 KiB). More keeps more in flight toward a node whose disk is slow to confirm; less
    /// leaves more of the connection to alerts. [`Client::send`](crate::Client::send) waits for
    /// room in this window.
    ///
    /// ```
    /// # let opts = enlace::ClientOptions::new("dea-1.dea.enlace.example:7400");
    /// let opts = opts.window_bytes(1024 * 1024);
    /// ```
    pub fn window_bytes(mut self, n: usize) -> ClientOptions {
        self.window_bytes = n.clamp(1024, u32::MAX as usize);
        self
    }

    /// How messages refused as busy are retried (default: [`BusyRetry::default`], up to a
    /// minute).
    ///
    /// ```
    /// # let opts = enlace::ClientOptions::new("dea-1.dea.enlace.example:7400");
    /// let opts = opts.busy_retry(enlace::BusyRetry::never());
    /// ```
    pub fn busy_retry(mut self, r: BusyRetry) -> ClientOptions {
        self.busy_retry = r;
        self
    }

    /// How long [`Client::close`](crate::Client::close) waits for acknowledgements and
    /// submissions in flight (default 2 s).
    ///
    /// ```
    /// # let opts = enlace::ClientOptions::new("dea-1.dea.enlace.example:7400");
    /// let opts = opts.close_timeout(std::time::Duration::from_millis(500));
    /// ```
    pub fn close_timeout(mut self, d: Duration) -> ClientOptions {
        self.close_timeout = d;
        self
    }

    /// The memory of acknowledged message ids the client shares with others (default: its
    /// own). Give the client that replaces one whose connection was lost the same [`Dedup`], so
    /// a redelivery after a node restart is dropped too.
    ///
    /// ```
    /// let seen = enlace::Dedup::default();
    /// let opts = enlace::ClientOptions::new("dea-1.dea.enlace.example:7400").dedup(seen.clone());
    /// ```
    pub fn dedup(mut self, d: Dedup) -> ClientOptions {
        self.dedup = d;
        self
    }

    /// Loads the certificate, key and trust bundle.
    pub(crate) fn material(&self) -> Result<TlsMaterial, ClientError> {
        let (cert, key) = self.identity.as_ref().ok_or_else(|| {
            ClientError::Options("no identity: give ClientOptions::identity(cert, key)".into())
        })?;
        let ca = self.trust.as_ref().ok_or_else(|| {
            ClientError::Options("no trust bundle: give ClientOptions::trust(ca)".into())
        })?;
        Ok(TlsMaterial::load(cert, key, ca, &[])?)
    }

    /// The node's address, resolved, and the name its certificate must carry.
    pub(crate) async fn resolve(&self) -> Result<(SocketAddr, String), ClientError> {
        let bad = |reason: String| ConnectError::Connect {
            addr: self.node.clone(),
            reason,
        };
        let (host, _) = self
            .node
            .rsplit_once(':')
            .ok_or_else(|| bad("not host:port".into()))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let addr = tokio::net::lookup_host(&self.node)
            .await
            .map_err(|e| bad(e.to_string()))?
            .next()
            .ok_or_else(|| bad("the name resolves to no address".into()))?;
        let name = match &self.server_name {
            Some(n) => n.clone(),
            None if host.parse::<std::net::IpAddr>().is_ok() => {
                return Err(ClientError::Options(format!(
                    "{} is an IP address: give ClientOptions::server_name (the node \
                     certificate's DNS name)",
                    self.node
                )));
            }
            None => host.to_owned(),
        };
        Ok((addr, name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn addresses_resolve_and_name_the_certificate() {
        let o = ClientOptions::new("127.0.0.1:7400").server_name("dea-1.dea.enlace.test");
        let (addr, name) = o.resolve().await.unwrap();
        assert_eq!(addr.to_string(), "127.0.0.1:7400");
        assert_eq!(name, "dea-1.dea.enlace.test");
        let (addr, name) = ClientOptions::new("localhost:7400")
            .resolve()
            .await
            .unwrap();
        assert_eq!((addr.port(), name.as_str()), (7400, "localhost"));
        let e = ClientOptions::new("127.0.0.1:7400")
            .resolve()
            .await
            .unwrap_err();
        assert!(e.to_string().contains("server_name"), "{e}");
        assert!(ClientOptions::new("no-port").resolve().await.is_err());
        let e = ClientOptions::new("x:1").material().err().unwrap();
        assert!(e.to_string().contains("identity"), "{e}");
    }

    #[test]
    fn busy_retry_waits_as_told_or_backs_off() {
        let r = BusyRetry::default();
        assert_eq!(r.delay(1, None), Duration::from_millis(100));
        assert_eq!(r.delay(3, None), Duration::from_millis(400));
        assert_eq!(r.delay(30, None), r.max_delay);
        let told = Some(Duration::from_millis(500));
        assert_eq!(r.delay(1, told), Duration::from_millis(500));
    }
}
