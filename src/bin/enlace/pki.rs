//! `enlace pki`: create and maintain a development or test PKI directory (see `enlace::pki`).
//!
//! Thin glue: parses arguments, calls [`Pki`], prints every path it wrote. It makes no decisions
//! of its own and is no substitute for a production CA.

use std::path::{Path, PathBuf};

use anyhow::Context;

use enlace::Role;
use enlace::pki::{CaRef, DEMO_TRUST_DOMAIN, Pki, PkiOptions, Validity, demo_agencies};

/// Subcommands of `enlace pki`.
#[derive(Debug, clap::Subcommand)]
pub enum PkiCommand {
    /// Create a PKI directory: a new root CA (Ed25519, 10 years) and its empty CRL.
    ///
    /// ca/root.pem is the trust bundle to give every node and client.
    Init {
        /// The PKI directory (created if missing).
        #[arg(long)]
        dir: PathBuf,
        /// The federation's trust domain, e.g. enlace.example; it appears in every identity URI.
        #[arg(long)]
        trust_domain: String,
        /// Replace an existing root CA. Everything it signed stops being trusted.
        #[arg(long)]
        force: bool,
    },
    /// Create an agency's issuing CA (signed by the root, OU = agency id) and its empty CRL.
    Agency {
        /// The PKI directory.
        #[arg(long)]
        dir: PathBuf,
        /// Agency id: lowercase letters, digits and '-', e.g. dea.
        id: String,
        /// Name shown in the CA's common name ("<NAME> Issuing CA"); default: the id in upper
        /// case.
        #[arg(long)]
        display: Option<String>,
        /// Replace an existing CA of this agency. Everything it signed stops being trusted.
        #[arg(long)]
        force: bool,
    },
    /// Issue a node certificate: DNS name <node>.<agency>.<trust-domain>, server and client auth.
    ///
    /// Writes nodes/<agency>/<node>.pem (leaf then agency CA) and <node>.key.pem (mode 0600).
    Node {
        /// The PKI directory.
        #[arg(long)]
        dir: PathBuf,
        /// The issuing agency.
        #[arg(long)]
        agency: String,
        /// Node name, e.g. dea-1.
        name: String,
        /// Validity in days from now (default 730).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=36500))]
        days: Option<u32>,
        /// Replace an existing certificate and key of this node.
        #[arg(long)]
        force: bool,
    },
    /// Issue a client or operator certificate (client auth only, no DNS name).
    ///
    /// Writes clients/<agency>/<name>.pem (leaf then agency CA) and <name>.key.pem (mode 0600).
    Client {
        /// The PKI directory.
        #[arg(long)]
        dir: PathBuf,
        /// The issuing agency.
        #[arg(long)]
        agency: String,
        /// Client name, e.g. duty-desk.
        name: String,
        /// What the certificate permits.
        #[arg(long, value_enum, default_value_t = ClientRole::Client)]
        role: ClientRole,
        /// Validity in days from now (default 730).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=36500))]
        days: Option<u32>,
        /// Replace an existing certificate and key of this client.
        #[arg(long)]
        force: bool,
    },
    /// Revoke a certificate and regenerate the issuing CA's CRL.
    ///
    /// Nodes only see the new CRL once they reload it; live connections are not re-checked by
    /// TLS.
    Revoke {
        /// The PKI directory.
        #[arg(long)]
        dir: PathBuf,
        /// The agency CA that issued the certificate.
        #[arg(long, required_unless_present = "root", conflicts_with = "root")]
        agency: Option<String>,
        /// Revoke with the root CA (for agency CA certificates).
        #[arg(long)]
        root: bool,
        /// PEM file whose first certificate is the one to revoke.
        cert: PathBuf,
    },
    /// Regenerate every CRL (root and agencies) with fresh dates and higher CRL numbers.
    Crl {
        /// The PKI directory.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Create the demo federation: DEA, PGR, AFI and CENAPI, one node each plus clients.
    Demo {
        /// The PKI directory.
        #[arg(long)]
        dir: PathBuf,
        /// The federation's trust domain.
        #[arg(long, default_value = DEMO_TRUST_DOMAIN)]
        trust_domain: String,
        /// Replace existing files in the directory.
        #[arg(long, conflicts_with = "if_missing")]
        force: bool,
        /// Do nothing if the directory already holds a PKI (its root CA): for a one-shot setup
        /// job that runs at every start, such as the compose federation's `pki` service.
        #[arg(long)]
        if_missing: bool,
    },
    /// Write the test fixture set (trust domain enlace.test; see certs/README.md). Test only:
    /// the keys end up in the repository.
    TestFixtures {
        /// Where to write them; the committed set lives in certs/test.
        #[arg(long)]
        dir: PathBuf,
        /// Replace existing fixtures.
        #[arg(long)]
        force: bool,
    },
}

/// The roles `enlace pki client` issues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ClientRole {
    Client,
    Operator,
}

impl From<ClientRole> for Role {
    fn from(r: ClientRole) -> Role {
        match r {
            ClientRole::Client => Role::Client,
            ClientRole::Operator => Role::Operator,
        }
    }
}

/// Runs one `enlace pki` subcommand, printing what it wrote.
pub fn run(cmd: PkiCommand) -> anyhow::Result<()> {
    let forced = |force| PkiOptions {
        overwrite: force,
        ..PkiOptions::default()
    };
    match cmd {
        PkiCommand::Init {
            dir,
            trust_domain,
            force,
        } => {
            let pki = Pki::init_with(&dir, &trust_domain, forced(force))?;
            println!("created root CA for trust domain {trust_domain}");
            print_written(&[
                dir.join("trust-domain"),
                pki.root_cert_path(),
                pki.ca_key_path(CaRef::Root),
                pki.revoked_path(CaRef::Root),
                pki.crl_path(CaRef::Root),
            ]);
            println!("trust bundle: {}", pki.root_cert_path().display());
        }
        PkiCommand::Agency {
            dir,
            id,
            display,
            force,
        } => {
            let pki = open(&dir)?.with_options(forced(force));
            let paths = pki.add_agency(&id, display.as_deref())?;
            let ca = CaRef::Agency(&id);
            println!("created issuing CA of agency {id}");
            print_written(&[
                paths.cert,
                paths.key,
                pki.revoked_path(ca),
                pki.crl_path(ca),
            ]);
        }
        PkiCommand::Node {
            dir,
            agency,
            name,
            days,
            force,
        } => {
            let pki = open(&dir)?.with_options(forced(force));
            let paths = pki.issue_node(&agency, &name, days.map(Validity::days_from_now))?;
            let dns = enlace::pki::node_dns_name(pki.trust_domain(), &agency, &name);
            println!("issued node {agency}/{name} (server name {dns})");
            print_written(&[paths.cert, paths.key]);
        }
        PkiCommand::Client {
            dir,
            agency,
            name,
            role,
            days,
            force,
        } => {
            let pki = open(&dir)?.with_options(forced(force));
            let role = Role::from(role);
            let validity = days.map(Validity::days_from_now);
            let paths = pki.issue_client(&agency, &name, role, validity)?;
            println!("issued {role} {agency}/{name}");
            print_written(&[paths.cert, paths.key]);
        }
        PkiCommand::Revoke {
            dir,
            agency,
            root: _,
            cert,
        } => {
            let pki = open(&dir)?;
            // clap guarantees exactly one of --agency and --root.
            let ca = agency.as_deref().map_or(CaRef::Root, CaRef::Agency);
            let r = pki.revoke(ca, &cert)?;
            let state = if r.newly_revoked {
                "revoked"
            } else {
                "was already revoked:"
            };
            println!("{state} serial {} (CA {})", r.serial, ca.stem());
            print_written(&[pki.revoked_path(ca), r.crl]);
        }
        PkiCommand::Crl { dir } => {
            let written = open(&dir)?.write_crls()?;
            println!("regenerated {} CRLs", written.len());
            print_written(&written);
        }
        PkiCommand::Demo {
            dir,
            trust_domain,
            force,
            if_missing,
        } => {
            let root = dir.join("ca").join("root.pem");
            if if_missing && root.exists() {
                println!(
                    "kept the PKI in {}: {} exists",
                    dir.display(),
                    root.display()
                );
                return Ok(());
            }
            let fed = Pki::federation(&dir, &trust_domain, &demo_agencies(), forced(force))?;
            println!("created demo federation {trust_domain}: dea, pgr, afi, cenapi");
            print_written(&fed.written);
        }
        PkiCommand::TestFixtures { dir, force } => {
            let fed = Pki::write_test_fixtures(&dir, force)?;
            println!("wrote test fixtures (TEST ONLY: these private keys are public)");
            print_written(&fed.written);
        }
    }
    Ok(())
}

fn open(dir: &Path) -> anyhow::Result<Pki> {
    Pki::open(dir).with_context(|| format!("opening PKI directory {}", dir.display()))
}

fn print_written(paths: &[PathBuf]) {
    for p in paths {
        println!("  wrote {}", p.display());
    }
}
