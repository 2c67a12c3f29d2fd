//! Signing with a CA stored in a PKI directory: loading its certificate and key back, the
//! revocation list files and the CRLs made from them.
//!
//! Certificate profiles (what goes into a CA, node or client certificate) are in `pki` proper.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, RevokedCertParams, SerialNumber,
};
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, X509Certificate, X509Error};

use super::files::{self, hex, read_pem_der, unhex};
use super::{CaRef, ORGANIZATION, Pki, PkiError, Validity, check_name};

/// The outcome of [`Pki::revoke`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    /// Serial of the revoked certificate, lowercase hex without separators (as nodes log the
    /// serials of the certificates they see).
    pub serial: String,
    /// False if the serial was already listed (revoking is idempotent).
    pub newly_revoked: bool,
    /// The regenerated CRL.
    pub crl: PathBuf,
}

impl Pki {
    /// Adds the first certificate in `cert_pem` to the revocation list of `ca` and regenerates
    /// that CA's CRL. Revoke agency CAs with [`CaRef::Root`].
    ///
    /// # Errors
    /// [`PkiError::NotIssuedBy`] unless the certificate's signature verifies with `ca`'s key.
    pub fn revoke(&self, ca: CaRef<'_>, cert_pem: &Path) -> Result<Revocation, PkiError> {
        let loaded = self.load_ca(ca)?;
        let der = read_pem_der(cert_pem)?;
        let malformed = |e: X509Error| PkiError::Malformed {
            path: cert_pem.to_owned(),
            reason: e.to_string(),
        };
        let (_, cert) = X509Certificate::from_der(&der).map_err(|e| malformed(e.into()))?;
        let ca_key = ring::signature::UnparsedPublicKey::new(
            &ring::signature::ED25519,
            loaded.public_key_raw.as_slice(),
        );
        if ca_key
            .verify(cert.tbs_certificate.as_ref(), &cert.signature_value.data)
            .is_err()
        {
            return Err(PkiError::NotIssuedBy {
                path: cert_pem.to_owned(),
                ca: ca.stem().to_owned(),
            });
        }
        let serial = hex(cert.raw_serial());
        let path = self.revoked_path(ca);
        let revoked = self.read_revoked(ca)?;
        let newly_revoked = !revoked.iter().any(|(s, _)| *s == serial);
        if newly_revoked {
            let now = OffsetDateTime::now_utc().unix_timestamp();
            files::append_line(&path, &format!("{serial} {now}"))?;
        }
        let crl = self.write_crl(ca)?;
        Ok(Revocation {
            serial,
            newly_revoked,
            crl,
        })
    }

    /// Regenerates every CA's CRL (root first), each with a higher CRL number than before.
    /// Returns the paths written.
    pub fn write_crls(&self) -> Result<Vec<PathBuf>, PkiError> {
        let agencies = self.agencies()?;
        let mut written = vec![self.write_crl(CaRef::Root)?];
        for agency in &agencies {
            written.push(self.write_crl(CaRef::Agency(agency))?);
        }
        Ok(written)
    }

    /// Loads a CA's certificate and key as an rcgen issuer.
    pub(super) fn load_ca(&self, ca: CaRef<'_>) -> Result<LoadedCa, PkiError> {
        let cert_path = self.ca_cert_path(ca);
        if let CaRef::Agency(a) = ca {
            // Names are checked before they become paths.
            check_name(a)?;
            if !cert_path.exists() {
                return Err(PkiError::UnknownAgency(a.to_owned()));
            }
        }
        let der = read_pem_der(&cert_path)?;
        let malformed = |reason: String| PkiError::Malformed {
            path: cert_path.clone(),
            reason,
        };
        let (_, cert) = X509Certificate::from_der(&der).map_err(|e| malformed(e.to_string()))?;
        let subject = cert.subject();
        let cn = subject
            .iter_common_name()
            .next()
            .and_then(|a| a.as_str().ok());
        let ou = subject
            .iter_organizational_unit()
            .next()
            .and_then(|a| a.as_str().ok());
        let (Some(cn), Some(ou)) = (cn, ou) else {
            return Err(malformed("CA subject lacks CN or OU".into()));
        };
        let key_path = self.ca_key_path(ca);
        let key_pem = std::fs::read_to_string(&key_path).map_err(|source| PkiError::Io {
            path: key_path.clone(),
            source,
        })?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| PkiError::Malformed {
            path: key_path,
            reason: e.to_string(),
        })?;
        let public_key_raw = cert.public_key().subject_public_key.data.to_vec();
        if public_key_raw != key.public_key_raw() {
            return Err(malformed("certificate does not match its key file".into()));
        }
        // The issuer name written into every child must equal this CA's subject byte for byte;
        // `ca_name` rebuilds it in the same order and string type as when the CA was made.
        let mut params = CertificateParams::default();
        params.distinguished_name = ca_name(cn, ou);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let pem = std::fs::read_to_string(&cert_path).map_err(|source| PkiError::Io {
            path: cert_path.clone(),
            source,
        })?;
        Ok(LoadedCa {
            issuer: Issuer::new(params, key),
            public_key_raw,
            pem,
        })
    }

    /// Reads `ca/<ca>.revoked`: `<serial hex> [unix seconds]` per line, `#` comments and blank
    /// lines allowed; a missing file is empty. A line without a time (written by hand) is dated
    /// when the CRL is signed.
    fn read_revoked(&self, ca: CaRef<'_>) -> Result<Vec<(String, Option<i64>)>, PkiError> {
        let path = self.revoked_path(ca);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(source) => return Err(PkiError::Io { path, source }),
        };
        let mut out = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let mut fields = line.split_whitespace();
            let Some(serial) = fields.next().filter(|s| !s.starts_with('#')) else {
                continue;
            };
            let at = fields.next().map(str::parse::<i64>).transpose();
            match (unhex(serial), at) {
                (Some(_), Ok(at)) => out.push((serial.to_ascii_lowercase(), at)),
                _ => {
                    return Err(PkiError::Malformed {
                        path,
                        reason: format!("line {}: expected `<hex serial> [unix time]`", n + 1),
                    });
                }
            }
        }
        Ok(out)
    }

    /// Signs a fresh CRL for `ca` from its `.revoked` file, numbered one above the CRL it
    /// replaces.
    pub(super) fn write_crl(&self, ca: CaRef<'_>) -> Result<PathBuf, PkiError> {
        let loaded = self.load_ca(ca)?;
        let path = self.crl_path(ca);
        let number = if path.exists() {
            files::crl_number(&path)? + 1
        } else {
            1
        };
        let now = OffsetDateTime::now_utc();
        let mut revoked_certs = Vec::new();
        for (serial, at) in self.read_revoked(ca)? {
            revoked_certs.push(RevokedCertParams {
                // `read_revoked` only returns serials that decode.
                serial_number: SerialNumber::from_slice(&unhex(&serial).unwrap_or_default()),
                revocation_time: at
                    .and_then(|t| OffsetDateTime::from_unix_timestamp(t).ok())
                    .unwrap_or(now),
                reason_code: None,
                invalidity_date: None,
            });
        }
        let crl = CertificateRevocationListParams {
            this_update: now,
            next_update: now + self.options.crl_lifetime,
            crl_number: SerialNumber::from(number),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: KeyIdMethod::Sha256,
        }
        .signed_by(&loaded.issuer)?;
        files::write(&path, crl.pem()?, false)?;
        Ok(path)
    }
}

pub(super) struct LoadedCa {
    pub(super) issuer: Issuer<'static, KeyPair>,
    public_key_raw: Vec<u8>,
    /// The CA certificate as stored, appended to the chain files of its leaves.
    pub(super) pem: String,
}

/// The subject of a CA: `CN=<cn>, O=Enlace Federation, OU=<ou>`, all UTF8String.
fn ca_name(cn: &str, ou: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn.push(DnType::OrganizationName, ORGANIZATION);
    dn.push(DnType::OrganizationalUnitName, ou);
    dn
}

pub(super) fn ca_params(
    cn: &str,
    ou: &str,
    validity: Validity,
    path_len: u8,
) -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = ca_name(cn, ou);
    params.not_before = validity.not_before;
    params.not_after = validity.not_after;
    params.serial_number = Some(random_serial()?);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(path_len));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

/// A random 16-byte serial whose first byte is in 0x01..=0x7f: positive, and exactly 16 bytes
/// in DER (no sign padding, no leading zero): about 127 random bits.
pub(super) fn random_serial() -> Result<SerialNumber, PkiError> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| rcgen::Error::RingUnspecified)?;
    bytes[0] &= 0x7f;
    if bytes[0] == 0 {
        bytes[0] = 1;
    }
    Ok(SerialNumber::from_slice(&bytes))
}
