//! A local federation of nodes on loopback: config files, ports and client options over an
//! existing PKI directory. Used by `enlace demo`, the integration tests and the benchmark.
//!
//! It writes real config files (the same format `enlaced --config` reads) and starts nodes from
//! them, so everything it runs goes through the production config path. It does not create the
//! PKI (see [`crate::pki`]).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};

use crate::client::ClientOptions;
use crate::config::Config;
use crate::identity::Role;
use crate::node::{self, NodeError, RunningNode};
use crate::pki::{Pki, PkiError, node_dns_name};

/// One node of a local network.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    /// The agency the node serves, e.g. `dea`; the PKI must have its issuing CA.
    pub agency: String,
    /// The node's name, e.g. `dea-1`; the PKI must have its node certificate.
    pub name: String,
    /// The loopback address it listens on (`node.listen`).
    pub addr: SocketAddr,
    /// The loopback TCP address of its metrics and health endpoint (`metrics.listen`); `None`
    /// turns the endpoint off.
    pub metrics: Option<SocketAddr>,
    /// Peer node names.
    pub peers: Vec<String>,
}

/// Why a local network could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// The PKI directory could not be opened (it must exist already: see
    /// [`Pki::federation`](crate::pki::Pki::federation)).
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// A directory or config file could not be written, or no free loopback port was found.
    #[error("I/O on {path}: {reason}")]
    Io {
        /// The file or directory (`127.0.0.1:0` when binding a port failed).
        path: PathBuf,
        /// The operating system's error.
        reason: String,
    },
    /// A node's config file does not load: usually extra lines given in
    /// [`LocalNetwork::limits`], [`LocalNetwork::extra`] or [`LocalNetwork::node_extra`] that
    /// the config rejects.
    #[error("config {path}: {reason}")]
    Config {
        /// The config file.
        path: PathBuf,
        /// The [`ConfigError`](crate::ConfigError), in words.
        reason: String,
    },
    /// A node could not start (see [`NodeError`]).
    #[error(transparent)]
    Node(#[from] NodeError),
    /// The network has no such node (or no node of the agency asked for). Holds what was asked.
    #[error("no node named {0}")]
    NoSuchNode(String),
}

/// Config files for a set of nodes over one PKI directory.
pub struct LocalNetwork {
    /// The network's directory (absolute): configs in `config/`, node data in `data/`.
    pub dir: PathBuf,
    /// The PKI whose certificates the nodes and clients use.
    pub pki: Pki,
    /// The nodes, by name. After changing them, call [`LocalNetwork::write_configs`].
    pub nodes: BTreeMap<String, NodeSpec>,
    /// Extra `key = value` lines for every node's `[limits]` table (tests shorten timeouts).
    pub limits: Vec<String>,
    /// Extra config text appended to a node's file, by node name (an `[agencies.<id>]`
    /// directory, `[routes]`).
    pub extra: BTreeMap<String, String>,
    /// Extra `key = value` lines for a node's `[node]` table, by node name (e.g.
    /// `escalation_unit = "24x7-desk"`).
    pub node_extra: BTreeMap<String, String>,
    /// Mailbox grants written to every node (`""` is the agency inbox, else a unit): who may
    /// read it besides its owner, as `readers` entries (a client name or `role:client`). See
    /// [`LocalNetwork::default_readers`].
    pub readers: BTreeMap<String, Vec<String>>,
    /// Policy file text by node name, instead of [`LocalNetwork::open_policy`]'s (written to
    /// `<dir>/config/<node>.policy.toml`).
    pub policies: BTreeMap<String, String>,
}

impl LocalNetwork {
    /// Plans one node `<agency>-1` per agency, fully meshed, on free loopback ports, and writes
    /// their configs to `<dir>/config/<node>.toml` (data in `<dir>/data/<node>`).
    pub fn mesh(
        dir: &Path,
        pki_dir: &Path,
        agencies: &[&str],
    ) -> Result<LocalNetwork, NetworkError> {
        LocalNetwork::mesh_with_limits(dir, pki_dir, agencies, &[])
    }

    /// Like [`LocalNetwork::mesh`], with extra `[limits]` lines such as `"ack_timeout_ms = 200"`.
    pub fn mesh_with_limits(
        dir: &Path,
        pki_dir: &Path,
        agencies: &[&str],
        limits: &[&str],
    ) -> Result<LocalNetwork, NetworkError> {
        let names: Vec<String> = agencies.iter().map(|a| format!("{a}-1")).collect();
        let mut nodes = BTreeMap::new();
        for (agency, name) in agencies.iter().zip(&names) {
            let peers = names.iter().filter(|n| *n != name).cloned().collect();
            nodes.insert(
                name.clone(),
                NodeSpec {
                    agency: (*agency).to_owned(),
                    name: name.clone(),
                    addr: free_port()?,
                    // Port 0: the node binds a free one (see `RunningNode::metrics_addr`); a port picked
                    // ahead could be taken by then.
                    metrics: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
                    peers,
                },
            );
        }
        let mut net = LocalNetwork::plan(dir, pki_dir, nodes)?;
        net.limits = limits.iter().map(|l| l.to_string()).collect();
        net.write_configs()?;
        Ok(net)
    }

    /// Plans a network of the given nodes over a PKI directory; nothing is written yet.
    pub fn plan(
        dir: &Path,
        pki_dir: &Path,
        nodes: BTreeMap<String, NodeSpec>,
    ) -> Result<LocalNetwork, NetworkError> {
        // Config files resolve relative paths against their own directory: write absolute ones.
        let absolute = |p: &Path| {
            std::path::absolute(p).map_err(|e| NetworkError::Io {
                path: p.to_owned(),
                reason: e.to_string(),
            })
        };
        Ok(LocalNetwork {
            dir: absolute(dir)?,
            pki: Pki::open(&absolute(pki_dir)?)?,
            nodes,
            limits: Vec::new(),
            extra: BTreeMap::new(),
            node_extra: BTreeMap::new(),
            readers: LocalNetwork::default_readers(),
            policies: BTreeMap::new(),
        })
    }

    /// The grants of a local network: every client reads its agency's inbox; `duty-desk` reads
    /// the `24x7-desk` and `alerts` units, `analyst` the `records` unit (what the demo and
    /// `enlace bench` use). Every client reads its own unit and receipts without a grant.
    pub fn default_readers() -> BTreeMap<String, Vec<String>> {
        let r = |unit: &str, who: &str| (unit.to_owned(), vec![who.to_owned()]);
        BTreeMap::from([
            r("", "role:client"),
            r("24x7-desk", "duty-desk"),
            r("alerts", "duty-desk"),
            r("records", "analyst"),
        ])
    }

    /// Writes every node's config file and policy file.
    pub fn write_configs(&self) -> Result<(), NetworkError> {
        for spec in self.nodes.values() {
            write(&self.config_path(&spec.name), &self.render(spec))?;
            self.write_policy(spec)?;
        }
        Ok(())
    }

    /// Writes a node's policy file: its entry in [`LocalNetwork::policies`], or else
    /// [`LocalNetwork::open_policy`].
    pub fn write_policy(&self, spec: &NodeSpec) -> Result<(), NetworkError> {
        let policy = match self.policies.get(&spec.name) {
            Some(p) => p.clone(),
            None => self.open_policy(&spec.agency),
        };
        write(&self.policy_path(&spec.name), &policy)
    }

    /// Where a node's policy file is.
    pub fn policy_path(&self, node: &str) -> PathBuf {
        self.dir.join("config").join(format!("{node}.policy.toml"))
    }

    /// The policy of a laboratory network, for the node of `agency`: every agency may send
    /// every type at any precedence and label to every other (one agreement from `"*"` to
    /// `"*"`, so that relays carry everyone's traffic too), and every client of `agency` may
    /// send and receive everything.
    pub fn open_policy(&self, agency: &str) -> String {
        let mut s = format!(
            "# Policy of agency {agency} in a local network (generated by enlace): everything \
             allowed.\n[policy]\nagency = \"{agency}\"\n\n\
             [[agreements]]\nid = \"laboratory\"\nfrom = \"*\"\nto = \"*\"\n\
             payload_types = [\"*\"]\nmax_precedence = \"FLASH\"\n\
             legal_basis = {{ text = \"laboratory network\", reference = \"LAB\" }}\n"
        );
        s.push_str(
            "\n[[send]]\nid = \"clients-send\"\nclients = [\"role:client\"]\n\
             payload_types = [\"*\"]\nmax_precedence = \"FLASH\"\n\
             \n[[receive]]\nid = \"clients-receive\"\nclients = [\"role:client\"]\n\
             payload_types = [\"*\"]\n",
        );
        s
    }

    /// Node `node`'s data directory (`node.data_dir`): its store, delivery log and state.
    pub fn data_dir(&self, node: &str) -> PathBuf {
        self.dir.join("data").join(node)
    }

    /// Where a node's config file is.
    pub fn config_path(&self, node: &str) -> PathBuf {
        self.dir.join("config").join(format!("{node}.toml"))
    }

    /// The config file text for a node.
    pub fn render(&self, spec: &NodeSpec) -> String {
        let td = self.pki.trust_domain();
        let leaf = self.pki.leaf_paths(&spec.agency, &spec.name, Role::Node);
        let mut s = String::new();
        // Writing to a String cannot fail.
        let _ = write!(
            s,
            "# Node {name} of agency {agency} (generated by enlace for a local network).\n\
             [node]\nname = \"{name}\"\nagency = \"{agency}\"\ntrust_domain = \"{td}\"\n\
             listen = \"{addr}\"\ndata_dir = \"{data}\"\npolicy = \"{policy}\"\n{node_extra}\n\
             [tls]\ncert = \"{cert}\"\nkey = \"{key}\"\nca = \"{ca}\"\ncrl_dir = \"{crl}\"\n\n\
             [log]\nformat = \"human\"\nlevel = \"info\"\n\n[metrics]\nlisten = \"{metrics}\"\n\n\
             [limits]\n{limits}",
            name = spec.name,
            agency = spec.agency,
            addr = spec.addr,
            metrics = spec.metrics.map(|a| a.to_string()).unwrap_or_default(),
            node_extra = self
                .node_extra
                .get(&spec.name)
                .map(|l| format!("{l}\n"))
                .unwrap_or_default(),
            data = self.data_dir(&spec.name).display(),
            policy = self.policy_path(&spec.name).display(),
            cert = leaf.cert.display(),
            key = leaf.key.display(),
            ca = self.pki.root_cert_path().display(),
            crl = self.pki.dir().join("crl").display(),
            limits = self
                .limits
                .iter()
                .map(|l| format!("{l}\n"))
                .collect::<String>(),
        );
        for p in &spec.peers {
            if let Some(peer) = self.nodes.get(p) {
                let _ = write!(
                    s,
                    "\n[[peers]]\nnode = \"{}\"\nagency = \"{}\"\naddress = \"{}\"\n",
                    peer.name, peer.agency, peer.addr
                );
            }
        }
        for (unit, readers) in &self.readers {
            let table = match unit.as_str() {
                "" => "inbox".to_owned(),
                u => format!("units.{u}"),
            };
            let list: Vec<String> = readers.iter().map(|r| format!("{r:?}")).collect();
            let _ = write!(s, "\n[{table}]\nreaders = [{}]\n", list.join(", "));
        }
        if let Some(extra) = self.extra.get(&spec.name) {
            s.push('\n');
            s.push_str(extra);
        }
        s
    }

    /// Keeps only the given links (pairs of node names, both ways) instead of a full mesh, and
    /// rewrites the configs.
    pub fn links(&mut self, pairs: &[(&str, &str)]) -> Result<(), NetworkError> {
        for spec in self.nodes.values_mut() {
            spec.peers = pairs
                .iter()
                .filter_map(|&(a, b)| match spec.name.as_str() {
                    n if n == a => Some(b.to_owned()),
                    n if n == b => Some(a.to_owned()),
                    _ => None,
                })
                .collect();
        }
        self.write_configs()
    }

    /// Loads a node's config file.
    pub fn config(&self, node: &str) -> Result<Config, NetworkError> {
        let path = self.config_path(node);
        Config::load(&path).map_err(|e| NetworkError::Config {
            path,
            reason: e.to_string(),
        })
    }

    /// QUIC as node `node` sets it up, without the node: a quinn endpoint on a free loopback
    /// port with the node's TLS material, transport settings and socket buffers (accepting
    /// connections as the node does, client certificate required), and the client config it
    /// dials its peers with. For measuring quinn alone beside the nodes (`enlace bench
    /// --scenario raw-quic`). Call it within a tokio runtime: the endpoint's driver runs there.
    pub fn raw_quic(
        &self,
        node: &str,
    ) -> Result<(quinn::Endpoint, quinn::ClientConfig), NetworkError> {
        use crate::tls;
        let t = self.config(node)?.tls;
        let quic = || -> Result<_, tls::TlsError> {
            let material = tls::TlsMaterial::load(&t.cert, &t.key, &t.ca, &t.crls)?;
            let server = tls::quic_server_config(material.server_config()?)?;
            let client = tls::quic_client_config(material.client_config()?)?;
            let any = SocketAddr::from(([127, 0, 0, 1], 0));
            Ok((tls::endpoint(any, Some(server), None)?, client))
        };
        Ok(quic().map_err(NodeError::from)?)
    }

    /// Starts a node in this process from its config file.
    ///
    /// A node restarted in the same process rebinds the addresses its previous run held: quinn
    /// releases its socket when its endpoint driver next runs, after `stop` has returned (and
    /// the metrics listener goes with its task), so an address still in use is retried for up
    /// to two seconds.
    pub async fn start(&self, node: &str) -> Result<RunningNode, NetworkError> {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(2);
        loop {
            match node::start(self.config(node)?).await {
                Err(
                    node::NodeError::Tls(crate::tls::TlsError::Bind { kind, .. })
                    | node::NodeError::MetricsBind { kind, .. },
                ) if kind == std::io::ErrorKind::AddrInUse
                    && tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
                r => return Ok(r?),
            }
        }
    }

    /// Client options for `agency/client` (its certificate in the PKI) connecting to its
    /// agency's first node.
    ///
    /// # Errors
    /// [`NetworkError::NoSuchNode`] when the network has no node of `agency`.
    pub fn client_options(
        &self,
        agency: &str,
        client: &str,
    ) -> Result<ClientOptions, NetworkError> {
        let spec = self.node_of(agency)?;
        let leaf = self.pki.leaf_paths(agency, client, Role::Client);
        Ok(ClientOptions::new(spec.addr.to_string())
            .server_name(self.server_name(agency, &spec.name))
            .identity(&leaf.cert, &leaf.key)
            .trust(self.pki.root_cert_path()))
    }

    /// The first node of `agency`.
    ///
    /// # Errors
    /// [`NetworkError::NoSuchNode`] when there is none.
    pub fn node_of(&self, agency: &str) -> Result<&NodeSpec, NetworkError> {
        self.nodes
            .values()
            .find(|n| n.agency == agency)
            .ok_or_else(|| NetworkError::NoSuchNode(format!("(node of agency {agency})")))
    }

    /// The DNS name in the certificate of node `node` of `agency`.
    pub fn server_name(&self, agency: &str, node: &str) -> String {
        node_dns_name(self.pki.trust_domain(), agency, node)
    }
}

fn write(path: &Path, text: &str) -> Result<(), NetworkError> {
    let io = |e: std::io::Error| NetworkError::Io {
        path: path.to_owned(),
        reason: e.to_string(),
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    std::fs::write(path, text).map_err(io)
}

/// A loopback UDP port that was free a moment ago. The kernel hands out ephemeral ports in a
/// rotating order, so a port just released is not reused at once.
pub fn free_port() -> Result<SocketAddr, NetworkError> {
    let s = UdpSocket::bind("127.0.0.1:0").map_err(|e| NetworkError::Io {
        path: PathBuf::from("127.0.0.1:0"),
        reason: e.to_string(),
    })?;
    s.local_addr().map_err(|e| NetworkError::Io {
        path: PathBuf::from("127.0.0.1:0"),
        reason: e.to_string(),
    })
}

/// A loopback TCP port that was free a moment ago (for a metrics endpoint).
pub fn free_tcp_port() -> Result<SocketAddr, NetworkError> {
    let io = |e: std::io::Error| NetworkError::Io {
        path: PathBuf::from("127.0.0.1:0"),
        reason: e.to_string(),
    };
    TcpListener::bind("127.0.0.1:0")
        .map_err(io)?
        .local_addr()
        .map_err(io)
}
