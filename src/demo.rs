//! The demo territory of `serve --demo`: a small sport-santé territory
//! (`fixtures/demo/territory.json`, built into the binary) loaded through
//! the gateway's own transaction interaction, and the clients that act for
//! its organisations. Authentication stays on: each client gets a token the
//! usual way, with its own private key.

use std::sync::Arc;

use serde_json::Value;

use crate::clock::now_micros;
use crate::fhir::error::FhirError;
use crate::fhir::interaction::bundle::{self, BundleInput};
use crate::security::Caller;
use crate::security::audit::{self, AuditScope, Gateway, RequestInfo};
use crate::server::Running;
use crate::store::Visibility;

/// The territory: a transaction Bundle of `PUT Type/id` entries, fixed ids
/// (the README names them). Checked against profiles/ by
/// `scripts/check-fixtures.py`.
pub const TERRITORY: &str = include_str!("../fixtures/demo/territory.json");

/// A client registered by `serve --demo`.
#[derive(Debug, Clone, Copy)]
pub struct DemoClient {
    /// Client id; its key id is `<id>-key`, as the `token` command assumes.
    pub id: &'static str,
    /// The shell variable the printed instructions put its token in.
    pub var: &'static str,
    pub name: &'static str,
    /// The Organization (id in the territory) it acts for; none: the operator.
    pub organization: Option<&'static str>,
    pub scope: &'static str,
    /// What it sees of the territory, for the printed instructions.
    pub sees: &'static str,
}

impl DemoClient {
    /// Its private key's file name, in the data folder.
    pub fn key_file(&self) -> String {
        if self.id == OPERATOR.id {
            // The name of the demo's key before the territory existed.
            "demo-client.pem".into()
        } else {
            format!("demo-{}.pem", self.id)
        }
    }
}

const GP_SCOPE: &str = "system/*.rs system/Patient.cru system/ServiceRequest.cru system/Task.cru system/Consent.cru";
const MSS_SCOPE: &str = "system/*.rs system/Patient.cru system/Task.ru system/EpisodeOfCare.cru system/CarePlan.cru \
                         system/Encounter.cru system/Observation.cru system/DiagnosticReport.cru";

pub const OPERATOR: DemoClient = DemoClient {
    id: "demo",
    var: "DEMO",
    name: "Demo operator",
    organization: None,
    scope: "system/*.cruds operator",
    sees: "the operator: every organisation's data",
};

/// The operator, then one client per organisation of the territory.
pub const CLIENTS: &[DemoClient] = &[
    OPERATOR,
    DemoClient {
        id: "cabinet-colombier",
        var: "COLOMBIER",
        name: "Cabinet médical du Colombier (demo)",
        organization: Some("cabinet-colombier"),
        scope: GP_SCOPE,
        sees: "GP practice of Dr Lebreton, GP of Nathalie Le Bihan (referred) and Solène Guillou: sees them",
    },
    DemoClient {
        id: "msp-cesson",
        var: "CESSON",
        name: "MSP de Cesson-Sévigné (demo)",
        organization: Some("msp-cesson"),
        scope: GP_SCOPE,
        sees: "GP practice of Dr Riou, GP of Jean-Yves Tanguy: sees him",
    },
    DemoClient {
        id: "mss-bouger-plus",
        var: "BOUGER",
        name: "Maison Sport-Santé Bouger+ (demo)",
        organization: Some("mss-bouger-plus"),
        scope: MSS_SCOPE,
        sees: "MSS that owns Nathalie Le Bihan's referral: sees her",
    },
    DemoClient {
        id: "mss-vilaine-active",
        var: "VILAINE",
        name: "Maison Sport-Santé Vilaine Active (demo)",
        organization: Some("mss-vilaine-active"),
        scope: MSS_SCOPE,
        sees: "the other MSS: no patient",
    },
    DemoClient {
        id: "cpts-rennes-est",
        var: "CPTS",
        name: "CPTS Rennes Est (demo)",
        organization: Some("cpts-rennes-est"),
        scope: "system/*.rs system/Task.cru",
        sees: "the CPTS: the referrals of its territory and their patients (Nathalie Le Bihan)",
    },
];

/// What loading the territory did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loaded {
    /// Resources created now.
    pub created: usize,
    /// Resources left as they were: already there (or deleted since).
    pub present: usize,
}

/// Loads the territory's resources that the database has never held, in
/// one audited transaction as the gateway itself ([`Caller::system`]). Those it
/// holds, or held and were deleted, are left as they are: a second start
/// changes nothing, and what a newcomer changed while exploring stays.
pub async fn load(gateway: &Running) -> Result<Loaded, FhirError> {
    let (store, rules, base) = (&gateway.store, &gateway.rules, gateway.base.as_str());
    let mut territory: Value = serde_json::from_str(TERRITORY)
        .map_err(|e| FhirError::internal(format!("the demo territory is not JSON: {e}")))?;
    let entries = territory
        .get_mut("entry")
        .and_then(Value::as_array_mut)
        .ok_or_else(|| FhirError::internal("the demo territory has no entries"))?;
    let mut absent = Vec::with_capacity(entries.len());
    let mut present = 0;
    for entry in entries.drain(..) {
        let url = entry
            .pointer("/request/url")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let Some((rtype, id)) = url.split_once('/') else {
            return Err(FhirError::internal(format!(
                "the demo territory's entry '{url}' is not a PUT Type/id"
            )));
        };
        // A deleted resource still has its versions: `read` finds it.
        if store.read(rtype, id, &Visibility::All).await?.is_some() {
            present += 1;
        } else {
            absent.push(entry);
        }
    }
    let created = absent.len();
    if created == 0 {
        return Ok(Loaded { created, present });
    }
    *entries = absent;
    let body = serde_json::to_vec(&territory).map_err(|e| FhirError::internal(format!("the demo territory: {e}")))?;
    // Audited like a client's transaction, in the same database
    // transaction, with the gateway as the client.
    let scope = AuditScope::new(
        Arc::new(Gateway::new(base)),
        RequestInfo {
            interaction: "transaction",
            started: now_micros(),
            ..RequestInfo::default()
        },
    );
    let caller = Caller::system();
    scope
        .run_in(async {
            audit::note_caller(&caller);
            let input = BundleInput {
                base,
                body: &body,
                representation: false,
                strict: true,
                search_limits: Default::default(),
            };
            bundle::process(store, rules, &caller, input).await
        })
        .await?;
    Ok(Loaded { created, present })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apa::identity::{IdentityPolicy, Ins, InsKind, Rpps, Siret, check_identifiers, ins_gate, system};
    use crate::security::scopes::Scopes;

    fn resources() -> Vec<Value> {
        let bundle: Value = serde_json::from_str(TERRITORY).expect("the territory is JSON");
        bundle["entry"]
            .as_array()
            .expect("entries")
            .iter()
            .map(|e| e["resource"].clone())
            .collect()
    }

    fn of_type(rtype: &str) -> Vec<Value> {
        resources().into_iter().filter(|r| r["resourceType"] == rtype).collect()
    }

    fn identifiers(r: &Value, system: &str) -> Vec<String> {
        r["identifier"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|i| i["system"] == system)
            .map(|i| i["value"].as_str().expect("value").to_string())
            .collect()
    }

    #[test]
    fn every_patient_has_a_valid_test_ins_and_a_qualified_identity() {
        let patients = of_type("Patient");
        assert_eq!(patients.len(), 3);
        for p in &patients {
            let ins = identifiers(p, system::INS_NIR_TEST);
            assert_eq!(ins.len(), 1, "{}", p["id"]);
            let parsed = Ins::new(InsKind::Test, &ins[0]).unwrap_or_else(|e| panic!("{}: {e}", p["id"]));
            assert_eq!(parsed.system(), "urn:oid:1.2.250.1.213.1.4.10");
            assert!(ins_gate(p).allowed(), "{}: the INS needs a QUAL identity", p["id"]);
        }
    }

    #[test]
    fn every_gp_has_a_valid_rpps() {
        let gps = of_type("Practitioner");
        assert_eq!(gps.len(), 3);
        for gp in &gps {
            let rpps = identifiers(gp, system::RPPS);
            assert_eq!(rpps.len(), 1, "{}", gp["id"]);
            Rpps::parse(&rpps[0]).unwrap_or_else(|e| panic!("{}: {e}", gp["id"]));
            assert_eq!(identifiers(gp, system::ID_NAT_PS), vec![format!("8{}", rpps[0])]);
        }
    }

    #[test]
    fn every_organisation_has_a_valid_siret() {
        let orgs = of_type("Organization");
        assert_eq!(orgs.len(), 5);
        for org in &orgs {
            let siret = identifiers(org, system::SIRENE);
            assert_eq!(siret.len(), 1, "{}", org["id"]);
            Siret::parse(&siret[0]).unwrap_or_else(|e| panic!("{}: {e}", org["id"]));
        }
    }

    #[test]
    fn the_identity_rules_find_nothing_to_say() {
        for r in resources() {
            let issues = check_identifiers(&r, IdentityPolicy::default());
            assert!(issues.is_empty(), "{}/{}: {issues:?}", r["resourceType"], r["id"]);
        }
    }

    #[test]
    fn every_client_acts_for_an_organisation_of_the_territory_with_valid_scopes() {
        let orgs: Vec<String> = of_type("Organization")
            .iter()
            .map(|o| o["id"].as_str().expect("id").to_string())
            .collect();
        for c in CLIENTS {
            Scopes::parse(c.scope).unwrap_or_else(|e| panic!("{}: {e}", c.id));
            if let Some(org) = c.organization {
                assert!(orgs.iter().any(|o| o == org), "{}: no Organization/{org}", c.id);
            }
        }
        assert_eq!(CLIENTS.iter().filter(|c| c.organization.is_some()).count(), orgs.len());
    }
}
