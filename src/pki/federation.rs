//! Whole federations in one call: the demo federation and the committed test fixtures.
//!
//! Only recipes on top of [`Pki`]; every certificate profile lives in `pki` itself.

use std::path::{Path, PathBuf};

use time::Duration;

use super::{CaRef, Pki, PkiError, PkiOptions, Validity, check_name};
use crate::identity::Role;

/// Trust domain of the committed fixtures in `certs/test/`.
pub const TEST_TRUST_DOMAIN: &str = "enlace.test";
/// Default trust domain of `enlace pki demo`.
pub const DEMO_TRUST_DOMAIN: &str = "enlace.example";

/// One agency of a federation to create: its issuing CA, nodes and clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgencySpec {
    /// The agency id, e.g. `dea`: the OU of its issuing CA and the agency of its identities.
    pub id: String,
    /// Display name in the CA's common name; `None` means the id in upper case.
    pub display: Option<String>,
    /// Names of its nodes, e.g. `dea-1`, each issued a node certificate.
    pub nodes: Vec<String>,
    /// Clients and operators, with their role.
    pub clients: Vec<(String, Role)>,
}

impl AgencySpec {
    /// An agency with the given nodes and clients and the default display name.
    pub fn new(id: &str, nodes: &[&str], clients: &[(&str, Role)]) -> AgencySpec {
        AgencySpec {
            id: id.to_owned(),
            display: None,
            nodes: nodes.iter().map(|n| (*n).to_owned()).collect(),
            clients: clients.iter().map(|(n, r)| ((*n).to_owned(), *r)).collect(),
        }
    }
}

/// A federation that was just written, and every file written for it, in order.
#[derive(Debug, Clone)]
pub struct Federation {
    /// The PKI directory, open for further operations.
    pub pki: Pki,
    /// Every file written: the trust-domain file, then each CA's certificate, key, revocation
    /// list and CRL, and each leaf's certificate and key.
    pub written: Vec<PathBuf>,
}

/// The demo federation: DEA, PGR, AFI and CENAPI, each with node `<agency>-1`, a `duty-desk`
/// client and an `ops` operator; DEA and CENAPI also have an `analyst` client.
pub fn demo_agencies() -> Vec<AgencySpec> {
    ["dea", "pgr", "afi", "cenapi"]
        .into_iter()
        .map(|a| {
            let mut clients = vec![("duty-desk", Role::Client), ("ops", Role::Operator)];
            if a == "dea" || a == "cenapi" {
                clients.push(("analyst", Role::Client));
            }
            AgencySpec::new(a, &[&format!("{a}-1")], &clients)
        })
        .collect()
}

impl Pki {
    /// Creates a PKI directory holding a whole federation: root, agency CAs, nodes, clients and
    /// empty CRLs. All names are checked before anything is written.
    pub fn federation(
        dir: &Path,
        trust_domain: &str,
        agencies: &[AgencySpec],
        options: PkiOptions,
    ) -> Result<Federation, PkiError> {
        for spec in agencies {
            check_name(&spec.id)?;
            spec.nodes.iter().try_for_each(|n| check_name(n))?;
            spec.clients.iter().try_for_each(|(n, _)| check_name(n))?;
        }
        let pki = Pki::init_with(dir, trust_domain, options)?;
        let mut written = vec![
            dir.join("trust-domain"),
            pki.root_cert_path(),
            pki.ca_key_path(CaRef::Root),
            pki.revoked_path(CaRef::Root),
            pki.crl_path(CaRef::Root),
        ];
        for spec in agencies {
            let ca = CaRef::Agency(&spec.id);
            let p = pki.add_agency(&spec.id, spec.display.as_deref())?;
            written.extend([p.cert, p.key, pki.revoked_path(ca), pki.crl_path(ca)]);
            for node in &spec.nodes {
                let p = pki.issue_node(&spec.id, node, None)?;
                written.extend([p.cert, p.key]);
            }
            for (name, role) in &spec.clients {
                let p = pki.issue_client(&spec.id, name, *role, None)?;
                written.extend([p.cert, p.key]);
            }
        }
        Ok(Federation { pki, written })
    }

    /// Writes the test fixture set (trust domain [`TEST_TRUST_DOMAIN`]) into `dir`; see
    /// `certs/README.md` for what each file is for.
    ///
    /// Dates are fixed rather than relative to now, so that regenerating does not move them and
    /// the committed files stay valid: CAs 2019-01-01 to 2046-01-01, leaves 2025-01-01 to
    /// 2040-01-01, `dea/expired` 2020-01-01 to 2021-01-01, CRLs updated twenty years ahead.
    pub fn write_test_fixtures(dir: &Path, overwrite: bool) -> Result<Federation, PkiError> {
        let ymd = rcgen::date_time_ymd;
        let options = PkiOptions {
            overwrite,
            ca_validity: Some(Validity::between(ymd(2019, 1, 1), ymd(2046, 1, 1))?),
            leaf_validity: Some(Validity::between(ymd(2025, 1, 1), ymd(2040, 1, 1))?),
            crl_lifetime: Duration::days(20 * 365),
        };
        let client = Role::Client;
        let agencies = [
            AgencySpec::new(
                "dea",
                &["dea-1"],
                &[
                    ("duty-desk", client),
                    ("analyst", client),
                    ("ops", Role::Operator),
                ],
            ),
            AgencySpec::new("pgr", &["pgr-1", "pgr-2"], &[("duty-desk", client)]),
            AgencySpec::new("afi", &["afi-1"], &[("duty-desk", client)]),
            AgencySpec::new(
                "cenapi",
                &["cenapi-1"],
                &[("analyst", client), ("analyst-2", client)],
            ),
        ];
        let mut fed = Pki::federation(dir, TEST_TRUST_DOMAIN, &agencies, options.clone())?;

        let expired = Validity::between(ymd(2020, 1, 1), ymd(2021, 1, 1))?;
        let p = fed
            .pki
            .issue_client("dea", "expired", client, Some(expired))?;
        fed.written.extend([p.cert, p.key]);

        let p = fed.pki.issue_client("dea", "revoked", client, None)?;
        fed.pki.revoke(CaRef::Agency("dea"), &p.cert)?;
        fed.written.extend([p.cert, p.key]);

        // Another CA with the very same names: only the keys differ.
        let rogue = [AgencySpec::new("dea", &["dea-1"], &[("duty-desk", client)])];
        let rogue = Pki::federation(&dir.join("rogue"), TEST_TRUST_DOMAIN, &rogue, options)?;
        fed.written.extend(rogue.written);
        Ok(fed)
    }
}
