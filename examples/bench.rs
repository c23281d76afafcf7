//! Benchmark of apa-gateway.
//!
//! Starts the real server binary on a fresh database (a SQLite file in a
//! temporary folder, or a fresh PostgreSQL schema), loads synthetic APA
//! prescription transactions (Patient + Practitioner + Condition +
//! ServiceRequest + Observation per Bundle) with concurrent clients, then
//! measures reads by id and three searches, and the server's memory and
//! database size. How to run it and the figures: `docs/benchmark.md`.
//!
//! ```sh
//! cargo build --release && cargo run --release --example bench -- --db sqlite --resources 100000
//! ```

use std::fmt::Write as _;
use std::fs::File;
use std::net::{IpAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use reqwest::Client;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use time::{Date, Month};
use tokio::task::JoinSet;

const INS_SYSTEM: &str = "urn:oid:1.2.250.1.213.1.4.10";
const RPPS_SYSTEM: &str = "https://rpps.esante.gouv.fr";
const FHIR_JSON: &str = "application/fhir+json";
/// The client the benchmark registers in the spawned server's database.
const BENCH_CLIENT: &str = "apa-bench";
/// The operator client that sets up the organisation of `--as practice`.
const BENCH_ADMIN: &str = "apa-bench-admin";
/// The organisation `--as practice` acts for, and its prescriber's role.
const BENCH_PRACTICE: &str = "bench-practice";
const BENCH_ROLE: &str = "PractitionerRole/bench-dr-practice";
/// How often access tokens are renewed (they live 5 minutes by default).
const TOKEN_REFRESH: Duration = Duration::from_secs(60);
/// Resource types of a prescription Bundle, in entry order.
const TYPES: [&str; 5] = ["Patient", "Practitioner", "Condition", "ServiceRequest", "Observation"];
/// Upper bound of the requests one worker makes in a timed phase.
const MAX_REQUESTS_PER_WORKER: u64 = 10_000_000;

// ---------------------------------------------------------------- options

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum Db {
    Sqlite,
    Postgres,
}

#[derive(Debug, Parser)]
#[command(about = "Benchmark of apa-gateway: load, read by id, searches (see docs/benchmark.md)")]
struct Args {
    /// Database of the spawned server.
    #[arg(long, value_enum, default_value_t = Db::Sqlite)]
    db: Db,
    /// Resources to store (5 per transaction Bundle).
    #[arg(long, default_value_t = 100_000)]
    resources: u64,
    /// Concurrent HTTP clients.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Seconds of each timed phase (read by id, each search).
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Requests per second offered in the timed phases, spread evenly over
    /// the clients (0: each client sends its next request as soon as the
    /// previous one is answered). Latency is then measured from the time a
    /// request was due, so that a slow server cannot hide its queue.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Server binary. Default: `apa-gateway` next to this example's
    /// folder (the same target dir), else `target/release/apa-gateway`.
    #[arg(long)]
    binary: Option<PathBuf>,
    /// Keep the database (temporary folder or PostgreSQL schema) afterwards.
    #[arg(long)]
    keep: bool,
    /// Use this already running server (e.g. `http://127.0.0.1:8080/fhir`)
    /// instead of spawning one; memory and database size are then not measured.
    #[arg(long)]
    url: Option<String>,
    /// With `--url`: the bearer token to send (not refreshed).
    #[arg(long, env = "BENCH_TOKEN", conflicts_with = "client_id")]
    token: Option<String>,
    /// With `--url`: a registered client whose access tokens are fetched,
    /// and refreshed every minute, with the `token` command of `--binary`.
    #[arg(long, requires = "key")]
    client_id: Option<String>,
    /// The private key (PEM) of `--client-id`.
    #[arg(long, requires = "client_id")]
    key: Option<PathBuf>,
    /// Seed of the synthetic data.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// PostgreSQL database in which a fresh schema is created (`--db postgres`).
    #[arg(
        long,
        env = "BENCH_PG_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/test"
    )]
    pg_url: String,
    /// Extra environment of the spawned server, `KEY=VALUE`, repeatable
    /// (e.g. `--server-env APA_DB_POOL_SIZE=16`).
    #[arg(long = "server-env", value_parser = parse_key_value)]
    server_env: Vec<(String, String)>,
    /// Longest time the load phase may take, in seconds.
    #[arg(long, default_value_t = 7200)]
    load_timeout: u64,
    /// PostgreSQL: run ANALYZE on the schema's tables after the load, as
    /// autovacuum would (it may be off on a test cluster).
    #[arg(long)]
    pg_analyze: bool,
    /// Who calls: a GP practice (an organisation client: its compartment
    /// rules on, its prescriber's PractitionerRole as the requester), as
    /// real traffic does, or the operator (sees everything).
    #[arg(long = "as", value_enum, default_value_t = Caller::Practice)]
    caller: Caller,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Caller {
    Practice,
    Operator,
}

impl Caller {
    fn name(self) -> &'static str {
        match self {
            Caller::Practice => "a GP practice (organisation client)",
            Caller::Operator => "the operator",
        }
    }
}

fn parse_key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("'{s}' is not KEY=VALUE")),
    }
}

impl Args {
    fn check(&self) -> Result<(), String> {
        if !(5..=100_000_000).contains(&self.resources) {
            return Err("--resources must be between 5 and 100000000".into());
        }
        if !(1..=1024).contains(&self.concurrency) {
            return Err("--concurrency must be between 1 and 1024".into());
        }
        if !(1..=3600).contains(&self.duration) {
            return Err("--duration must be between 1 and 3600 seconds".into());
        }
        if self.load_timeout == 0 {
            return Err("--load-timeout must be positive".into());
        }
        if let Some(u) = &self.url {
            loopback_base(u)?;
        } else if self.token.is_some() || self.client_id.is_some() {
            return Err("--token and --client-id are for a server given by --url".into());
        }
        Ok(())
    }

    fn bundles(&self) -> u64 {
        self.resources.div_ceil(5)
    }
}

/// The FHIR base of `--url`, which must be on this machine.
fn loopback_base(url: &str) -> Result<String, String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("--url {url}: {e}"))?;
    let host = parsed.host_str().unwrap_or_default();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let local = host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if !local || parsed.scheme() != "http" {
        return Err(format!(
            "--url {url}: only http:// on the loopback interface is benchmarked"
        ));
    }
    Ok(url.trim_end_matches('/').to_string())
}

// ---------------------------------------------------------- synthetic data

/// SplitMix64: small, fast, deterministic.
#[derive(Clone)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64, stream: u64) -> Rng {
        let mut r = Rng(seed ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03));
        r.next_u64();
        r
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform enough in `0..n` (n > 0).
    fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    fn index(&mut self, len: usize) -> usize {
        self.below(len as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.index(items.len())]
    }

    fn urn(&mut self) -> String {
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&self.next_u64().to_le_bytes());
        bytes[8..].copy_from_slice(&self.next_u64().to_le_bytes());
        format!("urn:uuid:{}", uuid::Builder::from_random_bytes(bytes).into_uuid())
    }
}

const GIVEN_F: &[&str] = &[
    "Camille",
    "Léa",
    "Manon",
    "Chloé",
    "Inès",
    "Jeanne",
    "Louise",
    "Zoé",
    "Élodie",
    "Hélène",
    "Françoise",
    "Anaïs",
    "Maëlle",
    "Céline",
    "Sophie",
    "Nathalie",
    "Brigitte",
    "Océane",
];
const GIVEN_M: &[&str] = &[
    "Lucas",
    "Hugo",
    "Louis",
    "Gabriel",
    "Raphaël",
    "Jules",
    "Arthur",
    "Théo",
    "Noé",
    "Mathéo",
    "François",
    "Jérôme",
    "Benoît",
    "Loïc",
    "Stéphane",
    "Grégoire",
    "Hervé",
    "Joël",
];
const FAMILY: &[&str] = &[
    "Martin",
    "Bernard",
    "Dubois",
    "Thomas",
    "Robert",
    "Richard",
    "Petit",
    "Durand",
    "Leroy",
    "Moreau",
    "Simon",
    "Laurent",
    "Lefèvre",
    "Michel",
    "Garcia",
    "David",
    "Bertrand",
    "Roux",
    "Vincent",
    "Fournier",
    "Morel",
    "Girard",
    "André",
    "Lefebvre",
    "Mercier",
    "Dupont",
    "Lambert",
    "Bonnet",
    "François",
    "Martinez",
    "Nguyen",
    "Benoît",
];
/// (city, postal code, INSEE code)
const CITIES: &[(&str, &str, &str)] = &[
    ("Paris", "75011", "75056"),
    ("Marseille", "13005", "13055"),
    ("Lyon", "69003", "69123"),
    ("Toulouse", "31000", "31555"),
    ("Nice", "06000", "06088"),
    ("Nantes", "44000", "44109"),
    ("Montpellier", "34000", "34172"),
    ("Strasbourg", "67000", "67482"),
    ("Bordeaux", "33000", "33063"),
    ("Lille", "59000", "59350"),
    ("Rennes", "35000", "35238"),
    ("Reims", "51100", "51454"),
    ("Saint-Étienne", "42000", "42218"),
    ("Le Havre", "76600", "76351"),
    ("Grenoble", "38000", "38185"),
    ("Dijon", "21000", "21231"),
];
const STREETS: &[&str] = &[
    "rue de la République",
    "avenue Jean Jaurès",
    "rue Victor Hugo",
    "boulevard Pasteur",
    "place de l'Église",
    "rue des Écoles",
    "chemin des Vignes",
    "allée des Tilleuls",
];
/// ICD-10 reasons for an APA prescription.
const REASONS: &[(&str, &str)] = &[
    ("E11.9", "Diabète sucré de type 2, sans complication"),
    ("E66.9", "Obésité, sans précision"),
    ("I10", "Hypertension essentielle (primitive)"),
    ("I25.9", "Cardiopathie ischémique chronique, sans précision"),
    ("J44.9", "Maladie pulmonaire obstructive chronique, sans précision"),
    ("F32.9", "Épisode dépressif, sans précision"),
    ("M54.5", "Lombalgie basse"),
    ("C50.9", "Tumeur maligne du sein, sans précision"),
];

/// What is known of prescription number `n` without building its Bundle.
struct Facts {
    female: bool,
    birth: (u64, u64, u64),
    /// 13 digits + 2-digit key.
    ins: String,
    sr_status: &'static str,
}

impl Facts {
    fn of(seed: u64, n: u64, rng: &mut Rng) -> Facts {
        let female = rng.below(2) == 1;
        let birth = (1940 + rng.below(66), 1 + rng.below(12), 1 + rng.below(28));
        // Sex, year, month of birth, then 8 digits unique to `n` in a run.
        let serial = (n + seed.wrapping_mul(7_919)) % 100_000_000;
        let nir = (if female { 2 } else { 1 }) * 1_000_000_000_000
            + (birth.0 % 100) * 10_000_000_000
            + birth.1 * 100_000_000
            + serial;
        let key = 97 - nir % 97;
        let sr_status = match rng.below(20) {
            0..12 => "active",
            12..15 => "on-hold",
            _ => "completed",
        };
        Facts {
            female,
            birth,
            ins: format!("{nir:013}{key:02}"),
            sr_status,
        }
    }

    fn for_prescription(seed: u64, n: u64) -> Facts {
        Facts::of(seed, n, &mut Rng::new(seed, n))
    }
}

/// A day of 2025 at a time of day, as FHIR dateTime in Paris winter time.
fn datetime_2025(day_of_year: u64, minute_of_day: u64) -> String {
    let d = date_2025(day_of_year);
    format!(
        "{}T{:02}:{:02}:00+01:00",
        ymd(d),
        minute_of_day / 60 % 24,
        minute_of_day % 60
    )
}

fn date_2025(day_of_year: u64) -> Date {
    let jan1 = Date::from_calendar_date(2025, Month::January, 1).expect("1 January 2025 is a date");
    jan1.saturating_add(time::Duration::days((day_of_year % 365) as i64))
}

fn ymd(d: Date) -> String {
    format!("{}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day())
}

/// An RPPS number: `10`, 8 digits of `n`, and the check digit the
/// gateway's own rule accepts.
fn rpps(n: u64) -> String {
    let body = format!("10{:08}", n % 100_000_000);
    (0..10)
        .map(|d| format!("{body}{d}"))
        .find(|candidate| apa_gateway::apa::identity::Rpps::parse(candidate).is_ok())
        .unwrap_or(body)
}

/// Transaction Bundle number `n`: Patient, Practitioner, Condition,
/// ServiceRequest, Observation, linked by `urn:uuid:` references.
/// `requester`: the prescriber's PractitionerRole when an organisation
/// client sends it (it must name someone of its own); otherwise the
/// Practitioner of the Bundle.
fn prescription_bundle(seed: u64, n: u64, requester: Option<&str>) -> Vec<u8> {
    let mut rng = Rng::new(seed, n);
    let f = Facts::of(seed, n, &mut rng);
    let [patient, practitioner, condition, request, observation] = [(); 5].map(|()| rng.urn());

    let given = if f.female { rng.pick(GIVEN_F) } else { rng.pick(GIVEN_M) };
    let (city, postal, insee) = *rng.pick(CITIES);
    let birth_insee = rng.pick(CITIES).2;
    let patient_res = json!({
        "resourceType": "Patient",
        // An INS travels only with a qualified identity.
        "extension": [{
            "url": "https://hl7.fr/ig/fhir/core/StructureDefinition/fr-core-identity-reliability",
            "extension": [{"url": "identityStatus", "valueCoding": {
                "system": "https://hl7.fr/ig/fhir/core/CodeSystem/fr-core-cs-identity-status", "code": "QUAL"}}],
        }, {
            // All the traits come with the INS, the birth place included.
            "url": "http://hl7.org/fhir/StructureDefinition/patient-birthPlace",
            "valueAddress": {"extension": [{
                "url": "https://hl7.fr/ig/fhir/core/StructureDefinition/fr-core-address-insee-code",
                "valueCoding": {"system": "https://mos.esante.gouv.fr/NOS/TRE_R13-CommuneOM/FHIR/TRE-R13-CommuneOM", "code": birth_insee},
            }]},
        }],
        "identifier": [{
            "use": "official",
            "type": {"coding": [{"system": "https://hl7.fr/ig/fhir/core/CodeSystem/fr-core-cs-v2-0203", "code": "INS-NIR"}]},
            "system": INS_SYSTEM,
            "value": f.ins,
        }],
        "name": [{"use": "official", "family": rng.pick(FAMILY), "given": [given]}],
        "gender": if f.female { "female" } else { "male" },
        "birthDate": format!("{}-{:02}-{:02}", f.birth.0, f.birth.1, f.birth.2),
        "address": [{
            "extension": [{
                "url": "https://hl7.fr/ig/fhir/core/StructureDefinition/fr-core-address-insee-code",
                "valueCoding": {"system": "https://mos.esante.gouv.fr/NOS/TRE_R13-CommuneOM/FHIR/TRE-R13-CommuneOM", "code": insee},
            }],
            "use": "home",
            "line": [format!("{} {}", 1 + rng.below(120), rng.pick(STREETS))],
            "city": city,
            "postalCode": postal,
            "country": "FR",
        }],
    });
    let doctor_given = if rng.below(2) == 0 {
        rng.pick(GIVEN_F)
    } else {
        rng.pick(GIVEN_M)
    };
    let practitioner_res = json!({
        "resourceType": "Practitioner",
        "identifier": [{"system": RPPS_SYSTEM, "value": rpps(rng.below(1_000_000_000))}],
        "name": [{"prefix": ["Dr"], "family": rng.pick(FAMILY), "given": [doctor_given]}],
    });
    let (icd, icd_label) = *rng.pick(REASONS);
    let authored_day = rng.below(365);
    let authored = datetime_2025(authored_day, 8 * 60 + rng.below(10 * 60));
    let condition_res = json!({
        "resourceType": "Condition",
        "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]},
        "verificationStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": "confirmed"}]},
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-category", "code": "problem-list-item"}]}],
        "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": icd, "display": icd_label}]},
        "subject": {"reference": patient},
        "recordedDate": authored,
    });
    // An APA prescription as the gateway's profile (apa-prescription) has
    // it: limitation and intensity, activity, 3 months of sessions.
    let apa = "https://apa-gateway.fr/fhir";
    let limitation = *rng.pick(&["aucune", "minime", "moderee"]);
    let request_res = json!({
        "resourceType": "ServiceRequest",
        "extension": [
            {"url": format!("{apa}/StructureDefinition/apa-functional-limitation"),
             "valueCodeableConcept": {"coding": [{"system": format!("{apa}/CodeSystem/functional-limitation"), "code": limitation}]}},
            {"url": format!("{apa}/StructureDefinition/apa-intensity"),
             "valueCodeableConcept": {"coding": [{"system": format!("{apa}/CodeSystem/intensity"), "code": "moderee"}]}},
        ],
        "status": f.sr_status,
        "intent": "original-order",
        "category": [{"coding": [{"system": "http://hl7.org/fhir/us/physical-activity/CodeSystem/pa-temporary-codes", "code": "PhysicalActivity"}]}],
        "code": {
            "coding": [{"system": "http://snomed.info/sct", "code": "390893007"}],
            "text": "Prescription d'activité physique adaptée",
        },
        "orderDetail": [{"coding": [{"system": format!("{apa}/CodeSystem/activity-type"), "code": "endurance"}]}],
        "subject": {"reference": patient},
        "occurrenceTiming": {"repeat": {
            "boundsDuration": {"value": 3, "unit": "mois", "system": "http://unitsofmeasure.org", "code": "mo"},
            "duration": 60, "durationUnit": "min", "frequency": 1 + rng.below(3), "period": 1, "periodUnit": "wk"}},
        "authoredOn": authored,
        "requester": {"reference": requester.unwrap_or(&practitioner)},
        "reasonCode": [{"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": icd, "display": icd_label}]}],
        "reasonReference": [{"reference": condition}],
    });
    let kg = (450 + rng.below(800)) as f64 / 10.0;
    let observation_res = json!({
        "resourceType": "Observation",
        "status": "final",
        "category": [
            {"coding": [{"system": "http://hl7.org/fhir/us/physical-activity/CodeSystem/pa-temporary-codes", "code": "PhysicalActivity"}]},
            {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]},
        ],
        "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7", "display": "Body weight"}]},
        "subject": {"reference": patient},
        "effectiveDateTime": datetime_2025(rng.below(365), rng.below(24 * 60)),
        "valueQuantity": {"value": kg, "unit": "kg", "system": "http://unitsofmeasure.org", "code": "kg"},
    });
    let entries: Vec<Value> = [
        (patient, patient_res),
        (practitioner, practitioner_res),
        (condition, condition_res),
        (request, request_res),
        (observation, observation_res),
    ]
    .into_iter()
    .zip(TYPES)
    .map(|((full_url, resource), rtype)| {
        json!({"fullUrl": full_url, "resource": resource, "request": {"method": "POST", "url": rtype}})
    })
    .collect();
    serde_json::to_vec(&json!({"resourceType": "Bundle", "type": "transaction", "entry": entries}))
        .expect("a JSON value serializes")
}

// ------------------------------------------------------------ the server

/// The spawned server; killed on drop if still running.
struct Server {
    child: Child,
    log: PathBuf,
}

impl Server {
    fn spawn(binary: &Path, dir: &Path, listen: &str, database_url: &str, env: &[(String, String)]) -> Server {
        let log = dir.join("server.log");
        let out = File::create(&log).expect("create the server log file");
        let err = out.try_clone().expect("duplicate the server log file handle");
        let mut cmd = Command::new(binary);
        cmd.arg("serve")
            .current_dir(dir)
            .env_remove("APA_CONFIG")
            .env("APA_LISTEN", listen)
            .env("DATABASE_URL", database_url)
            .env("RUST_LOG", "warn")
            // One client drives thousands of requests a second: its rate
            // limit would measure the limit, not the gateway
            // (`--server-env` can set it back).
            .env("APA_RATE_LIMIT_CLIENT_PER_SEC", "0")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        Server { child, log }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// The server's log lines, without colour codes.
    fn log_lines(&self) -> Vec<String> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines().map(strip_ansi).collect()
    }

    fn log_tail(&self) -> String {
        let lines = self.log_lines();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// SIGTERM, then up to 60 s for a graceful stop, then SIGKILL.
    fn stop(&mut self) -> Shutdown {
        let started = Instant::now();
        if let Some(status) = self.exited() {
            return Shutdown {
                graceful: false,
                secs: 0.0,
                exit: format!("had already exited: {status}"),
            };
        }
        let term = Command::new("kill").args(["-TERM", &self.pid().to_string()]).status();
        if term.is_ok() {
            while started.elapsed() < Duration::from_secs(60) {
                if let Some(status) = self.exited() {
                    return Shutdown {
                        graceful: status.success(),
                        secs: started.elapsed().as_secs_f64(),
                        exit: status.to_string(),
                    };
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = self.child.kill();
        let status = self.child.wait().map_or_else(|e| e.to_string(), |s| s.to_string());
        Shutdown {
            graceful: false,
            secs: started.elapsed().as_secs_f64(),
            exit: format!("killed after SIGTERM failed to stop it: {status}"),
        }
    }
}

/// Removes terminal colour sequences (`ESC [ … letter`).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.exited().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[derive(Debug, Serialize)]
struct Shutdown {
    graceful: bool,
    secs: f64,
    exit: String,
}

fn default_binary() -> PathBuf {
    // target/<profile>/examples/bench -> target/<profile>/apa-gateway
    let sibling = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.join("apa-gateway")));
    match sibling {
        Some(p) if p.exists() => p,
        _ => PathBuf::from("target/release/apa-gateway"),
    }
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a free port on 127.0.0.1");
    l.local_addr().expect("local address of a bound socket").port()
}

#[derive(Debug, Clone, Copy, Serialize)]
struct Mem {
    vm_rss_kib: u64,
    vm_hwm_kib: u64,
    /// The process's own memory (heap, stacks): VmRSS also counts the
    /// pages of files it maps, once per mapping (SQLite's read
    /// connections each map the database file).
    rss_anon_kib: u64,
}

fn proc_mem(pid: u32) -> Option<Mem> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        line[name.len()..].trim().trim_end_matches("kB").trim().parse().ok()
    };
    Some(Mem {
        vm_rss_kib: field("VmRSS:")?,
        vm_hwm_kib: field("VmHWM:")?,
        rss_anon_kib: field("RssAnon:")?,
    })
}

/// Clock ticks per second of `/proc` CPU times.
fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// CPU seconds (user + system) used so far by a process (`self` or a pid).
fn process_cpu_secs(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses: state is field 3.
    let fields: Vec<&str> = stat.get(stat.rfind(')')? + 1..)?.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks())
}

/// CPU seconds the whole machine spent busy (all cores, all processes).
fn machine_busy_secs() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let ticks: Vec<f64> = stat
        .lines()
        .next()?
        .strip_prefix("cpu ")?
        .split_whitespace()
        .filter_map(|t| t.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...; busy = all but idle and iowait
    let total: f64 = ticks.iter().take(8).sum();
    let idle = ticks.get(3)? + ticks.get(4)?;
    Some((total - idle) / clock_ticks())
}

/// CPU time at the start of a phase.
struct CpuMark {
    at: Instant,
    server_pid: Option<u32>,
    server: Option<f64>,
    bench: Option<f64>,
    machine: Option<f64>,
}

/// Average CPU use over a phase, in cores (2.0 = both cores of a 2-core machine busy).
#[derive(Debug, Default, Clone, Copy, Serialize)]
struct CpuUse {
    /// The apa-gateway process (not PostgreSQL's own processes).
    server_cores: Option<f64>,
    /// This benchmark program (generating and checking the requests).
    bench_cores: Option<f64>,
    /// Every process of the machine, PostgreSQL included.
    machine_cores: Option<f64>,
}

impl CpuUse {
    /// The machine's busy cores not used by the server or the benchmark:
    /// PostgreSQL, or anything else running meanwhile.
    fn other_cores(&self) -> Option<f64> {
        Some((self.machine_cores? - self.server_cores.unwrap_or(0.0) - self.bench_cores?).max(0.0))
    }
}

impl CpuMark {
    fn now(server_pid: Option<u32>) -> CpuMark {
        CpuMark {
            at: Instant::now(),
            server_pid,
            server: server_pid.and_then(|p| process_cpu_secs(&p.to_string())),
            bench: process_cpu_secs("self"),
            machine: machine_busy_secs(),
        }
    }

    fn usage(&self) -> CpuUse {
        let end = CpuMark::now(self.server_pid);
        let secs = self.at.elapsed().as_secs_f64().max(1e-9);
        let per_sec = |a: Option<f64>, b: Option<f64>| Some((b? - a?) / secs);
        CpuUse {
            server_cores: per_sec(self.server, end.server),
            bench_cores: per_sec(self.bench, end.bench),
            machine_cores: per_sec(self.machine, end.machine),
        }
    }
}

/// Where the spawned server keeps its data.
enum Storage {
    Sqlite { file: PathBuf },
    Postgres { admin_url: String, schema: String },
}

impl Storage {
    async fn bytes(&self) -> Option<u64> {
        match self {
            Storage::Sqlite { file } => Some(sqlite_files(file)?.iter().map(|(_, n)| n).sum()),
            Storage::Postgres { admin_url, schema } => {
                use sqlx::Connection;
                let mut c = sqlx::PgConnection::connect(admin_url).await.ok()?;
                let sql = "SELECT COALESCE(SUM(pg_total_relation_size(c.oid)), 0)::bigint FROM pg_class c \
                           JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relkind = 'r'";
                let size: i64 = sqlx::query_scalar(sql).bind(schema).fetch_one(&mut c).await.ok()?;
                u64::try_from(size).ok()
            }
        }
    }
}

/// The SQLite database's files (main file, WAL, shared memory, and those of
/// the audit trail file beside it, `apa-trail.db`) and their sizes.
fn sqlite_files(file: &Path) -> Option<Vec<(String, u64)>> {
    let name = file.file_stem()?.to_string_lossy().into_owned();
    let mut files: Vec<(String, u64)> = std::fs::read_dir(file.parent()?)
        .ok()?
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            let len = e.metadata().ok()?.len();
            (n.starts_with(&format!("{name}.")) || n.starts_with(&format!("{name}-trail."))).then_some((n, len))
        })
        .collect();
    files.sort();
    Some(files)
}

async fn create_pg_schema(admin_url: &str) -> Result<(String, String), String> {
    use sqlx::Connection;
    let schema = format!("bench_{}", uuid::Uuid::new_v4().simple());
    let mut c = sqlx::PgConnection::connect(admin_url)
        .await
        .map_err(|e| format!("PostgreSQL at {admin_url}: {e}"))?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
        .execute(&mut c)
        .await
        .map_err(|e| format!("create schema {schema}: {e}"))?;
    let sep = if admin_url.contains('?') { '&' } else { '?' };
    Ok((
        schema.clone(),
        format!("{admin_url}{sep}options=-c%20search_path%3D{schema}"),
    ))
}

/// The value of a PostgreSQL setting, e.g. `autovacuum`.
async fn pg_setting(admin_url: &str, name: &str) -> Option<String> {
    use sqlx::Connection;
    let mut c = sqlx::PgConnection::connect(admin_url).await.ok()?;
    sqlx::query_scalar("SELECT setting FROM pg_settings WHERE name = $1")
        .bind(name)
        .fetch_optional(&mut c)
        .await
        .ok()?
}

/// ANALYZE of every table of the schema.
async fn pg_analyze(admin_url: &str, schema: &str) -> Result<(), String> {
    use sqlx::Connection;
    let mut c = sqlx::PgConnection::connect(admin_url)
        .await
        .map_err(|e| e.to_string())?;
    let tables: Vec<String> = sqlx::query_scalar("SELECT tablename::text FROM pg_tables WHERE schemaname = $1")
        .bind(schema)
        .fetch_all(&mut c)
        .await
        .map_err(|e| e.to_string())?;
    for t in tables {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("ANALYZE \"{schema}\".\"{t}\"")))
            .execute(&mut c)
            .await
            .map_err(|e| format!("ANALYZE {t}: {e}"))?;
    }
    Ok(())
}

async fn drop_pg_schema(admin_url: &str, schema: &str) -> Result<(), String> {
    use sqlx::Connection;
    let mut c = sqlx::PgConnection::connect(admin_url)
        .await
        .map_err(|e| e.to_string())?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
        .execute(&mut c)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

async fn wait_ready(client: &Client, root: &str, server: &mut Server) -> Result<Duration, String> {
    let started = Instant::now();
    let url = format!("{root}/health/ready");
    while started.elapsed() < Duration::from_secs(120) {
        if let Some(status) = server.exited() {
            return Err(format!(
                "the server exited ({status}) before being ready:\n{}",
                server.log_tail()
            ));
        }
        if let Ok(r) = client.get(&url).timeout(Duration::from_secs(2)).send().await
            && r.status().is_success()
        {
            return Ok(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!("the server was not ready after 120 s:\n{}", server.log_tail()))
}

// ---------------------------------------------------------------- tokens

/// Registers the benchmark's client (SMART backend service, all scopes) in
/// the fresh database with the server's own CLI; returns its private key.
fn register_client(
    binary: &Path,
    dir: &Path,
    database_url: &str,
    env: &[(String, String)],
    id: &str,
    caller: Caller,
) -> Result<PathBuf, String> {
    let key = dir.join(format!("{id}.pem"));
    let (scope, organization) = match caller {
        Caller::Operator => ("system/*.cruds operator", None),
        Caller::Practice => ("system/*.cruds", Some(BENCH_PRACTICE)),
    };
    let out = Command::new(binary)
        .current_dir(dir)
        .env_remove("APA_CONFIG")
        .env("DATABASE_URL", database_url)
        .env("RUST_LOG", "warn")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .args(["clients", "add", "--name", "apa-gateway benchmark", "--id", id])
        .args(organization.iter().flat_map(|o| ["--organization", o]))
        .args(["--scope", scope, "--generate-key"])
        .arg(&key)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", binary.display()))?;
    if !out.status.success() {
        return Err(format!(
            "`apa-gateway clients add` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(key)
}

/// Gets access tokens with the server binary's `token` command (which signs
/// the client's assertion, as a client's software does).
#[derive(Clone)]
struct TokenSource {
    binary: PathBuf,
    client_id: String,
    key: PathBuf,
    base: String,
}

impl TokenSource {
    async fn fetch(&self) -> Result<String, String> {
        let me = self.clone();
        let out = tokio::task::spawn_blocking(move || {
            Command::new(&me.binary)
                .env_remove("APA_CONFIG")
                .env("RUST_LOG", "warn")
                .args(["token", "--client-id", &me.client_id, "--url", &me.base, "--key"])
                .arg(&me.key)
                .stdin(Stdio::null())
                .output()
        })
        .await
        .map_err(|e| format!("token command: {e}"))?
        .map_err(|e| format!("cannot run {}: {e}", self.binary.display()))?;
        let token = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !out.status.success() || token.is_empty() {
            return Err(format!(
                "`apa-gateway token` failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(token)
    }
}

/// The `Authorization` header every FHIR request carries.
struct Auth {
    header: std::sync::RwLock<Option<Arc<str>>>,
    source: Option<TokenSource>,
}

impl Auth {
    fn fixed(token: Option<&str>) -> Auth {
        Auth {
            header: std::sync::RwLock::new(token.map(|t| format!("Bearer {t}").into())),
            source: None,
        }
    }

    async fn refreshed(source: TokenSource) -> Result<Auth, String> {
        let token = source.fetch().await?;
        Ok(Auth {
            header: std::sync::RwLock::new(Some(format!("Bearer {token}").into())),
            source: Some(source),
        })
    }

    fn header(&self) -> Option<Arc<str>> {
        self.header
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    async fn refresh(&self) -> Result<(), String> {
        if let Some(source) = &self.source {
            let token = source.fetch().await?;
            *self.header.write().unwrap_or_else(std::sync::PoisonError::into_inner) =
                Some(format!("Bearer {token}").into());
        }
        Ok(())
    }

    fn apply(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match self.header() {
            Some(h) => request.header(reqwest::header::AUTHORIZATION, &*h),
            None => request,
        }
    }
}

/// Renews the token every `TOKEN_REFRESH` until aborted.
fn spawn_refresher(auth: Arc<Auth>) -> Option<tokio::task::JoinHandle<()>> {
    auth.source.as_ref()?;
    Some(tokio::spawn(async move {
        loop {
            tokio::time::sleep(TOKEN_REFRESH).await;
            if let Err(e) = auth.refresh().await {
                eprintln!("warning: could not renew the access token: {e}");
            }
        }
    }))
}

// ----------------------------------------------------------- measurement

fn histogram() -> Histogram<u64> {
    // microseconds, from 1 µs to 10 minutes, 3 significant digits
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

fn record(h: &mut Histogram<u64>, d: Duration) {
    h.saturating_record(u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1));
}

#[derive(Debug, Default, Clone, Copy, Serialize)]
struct Latency {
    mean_ms: f64,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

impl Latency {
    fn of(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Latency {
            mean_ms: h.mean() / 1000.0,
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            max_ms: ms(h.max()),
        }
    }
}

/// The first few error messages of a phase.
#[derive(Default)]
struct Samples(Vec<String>);

impl Samples {
    fn push(&mut self, e: String) {
        if self.0.len() < 5 {
            self.0.push(e);
        }
    }

    fn extend(&mut self, other: Samples) {
        for e in other.0 {
            self.push(e);
        }
    }
}

fn short(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    text.chars().take(300).collect()
}

// ------------------------------------------------------------------ load

/// The ids a transaction created, in `TYPES` order.
struct Created {
    n: u64,
    ids: [Box<str>; 5],
}

#[derive(Deserialize)]
struct TxResponse {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    entry: Vec<TxEntry>,
}

#[derive(Deserialize)]
struct TxEntry {
    response: TxEntryResponse,
}

#[derive(Deserialize)]
struct TxEntryResponse {
    status: String,
    location: Option<String>,
}

/// Checks a transaction-response and takes the ids from its locations.
fn created_ids(body: &[u8]) -> Result<[Box<str>; 5], String> {
    let r: TxResponse =
        serde_json::from_slice(body).map_err(|e| format!("response is not a Bundle ({e}): {}", short(body)))?;
    if r.kind != "transaction-response" || r.entry.len() != TYPES.len() {
        return Err(format!("unexpected {} with {} entries", r.kind, r.entry.len()));
    }
    let mut ids: [Box<str>; 5] = Default::default();
    for ((slot, e), rtype) in ids.iter_mut().zip(&r.entry).zip(TYPES) {
        if !e.response.status.starts_with("201") {
            return Err(format!("entry {rtype}: status {}", e.response.status));
        }
        let location = e.response.location.as_deref().unwrap_or_default();
        let mut parts = location.split('/');
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(t), Some(id), Some("_history"), Some(_)) if t == rtype && !id.is_empty() => *slot = id.into(),
            _ => return Err(format!("entry {rtype}: unexpected location '{location}'")),
        }
    }
    Ok(ids)
}

struct LoadShared {
    base: String,
    auth: Arc<Auth>,
    seed: u64,
    requester: Option<&'static str>,
    /// Bundles still to store; a failed one gives its ticket back.
    tickets: AtomicI64,
    /// Number of the next prescription (each attempt gets a new one).
    next_n: AtomicU64,
    acked: AtomicU64,
    errors: AtomicU64,
    max_errors: u64,
    deadline: Instant,
    timed_out: AtomicBool,
}

struct LoadWorker {
    hist: Histogram<u64>,
    created: Vec<Created>,
    samples: Samples,
}

async fn load_worker(client: Client, s: Arc<LoadShared>) -> LoadWorker {
    let mut w = LoadWorker {
        hist: histogram(),
        created: Vec::new(),
        samples: Samples::default(),
    };
    let url = s.base.clone();
    loop {
        if Instant::now() >= s.deadline {
            s.timed_out.store(true, Ordering::Relaxed);
            break;
        }
        if s.errors.load(Ordering::Relaxed) >= s.max_errors || s.tickets.fetch_sub(1, Ordering::SeqCst) <= 0 {
            break;
        }
        let n = s.next_n.fetch_add(1, Ordering::Relaxed);
        let body = prescription_bundle(s.seed, n, s.requester);
        let started = Instant::now();
        let outcome = send_ok(
            "POST",
            s.auth
                .apply(client.post(&url))
                .header("content-type", FHIR_JSON)
                .header("accept", FHIR_JSON)
                .body(body),
        )
        .await;
        let latency = started.elapsed();
        match outcome.and_then(|bytes| created_ids(&bytes)) {
            Ok(ids) => {
                record(&mut w.hist, latency);
                w.created.push(Created { n, ids });
                s.acked.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                s.errors.fetch_add(1, Ordering::Relaxed);
                s.tickets.fetch_add(1, Ordering::SeqCst);
                w.samples.push(e);
            }
        }
    }
    w
}

#[derive(Debug, Serialize)]
struct LoadReport {
    bundles: u64,
    resources: u64,
    errors: u64,
    complete: bool,
    secs: f64,
    bundles_per_sec: f64,
    resources_per_sec: f64,
    latency: Latency,
    cpu: CpuUse,
    error_samples: Vec<String>,
}

async fn load(client: &Client, target: &Target, args: &Args) -> (LoadReport, Vec<Created>) {
    let bundles = args.bundles();
    let server_pid = target.server.as_ref().map(Server::pid);
    let shared = Arc::new(LoadShared {
        base: target.base.clone(),
        auth: target.auth.clone(),
        seed: args.seed,
        requester: (args.caller == Caller::Practice && args.url.is_none()).then_some(BENCH_ROLE),
        tickets: AtomicI64::new(i64::try_from(bundles).expect("bundle count fits in i64")),
        next_n: AtomicU64::new(0),
        acked: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        max_errors: (bundles / 100).max(100),
        deadline: Instant::now() + Duration::from_secs(args.load_timeout),
        timed_out: AtomicBool::new(false),
    });
    let started = Instant::now();
    let cpu = CpuMark::now(server_pid);
    let progress = {
        let s = shared.clone();
        tokio::spawn(async move {
            let mut last = 0;
            loop {
                tokio::time::sleep(Duration::from_secs(10)).await;
                let acked = s.acked.load(Ordering::Relaxed);
                let secs = started.elapsed().as_secs_f64();
                eprintln!(
                    "  load: {acked}/{bundles} bundles after {secs:.0} s ({:.0} bundles/s over the last 10 s, {} errors)",
                    (acked - last) as f64 / 10.0,
                    s.errors.load(Ordering::Relaxed)
                );
                last = acked;
            }
        })
    };
    let mut set = JoinSet::new();
    for _ in 0..args.concurrency {
        set.spawn(load_worker(client.clone(), shared.clone()));
    }
    let mut hist = histogram();
    let mut created = Vec::with_capacity(usize::try_from(bundles).unwrap_or(0));
    let mut samples = Samples::default();
    while let Some(w) = set.join_next().await {
        let w = w.expect("a load worker panicked");
        hist.add(&w.hist).expect("histograms of the same bounds add up");
        created.extend(w.created);
        samples.extend(w.samples);
    }
    let secs = started.elapsed().as_secs_f64();
    progress.abort();
    created.sort_unstable_by_key(|c| c.n);
    let acked = created.len() as u64;
    let report = LoadReport {
        bundles: acked,
        resources: acked * TYPES.len() as u64,
        errors: shared.errors.load(Ordering::Relaxed),
        complete: acked == bundles && !shared.timed_out.load(Ordering::Relaxed),
        secs,
        bundles_per_sec: acked as f64 / secs,
        resources_per_sec: (acked * TYPES.len() as u64) as f64 / secs,
        latency: Latency::of(&hist),
        cpu: cpu.usage(),
        error_samples: samples.0,
    };
    (report, created)
}

// ----------------------------------------------------------- timed phases

#[derive(Debug, Clone, Copy)]
enum Check {
    /// 200 expected.
    Read,
    /// 200 and a searchset with at least one resource of this type expected.
    Search(&'static str),
}

type UrlMaker = Arc<dyn Fn(&mut Rng) -> String + Send + Sync>;

struct Phase {
    name: &'static str,
    check: Check,
    url: UrlMaker,
}

#[derive(Debug, Serialize)]
struct PhaseReport {
    name: &'static str,
    #[serde(skip)]
    check: Check,
    requests: u64,
    errors: u64,
    /// Searches that found nothing although they should have.
    empty: u64,
    /// Resources returned per search, on average.
    mean_hits: f64,
    secs: f64,
    per_sec: f64,
    latency: Latency,
    cpu: CpuUse,
    error_samples: Vec<String>,
}

#[derive(Deserialize)]
struct SearchBundle {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    entry: Vec<SearchEntry>,
}

#[derive(Deserialize)]
struct SearchEntry {
    resource: Option<TypeOnly>,
}

#[derive(Deserialize)]
struct TypeOnly {
    #[serde(rename = "resourceType")]
    resource_type: String,
}

/// Resources of type `rtype` in a searchset.
fn hits(body: &[u8], rtype: &str) -> Result<u64, String> {
    let b: SearchBundle = serde_json::from_slice(body).map_err(|e| format!("not a Bundle ({e}): {}", short(body)))?;
    if b.kind != "searchset" {
        return Err(format!("a {} Bundle instead of a searchset", b.kind));
    }
    Ok(b.entry
        .iter()
        .filter(|e| e.resource.as_ref().is_some_and(|r| r.resource_type == rtype))
        .count() as u64)
}

struct PhaseWorker {
    hist: Histogram<u64>,
    requests: u64,
    errors: u64,
    empty: u64,
    hits: u64,
    samples: Samples,
}

/// Sends a request and reads its body; anything but `200 OK` is an error
/// quoting the start of the body.
async fn send_ok(method: &str, req: reqwest::RequestBuilder) -> Result<bytes::Bytes, String> {
    let r = req.send().await.map_err(|e| format!("{method}: {e}"))?;
    let status = r.status();
    let bytes = r.bytes().await.map_err(|e| format!("reading the response: {e}"))?;
    if status != reqwest::StatusCode::OK {
        return Err(format!("status {status}: {}", short(&bytes)));
    }
    Ok(bytes)
}

async fn phase_worker(
    client: Client,
    auth: Arc<Auth>,
    phase: Arc<Phase>,
    mut rng: Rng,
    deadline: Instant,
    schedule: Option<(Instant, Duration)>,
) -> PhaseWorker {
    let mut w = PhaseWorker {
        hist: histogram(),
        requests: 0,
        errors: 0,
        empty: 0,
        hits: 0,
        samples: Samples::default(),
    };
    while Instant::now() < deadline && w.requests < MAX_REQUESTS_PER_WORKER {
        let url = (phase.url)(&mut rng);
        let started = match schedule {
            None => Instant::now(),
            Some((first, every)) => {
                let due = first + every * w.requests as u32;
                if due >= deadline {
                    break;
                }
                tokio::time::sleep_until(due.into()).await;
                due
            }
        };
        let outcome = send_ok("GET", auth.apply(client.get(&url)).header("accept", FHIR_JSON)).await;
        let latency = started.elapsed();
        w.requests += 1;
        record(&mut w.hist, latency);
        let checked = outcome.and_then(|bytes| match phase.check {
            Check::Read => Ok(1),
            Check::Search(rtype) => hits(&bytes, rtype),
        });
        match checked {
            Ok(0) => w.empty += 1,
            Ok(n) => w.hits += n,
            Err(e) => {
                w.errors += 1;
                w.samples.push(format!("{e} ({url})"));
            }
        }
    }
    w
}

struct PhaseRun {
    auth: Arc<Auth>,
    concurrency: usize,
    duration: Duration,
    /// Offered requests per second, if limited.
    rate: Option<u64>,
    seed: u64,
    server_pid: Option<u32>,
}

async fn run_phase(client: &Client, phase: Phase, run: &PhaseRun) -> PhaseReport {
    let (concurrency, duration, seed) = (run.concurrency, run.duration, run.seed);
    let phase = Arc::new(phase);
    let started = Instant::now();
    let cpu = CpuMark::now(run.server_pid);
    let deadline = started + duration;
    let mut set = JoinSet::new();
    for i in 0..concurrency {
        let rng = Rng::new(seed, i as u64);
        // Client i sends every concurrency/rate seconds, the clients offset
        // from one another so that arrivals are even.
        let schedule = run.rate.map(|rate| {
            let every = Duration::from_secs_f64(concurrency as f64 / rate as f64);
            (started + every * i as u32 / concurrency as u32, every)
        });
        set.spawn(phase_worker(
            client.clone(),
            run.auth.clone(),
            phase.clone(),
            rng,
            deadline,
            schedule,
        ));
    }
    let mut hist = histogram();
    let (mut requests, mut errors, mut empty, mut found) = (0, 0, 0, 0);
    let mut samples = Samples::default();
    while let Some(w) = set.join_next().await {
        let w = w.expect("a benchmark worker panicked");
        hist.add(&w.hist).expect("histograms of the same bounds add up");
        requests += w.requests;
        errors += w.errors;
        empty += w.empty;
        found += w.hits;
        samples.extend(w.samples);
    }
    let secs = started.elapsed().as_secs_f64();
    let ok = requests - errors;
    PhaseReport {
        name: phase.name,
        check: phase.check,
        requests,
        errors,
        empty,
        mean_hits: if ok > 0 { found as f64 / ok as f64 } else { 0.0 },
        secs,
        per_sec: requests as f64 / secs,
        latency: Latency::of(&hist),
        cpu: cpu.usage(),
        error_samples: samples.0,
    }
}

fn phases(base: &str, seed: u64, created: Arc<Vec<Created>>) -> Vec<Phase> {
    let active: Arc<Vec<usize>> = Arc::new(
        created
            .iter()
            .enumerate()
            .filter(|(_, c)| Facts::for_prescription(seed, c.n).sr_status == "active")
            .map(|(i, _)| i)
            .collect(),
    );
    let read = {
        let (base, created) = (base.to_string(), created.clone());
        Arc::new(move |rng: &mut Rng| {
            let c = rng.pick(&created);
            let t = rng.index(TYPES.len());
            format!("{base}/{}/{}", TYPES[t], c.ids[t])
        }) as UrlMaker
    };
    let patient = {
        let (base, created) = (base.to_string(), created.clone());
        Arc::new(move |rng: &mut Rng| {
            let ins = Facts::for_prescription(seed, rng.pick(&created).n).ins;
            format!("{base}/Patient?identifier={INS_SYSTEM}%7C{ins}")
        }) as UrlMaker
    };
    let observation = {
        let base = base.to_string();
        Arc::new(move |rng: &mut Rng| {
            let m = 1 + rng.below(12);
            let end = if m == 12 {
                "2026-01-01".to_string()
            } else {
                format!("2025-{:02}-01", m + 1)
            };
            format!("{base}/Observation?code=http://loinc.org%7C29463-7&date=ge2025-{m:02}-01&date=lt{end}")
        }) as UrlMaker
    };
    let mut list = vec![
        Phase {
            name: "read by id",
            check: Check::Read,
            url: read,
        },
        Phase {
            name: "Patient?identifier",
            check: Check::Search("Patient"),
            url: patient,
        },
    ];
    if active.is_empty() {
        eprintln!("warning: no prescription is active, the ServiceRequest search is skipped");
    } else {
        let base = base.to_string();
        list.push(Phase {
            name: "ServiceRequest?patient&status",
            check: Check::Search("ServiceRequest"),
            url: Arc::new(move |rng: &mut Rng| {
                let c = &created[*rng.pick(&active)];
                format!("{base}/ServiceRequest?patient=Patient/{}&status=active", c.ids[0])
            }),
        });
    }
    list.push(Phase {
        name: "Observation?code&date",
        check: Check::Search("Observation"),
        url: observation,
    });
    list
}

// ------------------------------------------------------------------ main

#[derive(Debug, Serialize)]
struct Machine {
    cpus: usize,
    cpu_model: String,
    memory_gib: f64,
}

fn machine() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .and_then(|r| r.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let kib: f64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|r| r.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0);
    Machine {
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model,
        memory_gib: kib / 1024.0 / 1024.0,
    }
}

#[derive(Debug, Serialize)]
struct Report {
    /// `None` when benchmarking a server given by `--url`.
    db: Option<Db>,
    base_url: String,
    resources_requested: u64,
    /// Who the requests came from.
    caller: &'static str,
    concurrency: usize,
    duration_secs: u64,
    /// Offered requests per second in the timed phases (0: unlimited).
    rate: u64,
    seed: u64,
    machine: Machine,
    startup_secs: Option<f64>,
    /// PostgreSQL's `autovacuum` setting (`off` leaves the planner without statistics).
    postgres_autovacuum: Option<String>,
    /// Time of the ANALYZE run after the load (`--pg-analyze`).
    analyze_secs: Option<f64>,
    load: LoadReport,
    phases: Vec<PhaseReport>,
    memory_after_load: Option<Mem>,
    memory_end: Option<Mem>,
    db_bytes_after_load: Option<u64>,
    db_bytes_after_stop: Option<u64>,
    /// SQLite: each file of the database after the stop.
    db_files_after_stop: Vec<(String, u64)>,
    shutdown: Option<Shutdown>,
    /// Lines the server logged at WARN or ERROR.
    server_warnings: usize,
    /// The last lines of the server's log.
    server_log_tail: Vec<String>,
}

impl Report {
    fn failed(&self) -> bool {
        !self.load.complete
            || self.load.errors > 0
            || self.phases.iter().any(|p| p.errors > 0)
            || self.shutdown.as_ref().is_some_and(|s| !s.graceful)
    }
}

/// The server under test: spawned, or given by `--url`.
struct Target {
    base: String,
    auth: Arc<Auth>,
    server: Option<Server>,
    storage: Option<Storage>,
    dir: Option<tempfile::TempDir>,
    startup_secs: Option<f64>,
}

async fn start_target(args: &Args, client: &Client) -> Result<Target, String> {
    let binary = args.binary.clone().unwrap_or_else(default_binary);
    if let Some(url) = &args.url {
        let base = loopback_base(url)?;
        let r = client
            .get(format!("{base}/metadata"))
            .header("accept", FHIR_JSON)
            .send()
            .await
            .map_err(|e| format!("{base}/metadata: {e}"))?;
        if !r.status().is_success() {
            return Err(format!("{base}/metadata answered {}", r.status()));
        }
        let auth = match (&args.client_id, &args.key) {
            (Some(client_id), Some(key)) => {
                Auth::refreshed(TokenSource {
                    binary,
                    client_id: client_id.clone(),
                    key: key.clone(),
                    base: base.clone(),
                })
                .await?
            }
            _ => Auth::fixed(args.token.as_deref()),
        };
        return Ok(Target {
            base,
            auth: Arc::new(auth),
            server: None,
            storage: None,
            dir: None,
            startup_secs: None,
        });
    }
    if !binary.is_file() {
        return Err(format!(
            "no server binary at {} (run `cargo build --release` first, or pass --binary)",
            binary.display()
        ));
    }
    let dir = tempfile::Builder::new()
        .prefix("apa-bench-")
        .tempdir()
        .map_err(|e| format!("temporary folder: {e}"))?;
    let (database_url, storage) = match args.db {
        Db::Sqlite => {
            let file = dir.path().join("apa.db");
            (format!("sqlite://{}", file.display()), Storage::Sqlite { file })
        }
        Db::Postgres => {
            let (schema, url) = create_pg_schema(&args.pg_url).await?;
            let storage = Storage::Postgres {
                admin_url: args.pg_url.clone(),
                schema,
            };
            (url, storage)
        }
    };
    let listen = format!("127.0.0.1:{}", free_port());
    let mut target = Target {
        base: format!("http://{listen}/fhir"),
        auth: Arc::new(Auth::fixed(None)),
        server: None,
        storage: Some(storage),
        dir: Some(dir),
        startup_secs: None,
    };
    match spawn_server(&mut target, args, client, &binary, &listen, &database_url).await {
        Ok(()) => Ok(target),
        Err(e) => {
            target.stop();
            target.clean_up(args.keep).await;
            Err(e)
        }
    }
}

/// Registers the benchmark's client, starts the server, waits until it is
/// ready and gets a first access token.
async fn spawn_server(
    target: &mut Target,
    args: &Args,
    client: &Client,
    binary: &Path,
    listen: &str,
    database_url: &str,
) -> Result<(), String> {
    let dir = target.dir.as_ref().map(|d| d.path().to_path_buf()).unwrap_or_default();
    let key = register_client(binary, &dir, database_url, &args.server_env, BENCH_CLIENT, args.caller)?;
    let admin_key = match args.caller {
        Caller::Practice => Some(register_client(
            binary,
            &dir,
            database_url,
            &args.server_env,
            BENCH_ADMIN,
            Caller::Operator,
        )?),
        Caller::Operator => None,
    };
    eprintln!("starting {} on {listen} ({database_url})", binary.display());
    let server = target
        .server
        .insert(Server::spawn(binary, &dir, listen, database_url, &args.server_env));
    let ready = wait_ready(client, &format!("http://{listen}"), server).await?;
    target.startup_secs = Some(ready.as_secs_f64());
    if let Some(admin_key) = admin_key {
        let admin = Auth::refreshed(TokenSource {
            binary: binary.to_path_buf(),
            client_id: BENCH_ADMIN.into(),
            key: admin_key,
            base: target.base.clone(),
        })
        .await?;
        set_up_practice(client, &target.base, &admin).await?;
    }
    let source = TokenSource {
        binary: binary.to_path_buf(),
        client_id: BENCH_CLIENT.into(),
        key,
        base: target.base.clone(),
    };
    target.auth = Arc::new(Auth::refreshed(source).await?);
    Ok(())
}

/// The GP practice of `--as practice`, its prescriber and his role there,
/// registered by the operator as a territory's directory would be.
async fn set_up_practice(client: &Client, base: &str, admin: &Auth) -> Result<(), String> {
    let role_id = BENCH_ROLE.trim_start_matches("PractitionerRole/");
    let resources = [
        json!({"resourceType": "Organization", "id": BENCH_PRACTICE, "active": true,
               "name": "Cabinet médical du banc d'essai",
               "identifier": [{"system": "https://sirene.fr", "value": "84512379300026"}]}),
        json!({"resourceType": "Practitioner", "id": "bench-dr", "active": true,
               "identifier": [{"system": RPPS_SYSTEM, "value": rpps(123_456_789)}],
               "name": [{"use": "official", "family": "Banc", "given": ["Claire"], "prefix": ["Dr"]}]}),
        json!({"resourceType": "PractitionerRole", "id": role_id, "active": true,
               "practitioner": {"reference": "Practitioner/bench-dr"},
               "organization": {"reference": format!("Organization/{BENCH_PRACTICE}")}}),
    ];
    for r in resources {
        let url = format!(
            "{base}/{}/{}",
            r["resourceType"].as_str().unwrap_or_default(),
            r["id"].as_str().unwrap_or_default()
        );
        let resp = admin
            .apply(client.put(&url))
            .header("content-type", FHIR_JSON)
            .body(r.to_string())
            .send()
            .await
            .map_err(|e| format!("setting up the practice: {e}"))?;
        if !resp.status().is_success() {
            let status = resp.status();
            let body = resp.text().await.unwrap_or_default();
            return Err(format!("setting up the practice: PUT {url}: {status}: {body}"));
        }
    }
    Ok(())
}

impl Target {
    /// Stops the spawned server (SIGTERM, graceful stop awaited).
    fn stop(&mut self) -> Option<Shutdown> {
        let server = self.server.as_mut()?;
        let shutdown = server.stop();
        if !shutdown.graceful {
            eprintln!(
                "warning: the server did not stop cleanly ({}); its last lines:\n{}",
                shutdown.exit,
                server.log_tail()
            );
        }
        Some(shutdown)
    }

    /// Removes the database (temporary folder, PostgreSQL schema) unless `keep`.
    async fn clean_up(mut self, keep: bool) {
        match (&self.storage, keep) {
            (Some(Storage::Postgres { admin_url, schema }), false) => {
                if let Err(e) = drop_pg_schema(admin_url, schema).await {
                    eprintln!("warning: could not drop schema {schema}: {e}");
                }
            }
            (Some(Storage::Postgres { admin_url, schema }), true) => {
                eprintln!("kept PostgreSQL schema {schema} in {admin_url}");
            }
            _ => {}
        }
        if let Some(dir) = self.dir.take() {
            if keep {
                eprintln!("kept {} (database, server.log)", dir.keep().display());
            } else if let Err(e) = dir.close() {
                eprintln!("warning: could not remove the temporary folder: {e}");
            }
        }
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / 1024.0 / 1024.0)
}

fn mem_line(m: Option<Mem>) -> String {
    m.map_or_else(
        || "n/a".into(),
        |m| {
            format!(
                "VmRSS {} (VmHWM {}), of which the process's own (RssAnon) {}",
                mib(m.vm_rss_kib * 1024),
                mib(m.vm_hwm_kib * 1024),
                mib(m.rss_anon_kib * 1024)
            )
        },
    )
}

fn print_report(r: &Report) {
    let mut out = String::new();
    let db = r.db.map_or("server at --url", |d| match d {
        Db::Sqlite => "SQLite",
        Db::Postgres => "PostgreSQL",
    });
    let _ = writeln!(
        out,
        "\napa-gateway benchmark: {db}, as {}, {} resources requested, {} clients, {} s per timed phase, {}, seed {}",
        r.caller,
        r.resources_requested,
        r.concurrency,
        r.duration_secs,
        if r.rate > 0 {
            format!("{} req/s offered", r.rate)
        } else {
            "closed loop".to_string()
        },
        r.seed
    );
    let _ = writeln!(
        out,
        "machine: {} CPUs ({}), {:.1} GiB RAM; client and server share them",
        r.machine.cpus, r.machine.cpu_model, r.machine.memory_gib
    );
    let l = &r.load;
    let _ = writeln!(
        out,
        "load: {} bundles = {} resources in {:.1} s: {:.0} bundles/s, {:.0} resources/s, {} errors{}",
        l.bundles,
        l.resources,
        l.secs,
        l.bundles_per_sec,
        l.resources_per_sec,
        l.errors,
        if l.complete { "" } else { " (INCOMPLETE)" }
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "| phase | requests | req/s | errors | empty | hits/req | p50 ms | p90 ms | p99 ms | max ms | CPU server/bench/other |"
    );
    let _ = writeln!(out, "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
    let cores = |c: Option<f64>| c.map_or_else(|| "–".to_string(), |c| format!("{c:.2}"));
    let mut row = |name: &str, n: u64, rate: f64, errors: u64, extra: String, lat: &Latency, cpu: &CpuUse| {
        let _ = writeln!(
            out,
            "| {name} | {n} | {rate:.0} | {errors} | {extra} | {:.1} | {:.1} | {:.1} | {:.1} | {} / {} / {} |",
            lat.p50_ms,
            lat.p90_ms,
            lat.p99_ms,
            lat.max_ms,
            cores(cpu.server_cores),
            cores(cpu.bench_cores),
            cores(cpu.other_cores()),
        );
    };
    row(
        "transaction (5 resources)",
        l.bundles,
        l.bundles_per_sec,
        l.errors,
        "– | –".into(),
        &l.latency,
        &l.cpu,
    );
    for p in &r.phases {
        let extra = match p.check {
            Check::Read => "– | –".to_string(),
            Check::Search(_) => format!("{} | {:.1}", p.empty, p.mean_hits),
        };
        row(p.name, p.requests, p.per_sec, p.errors, extra, &p.latency, &p.cpu);
    }
    let _ = writeln!(out);
    if r.memory_after_load.is_some() {
        let _ = writeln!(out, "server memory after load: {}", mem_line(r.memory_after_load));
        let _ = writeln!(out, "server memory at the end:  {}", mem_line(r.memory_end));
    }
    if let Some(b) = r.db_bytes_after_load {
        let _ = writeln!(
            out,
            "database on disk: {} after load, {} after stop{}",
            mib(b),
            r.db_bytes_after_stop.map_or_else(|| "n/a".into(), mib),
            if r.db_files_after_stop.is_empty() {
                String::new()
            } else {
                let files: Vec<String> = r
                    .db_files_after_stop
                    .iter()
                    .map(|(n, len)| format!("{n} {}", mib(*len)))
                    .collect();
                format!(" ({})", files.join(", "))
            }
        );
    }
    if let Some(a) = &r.postgres_autovacuum {
        let _ = writeln!(
            out,
            "PostgreSQL autovacuum: {a}; {}",
            r.analyze_secs.map_or_else(
                || "no ANALYZE after the load".to_string(),
                |s| format!("ANALYZE after the load took {s:.1} s")
            )
        );
    }
    if let Some(s) = r.startup_secs {
        let _ = writeln!(out, "server ready {s:.2} s after start");
    }
    if let Some(s) = &r.shutdown {
        let _ = writeln!(
            out,
            "shutdown: {} in {:.2} s ({})",
            if s.graceful { "graceful" } else { "NOT graceful" },
            s.secs,
            s.exit
        );
    }
    for (name, samples) in
        std::iter::once(("load", &l.error_samples)).chain(r.phases.iter().map(|p| (p.name, &p.error_samples)))
    {
        for e in samples {
            let _ = writeln!(out, "error in {name}: {e}");
        }
    }
    if r.server_warnings > 0 {
        let _ = writeln!(
            out,
            "the server logged {} warnings or errors; its last lines:",
            r.server_warnings
        );
        for l in &r.server_log_tail {
            let _ = writeln!(out, "  {l}");
        }
    }
    for p in r.phases.iter().filter(|p| p.empty > 0) {
        let _ = writeln!(
            out,
            "warning: {} of {} '{}' searches found nothing",
            p.empty, p.requests, p.name
        );
    }
    print!("{out}");
}

async fn run(args: Args) -> Result<Report, String> {
    let client = Client::builder()
        .no_proxy()
        .http1_only()
        .pool_max_idle_per_host(args.concurrency)
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(120))
        .build()
        .map_err(|e| format!("HTTP client: {e}"))?;
    let mut target = start_target(&args, &client).await?;
    let pid = target.server.as_ref().map(Server::pid);
    eprintln!(
        "loading {} transaction Bundles ({} resources) with {} clients into {}",
        args.bundles(),
        args.bundles() * 5,
        args.concurrency,
        target.base
    );
    let refresher = spawn_refresher(target.auth.clone());
    let (load, created) = load(&client, &target, &args).await;
    eprintln!(
        "  loaded {} bundles in {:.1} s ({:.0} resources/s, {} errors)",
        load.bundles, load.secs, load.resources_per_sec, load.errors
    );
    let memory_after_load = pid.and_then(proc_mem);
    let db_bytes_after_load = match &target.storage {
        Some(s) => s.bytes().await,
        None => None,
    };
    let mut analyze_secs = None;
    let mut postgres_autovacuum = None;
    if let Some(Storage::Postgres { admin_url, schema }) = &target.storage {
        postgres_autovacuum = pg_setting(admin_url, "autovacuum").await;
        if args.pg_analyze {
            let started = Instant::now();
            match pg_analyze(admin_url, schema).await {
                Ok(()) => analyze_secs = Some(started.elapsed().as_secs_f64()),
                Err(e) => eprintln!("warning: ANALYZE failed: {e}"),
            }
        }
    }
    let mut phase_reports = Vec::new();
    if created.is_empty() {
        eprintln!("warning: nothing was created, the read and search phases are skipped");
    } else {
        let duration = Duration::from_secs(args.duration);
        for phase in phases(&target.base, args.seed, Arc::new(created)) {
            eprintln!(
                "{} for {} s with {} clients",
                phase.name, args.duration, args.concurrency
            );
            if let Some(server) = target.server.as_mut()
                && let Some(status) = server.exited()
            {
                eprintln!("the server exited ({status}):\n{}", server.log_tail());
                break;
            }
            let run = PhaseRun {
                auth: target.auth.clone(),
                concurrency: args.concurrency,
                duration,
                rate: (args.rate > 0).then_some(args.rate),
                seed: args.seed ^ (0x5EED_0000 + phase_reports.len() as u64),
                server_pid: pid,
            };
            let p = run_phase(&client, phase, &run).await;
            eprintln!(
                "  {:.0} req/s, p99 {:.1} ms, {} errors",
                p.per_sec, p.latency.p99_ms, p.errors
            );
            phase_reports.push(p);
        }
    }
    let memory_end = pid.and_then(proc_mem);
    if let Some(r) = refresher {
        r.abort();
    }
    let shutdown = target.stop();
    // What the server logged at WARN or ERROR (it runs with RUST_LOG=warn).
    let server_log: Vec<String> = target.server.as_ref().map(Server::log_lines).unwrap_or_default();
    let server_warnings = server_log
        .iter()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .count();
    let server_log_tail = server_log[server_log.len().saturating_sub(10)..].to_vec();
    let db_bytes_after_stop = match &target.storage {
        Some(s) => s.bytes().await,
        None => None,
    };
    let db_files_after_stop = match &target.storage {
        Some(Storage::Sqlite { file }) => sqlite_files(file).unwrap_or_default(),
        _ => Vec::new(),
    };
    let (base_url, startup_secs) = (target.base.clone(), target.startup_secs);
    target.clean_up(args.keep).await;
    Ok(Report {
        db: args.url.is_none().then_some(args.db),
        base_url,
        resources_requested: args.resources,
        caller: args.caller.name(),
        concurrency: args.concurrency,
        duration_secs: args.duration,
        rate: args.rate,
        seed: args.seed,
        machine: machine(),
        startup_secs,
        postgres_autovacuum,
        analyze_secs,
        load,
        phases: phase_reports,
        memory_after_load,
        memory_end,
        db_bytes_after_load,
        db_bytes_after_stop,
        db_files_after_stop,
        shutdown,
        server_warnings,
        server_log_tail,
    })
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(e) = args.check() {
        eprintln!("bench: {e}");
        return ExitCode::from(2);
    }
    let json_path = args.json.clone();
    // On Ctrl-C, dropping `run` kills the server and removes the temporary
    // folder (a PostgreSQL schema stays: its name was printed).
    let outcome = tokio::select! {
        r = run(args) => r,
        _ = tokio::signal::ctrl_c() => Err("interrupted".to_string()),
    };
    let report = match outcome {
        Ok(r) => r,
        Err(e) => {
            eprintln!("bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    print_report(&report);
    if let Some(path) = json_path {
        let written = serde_json::to_vec_pretty(&report)
            .map_err(|e| e.to_string())
            .and_then(|bytes| std::fs::write(&path, bytes).map_err(|e| e.to_string()));
        match written {
            Ok(()) => eprintln!("results written to {}", path.display()),
            Err(e) => {
                eprintln!("bench: cannot write {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
        }
    }
    if report.failed() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ins_has_15_digits_and_a_valid_key() {
        for n in [0, 1, 99, 123_456, 99_999_999] {
            let ins = Facts::for_prescription(7, n).ins;
            assert_eq!(ins.len(), 15, "{ins}");
            let nir: u64 = ins[..13].parse().expect("13 digits");
            let key: u64 = ins[13..].parse().expect("2 digits");
            assert_eq!(key, 97 - nir % 97);
        }
    }

    #[test]
    fn rpps_numbers_pass_the_gateway_rule() {
        for n in [0, 7, 12_345_678, 999_999_999] {
            let r = rpps(n);
            assert_eq!(r.len(), 11, "{r}");
            assert!(apa_gateway::apa::identity::Rpps::parse(&r).is_ok(), "{r}");
        }
    }

    #[test]
    fn bundles_are_deterministic_and_linked() {
        assert_eq!(prescription_bundle(1, 42, None), prescription_bundle(1, 42, None));
        assert_ne!(prescription_bundle(1, 42, None), prescription_bundle(2, 42, None));
        let b: Value = serde_json::from_slice(&prescription_bundle(1, 42, None)).expect("JSON");
        let entries = b["entry"].as_array().expect("entries");
        assert_eq!(entries.len(), 5);
        let patient = entries[0]["fullUrl"].as_str().expect("fullUrl");
        assert!(patient.starts_with("urn:uuid:"));
        let sr = &entries[3]["resource"];
        assert_eq!(sr["subject"]["reference"], patient);
        assert_eq!(sr["requester"]["reference"], entries[1]["fullUrl"]);
        assert_eq!(sr["reasonReference"][0]["reference"], entries[2]["fullUrl"]);
        assert_eq!(sr["status"], Facts::for_prescription(1, 42).sr_status);
        assert_eq!(
            entries[0]["resource"]["identifier"][0]["value"],
            Facts::for_prescription(1, 42).ins
        );
    }

    #[test]
    fn transaction_response_gives_the_ids() {
        let entries: Vec<Value> = TYPES
            .iter()
            .map(|t| json!({"response": {"status": "201 Created", "location": format!("{t}/id-{t}/_history/1")}}))
            .collect();
        let body = json!({"resourceType": "Bundle", "type": "transaction-response", "entry": entries}).to_string();
        let ids = created_ids(body.as_bytes()).expect("valid response");
        assert_eq!(&*ids[3], "id-ServiceRequest");
        assert!(created_ids(b"{}").is_err());
    }

    #[test]
    fn searchset_hits_count_matches_only() {
        let body = json!({"resourceType": "Bundle", "type": "searchset", "entry": [
            {"resource": {"resourceType": "Patient", "id": "a"}, "search": {"mode": "match"}},
            {"resource": {"resourceType": "OperationOutcome"}, "search": {"mode": "outcome"}},
        ]})
        .to_string();
        assert_eq!(hits(body.as_bytes(), "Patient"), Ok(1));
        assert_eq!(
            hits(br#"{"resourceType":"Bundle","type":"searchset"}"#, "Patient"),
            Ok(0)
        );
    }

    #[test]
    fn colour_codes_are_stripped() {
        assert_eq!(
            strip_ansi("\u{1b}[2m2026\u{1b}[0m \u{1b}[33m WARN\u{1b}[0m x"),
            "2026  WARN x"
        );
    }

    #[test]
    fn only_loopback_urls_are_accepted() {
        assert!(loopback_base("http://127.0.0.1:8080/fhir/").is_ok());
        assert!(loopback_base("http://localhost:8080/fhir").is_ok());
        assert!(loopback_base("http://[::1]:8080/fhir").is_ok());
        assert!(loopback_base("http://10.0.0.1/fhir").is_err());
        assert!(loopback_base("https://example.org/fhir").is_err());
    }
}
