//! Tests of the PKI: certificate profiles as `identity` reads them, revocation, file handling,
//! and the fixtures checked by real rustls verifiers.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, ServerName, UnixTime};
use x509_parser::prelude::*;

use super::*;
use crate::identity::from_certificate;

fn certs(path: &Path) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_file_iter(path)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

fn with_agency(dir: &Path) -> Pki {
    let pki = Pki::init(dir, "enlace.test").unwrap();
    pki.add_agency("dea", None).unwrap();
    pki
}

#[test]
fn node_certificate_carries_node_identity_and_chain() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = with_agency(tmp.path());
    let paths = pki.issue_node("dea", "dea-1", None).unwrap();
    assert_eq!(paths.cert, tmp.path().join("nodes/dea/dea-1.pem"));
    let chain = certs(&paths.cert);
    assert_eq!(chain.len(), 2, "leaf then agency CA");
    assert_eq!(chain[1], certs(&pki.ca_cert_path(CaRef::Agency("dea")))[0]);

    let peer = from_certificate(&chain[0], "enlace.test").unwrap();
    assert_eq!(
        peer.identity.uri(),
        "spiffe://enlace.test/agency/dea/node/dea-1"
    );
    assert!(peer.ed25519_public_key.is_some());
    let (_, cert) = X509Certificate::from_der(&chain[0]).unwrap();
    assert_eq!(peer.serial.len(), 32, "16-byte serial");
    let san = cert.subject_alternative_name().unwrap().unwrap();
    assert!(
        san.value
            .general_names
            .contains(&GeneralName::DNSName("dea-1.dea.enlace.test"))
    );
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth);
}

#[test]
fn client_certificate_has_no_dns_name_and_client_auth_only() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = with_agency(tmp.path());
    let paths = pki
        .issue_client("dea", "ops", Role::Operator, None)
        .unwrap();
    assert_eq!(paths.cert, tmp.path().join("clients/dea/ops.pem"));
    let chain = certs(&paths.cert);
    let peer = from_certificate(&chain[0], "enlace.test").unwrap();
    assert_eq!(peer.identity.role, Role::Operator);
    assert_eq!(peer.identity.name, "ops");
    let (_, cert) = X509Certificate::from_der(&chain[0]).unwrap();
    let san = cert.subject_alternative_name().unwrap().unwrap();
    assert_eq!(san.value.general_names.len(), 1, "only the URI SAN");
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.client_auth && !eku.server_auth);
    assert!(matches!(
        pki.issue_client("dea", "x", Role::Node, None),
        Err(PkiError::NotAClientRole(Role::Node))
    ));
}

#[test]
fn agency_ca_names_its_agency_in_the_ou() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = with_agency(tmp.path());
    pki.add_agency("cenapi", Some("CENAPI Mexico")).unwrap();
    let der = &certs(&pki.ca_cert_path(CaRef::Agency("cenapi")))[0];
    let (_, ca) = X509Certificate::from_der(der).unwrap();
    let ou: Vec<_> = ca.subject().iter_organizational_unit().collect();
    assert_eq!(ou.len(), 1);
    assert_eq!(ou[0].as_str().unwrap(), "cenapi");
    let cn = ca.subject().iter_common_name().next().unwrap();
    assert_eq!(cn.as_str().unwrap(), "CENAPI Mexico Issuing CA");
    let bc = ca.basic_constraints().unwrap().unwrap().value;
    assert!(bc.ca && bc.path_len_constraint == Some(0));
    assert_eq!(pki.agencies().unwrap(), ["cenapi", "dea"]);
}

#[test]
fn revoked_serial_is_listed_in_a_newer_crl() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = with_agency(tmp.path());
    let crl_path = pki.crl_path(CaRef::Agency("dea"));
    let read_crl = || {
        let der = CertificateRevocationListDer::from_pem_file(&crl_path).unwrap();
        let (_, crl) = parse_x509_crl(&der).unwrap();
        let number = u64::try_from(crl.crl_number().unwrap()).unwrap();
        let serials: Vec<String> = crl
            .iter_revoked_certificates()
            .map(|r| files::hex(r.raw_serial()))
            .collect();
        (number, serials)
    };
    assert_eq!(
        read_crl(),
        (1, vec![]),
        "an empty CRL exists from the start"
    );

    let paths = pki
        .issue_client("dea", "analyst", Role::Client, None)
        .unwrap();
    let serial = from_certificate(&certs(&paths.cert)[0], "enlace.test")
        .unwrap()
        .serial;
    let revocation = pki.revoke(CaRef::Agency("dea"), &paths.cert).unwrap();
    assert!(revocation.newly_revoked);
    assert_eq!(revocation.serial, serial);
    assert_eq!(read_crl(), (2, vec![serial.clone()]));

    let again = pki.revoke(CaRef::Agency("dea"), &paths.cert).unwrap();
    assert!(!again.newly_revoked, "revoking twice is a no-op");
    pki.write_crls().unwrap();
    assert_eq!(read_crl(), (4, vec![serial]));

    // The root did not issue this leaf, so it cannot revoke it.
    assert!(matches!(
        pki.revoke(CaRef::Root, &paths.cert),
        Err(PkiError::NotIssuedBy { .. })
    ));
}

#[test]
fn existing_files_are_kept_unless_overwrite_is_set() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = with_agency(tmp.path());
    let first = std::fs::read(pki.root_cert_path()).unwrap();
    assert!(matches!(
        Pki::init(tmp.path(), "enlace.test"),
        Err(PkiError::AlreadyExists(_))
    ));
    assert!(matches!(
        pki.add_agency("dea", None),
        Err(PkiError::AlreadyExists(_))
    ));
    assert_eq!(std::fs::read(pki.root_cert_path()).unwrap(), first);

    let force = PkiOptions {
        overwrite: true,
        ..PkiOptions::default()
    };
    Pki::init_with(tmp.path(), "enlace.test", force).unwrap();
    assert_ne!(std::fs::read(pki.root_cert_path()).unwrap(), first);
}

#[test]
fn names_are_checked() {
    let tmp = tempfile::tempdir().unwrap();
    assert!(matches!(
        Pki::init(tmp.path(), "Enlace..test"),
        Err(PkiError::BadTrustDomain(_))
    ));
    let pki = with_agency(tmp.path());
    assert!(matches!(
        pki.add_agency("DEA", None),
        Err(PkiError::BadName(_))
    ));
    assert!(matches!(
        pki.add_agency("root", None),
        Err(PkiError::ReservedName(_))
    ));
    assert!(matches!(
        pki.issue_node("dea", "../x", None),
        Err(PkiError::BadName(_))
    ));
    assert!(matches!(
        pki.issue_node("pgr", "pgr-1", None),
        Err(PkiError::UnknownAgency(_))
    ));
    assert!(matches!(
        Pki::open(&tmp.path().join("nope")),
        Err(PkiError::NotInitialized(_))
    ));
}

#[cfg(unix)]
#[test]
fn private_keys_are_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let pki = with_agency(tmp.path());
    let paths = pki.issue_node("dea", "dea-1", None).unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&paths.key), 0o600);
    assert_eq!(mode(&pki.ca_key_path(CaRef::Root)), 0o600);
    assert_eq!(mode(&paths.cert), 0o644);
}

/// Checks a fixture directory with the verifiers Enlace uses: webpki via rustls, ring provider,
/// every CRL loaded and unknown revocation status refused.
fn check_fixtures(dir: &Path) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    roots
        .add(certs(&dir.join("ca/root.pem")).remove(0))
        .unwrap();
    let roots = Arc::new(roots);
    let crls: Vec<CertificateRevocationListDer<'static>> = std::fs::read_dir(dir.join("crl"))
        .unwrap()
        .map(|e| CertificateRevocationListDer::from_pem_file(e.unwrap().path()).unwrap())
        .collect();
    assert_eq!(crls.len(), 5, "root and four agencies");
    let clients = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
        .with_crls(crls.clone())
        .build()
        .unwrap();
    let servers = WebPkiServerVerifier::builder_with_provider(roots, provider)
        .with_crls(crls)
        .build()
        .unwrap();
    let now = UnixTime::now();
    let as_client = |path: PathBuf| {
        let chain = certs(&path);
        clients
            .verify_client_cert(&chain[0], &chain[1..], now)
            .map(drop)
    };
    let as_server = |path: PathBuf, name: &'static str| {
        let chain = certs(&path);
        let name = ServerName::try_from(name).unwrap();
        servers
            .verify_server_cert(&chain[0], &chain[1..], &name, &[], now)
            .map(drop)
    };
    let refused = |r: Result<_, rustls::Error>| match r {
        Err(rustls::Error::InvalidCertificate(e)) => e,
        other => panic!("expected an invalid certificate, got {other:?}"),
    };

    for name in ["duty-desk", "analyst", "ops"] {
        as_client(dir.join(format!("clients/dea/{name}.pem"))).unwrap();
    }
    for node in [
        "dea/dea-1",
        "pgr/pgr-1",
        "pgr/pgr-2",
        "afi/afi-1",
        "cenapi/cenapi-1",
    ] {
        as_client(dir.join(format!("nodes/{node}.pem"))).unwrap();
    }
    as_server(dir.join("nodes/pgr/pgr-1.pem"), "pgr-1.pgr.enlace.test").unwrap();

    let e = refused(as_client(dir.join("clients/dea/revoked.pem")));
    assert_eq!(e, CertificateError::Revoked);
    let e = refused(as_client(dir.join("clients/dea/expired.pem")));
    assert!(
        matches!(
            e,
            CertificateError::Expired | CertificateError::ExpiredContext { .. }
        ),
        "{e:?}"
    );
    // The rogue federation copies every name, so webpki finds a path by name to our root and
    // then refuses it because the rogue agency CA's signature does not verify with our root key.
    // (A CA with names we do not know would be UnknownIssuer instead.)
    let e = refused(as_client(dir.join("rogue/clients/dea/duty-desk.pem")));
    assert_eq!(e, CertificateError::BadSignature);
    let e = refused(as_server(
        dir.join("rogue/nodes/dea/dea-1.pem"),
        "dea-1.dea.enlace.test",
    ));
    assert_eq!(e, CertificateError::BadSignature);
    // A client certificate cannot act as a node: no serverAuth, no DNS name.
    refused(as_server(
        dir.join("clients/dea/duty-desk.pem"),
        "dea-1.dea.enlace.test",
    ));

    let expired = &certs(&dir.join("clients/dea/expired.pem"))[0];
    let (_, cert) = X509Certificate::from_der(expired).unwrap();
    assert!(cert.validity().not_after.timestamp() < now.as_secs() as i64);
    let peer = from_certificate(
        &certs(&dir.join("clients/cenapi/analyst-2.pem"))[0],
        TEST_TRUST_DOMAIN,
    );
    assert_eq!(
        peer.unwrap().identity.uri(),
        "spiffe://enlace.test/agency/cenapi/client/analyst-2"
    );
}

#[test]
fn fresh_fixtures_work_with_rustls() {
    let tmp = tempfile::tempdir().unwrap();
    let fed = Pki::write_test_fixtures(tmp.path(), false).unwrap();
    assert!(fed.written.iter().all(|p| p.exists()));
    check_fixtures(tmp.path());
    assert!(matches!(
        Pki::write_test_fixtures(tmp.path(), false),
        Err(PkiError::AlreadyExists(_))
    ));
}

/// The committed fixtures, so that a test fails the day they stop working (not before 2040).
#[test]
fn committed_fixtures_work_with_rustls() {
    check_fixtures(&Path::new(env!("CARGO_MANIFEST_DIR")).join("certs/test"));
}
