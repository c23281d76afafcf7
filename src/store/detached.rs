//! Writes nobody waits for: records of requests that changed nothing (the
//! audit of reads, searches and refusals). They go through a bounded queue
//! to one task that builds them and stores them many per commit, so that
//! the request does not wait for an fsync; a full queue makes the request
//! wait for room rather than drop a record. `Store::close` stores what is
//! queued before it stops.
//!
//! Where they are stored: on PostgreSQL, through the writer, in the
//! database. On SQLite, in a file of their own (`<database>-trail.db`),
//! written by a connection of its own. The database file then changes only
//! when something is written: a commit there empties the page cache of
//! every read connection (SQLite cannot tell which pages changed) and,
//! as the file grows, makes each of them map it again. Committing the
//! records of reads into it ten times a second took the read connections'
//! CPU per read in the benchmark from 24 to 44 µs.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Mutex, mpsc};
use tokio::task::JoinHandle;

use crate::fhir::search::parse::{ParseOptions, parse_search};
use crate::fhir::search::registry::Registry;

use super::exec::{Bind, Conn, Frag, fetch_i64_text_text};
use super::keys::{hash, param_key};
use super::trail_file::TrailFile;
use super::{AuditRecord, Pool, StoreError, Visibility, Writer, rows};

/// What a record must know of the stored data before it is built, looked
/// up whatever the caller may see: the trail names the patients a request
/// concerned even when the caller was shown nothing of them (a refused
/// read, a search by INS answered empty). Looked up here, batch by batch,
/// so that the response never waits for it nor changes with it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Lookup {
    /// The patients a stored resource has ever concerned (its compartment
    /// rows, `resource_patient`, deleted resources included).
    Compartment { resource_type: String, id: String },
    /// The Patients holding an identifier (`system|value`, an INS).
    Identifier { system: String, value: String },
}

/// The patients each lookup found (none: absent).
pub type Found = HashMap<Lookup, Vec<String>>;

/// At most this many Patients are named for one identifier: more means a
/// duplicate identity, and those are enough to find it.
const PATIENTS_PER_IDENTIFIER: usize = 8;
/// Identifiers looked up by one query.
const IDENTIFIERS_PER_QUERY: usize = 100;

type Make = Box<dyn FnOnce(&Found) -> Vec<AuditRecord> + Send>;

/// Builds the records to store, off the request's path (it may cost CPU),
/// once what they need looked up is known.
pub struct Deferred {
    lookups: Vec<Lookup>,
    make: Make,
}

impl Deferred {
    /// Records that need nothing looked up.
    pub fn new(make: impl FnOnce() -> Vec<AuditRecord> + Send + 'static) -> Deferred {
        Deferred {
            lookups: Vec::new(),
            make: Box::new(move |_| make()),
        }
    }

    /// Records built from what `lookups` found.
    pub fn after(lookups: Vec<Lookup>, make: impl FnOnce(&Found) -> Vec<AuditRecord> + Send + 'static) -> Deferred {
        Deferred {
            lookups,
            make: Box::new(make),
        }
    }

    pub fn lookups(&self) -> &[Lookup] {
        &self.lookups
    }

    /// Builds the records from what was found (`found` must hold the
    /// lookups: a missing one counts as found absent).
    pub fn build(self, found: &Found) -> Vec<AuditRecord> {
        (self.make)(found)
    }
}

/// How records are gathered before one commit stores them.
#[derive(Clone, Copy)]
struct Gathering {
    /// Records queued at most; beyond, requests wait for room. Room for a
    /// batch being gathered and one being stored.
    queue: usize,
    /// Records stored by one commit at most.
    max_batch: usize,
    /// How long the first record of a batch waits for others. A crash may
    /// lose this much of the records of requests that changed nothing.
    linger: Duration,
}

/// The trail file (SQLite): most of what a commit of audit rows costs is
/// writing the index pages it changed, and the patient and entity indexes
/// take their rows at random places (the patients and resources read). A
/// commit a second writes each such page once for all the records of that
/// second that landed on it: in the benchmark's read phase the trail
/// connection's CPU per record fell from ~24 µs (ten commits a second) to
/// ~6 µs.
const TRAIL: Gathering = Gathering {
    queue: 32_768,
    max_batch: 16_384,
    linger: Duration::from_secs(1),
};

/// Through the writer (PostgreSQL): a batch holds the writer up while it
/// is stored, and the writes of requests wait behind it.
const THROUGH_WRITER: Gathering = Gathering {
    queue: 8192,
    max_batch: 1024,
    linger: Duration::from_millis(100),
};

/// How often the gathering task looks at the queue while a batch lingers:
/// waking for each record instead cost CPU for each of them.
const LOOK_EVERY: Duration = Duration::from_millis(20);

/// Where the records go.
pub enum Sink {
    /// The writer's transactions (PostgreSQL).
    Writer(Arc<Writer>),
    /// The trail file (SQLite), one connection of its own.
    Trail(Arc<TrailFile>),
}

impl Sink {
    fn gathering(&self) -> &'static Gathering {
        match self {
            Sink::Writer(_) => &THROUGH_WRITER,
            Sink::Trail(_) => &TRAIL,
        }
    }

    /// Builds the records of `makes` and stores them: how many, or how
    /// many were lost and why (at least one a request when building
    /// panicked).
    async fn store(&self, pool: &Pool, makes: Vec<Deferred>) -> Result<usize, (usize, StoreError)> {
        let mut wanted = Found::new();
        for l in makes.iter().flat_map(|m| m.lookups.iter()) {
            wanted.entry(l.clone()).or_default();
        }
        let mut found = wanted;
        if let Err(e) = look_up(pool, &mut found).await {
            // The records are stored all the same, naming only the patients
            // the requests themselves named: better than none.
            metrics::counter!("apa_audit_lookup_failed_total").increment(1);
            tracing::error!(error = %e, "the patients of audit records could not be looked up");
        }
        match self {
            Sink::Writer(writer) => {
                let queued = makes.len();
                // Building a batch is CPU work of milliseconds: not on the
                // threads that answer requests.
                let records = tokio::task::spawn_blocking(move || build(makes, &found))
                    .await
                    .map_err(|e| (queued, StoreError::Commit(format!("building detached records: {e}"))))?;
                let n = records.len();
                if n > 0 {
                    writer
                        .submit(Visibility::All, move |tx| {
                            Box::pin(async move {
                                tx.put_audit(records);
                                Ok::<_, StoreError>(())
                            })
                        })
                        .await
                        .map_err(|e| (n, e))?;
                }
                Ok(n)
            }
            Sink::Trail(file) => {
                // Built and stored on one blocking thread, not on the
                // threads that answer requests.
                let (file, queued) = (file.clone(), makes.len());
                tokio::task::spawn_blocking(move || {
                    let records = build(makes, &found);
                    file.put(&records)
                        .map(|()| records.len())
                        .map_err(|e| (records.len(), e))
                })
                .await
                .map_err(|e| (queued, StoreError::Commit(format!("storing detached records: {e}"))))?
            }
        }
    }
}

fn build(makes: Vec<Deferred>, found: &Found) -> Vec<AuditRecord> {
    makes.into_iter().flat_map(|m| m.build(found)).collect()
}

/// Everything the records of a batch need looked up, each once, on one
/// read connection. A batch of reads the caller was shown needs nothing.
async fn look_up(pool: &Pool, found: &mut Found) -> Result<(), StoreError> {
    if found.is_empty() {
        return Ok(());
    }
    match pool {
        Pool::Sqlite(p) => {
            let mut c = p.acquire().await?;
            fill(&mut Conn::Sqlite(&mut c), found).await
        }
        Pool::Pg(p) => {
            let mut c = p.acquire().await?;
            fill(&mut Conn::Pg(&mut c), found).await
        }
    }
}

async fn fill(c: &mut Conn<'_>, found: &mut Found) -> Result<(), StoreError> {
    // The plain identifiers of the batch are found together, in one query
    // of the token index: one query each made the records of a burst of
    // `Patient?identifier` searches fall behind the searches.
    let plain: Vec<(String, String)> = found
        .keys()
        .filter_map(|l| match l {
            Lookup::Identifier { system, value } if plain_token(system) && plain_token(value) => {
                Some((system.clone(), value.clone()))
            }
            _ => None,
        })
        .collect();
    let mut holders = identifier_holders(c, &plain).await?;
    for (lookup, patients) in found.iter_mut() {
        *patients = match lookup {
            Lookup::Compartment { resource_type, id } => {
                let mut f = Frag::new(
                    "SELECT rp.pk, rp.patient, rp.patient FROM resource r JOIN resource_patient rp ON rp.pk = r.pk WHERE r.rtype = ",
                );
                f.bind(Bind::Text(resource_type.clone()))
                    .push(" AND r.id = ")
                    .bind(Bind::Text(id.clone()))
                    .push(" ORDER BY rp.patient");
                fetch_i64_text_text(c, &f)
                    .await?
                    .into_iter()
                    .map(|(_, p, _)| p)
                    .collect()
            }
            Lookup::Identifier { system, value } if plain_token(system) && plain_token(value) => {
                holders.remove(&(hash(value), hash(system))).unwrap_or_default()
            }
            Lookup::Identifier { system, value } => {
                let opts = ParseOptions {
                    strict: true,
                    default_count: PATIENTS_PER_IDENTIFIER,
                    max_count: PATIENTS_PER_IDENTIFIER,
                    ..ParseOptions::default()
                };
                let params = [("identifier".to_string(), format!("{system}|{value}"))];
                // A value the search syntax refuses finds nobody: the
                // request it came from was refused for it as well.
                match parse_search(Registry::r4(), Some("Patient"), &params, &opts) {
                    Ok(req) => rows::search_keys(c, &req, PATIENTS_PER_IDENTIFIER, &Visibility::All)
                        .await?
                        .into_iter()
                        .map(|(_, id, _)| id)
                        .collect(),
                    Err(_) => Vec::new(),
                }
            }
        };
    }
    Ok(())
}

/// A system or value the search syntax takes as written: no escape, no
/// second separator (others go through the search parser, one by one).
fn plain_token(s: &str) -> bool {
    !s.is_empty() && !s.contains(['\\', '|', ','])
}

/// The current Patients holding each (system, value), keyed by the hashes
/// the token index stores them under, in pk order, at most
/// `PATIENTS_PER_IDENTIFIER` each.
async fn identifier_holders(
    c: &mut Conn<'_>,
    identifiers: &[(String, String)],
) -> Result<HashMap<(i64, i64), Vec<String>>, StoreError> {
    let mut out: HashMap<(i64, i64), Vec<String>> = HashMap::new();
    for chunk in identifiers.chunks(IDENTIFIERS_PER_QUERY) {
        let wanted: std::collections::HashSet<(i64, i64)> = chunk.iter().map(|(s, v)| (hash(v), hash(s))).collect();
        let mut f = Frag::new(
            "SELECT t.code, r.id, CAST(t.sys AS TEXT) FROM idx_token t JOIN resource r ON r.pk = t.pk \
             WHERE t.param = ",
        );
        f.bind(Bind::I64(param_key("Patient", "identifier")))
            .push(" AND r.rtype = 'Patient' AND r.deleted = 0 AND t.code IN (");
        for (i, (code, _)) in wanted.iter().enumerate() {
            if i > 0 {
                f.push(", ");
            }
            f.bind(Bind::I64(*code));
        }
        f.push(") ORDER BY t.pk");
        for (code, id, sys) in fetch_i64_text_text(c, &f).await? {
            let Ok(sys) = sys.parse::<i64>() else { continue };
            if !wanted.contains(&(code, sys)) {
                continue;
            }
            let holders = out.entry((code, sys)).or_default();
            if holders.len() < PATIENTS_PER_IDENTIFIER && !holders.contains(&id) {
                holders.push(id);
            }
        }
    }
    Ok(out)
}

pub struct Detached {
    // Taken by every request, for an instant: a std lock, not tokio's.
    sender: std::sync::Mutex<Option<mpsc::Sender<Deferred>>>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Detached {
    /// `pool`: read connections for what records need looked up.
    pub fn start(sink: Sink, pool: Pool) -> Detached {
        let (tx, rx) = mpsc::channel(sink.gathering().queue);
        Detached {
            sender: std::sync::Mutex::new(Some(tx)),
            task: Mutex::new(Some(tokio::spawn(run(sink, pool, rx)))),
        }
    }

    fn sender(&self) -> std::sync::MutexGuard<'_, Option<mpsc::Sender<Deferred>>> {
        // Nothing panics while holding it; if something did, the sender is intact.
        self.sender.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a record; waits only while the queue is full.
    pub async fn send(&self, make: Deferred) -> Result<(), StoreError> {
        let sender = self.sender().clone().ok_or(StoreError::WriterGone)?;
        sender.send(make).await.map_err(|_| StoreError::WriterGone)
    }

    /// Stops taking records and waits until the queued ones are stored.
    pub async fn close(&self) {
        self.sender().take();
        if let Some(task) = self.task.lock().await.take() {
            let _ = task.await;
        }
    }
}

async fn run(sink: Sink, pool: Pool, mut rx: mpsc::Receiver<Deferred>) {
    let Gathering { max_batch, linger, .. } = *sink.gathering();
    let mut batch = Vec::with_capacity(max_batch);
    while rx.recv_many(&mut batch, max_batch).await > 0 {
        let deadline = tokio::time::Instant::now() + linger;
        // Until the time is up, the batch is full or the gateway stops.
        while batch.len() + rx.len() < max_batch && !rx.is_closed() {
            let now = tokio::time::Instant::now();
            if now >= deadline {
                break;
            }
            tokio::time::sleep_until(deadline.min(now + LOOK_EVERY)).await;
        }
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(make) => batch.push(make),
                Err(_) => break,
            }
        }
        let makes = std::mem::replace(&mut batch, Vec::with_capacity(max_batch));
        match sink.store(&pool, makes).await {
            Ok(0) => {}
            Ok(n) => metrics::histogram!("apa_store_detached_batch_size").record(n as f64),
            Err((n, e)) => {
                metrics::counter!("apa_store_detached_lost_total").increment(n as u64);
                tracing::error!(error = %e, records = n, "detached records could not be stored");
            }
        }
    }
}
