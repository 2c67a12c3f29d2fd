//! Who is on the other end of a connection, as established by its verified certificate.
//!
//! Identities are SPIFFE-style URIs carried as the one URI SAN of every leaf certificate:
//! `spiffe://<trust-domain>/agency/<agency>/<role>/<name>`, where role is `node`, `client` or
//! `operator`. The agency's issuing CA carries the agency id as its subject's organizational
//! unit, and a leaf is only believed if its issuer names the same agency (agency CAs cannot issue
//! CAs, so a CA of one agency cannot mint identities of another).
//!
//! This module parses and checks certificates that rustls has already verified; it does no chain
//! or revocation checking of its own, and it never looks at message contents: a peer's identity
//! comes only from its certificate.

use std::fmt;

use x509_parser::prelude::*;

/// What a certificate permits its holder to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// An agency node: may serve clients and exchange traffic with peer nodes.
    Node,
    /// An application or person that sends and receives messages through its agency's node.
    Client,
    /// An operator of a node (inspects logs, manages queues).
    Operator,
}

impl Role {
    /// The path segment used in identity URIs.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Node => "node",
            Role::Client => "client",
            Role::Operator => "operator",
        }
    }

    /// Parses the path segment used in identity URIs.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "node" => Some(Role::Node),
            "client" => Some(Role::Client),
            "operator" => Some(Role::Operator),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A stable agency id such as `dea` or `pgr`: lowercase ASCII letters, digits and `-`.
///
/// ```
/// use enlace::AgencyId;
///
/// let dea = AgencyId::new("dea").unwrap();
/// assert_eq!(dea.to_string(), "dea");
/// assert!(AgencyId::new("DEA").is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AgencyId(String);

impl AgencyId {
    /// Validates an agency id: 1 to 63 lowercase ASCII letters, digits and `-`, not starting or
    /// ending with `-`.
    ///
    /// ```
    /// let pgr = enlace::AgencyId::new("pgr").unwrap();
    /// # let _ = pgr;
    /// ```
    ///
    /// # Errors
    /// [`IdentityError::BadName`] when `s` is not such a name.
    pub fn new(s: &str) -> Result<AgencyId, IdentityError> {
        if is_name(s) {
            Ok(AgencyId(s.to_owned()))
        } else {
            Err(IdentityError::BadName(s.to_owned()))
        }
    }

    /// The id as a string slice, e.g. `dea`.
    ///
    /// ```
    /// let dea = enlace::AgencyId::new("dea").unwrap();
    /// assert_eq!(dea.as_str(), "dea");
    /// ```
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AgencyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// True for names usable as agency ids, node names and client names: 1 to 63 characters of
/// lowercase ASCII letters, digits and `-`, not starting or ending with `-`.
pub fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && !s.starts_with('-')
        && !s.ends_with('-')
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// The identity of a certificate holder.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    pub trust_domain: String,
    pub agency: AgencyId,
    pub role: Role,
    pub name: String,
}

impl Identity {
    #[cfg(test)]
    /// The identity's URI, as carried in its certificate's URI SAN.
    pub fn uri(&self) -> String {
        spiffe_uri(
            &self.trust_domain,
            self.agency.as_str(),
            self.role,
            &self.name,
        )
    }

    /// Parses `spiffe://<trust-domain>/agency/<agency>/<role>/<name>`.
    pub fn parse_uri(uri: &str) -> Result<Identity, IdentityError> {
        let bad = || IdentityError::BadUri(uri.to_owned());
        let rest = uri.strip_prefix("spiffe://").ok_or_else(bad)?;
        let mut parts = rest.split('/');
        let trust_domain = parts.next().filter(|s| !s.is_empty()).ok_or_else(bad)?;
        if parts.next() != Some("agency") {
            return Err(bad());
        }
        let agency = AgencyId::new(parts.next().ok_or_else(bad)?).map_err(|_| bad())?;
        let role = parts.next().and_then(Role::parse).ok_or_else(bad)?;
        let name = parts.next().filter(|n| is_name(n)).ok_or_else(bad)?;
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(Identity {
            trust_domain: trust_domain.to_owned(),
            agency,
            role,
            name: name.to_owned(),
        })
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.agency, self.role, self.name)
    }
}

/// Builds the identity URI for a certificate.
pub fn spiffe_uri(trust_domain: &str, agency: &str, role: Role, name: &str) -> String {
    format!("spiffe://{trust_domain}/agency/{agency}/{role}/{name}")
}

/// Why a name is not a valid agency id, or a certificate does not yield an identity.
///
/// Nodes report the certificate variants, in words, when they refuse a connection; the remedy
/// is a certificate issued as the PKI profile says (see [`pki`](crate::pki)).
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The name (an agency id, node or client name) is not 1 to 63 lowercase ASCII letters,
    /// digits and `-`, or starts or ends with `-`. Holds the name as given.
    #[error("not a valid name: {0:?} (lowercase letters, digits and '-', at most 63)")]
    BadName(String),
    /// The certificate's URI SAN is not `spiffe://<trust-domain>/agency/<agency>/<role>/<name>`
    /// with a known role and valid names. Holds the URI as found.
    #[error("not an Enlace identity URI: {0:?}")]
    BadUri(String),
    /// The certificate (or its subject alternative names) is not valid DER; holds the parser's
    /// message.
    #[error("certificate could not be parsed: {0}")]
    Unparseable(String),
    /// The certificate carries no URI SAN, or more than one (holds how many): an Enlace
    /// certificate names exactly one identity.
    #[error("certificate must carry exactly one URI SAN, found {0}")]
    UriSanCount(usize),
    /// The certificate names an agency other than the one its issuing CA serves: an agency CA
    /// can only vouch for its own agency's nodes and clients.
    #[error("certificate claims agency {claimed} but was issued by the CA of agency {issuer:?}")]
    AgencyMismatch {
        /// The agency in the certificate's URI SAN.
        claimed: String,
        /// The agency its issuer names (the issuer's organizational unit); empty if none.
        issuer: String,
    },
    /// The certificate belongs to another federation (trust domain) than the node's.
    #[error("certificate is from trust domain {found}, expected {expected}")]
    WrongTrustDomain {
        /// The trust domain in the certificate's URI SAN.
        found: String,
        /// The node's own trust domain (`node.trust_domain` in its config).
        expected: String,
    },
}

/// A verified peer: its identity, plus what audit and revocation need to name the certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCert {
    pub identity: Identity,
    /// Certificate serial number, lowercase hex.
    pub serial: String,
    /// SHA-256 of the end-entity certificate's DER.
    pub sha256: [u8; 32],
    /// The raw Ed25519 public key, when the certificate's key is Ed25519.
    pub ed25519_public_key: Option<Vec<u8>>,
}

/// Extracts the identity from an end-entity certificate that rustls has already verified.
///
/// Checks that there is exactly one URI SAN, that it is an Enlace identity in `trust_domain`, and
/// that the issuer's organizational unit names the same agency.
pub fn from_certificate(der: &[u8], trust_domain: &str) -> Result<PeerCert, IdentityError> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| IdentityError::Unparseable(e.to_string()))?;
    let identity = uri_identity(&cert)?;
    if identity.trust_domain != trust_domain {
        return Err(IdentityError::WrongTrustDomain {
            found: identity.trust_domain,
            expected: trust_domain.to_owned(),
        });
    }
    let issuer_agency = cert
        .issuer()
        .iter_organizational_unit()
        .next()
        .and_then(|ou| ou.as_str().ok())
        .unwrap_or("")
        .to_owned();
    if issuer_agency != identity.agency.as_str() {
        return Err(IdentityError::AgencyMismatch {
            claimed: identity.agency.to_string(),
            issuer: issuer_agency,
        });
    }
    let spki = cert.public_key();
    let ed25519_public_key = (spki.algorithm.algorithm.to_id_string() == "1.3.101.112")
        .then(|| spki.subject_public_key.data.to_vec());
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    let mut sha256 = [0u8; 32];
    sha256.copy_from_slice(digest.as_ref());
    Ok(PeerCert {
        identity,
        serial: cert.raw_serial_as_string().replace(':', ""),
        sha256,
        ed25519_public_key,
    })
}

/// The identity named by a certificate's one URI SAN, without the trust-domain and issuer checks
/// of [`from_certificate`]. For a client reading its own certificate (to know its role).
pub fn own_identity(der: &[u8]) -> Result<Identity, IdentityError> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| IdentityError::Unparseable(e.to_string()))?;
    uri_identity(&cert)
}

fn uri_identity(cert: &X509Certificate<'_>) -> Result<Identity, IdentityError> {
    let uris: Vec<&str> = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::URI(u) => Some(*u),
                _ => None,
            })
            .collect(),
        Ok(None) => Vec::new(),
        Err(e) => return Err(IdentityError::Unparseable(e.to_string())),
    };
    if uris.len() != 1 {
        return Err(IdentityError::UriSanCount(uris.len()));
    }
    Identity::parse_uri(uris[0])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_round_trip() {
        let id = Identity::parse_uri("spiffe://enlace.test/agency/dea/client/duty-desk").unwrap();
        assert_eq!(id.agency.as_str(), "dea");
        assert_eq!(id.role, Role::Client);
        assert_eq!(id.name, "duty-desk");
        assert_eq!(id.uri(), "spiffe://enlace.test/agency/dea/client/duty-desk");
    }

    #[test]
    fn bad_uris_are_refused() {
        for uri in [
            "https://enlace.test/agency/dea/client/x",
            "spiffe:///agency/dea/client/x",
            "spiffe://t/agency/DEA/client/x",
            "spiffe://t/agency/dea/admin/x",
            "spiffe://t/agency/dea/client/x/extra",
            "spiffe://t/agency/dea/client/",
            "spiffe://t/org/dea/client/x",
        ] {
            assert!(Identity::parse_uri(uri).is_err(), "{uri} should be refused");
        }
    }
}
