//! File handling for the PKI directory: atomic writes with the right permissions, reading the
//! first PEM object of a file, and the hex form of serials.
//!
//! Knows nothing about certificate profiles; that is `pki` proper.

use std::io::Write;
use std::path::Path;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer};
use x509_parser::prelude::*;

use super::PkiError;

/// Writes `contents` to `path` atomically (a temporary file in the same directory, renamed over
/// the target), creating parent directories. Secrets get mode 0600, everything else 0644. A
/// crash leaves either the old file or the new one, never half a key.
pub(super) fn write(path: &Path, contents: impl AsRef<[u8]>, secret: bool) -> Result<(), PkiError> {
    let io = |source| PkiError::Io {
        path: path.to_owned(),
        source,
    };
    let parent = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(io)?;
    // NamedTempFile creates its file with mode 0600, so a key is never readable by others, not
    // even between creation and rename.
    let mut tmp = tempfile::NamedTempFile::new_in(parent).map_err(io)?;
    tmp.write_all(contents.as_ref()).map_err(io)?;
    tmp.as_file().sync_all().map_err(io)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = if secret { 0o600 } else { 0o644 };
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(mode)).map_err(io)?;
    }
    #[cfg(not(unix))]
    let _ = secret;
    tmp.persist(path).map_err(|e| io(e.error))?;
    Ok(())
}

/// Appends one line to a text file (creating it), rewriting the file atomically.
pub(super) fn append_line(path: &Path, line: &str) -> Result<(), PkiError> {
    let mut text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(source) => {
            return Err(PkiError::Io {
                path: path.to_owned(),
                source,
            });
        }
    };
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(line);
    text.push('\n');
    write(path, text, false)
}

/// The DER of the first certificate in a PEM file.
pub(super) fn read_pem_der(path: &Path) -> Result<CertificateDer<'static>, PkiError> {
    CertificateDer::from_pem_file(path).map_err(|e| pem_error(path, e))
}

/// The CRL number of the CRL in a PEM file.
pub(super) fn crl_number(path: &Path) -> Result<u64, PkiError> {
    let der = CertificateRevocationListDer::from_pem_file(path).map_err(|e| pem_error(path, e))?;
    let malformed = |reason: String| PkiError::Malformed {
        path: path.to_owned(),
        reason,
    };
    let (_, crl) = parse_x509_crl(&der).map_err(|e| malformed(e.to_string()))?;
    let number = crl
        .crl_number()
        .ok_or_else(|| malformed("CRL has no CRL number".into()))?;
    u64::try_from(number).map_err(|_| malformed("CRL number does not fit in 64 bits".into()))
}

fn pem_error(path: &Path, e: rustls_pki_types::pem::Error) -> PkiError {
    match e {
        rustls_pki_types::pem::Error::Io(source) => PkiError::Io {
            path: path.to_owned(),
            source,
        },
        other => PkiError::Malformed {
            path: path.to_owned(),
            reason: other.to_string(),
        },
    }
}

/// Lowercase hex without separators, the form [`crate::identity::PeerCert::serial`] uses, and
/// its parser.
pub(super) use crate::audit::{hex, unhex};
