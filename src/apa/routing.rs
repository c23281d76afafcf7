//! Routing: the single entry point per territory.
//!
//! A prescription (a ServiceRequest claiming the `apa-prescription`
//! profile) created with no performer, and with no referral Task for it in
//! the same write, is addressed by the gateway: a Task (`apa-referral-task`,
//! status `requested`) joins the write, owned by
//! 1. a Maison Sport-Santé whose territory covers the patient's commune and
//!    that runs an active programme fitting the prescription: a programme
//!    (HealthcareService) accepting its functional-limitation level and,
//!    when the prescription names condition groups, one of them. A severe
//!    limitation goes only to programmes whose staff includes health
//!    professionals (CSP D.1172-3: the kinds marked `health-professional`
//!    in `CodeSystem-staff-kind.json`), whatever levels a programme claims;
//! 2. otherwise the CPTS covering the commune, which coordinates the
//!    pathways of its territory;
//! 3. otherwise nobody: the prescription is stored without a Task and the
//!    response carries a warning (a [`Note`]).
//!
//! A prescriber who chooses the programme (`performer`: a
//! HealthcareService) for a severe limitation is refused (422) when its
//! staff includes no health professional: the same rule, at the other door;
//! and so is a client that addresses a referral Task itself (`requested`,
//! a CPTS handing it over) to an MSS with no such programme.
//!
//! Ties are broken the same way every time: an organisation that lists the
//! commune itself before one that covers its whole département, then the
//! smallest Organization id (then programme id). A prescription without a
//! limitation level cannot be shown to fit any programme: it goes to the
//! CPTS.
//!
//! The decision reads the directory as stored (Organizations with their
//! `apa-territory` extensions and `Organization.type` kind, programmes with
//! their eligibility and characteristics), with one search per write job,
//! inside the writer: `Organization?territory=<communes and
//! départements>&_revinclude=HealthcareService:organization`. The same
//! lookup serves the territory grants (`security::compartment::
//! TERRITORY_GRANTS`): every Task written gives its patient to the CPTS
//! covering the patient's commune.

use std::collections::HashSet;
use std::sync::OnceLock;

use serde_json::{Value, json};

use crate::clock::now_micros;
use crate::fhir::error::{FhirError, Issue, Severity};
use crate::fhir::interaction::{index_of, new_id};
use crate::fhir::resource::{Resource, codes};
use crate::fhir::rules::Note;
use crate::fhir::search::model::{IndexValue, PageStart};
use crate::fhir::search::parse::{ParseOptions, parse_search};
use crate::fhir::search::registry::Registry;
use crate::fhir::search::values::format_instant;
use crate::security::compartment::{TERRITORY_GRANTS, patients_of};
use crate::security::consent::Kind;
use crate::store::{Grant, Method, Write, WriteTx};

/// The territory an Organization covers (repeated).
pub const TERRITORY_EXTENSION: &str = "https://apa-gateway.fr/fhir/StructureDefinition/apa-territory";
/// The INSEE commune code of an address (FR Core).
pub const INSEE_EXTENSION: &str = "https://hl7.fr/ig/fhir/core/StructureDefinition/fr-core-address-insee-code";
pub const PRESCRIPTION_PROFILE: &str = "https://apa-gateway.fr/fhir/StructureDefinition/apa-prescription";
pub const REFERRAL_PROFILE: &str = "https://apa-gateway.fr/fhir/StructureDefinition/apa-referral-task";
const LIMITATION_EXTENSION: &str = "https://apa-gateway.fr/fhir/StructureDefinition/apa-functional-limitation";
const LIMITATION_SYSTEM: &str = "https://apa-gateway.fr/fhir/CodeSystem/functional-limitation";
const CONDITION_SYSTEM: &str = "https://apa-gateway.fr/fhir/CodeSystem/condition-group";
const STAFF_SYSTEM: &str = "https://apa-gateway.fr/fhir/CodeSystem/staff-kind";
const STAFF_KINDS: &str = include_str!("../../profiles/CodeSystem-staff-kind.json");

/// Organizations per page of the directory lookup (a commune is covered by
/// a handful; more pages are read when there are more).
const PAGE: usize = 100;

/// An INSEE commune code (TRE_R13): five characters, the first two the
/// département (`2A`/`2B` in Corsica, `97x` overseas).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Commune(String);

impl Commune {
    pub fn parse(code: &str) -> Option<Commune> {
        let b = code.as_bytes();
        let dep = b.get(..2)?;
        let ok = b.len() == 5
            && (dep.iter().all(u8::is_ascii_digit) || dep == b"2A" || dep == b"2B")
            && b[2..].iter().all(u8::is_ascii_digit);
        ok.then(|| Commune(code.to_string()))
    }

    pub fn code(&self) -> &str {
        &self.0
    }

    /// Its département (TRE_G09): two characters, three overseas (971–976).
    pub fn departement(&self) -> &str {
        if self.0.starts_with("97") {
            &self.0[..3]
        } else {
            &self.0[..2]
        }
    }
}

/// One territory an organisation declares.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Area {
    Commune(Commune),
    Departement(String),
}

impl Area {
    fn parse(code: &str) -> Option<Area> {
        if let Some(c) = Commune::parse(code) {
            return Some(Area::Commune(c));
        }
        let b = code.as_bytes();
        let dep = (b.len() == 2 && (b.iter().all(u8::is_ascii_digit) || code == "2A" || code == "2B"))
            || (b.len() == 3 && code.starts_with("97") && (b'1'..=b'6').contains(&b[2]));
        dep.then(|| Area::Departement(code.to_string()))
    }

    /// How precisely it covers `c`: 2 when it is the commune, 1 when it is
    /// its département.
    fn covers(&self, c: &Commune) -> Option<u8> {
        match self {
            Area::Commune(own) => (own == c).then_some(2),
            Area::Departement(d) => (d == c.departement()).then_some(1),
        }
    }
}

/// The functional-limitation level of a prescription (CSP D.1172-3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Level {
    Aucune,
    Minime,
    Moderee,
    Severe,
}

impl Level {
    pub fn from_code(code: &str) -> Option<Level> {
        match code {
            "aucune" => Some(Level::Aucune),
            "minime" => Some(Level::Minime),
            "moderee" => Some(Level::Moderee),
            "severe" => Some(Level::Severe),
            _ => None,
        }
    }
}

/// The staff kinds that are health professionals of D.1172-2 1°, read
/// from the package's CodeSystem (property `health-professional`).
pub fn health_professional_kinds() -> &'static HashSet<String> {
    static KINDS: OnceLock<HashSet<String>> = OnceLock::new();
    KINDS.get_or_init(|| {
        let cs: Value = serde_json::from_str(STAFF_KINDS).unwrap_or(Value::Null);
        cs.get("concept")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|c| {
                c.get("property")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .any(|p| {
                        p.get("code").and_then(Value::as_str) == Some("health-professional")
                            && p.get("valueBoolean").and_then(Value::as_bool) == Some(true)
                    })
            })
            .filter_map(|c| c.get("code").and_then(Value::as_str).map(str::to_string))
            .collect()
    })
}

/// An organisation of the directory (active ones only).
#[derive(Debug, Clone)]
struct Organisation {
    id: String,
    kind: Option<Kind>,
    areas: Vec<Area>,
}

impl Organisation {
    fn of(org: &Value) -> Option<Organisation> {
        if org.get("active").and_then(Value::as_bool) == Some(false) {
            return None;
        }
        let id = org.get("id").and_then(Value::as_str)?.to_string();
        let areas = org
            .get("extension")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|e| e.get("url").and_then(Value::as_str) == Some(TERRITORY_EXTENSION))
            .filter_map(|e| e.get("valueCoding")?.get("code")?.as_str())
            .filter_map(Area::parse)
            .collect();
        Some(Organisation {
            id,
            kind: Kind::of_organization(org),
            areas,
        })
    }

    fn covers(&self, c: &Commune) -> Option<u8> {
        self.areas.iter().filter_map(|a| a.covers(c)).max()
    }
}

/// A programme (HealthcareService) of the directory (active ones only).
#[derive(Debug, Clone)]
struct Programme {
    id: String,
    /// The Organization id of `providedBy`.
    provider: String,
    conditions: HashSet<String>,
    levels: HashSet<Level>,
    staff: HashSet<String>,
}

impl Programme {
    /// An active programme.
    fn of(hs: &Value) -> Option<Programme> {
        if hs.get("active").and_then(Value::as_bool) == Some(false) {
            return None;
        }
        Programme::parse(hs)
    }

    fn parse(hs: &Value) -> Option<Programme> {
        let id = hs.get("id").and_then(Value::as_str)?.to_string();
        let provider = reference_id(hs.get("providedBy")?, "Organization")?;
        let conditions = hs
            .get("eligibility")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .flat_map(|e| codes(e.get("code"), CONDITION_SYSTEM))
            .map(str::to_string)
            .collect();
        let characteristic = hs.get("characteristic");
        Some(Programme {
            id,
            provider,
            conditions,
            levels: codes(characteristic, LIMITATION_SYSTEM)
                .filter_map(Level::from_code)
                .collect(),
            staff: codes(characteristic, STAFF_SYSTEM).map(str::to_string).collect(),
        })
    }

    fn has_health_professionals(&self) -> bool {
        self.staff.iter().any(|s| health_professional_kinds().contains(s))
    }

    /// Does it take this prescription? A severe limitation needs a health
    /// professional among the staff, whatever levels the programme lists.
    fn fits(&self, p: &Prescription) -> bool {
        let Some(level) = p.level else { return false };
        if !self.levels.contains(&level) {
            return false;
        }
        if level == Level::Severe && !self.has_health_professionals() {
            return false;
        }
        p.conditions.is_empty() || p.conditions.iter().any(|c| self.conditions.contains(c))
    }
}

/// Where a prescription goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// An MSS, for one of its programmes.
    Mss { organization: String, programme: String },
    /// The CPTS of the territory: no MSS programme fits.
    Cpts { organization: String },
}

impl Route {
    fn organization(&self) -> &str {
        match self {
            Route::Mss { organization, .. } | Route::Cpts { organization } => organization,
        }
    }
}

/// The organisations covering some communes, and their programmes.
#[derive(Debug, Default)]
pub struct Directory {
    organisations: Vec<Organisation>,
    programmes: Vec<Programme>,
}

impl Directory {
    /// Reads the organisations covering `communes` (or their départements)
    /// and their programmes: one search, paged if it must be; then those
    /// the job itself writes (a transaction may carry the directory and a
    /// referral together) replace or remove the stored ones.
    async fn load(tx: &mut WriteTx, communes: &[Commune], writes: &[Write]) -> Result<Directory, FhirError> {
        let mut dir = Directory::default();
        if communes.is_empty() {
            return Ok(dir);
        }
        dir.read(tx, communes).await?;
        dir.overlay(writes);
        Ok(dir)
    }

    /// What the job itself writes of the directory replaces what is stored
    /// (a transaction may carry the directory and a prescription).
    fn overlay(&mut self, writes: &[Write]) {
        let dir = self;
        for w in writes {
            let json = || w.body.as_deref().and_then(|b| serde_json::from_slice::<Value>(b).ok());
            match w.resource_type.as_str() {
                "Organization" => {
                    dir.organisations.retain(|o| o.id != w.id);
                    dir.organisations.extend(json().as_ref().and_then(Organisation::of));
                }
                "HealthcareService" => {
                    dir.programmes.retain(|p| p.id != w.id);
                    dir.programmes.extend(json().as_ref().and_then(Programme::of));
                }
                _ => {}
            }
        }
    }

    async fn read(&mut self, tx: &mut WriteTx, communes: &[Commune]) -> Result<(), FhirError> {
        let mut codes: Vec<&str> = communes.iter().flat_map(|c| [c.code(), c.departement()]).collect();
        codes.sort_unstable();
        codes.dedup();
        self.read_where(tx, "territory", &codes.join(",")).await
    }

    /// One organisation and its programmes, as the job leaves them.
    async fn of_organisation(tx: &mut WriteTx, id: &str, writes: &[Write]) -> Result<Directory, FhirError> {
        let mut dir = Directory::default();
        dir.read_where(tx, "_id", id).await?;
        dir.overlay(writes);
        Ok(dir)
    }

    /// Reads the Organizations matching one search parameter, with their
    /// programmes (`_revinclude`), every page.
    async fn read_where(&mut self, tx: &mut WriteTx, param: &str, value: &str) -> Result<(), FhirError> {
        let dir = self;
        let pairs = vec![
            (param.to_string(), value.to_string()),
            ("_revinclude".to_string(), "HealthcareService:organization".to_string()),
        ];
        let opts = ParseOptions {
            strict: true,
            default_count: PAGE,
            max_count: PAGE,
            ..ParseOptions::default()
        };
        let mut req = parse_search(Registry::r4(), Some("Organization"), &pairs, &opts)
            .map_err(|e| FhirError::internal(format!("the directory lookup does not parse: {e}")))?;
        loop {
            let page = tx.search(&req).await?;
            for v in page.matches.iter().chain(&page.included) {
                let Some(json) = v.body.as_deref().and_then(|b| serde_json::from_slice::<Value>(b).ok()) else {
                    continue;
                };
                match v.resource_type.as_str() {
                    "Organization" => dir.organisations.extend(Organisation::of(&json)),
                    "HealthcareService" => dir.programmes.extend(Programme::of(&json)),
                    _ => {}
                }
            }
            match page.next {
                Some(next) if next != PageStart::First => req.page = next,
                _ => break,
            }
        }
        Ok(())
    }

    /// The organisations of a kind covering `c`, the most precise first,
    /// then by id.
    fn covering(&self, c: &Commune, kind: Kind) -> Vec<(&Organisation, u8)> {
        let mut out: Vec<(&Organisation, u8)> = self
            .organisations
            .iter()
            .filter(|o| o.kind == Some(kind))
            .filter_map(|o| o.covers(c).map(|p| (o, p)))
            .collect();
        out.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.id.cmp(&b.0.id)));
        out.dedup_by(|a, b| a.0.id == b.0.id);
        out
    }

    /// Where a prescription for a patient living in `c` goes.
    fn route(&self, p: &Prescription, c: &Commune) -> Option<Route> {
        for (mss, _) in self.covering(c, Kind::Mss) {
            let mut fitting: Vec<&Programme> = self
                .programmes
                .iter()
                .filter(|prog| prog.provider == mss.id && prog.fits(p))
                .collect();
            fitting.sort_by(|a, b| a.id.cmp(&b.id));
            if let Some(prog) = fitting.first() {
                return Some(Route::Mss {
                    organization: mss.id.clone(),
                    programme: prog.id.clone(),
                });
            }
        }
        self.covering(c, Kind::Cpts).first().map(|(cpts, _)| Route::Cpts {
            organization: cpts.id.clone(),
        })
    }
}

/// What routing needs of a prescription.
#[derive(Debug, Clone)]
struct Prescription {
    id: String,
    patient: String,
    requester: Option<Value>,
    level: Option<Level>,
    conditions: Vec<String>,
}

impl Prescription {
    /// The prescription a write creates, when it is one the gateway routes.
    fn to_route(w: &Write, writes: &[Write]) -> Option<Prescription> {
        if w.resource_type != "ServiceRequest" || w.method != Method::Create {
            return None;
        }
        // Decided on the index values first: the body is parsed (inside
        // the single writer) only for a prescription that will be routed.
        let claims = w.index.iter().any(|(code, v)| {
            code == "_profile" && matches!(v, IndexValue::Uri(u) if u.split('|').next() == Some(PRESCRIPTION_PROFILE))
        });
        if !claims || has_task(writes, &w.id) {
            return None;
        }
        let json: Value = serde_json::from_slice(w.body.as_deref()?).ok()?;
        let chosen = json
            .get("performer")
            .and_then(Value::as_array)
            .is_some_and(|a| !a.is_empty());
        if chosen {
            return None;
        }
        let patient = patients_of(&w.resource_type, &w.id, &w.index).into_iter().next()?;
        let level = level_of(&json);
        let conditions = codes(json.get("reasonCode"), CONDITION_SYSTEM)
            .map(str::to_string)
            .collect();
        Some(Prescription {
            id: w.id.clone(),
            patient,
            requester: json.get("requester").cloned(),
            level,
            conditions,
        })
    }
}

/// The functional-limitation level a prescription states.
fn level_of(sr: &Value) -> Option<Level> {
    sr.get("extension")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|e| e.get("url").and_then(Value::as_str) == Some(LIMITATION_EXTENSION))
        .flat_map(|e| codes(e.get("valueCodeableConcept"), LIMITATION_SYSTEM))
        .find_map(Level::from_code)
}

/// A prescriber may choose the programme (`performer`: a
/// HealthcareService): for a severe limitation it must be run by health
/// professionals (CSP D.1172-3), or the prescription is refused (422).
async fn check_chosen_programmes(tx: &mut WriteTx, writes: &[Write]) -> Result<(), FhirError> {
    for w in writes.iter().filter(|w| w.resource_type == "ServiceRequest") {
        // The index tells, without parsing, whether a programme is chosen.
        let chooses = w.index.iter().any(|(code, v)| {
            code == "performer" && matches!(v, IndexValue::Reference { rtype: Some(t), .. } if t == "HealthcareService")
        });
        let Some(json) = w
            .body
            .as_deref()
            .filter(|_| chooses)
            .and_then(|b| serde_json::from_slice::<Value>(b).ok())
        else {
            continue;
        };
        if level_of(&json) != Some(Level::Severe) {
            continue;
        }
        let performers = json.get("performer").and_then(Value::as_array).into_iter().flatten();
        for (i, performer) in performers.enumerate() {
            let Some(id) = reference_id(performer, "HealthcareService") else {
                continue;
            };
            let body = match writes
                .iter()
                .find(|p| p.resource_type == "HealthcareService" && p.id == id)
            {
                Some(p) => p.body.clone(),
                None => tx.read("HealthcareService", &id).await?.and_then(|v| v.body),
            };
            let programme = body
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                .and_then(|hs| Programme::parse(&hs));
            if programme.is_some_and(|p| !p.has_health_professionals()) {
                return Err(FhirError::new(
                    422,
                    "business-rule",
                    format!(
                        "a severe functional limitation may only be followed by health professionals \
                         (CSP D.1172-3): the staff of HealthcareService/{id} includes none"
                    ),
                )
                .at(format!("ServiceRequest.performer[{i}]")));
            }
        }
    }
    Ok(())
}

/// A referral a client addresses itself (a CPTS handing it over, a GP
/// naming the MSS): for a severe limitation the owning Maison Sport-Santé
/// must run an active programme with health professionals (CSP D.1172-3),
/// the rule routing follows — the third door after routing and the
/// prescriber's choice of programme. Checked on Tasks written `requested`,
/// so that an MSS may still refuse or close what it was wrongly sent.
async fn check_referral_owners(tx: &mut WriteTx, writes: &[Write]) -> Result<(), FhirError> {
    for w in writes.iter().filter(|w| w.resource_type == "Task" && w.body.is_some()) {
        let (Some(owner), Some(focus)) = (
            w.reference("owner", "Organization"),
            w.reference("focus", "ServiceRequest"),
        ) else {
            continue;
        };
        if !w.has_token("status", "requested") {
            continue;
        }
        let prescription = match writes
            .iter()
            .find(|p| p.resource_type == "ServiceRequest" && p.id == focus)
        {
            Some(p) => p.body.clone(),
            None => tx.read("ServiceRequest", focus).await?.and_then(|v| v.body),
        };
        let severe = prescription
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .is_some_and(|sr| level_of(&sr) == Some(Level::Severe));
        if !severe {
            continue;
        }
        let dir = Directory::of_organisation(tx, owner, writes).await?;
        let is_mss = dir
            .organisations
            .iter()
            .any(|o| o.id == owner && o.kind == Some(Kind::Mss));
        let qualified = dir
            .programmes
            .iter()
            .any(|p| p.provider == owner && p.has_health_professionals());
        if is_mss && !qualified {
            return Err(FhirError::new(
                422,
                "business-rule",
                format!(
                    "a severe functional limitation may only be followed by health professionals \
                     (CSP D.1172-3): no active programme of Organization/{owner} includes any; address the \
                     referral to an MSS whose programme does, or to the CPTS"
                ),
            )
            .at("Task.owner"));
        }
    }
    Ok(())
}

/// Is a Task for this ServiceRequest (`focus` or `based-on`) in the job?
fn has_task(writes: &[Write], service_request: &str) -> bool {
    writes
        .iter()
        .filter(|t| t.resource_type == "Task" && t.body.is_some())
        .flat_map(|t| &t.index)
        .any(|(code, v)| {
            matches!(code.as_str(), "focus" | "based-on")
                && matches!(v, IndexValue::Reference { rtype: Some(t), id: Some(id), .. }
                    if t == "ServiceRequest" && id == service_request)
        })
}

/// The commune of a patient's home: the INSEE code of a `home` address
/// first, else of any address still in use.
pub fn home_commune(patient: &Value) -> Option<Commune> {
    let addresses: Vec<&Value> = patient
        .get("address")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|a| !matches!(a.get("use").and_then(Value::as_str), Some("old" | "billing")))
        .collect();
    let commune = |a: &&Value| {
        a.get("extension")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|e| e.get("url").and_then(Value::as_str) == Some(INSEE_EXTENSION))
            .filter_map(|e| e.get("valueCoding")?.get("code")?.as_str())
            .find_map(Commune::parse)
    };
    addresses
        .iter()
        .filter(|a| a.get("use").and_then(Value::as_str) == Some("home"))
        .find_map(commune)
        .or_else(|| addresses.iter().find_map(commune))
}

/// The patient's commune as the job leaves it: the Patient written in it,
/// or the stored one. Read whatever the job's compartment: a prescriber
/// refers a patient it identifies in the same job (it gains them with
/// this write), and the commune only decides grants and an owner — nothing
/// of the patient goes back to the caller, and `compartment::admit` still
/// refuses a job about a patient its party does not end up granted.
async fn patient_commune(tx: &mut WriteTx, writes: &[Write], id: &str) -> Result<Option<Commune>, FhirError> {
    let body = match writes.iter().rev().find(|w| w.resource_type == "Patient" && w.id == id) {
        Some(w) => w.body.clone(),
        None => tx
            .of_patient("Patient", id)
            .await?
            .into_iter()
            .find(|v| v.resource_type == "Patient" && v.id == id)
            .and_then(|v| v.body),
    };
    Ok(body
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .and_then(|p| home_commune(&p)))
}

/// Adds the routed referrals of one job and proposes the territory grants
/// of its Tasks; returns what the client should hear of the routing.
pub async fn apply(tx: &mut WriteTx, writes: &mut Vec<Write>) -> Result<Vec<Note>, FhirError> {
    check_chosen_programmes(tx, writes).await?;
    check_referral_owners(tx, writes).await?;
    let prescriptions: Vec<Prescription> = writes
        .iter()
        .filter_map(|w| Prescription::to_route(w, writes))
        .collect();
    let granting = |w: &Write| w.body.is_some() && TERRITORY_GRANTS.iter().any(|(t, _)| *t == w.resource_type);
    // The patients whose commune matters, and their communes.
    let mut patients: Vec<String> = prescriptions.iter().map(|p| p.patient.clone()).collect();
    for w in writes.iter().filter(|w| granting(w)) {
        patients.extend(patients_of(&w.resource_type, &w.id, &w.index));
    }
    patients.sort();
    patients.dedup();
    if patients.is_empty() {
        return Ok(Vec::new());
    }
    let mut communes: Vec<(String, Commune)> = Vec::new();
    for p in patients {
        if let Some(c) = patient_commune(tx, writes, &p).await? {
            communes.push((p, c));
        }
    }
    let commune_of = |patient: &str| communes.iter().find(|(p, _)| p == patient).map(|(_, c)| c.clone());
    let mut wanted: Vec<Commune> = communes.iter().map(|(_, c)| c.clone()).collect();
    wanted.sort_by(|a, b| a.0.cmp(&b.0));
    wanted.dedup();
    let dir = Directory::load(tx, &wanted, writes).await?;

    let mut notes = Vec::new();
    for p in &prescriptions {
        let note = |severity, code, diagnostics: String| Note {
            resource_type: "ServiceRequest".into(),
            id: p.id.clone(),
            issue: Issue {
                severity,
                code,
                diagnostics,
                expression: vec!["ServiceRequest.performer".into()],
            },
        };
        let Some(commune) = commune_of(&p.patient) else {
            notes.push(note(
                Severity::Warning,
                "incomplete",
                "not routed: the patient has no address with an INSEE commune code \
                 (fr-core-address-insee-code); the prescription is stored without a referral, \
                 name a performer or send a Task"
                    .into(),
            ));
            continue;
        };
        let Some(route) = dir.route(p, &commune) else {
            notes.push(note(
                Severity::Warning,
                "not-found",
                format!(
                    "not routed: no Maison Sport-Santé or CPTS covers the commune {}; the prescription \
                     is stored without a referral, name a performer or send a Task",
                    commune.code()
                ),
            ));
            continue;
        };
        let task = referral(p, route.organization())?;
        let why = match &route {
            Route::Mss { programme, .. } => format!("its programme HealthcareService/{programme} fits"),
            Route::Cpts { .. } => "no programme of a Maison Sport-Santé of the commune fits".to_string(),
        };
        notes.push(note(
            Severity::Information,
            "informational",
            format!(
                "routed: Task/{} addressed to Organization/{} ({why})",
                task.id,
                route.organization()
            ),
        ));
        metrics::counter!("apa_routing_total", "to" => match route {
            Route::Mss { .. } => "mss",
            Route::Cpts { .. } => "cpts",
        })
        .increment(1);
        writes.push(task);
    }
    let unrouted = notes.iter().filter(|n| n.issue.severity == Severity::Warning).count();
    if unrouted > 0 {
        metrics::counter!("apa_routing_total", "to" => "none").increment(unrouted as u64);
    }

    // Territory grants, on the Tasks written and those just added.
    for w in writes.iter_mut().filter(|w| granting(w)) {
        for patient in patients_of(&w.resource_type, &w.id, &w.index) {
            let Some(commune) = commune_of(&patient) else { continue };
            for (rtype, kind) in TERRITORY_GRANTS {
                if *rtype != w.resource_type {
                    continue;
                }
                for (org, _) in dir.covering(&commune, *kind) {
                    w.grants.push(Grant {
                        party: format!("Organization/{}", org.id),
                        patient: patient.clone(),
                        denied: false,
                    });
                }
            }
        }
    }
    Ok(notes)
}

/// The referral Task of a routed prescription.
fn referral(p: &Prescription, owner: &str) -> Result<Write, FhirError> {
    let id = new_id();
    let updated = now_micros();
    let mut task = json!({
        "resourceType": "Task",
        "meta": {"profile": [REFERRAL_PROFILE]},
        "status": "requested",
        "intent": "order",
        "code": {"coding": [{"system": "http://hl7.org/fhir/CodeSystem/task-code", "code": "fulfill"}]},
        "focus": {"reference": format!("ServiceRequest/{}", p.id)},
        "for": {"reference": format!("Patient/{}", p.patient)},
        "authoredOn": format_instant(updated),
    });
    if let (Some(o), Some(requester)) = (task.as_object_mut(), &p.requester) {
        o.insert("requester".into(), requester.clone());
    }
    if let Some(o) = task.as_object_mut() {
        o.insert("owner".into(), json!({"reference": format!("Organization/{owner}")}));
    }
    let mut res = Resource {
        resource_type: "Task".into(),
        json: task,
    };
    res.stamp(&id, 1, updated);
    let index = index_of(&res);
    Ok(Write {
        resource_type: "Task".into(),
        id,
        version: 1,
        updated,
        method: Method::Create,
        body: Some(res.to_bytes()),
        index,
        pk: None,
        patients: Vec::new(),
        grants: Vec::new(),
    })
}

/// The id of a reference to `Type/id` (relative or absolute).
fn reference_id(r: &Value, rtype: &str) -> Option<String> {
    let s = r.get("reference")?.as_str()?;
    let (_, rest) = s.rsplit_once(&format!("{rtype}/"))?;
    let id = rest.split('/').next()?;
    (!id.is_empty()).then(|| id.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prescription(level: Option<Level>, conditions: &[&str]) -> Prescription {
        Prescription {
            id: "sr".into(),
            patient: "p".into(),
            requester: None,
            level,
            conditions: conditions.iter().map(|c| c.to_string()).collect(),
        }
    }

    fn org(id: &str, kind: &str, areas: &[&str]) -> Value {
        json!({"resourceType": "Organization", "id": id, "active": true,
               "type": [{"coding": [{"system": crate::security::consent::RECIPIENT_KIND, "code": kind}]}],
               "extension": areas.iter().map(|a| json!({"url": TERRITORY_EXTENSION,
                   "valueCoding": {"system": "https://mos.esante.gouv.fr/NOS/TRE_R13-Commune/FHIR/TRE-R13-Commune", "code": a}}))
                   .collect::<Vec<_>>()})
    }

    fn programme(id: &str, provider: &str, conditions: &[&str], levels: &[&str], staff: &[&str]) -> Value {
        let mut ch: Vec<Value> = levels
            .iter()
            .map(|l| json!({"coding": [{"system": LIMITATION_SYSTEM, "code": l}]}))
            .collect();
        ch.extend(
            staff
                .iter()
                .map(|s| json!({"coding": [{"system": STAFF_SYSTEM, "code": s}]})),
        );
        json!({"resourceType": "HealthcareService", "id": id, "active": true,
               "providedBy": {"reference": format!("Organization/{provider}")},
               "eligibility": conditions.iter().map(|c| json!({"code": {"coding": [{"system": CONDITION_SYSTEM, "code": c}]}})).collect::<Vec<_>>(),
               "characteristic": ch})
    }

    fn directory(orgs: &[Value], programmes: &[Value]) -> Directory {
        Directory {
            organisations: orgs.iter().filter_map(Organisation::of).collect(),
            programmes: programmes.iter().filter_map(Programme::of).collect(),
        }
    }

    fn commune(c: &str) -> Commune {
        Commune::parse(c).unwrap()
    }

    #[test]
    fn commune_and_departement_codes() {
        assert_eq!(commune("35238").departement(), "35");
        assert_eq!(commune("2A004").departement(), "2A");
        assert_eq!(commune("97411").departement(), "974");
        assert!(Commune::parse("3523").is_none());
        assert!(Commune::parse("3A238").is_none());
        assert_eq!(Area::parse("35"), Some(Area::Departement("35".into())));
        assert_eq!(Area::parse("974"), Some(Area::Departement("974".into())));
        assert_eq!(Area::parse("979"), None);
        assert_eq!(Area::parse("35238").and_then(|a| a.covers(&commune("35238"))), Some(2));
        assert_eq!(Area::parse("35").and_then(|a| a.covers(&commune("35051"))), Some(1));
        assert_eq!(Area::parse("22").and_then(|a| a.covers(&commune("35051"))), None);
    }

    #[test]
    fn the_health_professionals_are_those_of_the_package() {
        let mut kinds: Vec<&str> = health_professional_kinds().iter().map(String::as_str).collect();
        kinds.sort_unstable();
        assert_eq!(kinds, ["ERGO", "MK", "PSYMOT"]);
    }

    #[test]
    fn a_severe_limitation_never_goes_to_a_programme_without_health_professionals() {
        // The programme claims every level, but is run by APA teachers only.
        let dir = directory(
            &[org("mss-a", "MSS", &["35238"]), org("cpts", "CPTS", &["35"])],
            &[programme(
                "p-a",
                "mss-a",
                &[],
                &["aucune", "moderee", "severe"],
                &["EAPA", "EDUC-SPORT"],
            )],
        );
        let severe = prescription(Some(Level::Severe), &[]);
        assert_eq!(
            dir.route(&severe, &commune("35238")),
            Some(Route::Cpts {
                organization: "cpts".into()
            })
        );
        let moderate = prescription(Some(Level::Moderee), &[]);
        assert_eq!(
            dir.route(&moderate, &commune("35238")),
            Some(Route::Mss {
                organization: "mss-a".into(),
                programme: "p-a".into()
            })
        );
    }

    #[test]
    fn ties_go_to_the_commune_listed_then_to_the_smallest_id() {
        let dir = directory(
            &[
                org("mss-b", "MSS", &["35238"]),
                org("mss-a", "MSS", &["35"]),
                org("mss-c", "MSS", &["35238"]),
            ],
            &[
                programme("p-a", "mss-a", &["hta"], &["moderee"], &["EAPA"]),
                programme("p-c", "mss-c", &["hta"], &["moderee"], &["EAPA"]),
                programme("p-b", "mss-b", &["hta"], &["moderee"], &["EAPA"]),
            ],
        );
        let p = prescription(Some(Level::Moderee), &["hta"]);
        assert_eq!(
            dir.route(&p, &commune("35238")),
            Some(Route::Mss {
                organization: "mss-b".into(),
                programme: "p-b".into()
            })
        );
        // Elsewhere in the département only the département-wide one covers.
        assert_eq!(
            dir.route(&p, &commune("35051")),
            Some(Route::Mss {
                organization: "mss-a".into(),
                programme: "p-a".into()
            })
        );
    }

    #[test]
    fn a_condition_outside_the_programme_or_no_level_goes_to_the_cpts_or_nowhere() {
        let dir = directory(
            &[org("mss-a", "MSS", &["35238"]), org("cpts", "CPTS", &["35238"])],
            &[programme("p-a", "mss-a", &["diabete-t2"], &["moderee"], &["EAPA"])],
        );
        let cpts = Some(Route::Cpts {
            organization: "cpts".into(),
        });
        assert_eq!(
            dir.route(&prescription(Some(Level::Moderee), &["cancer"]), &commune("35238")),
            cpts
        );
        assert_eq!(dir.route(&prescription(None, &[]), &commune("35238")), cpts);
        assert_eq!(
            dir.route(&prescription(Some(Level::Moderee), &[]), &commune("22278")),
            None
        );
    }

    #[test]
    fn an_inactive_organisation_or_programme_is_not_routed_to() {
        let mut closed = org("mss-a", "MSS", &["35238"]);
        closed["active"] = json!(false);
        let mut paused = programme("p-b", "mss-b", &[], &["moderee"], &["EAPA"]);
        paused["active"] = json!(false);
        let dir = directory(
            &[closed, org("mss-b", "MSS", &["35238"])],
            &[programme("p-a", "mss-a", &[], &["moderee"], &["EAPA"]), paused],
        );
        assert_eq!(
            dir.route(&prescription(Some(Level::Moderee), &[]), &commune("35238")),
            None
        );
    }

    #[test]
    fn the_home_commune_of_a_patient() {
        let address = |usage: &str, code: &str| {
            json!({"use": usage, "extension": [{"url": INSEE_EXTENSION,
                   "valueCoding": {"system": "https://mos.esante.gouv.fr/NOS/TRE_R13-Commune/FHIR/TRE-R13-Commune", "code": code}}]})
        };
        let p = json!({"resourceType": "Patient", "address": [address("work", "35238"), address("home", "35051")]});
        assert_eq!(home_commune(&p), Some(commune("35051")));
        let moved = json!({"resourceType": "Patient", "address": [address("old", "35051"), address("temp", "35024")]});
        assert_eq!(home_commune(&moved), Some(commune("35024")));
        assert_eq!(home_commune(&json!({"resourceType": "Patient"})), None);
    }
}
