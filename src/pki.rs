//! A development and test PKI: a federation root CA, one issuing CA per agency, and the node and
//! client certificates they sign, kept as plain files in one directory.
//!
//! This is what `enlace pki` drives and what generated the committed fixtures in `certs/test/`.
//! It is **not** a production CA: private keys sit unencrypted on disk (mode 0600), nothing is
//! backed by an HSM, there is no audit trail, no OCSP, no certificate transparency, no name
//! constraints on agency CAs (the nodes' identity check stands in for them: a leaf is only
//! believed if its issuing CA names the same agency), and no protection against two processes
//! editing the same directory at once. A deployment with real stakes should run its CAs in an
//! HSM-backed tool and only use the layout and profiles documented here.
//!
//! Layout of a PKI directory (the directory is the whole state):
//!
//! ```text
//! trust-domain                       the trust domain, e.g. enlace.example
//! ca/root.pem, ca/root.key.pem       root CA; root.pem alone is the trust bundle
//! ca/<agency>.pem, .key.pem          agency issuing CAs (subject OU = agency id)
//! ca/<ca>.revoked                    revoked serials of that CA: `<hex> <unix-seconds>` per line
//! crl/<ca>.crl.pem                   one CRL per CA, always present, even when empty
//! nodes/<agency>/<node>.pem          leaf then agency CA (the chain presented in TLS)
//! nodes/<agency>/<node>.key.pem      PKCS#8 private key
//! clients/<agency>/<name>.pem        clients and operators, same convention
//! ```
//!
//! Every key is Ed25519. Every CRL is always present because rustls' webpki verifier treats an
//! issuer without a CRL as "revocation status unknown", which a fail-closed verifier refuses.

mod ca;
mod federation;
mod files;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

use rcgen::string::Ia5String;
use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, PKCS_ED25519, SanType,
};
use time::{Duration, OffsetDateTime};

use crate::identity::{Role, is_name, spiffe_uri};

pub use ca::Revocation;
use ca::{ca_params, random_serial};
pub use federation::{AgencySpec, DEMO_TRUST_DOMAIN, Federation, TEST_TRUST_DOMAIN, demo_agencies};

/// Organization (O) of every CA in a federation.
pub const ORGANIZATION: &str = "Enlace Federation";
/// Common name (CN) of the root CA.
pub const ROOT_CN: &str = "Enlace Federation Root CA";

/// Why a PKI operation failed; each variant says what to fix before running it again.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// An agency, node or client name is not 1 to 63 lowercase ASCII letters, digits and `-`
    /// (not starting or ending with `-`). Holds the name as given.
    #[error("not a valid name: {0:?} (lowercase letters, digits and '-', at most 63)")]
    BadName(String),
    /// The agency id `root` names the root CA's files; choose another id.
    #[error("{0:?} is reserved (the root CA's files use it)")]
    ReservedName(String),
    /// The trust domain is not dot-separated valid names of at most 125 characters in all.
    #[error("not a valid trust domain: {0:?} (dot-separated names, such as enlace.example)")]
    BadTrustDomain(String),
    /// A file the operation would write exists already. Replacing a CA or a certificate
    /// invalidates what was issued with it; set [`PkiOptions::overwrite`] (`--force`) only if
    /// that is intended.
    #[error("{} already exists; refusing to replace it without --force", .0.display())]
    AlreadyExists(PathBuf),
    /// The directory has no `trust-domain` file: create the PKI first ([`Pki::init`],
    /// `enlace pki init`).
    #[error("{} is not a PKI directory (no trust-domain file; run `enlace pki init`)", .0.display())]
    NotInitialized(PathBuf),
    /// The agency has no issuing CA in this PKI: add it first ([`Pki::add_agency`],
    /// `enlace pki agency`).
    #[error("no issuing CA for agency {0:?} in this PKI (run `enlace pki agency` first)")]
    UnknownAgency(String),
    /// [`Pki::issue_client`] was asked for a node certificate: use [`Pki::issue_node`].
    #[error("role {0} is not a client role (issue nodes with issue_node)")]
    NotAClientRole(Role),
    /// A validity window that ends before (or when) it starts.
    #[error("validity ends ({not_after}) before it starts ({not_before})")]
    EmptyValidity {
        /// The start asked for.
        not_before: OffsetDateTime,
        /// The end asked for.
        not_after: OffsetDateTime,
    },
    /// The certificate to revoke was not signed by the CA named: revoke it with its issuer
    /// (an agency CA for leaves, [`CaRef::Root`] for agency CAs).
    #[error("{} was not issued by the {ca} CA", path.display())]
    NotIssuedBy {
        /// The certificate file given.
        path: PathBuf,
        /// The CA it was checked against (`root` or an agency id).
        ca: String,
    },
    /// A certificate, key, CRL or `.revoked` file does not parse, or a CA's certificate and key
    /// do not belong together: correct the line the reason names, or restore the file.
    #[error("{}: {reason}", path.display())]
    Malformed {
        /// The file at fault.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A file or directory could not be read or written. Some files of the operation may have
    /// been written already.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The certificate, key or CRL could not be generated or signed (rcgen's error).
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
}

/// A certificate authority in a PKI directory: the root or an agency's issuing CA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaRef<'a> {
    /// The federation's root CA, which signs the agency CAs.
    Root,
    /// The issuing CA of the agency with this id, which signs its nodes and clients.
    Agency(&'a str),
}

impl CaRef<'_> {
    /// The file stem used under `ca/` and `crl/`.
    pub fn stem(&self) -> &str {
        match self {
            CaRef::Root => "root",
            CaRef::Agency(a) => a,
        }
    }
}

/// When a certificate is valid. Construction guarantees `not_before < not_after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
}

impl Validity {
    /// Default lifetime of node and client certificates: two years, so a forgotten renewal shows
    /// up in a test environment long before it matters, without monthly churn.
    pub const LEAF_DAYS: u32 = 730;
    /// Default lifetime of CAs: ten years. Replacing a root means re-issuing everything.
    pub const CA_DAYS: u32 = 3650;

    /// From an hour ago (tolerating clock skew between machines) until `days` from now.
    pub fn days_from_now(days: u32) -> Validity {
        let now = OffsetDateTime::now_utc();
        Validity {
            not_before: now - Duration::hours(1),
            not_after: now + Duration::days(i64::from(days.max(1))),
        }
    }

    /// An explicit window, e.g. one wholly in the past for an expired-certificate fixture.
    pub fn between(
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<Validity, PkiError> {
        if not_before >= not_after {
            return Err(PkiError::EmptyValidity {
                not_before,
                not_after,
            });
        }
        Ok(Validity {
            not_before,
            not_after,
        })
    }

    /// When the window opens: a certificate is not valid before this instant.
    pub fn not_before(&self) -> OffsetDateTime {
        self.not_before
    }

    /// When the window closes: a certificate is not valid after this instant.
    pub fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }
}

/// Settings for the operations on one PKI directory.
#[derive(Debug, Clone)]
pub struct PkiOptions {
    /// Replace existing CAs and certificates (`--force`). Off by default: replacing a CA key
    /// silently invalidates everything it signed.
    pub overwrite: bool,
    /// Validity of new CAs; `None` means [`Validity::CA_DAYS`] from the moment each is made.
    pub ca_validity: Option<Validity>,
    /// Validity of new leaves when the caller gives none; `None` means [`Validity::LEAF_DAYS`].
    pub leaf_validity: Option<Validity>,
    /// How far ahead a CRL's nextUpdate lies. 30 days by default: long enough for a test setup
    /// to go untouched for a while, short enough that a verifier enforcing nextUpdate notices a
    /// CA that stopped publishing.
    pub crl_lifetime: Duration,
}

impl Default for PkiOptions {
    fn default() -> Self {
        PkiOptions {
            overwrite: false,
            ca_validity: None,
            leaf_validity: None,
            crl_lifetime: Duration::days(30),
        }
    }
}

/// Where an issued certificate chain and its private key were written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedPaths {
    /// The certificate file (PEM): for a leaf, the leaf followed by its agency CA.
    pub cert: PathBuf,
    /// The private key file (PEM, PKCS#8, mode 0600).
    pub key: PathBuf,
}

/// A PKI directory and the options used to change it.
#[derive(Debug, Clone)]
pub struct Pki {
    dir: PathBuf,
    trust_domain: String,
    options: PkiOptions,
}

/// The DNS name in a node's certificate, used as the TLS server name: `<node>.<agency>.<td>`.
pub fn node_dns_name(trust_domain: &str, agency: &str, node: &str) -> String {
    format!("{node}.{agency}.{trust_domain}")
}

impl Pki {
    /// Creates a PKI directory with a new root CA and its empty CRL, using default options.
    pub fn init(dir: &Path, trust_domain: &str) -> Result<Pki, PkiError> {
        Pki::init_with(dir, trust_domain, PkiOptions::default())
    }

    /// Creates a PKI directory with a new root CA and its (empty) CRL.
    ///
    /// # Errors
    /// [`PkiError::AlreadyExists`] if the directory already has a root CA, unless
    /// `options.overwrite`; replacing the root orphans every CA and certificate it signed.
    pub fn init_with(dir: &Path, trust_domain: &str, options: PkiOptions) -> Result<Pki, PkiError> {
        check_trust_domain(trust_domain)?;
        let pki = Pki {
            dir: dir.to_owned(),
            trust_domain: trust_domain.to_owned(),
            options,
        };
        let (cert, key) = (pki.ca_cert_path(CaRef::Root), pki.ca_key_path(CaRef::Root));
        pki.ensure_absent(&[&cert, &key])?;
        let mut params = ca_params(ROOT_CN, trust_domain, pki.ca_validity(), 1)?;
        params.use_authority_key_identifier_extension = false;
        let key_pair = KeyPair::generate_for(&PKCS_ED25519)?;
        let root = params.self_signed(&key_pair)?;
        files::write(
            &dir.join("trust-domain"),
            format!("{trust_domain}\n"),
            false,
        )?;
        files::write(&key, key_pair.serialize_pem(), true)?;
        files::write(&cert, root.pem(), false)?;
        files::write(&pki.revoked_path(CaRef::Root), "", false)?;
        pki.write_crl(CaRef::Root)?;
        Ok(pki)
    }

    /// Opens an existing PKI directory with default options.
    pub fn open(dir: &Path) -> Result<Pki, PkiError> {
        let path = dir.join("trust-domain");
        let trust_domain = match std::fs::read_to_string(&path) {
            Ok(s) => check_trust_domain(s.trim())?.to_owned(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(PkiError::NotInitialized(dir.to_owned()));
            }
            Err(source) => return Err(PkiError::Io { path, source }),
        };
        Ok(Pki {
            dir: dir.to_owned(),
            trust_domain,
            options: PkiOptions::default(),
        })
    }

    /// Replaces the options used by later operations.
    pub fn with_options(mut self, options: PkiOptions) -> Pki {
        self.options = options;
        self
    }

    /// The PKI directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The federation's trust domain, e.g. `enlace.example`: the host of every identity URI.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// Creates an agency's issuing CA (signed by the root, path length 0) and its empty CRL.
    ///
    /// The subject is `CN=<display> Issuing CA, O=Enlace Federation, OU=<agency>`; `display`
    /// defaults to the id in upper case. The OU is what ties the agency's leaves to the agency.
    pub fn add_agency(&self, agency: &str, display: Option<&str>) -> Result<IssuedPaths, PkiError> {
        check_name(agency)?;
        if agency == CaRef::Root.stem() {
            return Err(PkiError::ReservedName(agency.to_owned()));
        }
        let ca = CaRef::Agency(agency);
        let paths = IssuedPaths {
            cert: self.ca_cert_path(ca),
            key: self.ca_key_path(ca),
        };
        self.ensure_absent(&[&paths.cert, &paths.key])?;
        let root = self.load_ca(CaRef::Root)?;
        let display = display.map_or_else(|| agency.to_uppercase(), str::to_owned);
        let params = ca_params(
            &format!("{display} Issuing CA"),
            agency,
            self.ca_validity(),
            0,
        )?;
        let key_pair = KeyPair::generate_for(&PKCS_ED25519)?;
        let cert = params.signed_by(&key_pair, &root.issuer)?;
        files::write(&paths.key, key_pair.serialize_pem(), true)?;
        files::write(&paths.cert, cert.pem(), false)?;
        files::write(&self.revoked_path(ca), "", false)?;
        self.write_crl(ca)?;
        Ok(paths)
    }

    /// Issues a node certificate: DNS SAN [`node_dns_name`], URI SAN of role `node`, EKU
    /// serverAuth and clientAuth (nodes dial each other). `None` means the default validity.
    pub fn issue_node(
        &self,
        agency: &str,
        node: &str,
        validity: Option<Validity>,
    ) -> Result<IssuedPaths, PkiError> {
        self.issue_leaf(agency, node, Role::Node, validity)
    }

    /// Issues a client or operator certificate: URI SAN only, EKU clientAuth only, so it cannot
    /// serve as a node. `None` means the default validity.
    pub fn issue_client(
        &self,
        agency: &str,
        name: &str,
        role: Role,
        validity: Option<Validity>,
    ) -> Result<IssuedPaths, PkiError> {
        if role == Role::Node {
            return Err(PkiError::NotAClientRole(role));
        }
        self.issue_leaf(agency, name, role, validity)
    }

    fn issue_leaf(
        &self,
        agency: &str,
        name: &str,
        role: Role,
        validity: Option<Validity>,
    ) -> Result<IssuedPaths, PkiError> {
        check_name(agency)?;
        check_name(name)?;
        let paths = self.leaf_paths(agency, name, role);
        self.ensure_absent(&[&paths.cert, &paths.key])?;
        let ca = self.load_ca(CaRef::Agency(agency))?;
        let validity = validity
            .or(self.options.leaf_validity)
            .unwrap_or_else(|| Validity::days_from_now(Validity::LEAF_DAYS));
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params.not_before = validity.not_before;
        params.not_after = validity.not_after;
        params.serial_number = Some(random_serial()?);
        params.is_ca = IsCa::ExplicitNoCa;
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        if role == Role::Node {
            let dns = node_dns_name(&self.trust_domain, agency, name);
            params.subject_alt_names.push(SanType::DnsName(ia5(dns)?));
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ServerAuth);
        }
        params
            .extended_key_usages
            .push(ExtendedKeyUsagePurpose::ClientAuth);
        let uri = spiffe_uri(&self.trust_domain, agency, role, name);
        params.subject_alt_names.push(SanType::URI(ia5(uri)?));
        let key_pair = KeyPair::generate_for(&PKCS_ED25519)?;
        let cert = params.signed_by(&key_pair, &ca.issuer)?;
        files::write(&paths.key, key_pair.serialize_pem(), true)?;
        files::write(&paths.cert, cert.pem() + &ca.pem, false)?;
        Ok(paths)
    }

    /// The agency ids that have an issuing CA here, sorted.
    pub fn agencies(&self) -> Result<Vec<String>, PkiError> {
        let dir = self.dir.join("ca");
        let entries = std::fs::read_dir(&dir).map_err(|source| PkiError::Io {
            path: dir.clone(),
            source,
        })?;
        let mut out: Vec<String> = entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter_map(|f| f.strip_suffix(".pem").map(str::to_owned))
            .filter(|stem| is_name(stem) && stem != CaRef::Root.stem())
            .collect();
        out.sort();
        Ok(out)
    }

    /// The trust bundle: the root certificate.
    pub fn root_cert_path(&self) -> PathBuf {
        self.ca_cert_path(CaRef::Root)
    }

    /// Where a CA's certificate is: `ca/<stem>.pem`.
    pub fn ca_cert_path(&self, ca: CaRef<'_>) -> PathBuf {
        self.dir.join("ca").join(format!("{}.pem", ca.stem()))
    }

    /// Where a CA's private key is: `ca/<stem>.key.pem`.
    pub fn ca_key_path(&self, ca: CaRef<'_>) -> PathBuf {
        self.dir.join("ca").join(format!("{}.key.pem", ca.stem()))
    }

    /// Where a CA's list of revoked serials is: `ca/<stem>.revoked`, one `<hex> <unix-seconds>`
    /// per line.
    pub fn revoked_path(&self, ca: CaRef<'_>) -> PathBuf {
        self.dir.join("ca").join(format!("{}.revoked", ca.stem()))
    }

    /// Where a CA's CRL is: `crl/<stem>.crl.pem` (what a node's `tls.crl_dir` points at).
    pub fn crl_path(&self, ca: CaRef<'_>) -> PathBuf {
        self.dir.join("crl").join(format!("{}.crl.pem", ca.stem()))
    }

    /// Where the certificate chain and key of a leaf of `role` live.
    pub fn leaf_paths(&self, agency: &str, name: &str, role: Role) -> IssuedPaths {
        let kind = if role == Role::Node {
            "nodes"
        } else {
            "clients"
        };
        let dir = self.dir.join(kind).join(agency);
        IssuedPaths {
            cert: dir.join(format!("{name}.pem")),
            key: dir.join(format!("{name}.key.pem")),
        }
    }

    fn ca_validity(&self) -> Validity {
        self.options
            .ca_validity
            .unwrap_or_else(|| Validity::days_from_now(Validity::CA_DAYS))
    }

    fn ensure_absent(&self, paths: &[&Path]) -> Result<(), PkiError> {
        match paths.iter().find(|p| p.exists()) {
            Some(p) if !self.options.overwrite => Err(PkiError::AlreadyExists(p.to_path_buf())),
            _ => Ok(()),
        }
    }
}

/// Trust domains are DNS-like: dot-separated names, short enough to leave room for
/// `<node>.<agency>.` in front within DNS's 253 characters.
fn check_trust_domain(td: &str) -> Result<&str, PkiError> {
    if td.split('.').all(is_name) && td.len() <= 125 {
        Ok(td)
    } else {
        Err(PkiError::BadTrustDomain(td.to_owned()))
    }
}

fn ia5(s: String) -> Result<Ia5String, PkiError> {
    Ok(Ia5String::try_from(s)?)
}

fn check_name(s: &str) -> Result<(), PkiError> {
    if is_name(s) {
        Ok(())
    } else {
        Err(PkiError::BadName(s.to_owned()))
    }
}
