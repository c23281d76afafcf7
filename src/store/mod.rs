//! Persistence: resource versions, search index rows, history. SQLite
//! (embedded, default) or PostgreSQL, behind one `Store`. See
//! docs/storage.md for the table and index design.

mod audit;
mod clients;
mod detached;
mod exec;
mod idempotency;
pub mod keys;
#[cfg(target_os = "linux")]
mod nodelay;
#[cfg(test)]
mod plans;
mod reindex;
mod rows;
mod sql;
mod stats;
mod trail_file;
mod writer;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};

use crate::fhir::search::model::{IndexValue, PageStart, SearchRequest, Total};
pub use audit::{AuditCond, AuditCursor, AuditPage, AuditQuery, AuditRecord};
pub use clients::ClientRecord;
pub use detached::{Deferred, Found, Lookup};
use detached::{Detached, Sink};
pub use exec::Dialect;
use exec::{Bind, Conn, Frag, VersionRow, fetch_i64, fetch_versions};
pub use idempotency::IdempotencyRecord;
pub use reindex::IndexFn;
pub use writer::{JobHook, WriteTx, Writer, with_job_hook, with_professional};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(sqlx::Error),
    /// Another writer (a second gateway replica) stored the same resource
    /// version first.
    #[error("a concurrent write changed the same resource; retry")]
    Conflict,
    #[error("{0}")]
    Unsupported(String),
    #[error("the write was not made (the gateway is stopping or its database is unavailable)")]
    WriterGone,
    /// The group commit failed: none of its writes was made.
    #[error("the database transaction failed: {0}")]
    Commit(String),
    #[error("invalid database URL: {0}")]
    Config(String),
    /// The trail file (SQLite), written outside sqlx (`trail_file.rs`).
    #[error("audit trail file: {0}")]
    Trail(#[from] rusqlite::Error),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        if e.as_database_error().is_some_and(|d| d.is_unique_violation()) {
            StoreError::Conflict
        } else {
            StoreError::Db(e)
        }
    }
}

/// How a version came to be, as history reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Create = 1,
    Update = 2,
    Delete = 3,
}

impl Method {
    fn from_i64(v: i64) -> Method {
        match v {
            1 => Method::Create,
            3 => Method::Delete,
            _ => Method::Update,
        }
    }
}

/// One version of a resource as stored. `body` is `None` for a deletion.
#[derive(Debug, Clone)]
pub struct Version {
    pub resource_type: String,
    pub id: String,
    pub version: i64,
    /// `meta.lastUpdated`, microseconds since the epoch.
    pub updated: i64,
    pub method: Method,
    pub body: Option<Bytes>,
    /// The patients the stored resource concerns (its compartment rows,
    /// `resource_patient`), when the query that read it asked for them:
    /// its audit record then needs no parsing of the body.
    pub patients: Option<Vec<String>>,
}

impl Version {
    pub fn deleted(&self) -> bool {
        self.method == Method::Delete
    }
}

impl From<VersionRow> for Version {
    fn from(r: VersionRow) -> Self {
        Version {
            resource_type: r.resource_type,
            id: r.id,
            version: r.version,
            updated: r.updated,
            method: Method::from_i64(r.method),
            body: r.body,
            patients: r.patients,
        }
    }
}

/// Which resources a reader, or a write job, may see. The store applies
/// it on every read path; who is granted which patient is decided by
/// `security::compartment` and stored with the writes (`Write::grants`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Visibility {
    /// Every resource: the operator, the gateway itself.
    All,
    /// Resources that concern no patient, and those whose every patient
    /// has been granted to this party (`None`: a party with no grants).
    Party(Option<String>),
}

/// What a write needs to know of the current state of a resource.
#[derive(Debug, Clone, Copy)]
pub struct Current {
    pub pk: i64,
    pub version: i64,
    pub deleted: bool,
}

/// One resource version to store, with the index values of its content.
#[derive(Debug, Clone)]
pub struct Write {
    pub resource_type: String,
    pub id: String,
    pub version: i64,
    pub updated: i64,
    pub method: Method,
    pub body: Option<Bytes>,
    pub index: Vec<(String, crate::fhir::search::model::IndexValue)>,
    /// The row of the resource when it already exists.
    pub pk: Option<i64>,
    /// The patients this version concerns (its own id for a Patient): the
    /// resource is visible only to parties granted all of them, forever
    /// (deleting it does not lift the guard on its history).
    pub patients: Vec<String>,
    /// Access this write establishes, or re-decides (a Consent changed).
    pub grants: Vec<Grant>,
}

impl Write {
    /// The id of the `rtype` that the reference search parameter `param`
    /// of this version names, if any (read from the index: no parsing).
    pub fn reference(&self, param: &str, rtype: &str) -> Option<&str> {
        self.index.iter().find_map(|(code, v)| match v {
            IndexValue::Reference {
                rtype: Some(t),
                id: Some(id),
                ..
            } if code == param && t == rtype => Some(id.as_str()),
            _ => None,
        })
    }

    /// Does the search parameter `param` of this version index the token
    /// `code` (whatever its system), e.g. its `status`?
    pub fn has_token(&self, param: &str, code: &str) -> bool {
        self.index
            .iter()
            .any(|(c, v)| c == param && matches!(v, IndexValue::Token { code: Some(x), .. } if x == code))
    }
}

/// A party's access to a patient's data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub party: String,
    pub patient: String,
    /// The patient's consent withholds it (the grant stays, inactive).
    pub denied: bool,
}

#[derive(Debug, Clone, Default)]
pub struct HistoryQuery {
    pub resource_type: Option<String>,
    pub id: Option<String>,
    /// `_since`: versions written at or after this instant.
    pub since: Option<i64>,
    /// `_at`... not offered; `before` pages backwards through the log.
    pub before: Option<i64>,
    pub count: usize,
    /// Versions of these types are left out (a system-level history by a
    /// caller who may not read them).
    pub exclude_types: Vec<String>,
}

pub struct HistoryPage {
    pub entries: Vec<Version>,
    /// Cursor for the next (older) page.
    pub next: Option<i64>,
}

pub struct SearchPage {
    pub matches: Vec<Version>,
    pub included: Vec<Version>,
    pub total: Option<u64>,
    pub next: Option<PageStart>,
    pub previous: Option<PageStart>,
}

#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

#[derive(Clone)]
enum Pool {
    Sqlite(SqlitePool),
    Pg(PgPool),
}

struct Inner {
    pool: Pool,
    writer: Arc<Writer>,
    detached: Detached,
}

const SQLITE_SCHEMA: &str = include_str!("schema_sqlite.sql");
/// In the database file and in the trail file.
const SQLITE_AUDIT_SCHEMA: &str = include_str!("schema_sqlite_audit.sql");
/// Both files too, once `audit_event.entity` exists: a table of an earlier
/// release gets the column after `SQLITE_AUDIT_SCHEMA` ran.
const SQLITE_AUDIT_ENTITY: &str =
    "CREATE INDEX IF NOT EXISTS audit_event_of_entity ON audit_event (entity, recorded) WHERE entity IS NOT NULL";
const POSTGRES_SCHEMA: &str = include_str!("schema_postgres.sql");

/// Upper bound on resources that `_include`/`_revinclude` may add to a page.
const MAX_INCLUDED: i64 = 1000;

impl Store {
    /// Opens (creating if needed) the database and applies the schema.
    /// `sqlite://path` (file created if missing) or `postgres://…`.
    pub async fn open(url: &str, pool_size: u32) -> Result<Store, StoreError> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let opts = PgConnectOptions::from_str(url)?;
            let port = opts.get_port();
            let pg_pool = |size: u32| {
                PgPoolOptions::new()
                    .after_connect(move |_, _| {
                        Box::pin(async move {
                            #[cfg(target_os = "linux")]
                            nodelay::apply(port);
                            let _ = port;
                            Ok(())
                        })
                    })
                    .max_connections(size)
                    .acquire_timeout(Duration::from_secs(10))
            };
            let pool = pg_pool(pool_size.max(1)).connect_with(opts.clone()).await?;
            apply_schema_pg(&pool).await?;
            // The writer has connections of its own (one for the group
            // commits, one for the background ANALYZE): it never waits
            // behind readers for a connection, nor they behind it.
            let writer_pool = pg_pool(2).connect_with(opts).await?;
            Ok(Store {
                inner: {
                    let writer = Arc::new(Writer::start_pg(writer_pool));
                    Arc::new(Inner {
                        detached: Detached::start(Sink::Writer(writer.clone()), Pool::Pg(pool.clone())),
                        pool: Pool::Pg(pool),
                        writer,
                    })
                },
            })
        } else if let Some(path) = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")) {
            let path = path.split('?').next().unwrap_or(path);
            if let Some(dir) = std::path::Path::new(path).parent()
                && !dir.as_os_str().is_empty()
            {
                std::fs::create_dir_all(dir).map_err(|e| StoreError::Config(format!("{}: {e}", dir.display())))?;
            }
            // WAL lets readers run beside the single writer; FULL makes each
            // commit durable (fsync) before the client hears about it.
            let opts = SqliteConnectOptions::new()
                .filename(path)
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Full)
                .busy_timeout(Duration::from_secs(10))
                .pragma("temp_store", "memory");
            // The writer keeps the index B-trees in a larger cache, and lets
            // the WAL grow to ~40 MB between checkpoints so that a page
            // written by many commits is copied to the database once.
            let writer_opts = opts
                .clone()
                .pragma("cache_size", "-48000")
                .pragma("wal_autocheckpoint", "10000")
                .pragma("journal_size_limit", "67108864");
            let write_pool = SqlitePoolOptions::new()
                .max_connections(1)
                .connect_with(writer_opts.clone())
                .await?;
            {
                let mut c = write_pool.acquire().await?;
                sqlx::raw_sql(SQLITE_SCHEMA).execute(&mut *c).await?;
                sqlx::raw_sql(SQLITE_AUDIT_SCHEMA).execute(&mut *c).await?;
                add_missing_columns_sqlite(&mut c).await?;
                sqlx::raw_sql(SQLITE_AUDIT_ENTITY).execute(&mut *c).await?;
            }
            // The records of requests that changed nothing (detached.rs),
            // committed about once a second, durable like the rest, by a
            // connection of its own (trail_file.rs).
            let trail = trail_path(path);
            let trail_file = {
                let trail = trail.clone();
                tokio::task::spawn_blocking(move || trail_file::TrailFile::open(&trail))
                    .await
                    .map_err(|e| StoreError::Commit(format!("opening the trail file: {e}")))??
            };
            // Readers map the database file (up to 1 GiB) instead of
            // copying its pages into each connection's cache: every commit
            // empties the caches of all readers (SQLite cannot tell which
            // pages changed), and a page then comes back from the map for
            // the cost of a lookup, not of a read(2) and a copy.
            let epoch = stats::Epoch::new();
            let current = epoch.clone();
            let read_pool = SqlitePoolOptions::new()
                .max_connections(pool_size.max(1))
                // A connection loads the planner statistics when it opens:
                // one opened before the writer refreshed them is replaced.
                .before_acquire(move |_, meta| {
                    let current = current.current(&meta);
                    Box::pin(async move { Ok(current) })
                })
                .after_connect(move |c, _| {
                    let trail = trail.clone();
                    Box::pin(async move {
                        sqlx::query("ATTACH DATABASE ? AS trail").bind(trail).execute(c).await?;
                        Ok(())
                    })
                })
                .connect_with(
                    opts.pragma("cache_size", "-4000")
                        .pragma("mmap_size", "1073741824")
                        .read_only(true),
                )
                .await?;
            Ok(Store {
                inner: Arc::new(Inner {
                    detached: Detached::start(Sink::Trail(Arc::new(trail_file)), Pool::Sqlite(read_pool.clone())),
                    pool: Pool::Sqlite(read_pool),
                    writer: Arc::new(Writer::start_sqlite(write_pool, epoch)),
                }),
            })
        } else {
            Err(StoreError::Config(
                "expected sqlite://<path> or postgres://… (the scheme is missing or unknown)".into(),
            ))
        }
    }

    pub fn dialect(&self) -> Dialect {
        match self.inner.pool {
            Pool::Sqlite(_) => Dialect::Sqlite,
            Pool::Pg(_) => Dialect::Postgres,
        }
    }

    /// Runs `f` on a read connection.
    async fn with_conn<T>(
        &self,
        f: impl for<'c> AsyncFnOnce(&mut Conn<'c>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        match &self.inner.pool {
            Pool::Sqlite(p) => {
                let mut c = p.acquire().await?;
                f(&mut Conn::Sqlite(&mut c)).await
            }
            Pool::Pg(p) => {
                let mut c = p.acquire().await?;
                f(&mut Conn::Pg(&mut c)).await
            }
        }
    }

    /// Is the database reachable?
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.with_conn(async |c| fetch_i64(c, &Frag::new("SELECT CAST(1 AS BIGINT)")).await.map(|_| ()))
            .await
    }

    pub async fn read(&self, resource_type: &str, id: &str, vis: &Visibility) -> Result<Option<Version>, StoreError> {
        self.with_conn(async |c| rows::read_current(c, resource_type, id, vis).await)
            .await
    }

    pub async fn vread(
        &self,
        resource_type: &str,
        id: &str,
        version: i64,
        vis: &Visibility,
    ) -> Result<Option<Version>, StoreError> {
        let mut f = Frag::new(rows::VERSION_COLUMNS);
        f.push(rows::patients_column())
            .push(" FROM resource r JOIN resource_version v ON v.pk = r.pk WHERE r.rtype = ")
            .bind(Bind::Text(resource_type.into()))
            .push(" AND r.id = ")
            .bind(Bind::Text(id.into()))
            .push(" AND v.version = ")
            .bind(Bind::I64(version));
        rows::restrict(&mut f, vis, "r.pk");
        self.with_conn(async |c| Ok(fetch_versions(c, &f).await?.into_iter().next().map(Version::from)))
            .await
    }

    /// Newest first.
    pub async fn history(&self, q: &HistoryQuery, vis: &Visibility) -> Result<HistoryPage, StoreError> {
        let mut f = Frag::new(rows::VERSION_COLUMNS);
        f.push(" FROM resource_version v JOIN resource r ON r.pk = v.pk WHERE 1 = 1");
        if let Some(t) = &q.resource_type {
            f.push(" AND v.rtype = ").bind(Bind::Text(t.clone()));
        }
        if let Some(id) = &q.id {
            // With its type, so that the resource is found by its key.
            if let Some(t) = &q.resource_type {
                f.push(" AND r.rtype = ").bind(Bind::Text(t.clone()));
            }
            f.push(" AND r.id = ").bind(Bind::Text(id.clone()));
        }
        if let Some(s) = q.since {
            f.push(" AND v.updated >= ").bind(Bind::I64(s));
        }
        if let Some(b) = q.before {
            f.push(" AND v.vpk < ").bind(Bind::I64(b));
        }
        for t in &q.exclude_types {
            f.push(" AND v.rtype <> ").bind(Bind::Text(t.clone()));
        }
        rows::restrict(&mut f, vis, "v.pk");
        f.push(" ORDER BY v.vpk DESC LIMIT ")
            .bind(Bind::I64(q.count as i64 + 1));
        let mut rows = self.with_conn(async |c| fetch_versions(c, &f).await).await?;
        let next = if rows.len() > q.count {
            rows.truncate(q.count);
            rows.last().map(|r| r.vpk)
        } else {
            None
        };
        Ok(HistoryPage {
            entries: rows.into_iter().map(Version::from).collect(),
            next,
        })
    }

    pub async fn search(&self, req: &SearchRequest, vis: &Visibility) -> Result<SearchPage, StoreError> {
        self.with_conn(async |c| rows::search(c, req, vis).await).await
    }

    /// Where audit events are kept (`audit::Part`).
    fn audit_parts(&self) -> &'static [audit::Part] {
        match self.inner.pool {
            Pool::Sqlite(_) => &[audit::Part::Main, audit::Part::Trail],
            Pool::Pg(_) => &[audit::Part::Main],
        }
    }

    /// One event of the audit trail, if `vis` lets it be seen.
    pub async fn audit_read(&self, id: &str, vis: &Visibility) -> Result<Option<AuditRecord>, StoreError> {
        let parts = self.audit_parts();
        self.with_conn(async |c| {
            for part in parts {
                if let Some(found) = audit::read(c, *part, id, vis).await? {
                    return Ok(Some(found));
                }
            }
            Ok(None)
        })
        .await
    }

    /// A page of the audit trail, in recorded order.
    pub async fn audit_search(&self, q: &AuditQuery, vis: &Visibility) -> Result<AuditPage, StoreError> {
        let parts = self.audit_parts();
        self.with_conn(async |c| {
            let mut found = Vec::with_capacity(parts.len());
            for part in parts {
                found.push(audit::search(c, *part, q, vis).await?);
            }
            Ok(audit::page(q, found))
        })
        .await
    }

    /// Runs `f` inside the group-committed write transaction, seeing what
    /// `vis` allows. What `f` writes is atomic: all of it is committed, or
    /// none of it when `f` returns an error. The result is returned once
    /// the commit is durable.
    pub async fn write<T, E, F>(&self, vis: Visibility, f: F) -> Result<T, E>
    where
        F: for<'a> FnOnce(&'a mut WriteTx) -> futures_util::future::BoxFuture<'a, Result<T, E>> + Send + 'static,
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        self.inner.writer.submit(vis, f).await
    }

    /// Queues a write that no caller waits for (see `detached.rs`): `make`
    /// builds it in the background. Waits only while the queue is full.
    pub async fn write_detached(&self, make: Deferred) -> Result<(), StoreError> {
        self.inner.detached.send(make).await
    }

    /// Waits until every accepted write (detached ones included) is
    /// committed, then stops the writer.
    pub async fn close(&self) {
        self.inner.detached.close().await;
        self.inner.writer.close().await;
        match &self.inner.pool {
            Pool::Sqlite(p) => p.close().await,
            Pool::Pg(p) => p.close().await,
        }
    }
}

/// The trail file beside the database file: `data/apa.db` →
/// `data/apa-trail.db`.
fn trail_path(path: &str) -> String {
    match path.strip_suffix(".db") {
        Some(stem) => format!("{stem}-trail.db"),
        None => format!("{path}-trail"),
    }
}

/// Columns added to a table after its first release (table, column, type):
/// SQLite has no `ADD COLUMN IF NOT EXISTS`, PostgreSQL's schema file uses it.
/// The trail file applies it too, to the audit tables it holds.
const SQLITE_ADDED_COLUMNS: &[(&str, &str, &str)] = &[
    ("client", "tls_cert_sha256", "TEXT"),
    ("resource_version", "patients", "TEXT"),
    ("audit_event", "entity", "TEXT"),
];

async fn add_missing_columns_sqlite(c: &mut sqlx::SqliteConnection) -> Result<(), StoreError> {
    for (table, column, decl) in SQLITE_ADDED_COLUMNS {
        let present: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM pragma_table_info(?) WHERE name = ?")
            .bind(*table)
            .bind(*column)
            .fetch_one(&mut *c)
            .await?;
        if present == 0 {
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "ALTER TABLE {table} ADD COLUMN {column} {decl}"
            )))
            .execute(&mut *c)
            .await?;
        }
    }
    Ok(())
}

async fn apply_schema_pg(pool: &PgPool) -> Result<(), StoreError> {
    let mut c = pool.acquire().await?;
    // Several gateway replicas may start at once: one applies the schema.
    sqlx::query("SELECT pg_advisory_lock(7422001)").execute(&mut *c).await?;
    let r = sqlx::raw_sql(POSTGRES_SCHEMA).execute(&mut *c).await;
    sqlx::query("SELECT pg_advisory_unlock(7422001)")
        .execute(&mut *c)
        .await?;
    r?;
    Ok(())
}

pub(crate) fn wants_total(req: &SearchRequest) -> bool {
    matches!(req.total, Total::Accurate | Total::Estimate)
}
