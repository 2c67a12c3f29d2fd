//! Linux network namespaces for fault tests on a real network path.
//!
//! A [`Lab`] creates uniquely named namespaces (the test process's pid and a counter are in every
//! name, so parallel tests and parallel test binaries never collide), joins them with veth pairs
//! on private addresses, and deletes everything on drop, also when the test panics. Each node
//! namespace gets an *uplink*: a veth pair to the root namespace, so the test's in-process
//! `enlace::Client` reaches the node directly; node-to-node traffic goes over a [`Link`], and
//! only links are faulted.
//!
//! The kernel here has no netem, so the faults are what nftables and tbf can do: a partition
//! (an nftables drop rule on the link), random loss (`numgen random mod 100 < N drop` on UDP), and
//! a slow link (a `tbf` qdisc, which tail-drops under load). Rules live in the namespace on the
//! link's first side and act on both directions.
//!
//! It does not decide whether a test runs: [`Lab::new`] says why it cannot (not root, no `ip`,
//! namespaces refused, no `nft`) and [`lab_or_skip`] turns that into a plain skip message, or a
//! failure where they are promised (`CI=true`, which `.ci/run` sets).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use super::Daemon;

/// The UDP port every node listens on inside its own namespace.
pub const NODE_PORT: u16 = 7400;

static LABS: AtomicU32 = AtomicU32::new(0);

/// Namespace names start with this, then the pid: stale ones of dead test processes are removed.
const PREFIX: &str = "enlace-t";

/// A set of namespaces and veth pairs, removed on drop.
pub struct Lab {
    /// Unique within the machine while this process lives: pid and counter, in hex (for
    /// interface names, at most 15 bytes) and in decimal (for namespace names).
    tag: String,
    id: String,
    /// This lab's private /24 is 10.`net[0]`.`net[1]`.0/24.
    net: [u8; 2],
    namespaces: Vec<String>,
    uplinks: u8,
    links: u8,
}

/// A node's namespace, as seen from the test.
#[derive(Debug, Clone)]
pub struct Ns {
    pub name: String,
    /// The node's address on its uplink, reachable from the test (root namespace).
    pub uplink_addr: IpAddr,
}

/// A veth pair between two namespaces.
#[derive(Debug, Clone)]
pub struct Link {
    /// The namespace where faults are applied, and its end of the pair.
    ns: String,
    dev: String,
    /// The other side, for a slow link in both directions.
    other_ns: String,
    other_dev: String,
    /// Addresses of the two ends.
    pub a_addr: IpAddr,
    pub b_addr: IpAddr,
}

/// Runs a command; its error says what ran and what it printed.
fn run(cmd: &mut Command) -> Result<Output, String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{:?}: {e}", cmd.get_program()))?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(format!(
            "{:?} {:?} exited with {}: {}",
            cmd.get_program(),
            cmd.get_args().collect::<Vec<_>>(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn ip(args: &[&str]) -> Result<Output, String> {
    run(Command::new("ip").args(args))
}

/// Runs `program args` inside namespace `ns`.
fn exec_in(ns: &str, program: &str, args: &[&str]) -> Result<Output, String> {
    run(Command::new("ip")
        .args(["netns", "exec", ns, program])
        .args(args))
}

/// Runs an nftables script inside namespace `ns`.
fn nft_in(ns: &str, script: &str) -> Result<(), String> {
    use std::io::Write;
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("ip netns exec {ns} nft: {e}"))?;
    // stdin is piped just above.
    let mut stdin = child.stdin.take().expect("stdin is piped");
    stdin
        .write_all(script.as_bytes())
        .map_err(|e| format!("writing the nft script: {e}"))?;
    drop(stdin);
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "nft in {ns} failed ({}): {}\nscript:\n{script}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Removes namespaces left by test processes that no longer exist (killed before their drop).
fn remove_stale() {
    let Ok(out) = ip(&["netns", "list"]) else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let pid = rest.split('-').next().unwrap_or("");
        if !pid.is_empty() && !Path::new("/proc").join(pid).exists() {
            let _ = ip(&["netns", "delete", name]);
        }
    }
}

impl Lab {
    /// Checks that namespaces can be made here and starts an empty lab.
    ///
    /// # Errors
    /// [`Unavailable`] saying why, when this machine cannot run these tests.
    pub fn new() -> Result<Lab, Unavailable> {
        let cannot = |reason: String| Unavailable::Namespaces(reason);
        match Command::new("ip").arg("-V").output() {
            Ok(o) if o.status.success() => {}
            Ok(o) => return Err(cannot(format!("`ip -V` exited with {}", o.status))),
            Err(e) => return Err(cannot(format!("iproute2's `ip` cannot be run: {e}"))),
        }
        remove_stale();
        let pid = std::process::id();
        let n = LABS.fetch_add(1, Ordering::Relaxed);
        // 16 bits of pid and counter pick the /24, so that concurrent labs (threads of one test
        // binary, or other test processes) use different addresses in the root namespace.
        let pick = (pid.wrapping_mul(64).wrapping_add(n)) & 0xffff;
        let mut lab = Lab {
            tag: format!("{pid:x}x{n:x}"),
            id: format!("{pid}-{n}"),
            net: [(pick >> 8) as u8, (pick & 0xff) as u8],
            namespaces: Vec::new(),
            uplinks: 0,
            links: 0,
        };
        // The first namespace is the real test of privileges and kernel support.
        let probe = format!("{PREFIX}{pid}-{n}-probe");
        ip(&["netns", "add", &probe]).map_err(cannot)?;
        lab.namespaces.push(probe.clone());
        match Command::new("nft").arg("--version").output() {
            Ok(o) if o.status.success() => {}
            Ok(o) => {
                return Err(Unavailable::Nft(format!(
                    "`nft --version` exited {}",
                    o.status
                )));
            }
            Err(e) => return Err(Unavailable::Nft(format!("`nft` cannot be run: {e}"))),
        }
        nft_in(&probe, "table inet probe\ndelete table inet probe\n").map_err(Unavailable::Nft)?;
        Ok(lab)
    }

    fn addr(&self, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, self.net[0], self.net[1], host)
    }

    /// A new namespace for a node, with `lo` up and an uplink from the root namespace.
    pub fn namespace(&mut self, label: &str) -> Result<Ns, String> {
        let name = format!("{PREFIX}{}-{label}", self.id);
        ip(&["netns", "add", &name])?;
        self.namespaces.push(name.clone());
        ip(&["-n", &name, "link", "set", "lo", "up"])?;
        // Uplink i: 10.x.y.(4i+1) in the root namespace, 10.x.y.(4i+2) in the node's.
        let i = self.uplinks;
        assert!(i < 32, "a lab has room for 32 uplinks");
        self.uplinks += 1;
        let root_dev = format!("e{}u{i}", self.tag);
        let (root_ip, ns_ip) = (self.addr(4 * i + 1), self.addr(4 * i + 2));
        ip(&[
            "link", "add", &root_dev, "type", "veth", "peer", "name", "uplink", "netns", &name,
        ])?;
        ip(&["addr", "add", &format!("{root_ip}/30"), "dev", &root_dev])?;
        ip(&["link", "set", &root_dev, "up"])?;
        ip(&[
            "-n",
            &name,
            "addr",
            "add",
            &format!("{ns_ip}/30"),
            "dev",
            "uplink",
        ])?;
        ip(&["-n", &name, "link", "set", "uplink", "up"])?;
        Ok(Ns {
            name,
            uplink_addr: IpAddr::V4(ns_ip),
        })
    }

    /// A veth pair between `a` and `b` on a private /30; faults apply in `a`.
    pub fn link(&mut self, a: &Ns, b: &Ns) -> Result<Link, String> {
        let j = self.links;
        assert!(j < 32, "a lab has room for 32 links");
        self.links += 1;
        let (a_ip, b_ip) = (self.addr(128 + 4 * j + 1), self.addr(128 + 4 * j + 2));
        let (a_dev, b_dev) = (format!("link{j}a"), format!("link{j}b"));
        ip(&[
            "link", "add", &a_dev, "netns", &a.name, "type", "veth", "peer", "name", &b_dev,
            "netns", &b.name,
        ])?;
        for (ns, dev, addr) in [(&a.name, &a_dev, a_ip), (&b.name, &b_dev, b_ip)] {
            ip(&["-n", ns, "addr", "add", &format!("{addr}/30"), "dev", dev])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
        }
        Ok(Link {
            ns: a.name.clone(),
            dev: a_dev,
            other_ns: b.name.clone(),
            other_dev: b_dev,
            a_addr: IpAddr::V4(a_ip),
            b_addr: IpAddr::V4(b_ip),
        })
    }

    /// Starts `enlaced --config <config>` inside `ns` and waits until it listens.
    pub fn daemon(&self, ns: &Ns, config: &Path) -> Daemon {
        let mut cmd = Command::new("ip");
        // `ip netns exec` execs the program after entering the namespace: the child's pid is
        // the daemon's, so `Daemon::kill9` and SIGTERM reach enlaced itself.
        cmd.args(["netns", "exec", &ns.name])
            .arg(env!("CARGO_BIN_EXE_enlaced"))
            .arg("--config")
            .arg(config);
        Daemon::spawn(cmd)
    }
}

impl Ns {
    /// Where the test's clients reach the node in this namespace.
    pub fn node_addr(&self) -> SocketAddr {
        SocketAddr::new(self.uplink_addr, NODE_PORT)
    }
}

/// The nftables table the faults live in; replacing it replaces the fault.
const FAULT_TABLE: &str = "inet enlace_fault";

impl Link {
    /// Replaces the link's nftables fault with `matcher` (ending in a verdict), in both
    /// directions.
    fn set_rule(&self, matcher: &str) -> Result<(), String> {
        let dev = &self.dev;
        nft_in(
            &self.ns,
            &format!(
                "table {FAULT_TABLE}\ndelete table {FAULT_TABLE}\ntable {FAULT_TABLE} {{\n\
                 chain input {{ type filter hook input priority 0; policy accept;\n\
                 iifname \"{dev}\" {matcher}; }}\n\
                 chain output {{ type filter hook output priority 0; policy accept;\n\
                 oifname \"{dev}\" {matcher}; }}\n}}\n"
            ),
        )
    }

    /// Drops every packet on the link, both ways: a partition (the interfaces stay up, so the
    /// nodes see silence, not errors).
    pub fn partition(&self) -> Result<(), String> {
        self.set_rule("counter drop")
    }

    /// Drops `percent` of the UDP packets on the link, both ways, at random.
    pub fn loss(&self, percent: u8) -> Result<(), String> {
        assert!(percent <= 100);
        self.set_rule(&format!(
            "meta l4proto udp numgen random mod 100 < {percent} counter drop"
        ))
    }

    /// Packets the current partition or loss rule has dropped, both directions together.
    pub fn dropped(&self) -> Result<u64, String> {
        let out = exec_in(&self.ns, "nft", &["list", "table", "inet", "enlace_fault"])?;
        let text = String::from_utf8_lossy(&out.stdout);
        let words: Vec<&str> = text.split_whitespace().collect();
        Ok(words
            .windows(2)
            .filter(|w| w[0] == "packets")
            .filter_map(|w| w[1].parse::<u64>().ok())
            .sum())
    }

    /// Packets the slow link's token buckets dropped (tail drop), both ends together.
    pub fn tail_dropped(&self) -> Result<u64, String> {
        let mut total = 0;
        for (ns, dev) in [(&self.ns, &self.dev), (&self.other_ns, &self.other_dev)] {
            let out = exec_in(ns, "tc", &["-s", "qdisc", "show", "dev", dev])?;
            let text = String::from_utf8_lossy(&out.stdout);
            // "Sent 123 bytes 45 pkt (dropped 6, overlimits 7 requeues 0)"
            total += text
                .split("(dropped ")
                .skip(1)
                .filter_map(|rest| rest.split(',').next()?.trim().parse::<u64>().ok())
                .sum::<u64>();
        }
        Ok(total)
    }

    /// Removes the partition or the loss rule.
    pub fn heal(&self) -> Result<(), String> {
        nft_in(
            &self.ns,
            &format!("table {FAULT_TABLE}\ndelete table {FAULT_TABLE}\n"),
        )
    }

    /// Shapes both directions to `rate` (tc syntax, e.g. "4mbit") with a token bucket: packets
    /// over the bucket and its queue (`latency`) are tail-dropped.
    pub fn slow(&self, rate: &str) -> Result<(), String> {
        for (ns, dev) in [(&self.ns, &self.dev), (&self.other_ns, &self.other_dev)] {
            exec_in(
                ns,
                "tc",
                &[
                    "qdisc", "replace", "dev", dev, "root", "tbf", "rate", rate, "burst", "32kbit",
                    "latency", "50ms",
                ],
            )?;
        }
        Ok(())
    }

    /// Sets the link's first end down or up (the other way to cut a link: senders see errors).
    pub fn set_up(&self, up: bool) -> Result<(), String> {
        let state = if up { "up" } else { "down" };
        ip(&["-n", &self.ns, "link", "set", &self.dev, state]).map(|_| ())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Deleting a namespace destroys its veth ends, and with them their peers in the root
        // namespace. Daemons must be gone first (see `Daemon`'s drop), or the namespace lingers
        // unnamed until they exit.
        for ns in self.namespaces.drain(..).rev() {
            if let Err(e) = ip(&["netns", "delete", &ns]) {
                eprintln!("netns lab cleanup: {e}");
            }
        }
    }
}

/// Why the namespace tests cannot run on this machine.
#[derive(Debug)]
pub enum Unavailable {
    /// Not root, no iproute2, or the kernel refused.
    Namespaces(String),
    /// Namespaces work, but nftables is missing or unusable.
    Nft(String),
}

/// A lab, or `None` after printing plainly why the test is skipped.
///
/// # Panics
/// When the lab cannot be built where it is promised: with `CI=true` (`.ci/run` runs as root
/// and installs iproute2 and nftables), or with `ENLACE_NETNS_REQUIRED=1`. Not root, no `ip`,
/// no `nft` there is a broken setup, not a reason to skip.
pub fn lab_or_skip(test: &str) -> Option<Lab> {
    let required = |var: &str, yes: &str| std::env::var(var).is_ok_and(|v| v == yes);
    match Lab::new() {
        Ok(lab) => Some(lab),
        Err(e) if required("CI", "true") || required("ENLACE_NETNS_REQUIRED", "1") => {
            panic!(
                "{test}: network namespaces and nftables are required here (CI=true or \
                 ENLACE_NETNS_REQUIRED=1; run as root with iproute2 and nftables): {e:?}"
            )
        }
        Err(Unavailable::Nft(reason)) => {
            eprintln!("{test}: skipped: nftables is not available: {reason}");
            None
        }
        Err(Unavailable::Namespaces(reason)) => {
            eprintln!("{test}: skipped: cannot create network namespaces: {reason}");
            None
        }
    }
}
