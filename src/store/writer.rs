//! One writer, group commit.
//!
//! Every write of the gateway runs here, in arrival order, inside a
//! database transaction that holds as many writes as arrived while the
//! previous commit was being made durable: one fsync serves them all. A
//! caller hears of its write only after the COMMIT returned: an
//! acknowledged write is durable.
//!
//! The rows a job writes are not sent at once: they are kept and sent with
//! those of the next jobs, as multi-row INSERTs, right before anything reads
//! the database or at the end of the batch. A batch of plain creates (the
//! common case: transaction Bundles with server-assigned ids) thus costs a
//! handful of statements whatever its size. A job that reads gets its own
//! SAVEPOINT (opened after the earlier jobs' rows are sent), so a failing job
//! is rolled back alone: its unsent rows are dropped, its sent ones undone.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use sqlx::pool::PoolConnection;
use sqlx::{PgPool, Postgres, Sqlite, SqlitePool};
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::fhir::search::model::SearchRequest;

use super::exec::{Conn, Frag, execute, fetch_i64};
use super::stats::{self, Epoch, Schedule};
use super::{AuditRecord, Current, StoreError, Version, Visibility, Write, rows};

/// Writes gathered into one transaction at most.
const MAX_BATCH: usize = 512;
/// SQLite: when no write came for this long after the last commit, the WAL
/// is copied into the database file (a passive checkpoint, readers are not
/// blocked). A reader of a fully checkpointed WAL reads the database file
/// alone (memory-mapped, no WAL lookup); otherwise the pages of the last
/// writes before a quiet spell stay in the WAL until the next automatic
/// checkpoint, which only writes trigger, and every read pays for them.
const IDLE_CHECKPOINT: std::time::Duration = std::time::Duration::from_secs(1);

enum WConn {
    Sqlite(PoolConnection<Sqlite>),
    Pg(PoolConnection<Postgres>),
}

/// Rides along with the write jobs of one request (its audit record): told
/// of every version a job stores, it may add rows to that job, written in
/// the same database transaction, and hears when they are durable. The
/// store knows nothing of what the rows mean.
pub trait JobHook: Send + Sync {
    /// The job stored these versions (they may still be rolled back).
    fn stored(&self, writes: &[Write]);
    /// The job ended; `ok` is false when it failed and was rolled back. On
    /// success, the audit records returned are stored with the job.
    fn finish(&self, ok: bool) -> Vec<AuditRecord>;
    /// The job and the rows `finish` added are committed (not called when
    /// it added none).
    fn committed(&self);
    /// The job identified these resources (`Type/id`) outside its
    /// compartment ([`WriteTx::vouch`]); told with the versions it stores.
    fn identified(&self, _refs: &[String]) {}
}

tokio::task_local! {
    static HOOK: Arc<dyn JobHook>;
}

/// Runs `f` so that every write job it submits carries `hook`.
pub async fn with_job_hook<F: std::future::Future>(hook: Arc<dyn JobHook>, f: F) -> F::Output {
    HOOK.scope(hook, f).await
}

fn current_hook() -> Option<Arc<dyn JobHook>> {
    HOOK.try_with(Arc::clone).ok()
}

tokio::task_local! {
    static PROFESSIONAL: Option<String>;
}

/// Runs `f` so that every write job it submits knows the health
/// professional acting (their idNatPs), for the security layer's
/// authorship rule; the store does nothing else with it.
pub async fn with_professional<F: std::future::Future>(professional: Option<String>, f: F) -> F::Output {
    PROFESSIONAL.scope(professional, f).await
}

/// The open write transaction, as a write job sees it.
pub struct WriteTx {
    conn: WConn,
    /// Rows not sent yet: earlier jobs' first, then the current job's.
    pending: Vec<Write>,
    /// Audit records of the jobs that succeeded, stored at the commit.
    audit: Vec<AuditRecord>,
    /// Where the current job's rows start in `pending`.
    job_start: usize,
    /// Has the current job opened its SAVEPOINT?
    in_savepoint: bool,
    /// What the current job may see and act on (its caller's compartment).
    vis: Visibility,
    /// The hook of the current job, if its request has one.
    hook: Option<Arc<dyn JobHook>>,
    /// Resources the current job identified outside its compartment
    /// (`Type/id`), see [`WriteTx::vouch`].
    vouched: Vec<String>,
    /// Versions the batch stored, for the planner statistics' schedule.
    written: u64,
    /// The professional acting in the current job, see [`with_professional`].
    professional: Option<String>,
}

impl WriteTx {
    pub(super) fn conn(&mut self) -> Conn<'_> {
        match &mut self.conn {
            WConn::Sqlite(c) => Conn::Sqlite(c),
            WConn::Pg(c) => Conn::Pg(c),
        }
    }

    /// Before the job reads: send the earlier jobs' rows, open the job's
    /// SAVEPOINT, then send the job's own rows so that it reads them.
    pub(super) async fn prepare_read(&mut self) -> Result<(), StoreError> {
        if !self.in_savepoint {
            let mine = self.pending.split_off(self.job_start);
            let earlier = std::mem::take(&mut self.pending);
            rows::put_all(&mut self.conn(), earlier).await?;
            self.run("SAVEPOINT w").await?;
            self.in_savepoint = true;
            self.pending = mine;
            self.job_start = 0;
        }
        let mine = std::mem::take(&mut self.pending);
        rows::put_all(&mut self.conn(), mine).await
    }

    /// The current state of a resource the job may see (`None` when it
    /// does not exist or is outside the job's compartment).
    pub async fn current(&mut self, resource_type: &str, id: &str) -> Result<Option<Current>, StoreError> {
        self.prepare_read().await?;
        let vis = self.vis.clone();
        rows::current(&mut self.conn(), resource_type, id, &vis).await
    }

    /// Does `Type/id` exist at all, seen or not? Tells an id that is free
    /// from one that is taken outside the job's compartment.
    pub async fn exists(&mut self, resource_type: &str, id: &str) -> Result<bool, StoreError> {
        self.prepare_read().await?;
        Ok(rows::current(&mut self.conn(), resource_type, id, &Visibility::All)
            .await?
            .is_some())
    }

    pub async fn read(&mut self, resource_type: &str, id: &str) -> Result<Option<Version>, StoreError> {
        self.prepare_read().await?;
        let vis = self.vis.clone();
        rows::read_current(&mut self.conn(), resource_type, id, &vis).await
    }

    /// `Type/id` as it is, whatever the job's compartment: for the
    /// product's identity rule to compare it with what a client sent. The
    /// caller must not show it (see [`WriteTx::vouch`]).
    pub async fn read_unrestricted(&mut self, resource_type: &str, id: &str) -> Result<Option<Version>, StoreError> {
        self.prepare_read().await?;
        rows::read_current(&mut self.conn(), resource_type, id, &Visibility::All).await
    }

    /// Up to `limit` current matches of a search, whatever the job's
    /// compartment (for the product's identity rule, like
    /// [`WriteTx::read_unrestricted`]).
    pub async fn search_keys_unrestricted(
        &mut self,
        req: &SearchRequest,
        limit: usize,
    ) -> Result<Vec<(String, String, i64)>, StoreError> {
        self.prepare_read().await?;
        rows::search_keys(&mut self.conn(), req, limit, &Visibility::All).await
    }

    /// The job identified `Type/id`, stored outside its compartment, by
    /// what it holds (a national identity), not by knowing its id: the
    /// security layer may then let the job bring it into the compartment.
    pub fn vouch(&mut self, resource_type: &str, id: &str) {
        self.vouched.push(format!("{resource_type}/{id}"));
    }

    /// What the current job identified (`Type/id`).
    pub fn vouched(&self) -> &[String] {
        &self.vouched
    }

    /// The parties granted access to a patient, whatever the job's
    /// compartment (for the security layer to re-decide them).
    pub async fn grantees(&mut self, patient: &str) -> Result<Vec<String>, StoreError> {
        self.prepare_read().await?;
        rows::grantees(&mut self.conn(), patient).await
    }

    /// The patients a stored resource has concerned.
    pub async fn patients_of(&mut self, pk: i64) -> Result<Vec<String>, StoreError> {
        self.prepare_read().await?;
        rows::patients_of(&mut self.conn(), pk).await
    }

    /// The current resources of a type that concern a patient, whatever the
    /// job's compartment (for the security layer: a patient's Consents).
    pub async fn of_patient(&mut self, resource_type: &str, patient: &str) -> Result<Vec<Version>, StoreError> {
        self.prepare_read().await?;
        rows::of_patient(&mut self.conn(), resource_type, patient).await
    }

    /// Whom the current job acts for.
    pub fn visibility(&self) -> &Visibility {
        &self.vis
    }

    /// The health professional acting in the current job (idNatPs), if any.
    pub fn professional(&self) -> Option<&str> {
        self.professional.as_deref()
    }

    /// Those of `patients` that the job's party has not been granted.
    pub async fn ungranted(&mut self, patients: &[String]) -> Result<Vec<String>, StoreError> {
        let party = match &self.vis {
            Visibility::All => return Ok(Vec::new()),
            Visibility::Party(p) => p.clone(),
        };
        if patients.is_empty() {
            return Ok(Vec::new());
        }
        self.prepare_read().await?;
        rows::ungranted(&mut self.conn(), party.as_deref(), patients).await
    }

    /// Up to `limit` current matches of a search: (type, id, version).
    pub async fn search_keys(
        &mut self,
        req: &SearchRequest,
        limit: usize,
    ) -> Result<Vec<(String, String, i64)>, StoreError> {
        self.prepare_read().await?;
        let vis = self.vis.clone();
        rows::search_keys(&mut self.conn(), req, limit, &vis).await
    }

    /// One page of a search with its `_include`s and `_revinclude`s, as
    /// the job may see it.
    pub async fn search(&mut self, req: &SearchRequest) -> Result<super::SearchPage, StoreError> {
        self.prepare_read().await?;
        let vis = self.vis.clone();
        rows::search(&mut self.conn(), req, &vis).await
    }

    /// Stores audit records with the batch.
    pub fn put_audit(&mut self, records: Vec<AuditRecord>) {
        self.audit.extend(records);
    }

    /// Stores resource versions (sent with the batch, see the module doc).
    pub async fn put_all(&mut self, writes: Vec<Write>) -> Result<(), StoreError> {
        if let Some(h) = &self.hook {
            h.stored(&writes);
            if !self.vouched.is_empty() {
                h.identified(&self.vouched);
            }
        }
        self.written += writes.len() as u64;
        self.pending.extend(writes);
        Ok(())
    }

    fn begin_job(&mut self) {
        self.job_start = self.pending.len();
        self.in_savepoint = false;
        self.hook = None;
        self.vouched.clear();
    }

    /// Ends the current job: keeps or undoes what it wrote.
    async fn end_job(&mut self, ok: bool) -> Result<(), StoreError> {
        if !ok {
            self.pending.truncate(self.job_start);
        }
        if self.in_savepoint {
            if !ok {
                self.run("ROLLBACK TO SAVEPOINT w").await?;
            }
            self.run("RELEASE SAVEPOINT w").await?;
        }
        self.in_savepoint = false;
        self.job_start = self.pending.len();
        Ok(())
    }

    async fn run(&mut self, sql: &'static str) -> Result<(), StoreError> {
        execute(&mut self.conn(), &Frag::new(sql)).await.map(|_| ())
    }
}

struct Done {
    ok: bool,
    deliver: Box<dyn FnOnce(Option<StoreError>) + Send>,
}

type Job = Box<dyn for<'a> FnOnce(&'a mut WriteTx) -> BoxFuture<'a, Done> + Send>;

enum WPool {
    /// With when its readers must reload the planner statistics.
    Sqlite(SqlitePool, Arc<Epoch>),
    Pg(PgPool),
}

pub struct Writer {
    sender: Mutex<Option<mpsc::Sender<Job>>>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Writer {
    pub fn start_sqlite(pool: SqlitePool, epoch: Arc<Epoch>) -> Writer {
        Self::start(WPool::Sqlite(pool, epoch))
    }

    pub fn start_pg(pool: PgPool) -> Writer {
        Self::start(WPool::Pg(pool))
    }

    fn start(pool: WPool) -> Writer {
        let (tx, rx) = mpsc::channel(4096);
        let task = tokio::spawn(run(pool, rx));
        Writer {
            sender: Mutex::new(Some(tx)),
            task: Mutex::new(Some(task)),
        }
    }

    pub async fn submit<T, E, F>(&self, vis: Visibility, f: F) -> Result<T, E>
    where
        F: for<'a> FnOnce(&'a mut WriteTx) -> BoxFuture<'a, Result<T, E>> + Send + 'static,
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        let sender = self.sender.lock().await.clone().ok_or(StoreError::WriterGone)?;
        let (reply, answer) = oneshot::channel::<Result<T, E>>();
        // Read here, in the request's task: the job runs in the writer's.
        let hook = current_hook();
        let professional = PROFESSIONAL.try_with(Clone::clone).ok().flatten();
        let job: Job = Box::new(move |wtx| {
            Box::pin(async move {
                wtx.vis = vis;
                wtx.professional = professional;
                wtx.hook = hook.clone();
                let result = f(wtx).await;
                wtx.hook = None;
                let ok = result.is_ok();
                // The hook hears of the commit only if it added rows.
                let hook = hook.filter(|h| {
                    let extra = h.finish(ok);
                    let added = ok && !extra.is_empty();
                    wtx.audit.extend(extra.into_iter().filter(|_| ok));
                    added
                });
                Done {
                    ok,
                    deliver: Box::new(move |commit_error| {
                        if commit_error.is_none()
                            && let Some(h) = &hook
                        {
                            h.committed();
                        }
                        let out = match commit_error {
                            None => result,
                            Some(e) => Err(E::from(e)),
                        };
                        // The caller may have gone (client disconnected): the
                        // write stands, only the answer is lost.
                        let _ = reply.send(out);
                    }),
                }
            })
        });
        sender.send(job).await.map_err(|_| StoreError::WriterGone)?;
        answer.await.map_err(|_| E::from(StoreError::WriterGone))?
    }

    /// Stops taking writes, lets the queued ones commit, and waits.
    pub async fn close(&self) {
        self.sender.lock().await.take();
        if let Some(task) = self.task.lock().await.take() {
            let _ = task.await;
        }
    }
}

async fn run(pool: WPool, mut rx: mpsc::Receiver<Job>) {
    let mut unchecked = false;
    let mut schedule = Schedule::new(stored_versions(&pool).await);
    if schedule.due_at_start() {
        refresh_statistics(&pool).await;
    }
    loop {
        let next = match &pool {
            WPool::Sqlite(p, _) if unchecked => match tokio::time::timeout(IDLE_CHECKPOINT, rx.recv()).await {
                Ok(next) => next,
                Err(_) => {
                    unchecked = false;
                    if let Err(e) = sqlx::raw_sql("PRAGMA wal_checkpoint(PASSIVE)").execute(p).await {
                        tracing::warn!(error = %e, "idle WAL checkpoint failed");
                    }
                    continue;
                }
            },
            _ => rx.recv().await,
        };
        let Some(first) = next else { break };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let size = batch.len();
        let conn = match &pool {
            WPool::Sqlite(p, _) => p.acquire().await.map(WConn::Sqlite),
            WPool::Pg(p) => p.acquire().await.map(WConn::Pg),
        };
        let mut wtx = match conn {
            Ok(conn) => WriteTx {
                conn,
                pending: Vec::new(),
                audit: Vec::new(),
                job_start: 0,
                in_savepoint: false,
                vis: Visibility::All,
                hook: None,
                vouched: Vec::new(),
                written: 0,
                professional: None,
            },
            Err(e) => {
                // Dropping the jobs drops their reply senders: each caller
                // hears that its write was not made (503, retry).
                tracing::error!(error = %e, "writer cannot reach the database");
                drop(batch);
                continue;
            }
        };
        let started = std::time::Instant::now();
        let outcome = commit_batch(&mut wtx, batch).await;
        metrics::histogram!("apa_store_commit_seconds").record(started.elapsed().as_secs_f64());
        metrics::histogram!("apa_store_commit_batch_size").record(size as f64);
        match outcome {
            Ok(dones) => {
                for d in dones {
                    (d.deliver)(None);
                }
                unchecked = true;
                let written = wtx.written;
                // The SQLite writer has one connection: ANALYZE needs it back.
                drop(wtx);
                if schedule.written(written) {
                    refresh_statistics(&pool).await;
                    schedule.refreshed();
                }
            }
            Err((dones, e)) => {
                tracing::error!(error = %e, "write batch failed, rolled back");
                if wtx.run("ROLLBACK").await.is_err() {
                    // A connection in an unknown state must not go back to the pool.
                    match wtx.conn {
                        WConn::Sqlite(c) => drop(c.detach()),
                        WConn::Pg(c) => drop(c.detach()),
                    }
                }
                let msg = e.to_string();
                for d in dones {
                    (d.deliver)(Some(StoreError::Commit(msg.clone())));
                }
            }
        }
    }
}

type BatchError = (Vec<Done>, StoreError);

async fn commit_batch(wtx: &mut WriteTx, batch: Vec<Job>) -> Result<Vec<Done>, BatchError> {
    let begin = match wtx.conn {
        WConn::Sqlite(_) => "BEGIN IMMEDIATE",
        WConn::Pg(_) => "BEGIN",
    };
    let mut dones = Vec::with_capacity(batch.len());
    if let Err(e) = wtx.run(begin).await {
        return Err((dones, e));
    }
    for job in batch {
        wtx.begin_job();
        // A job that panics fails alone; the writer, which every write of
        // the gateway needs, goes on.
        let done = match AssertUnwindSafe(job(wtx)).catch_unwind().await {
            Ok(done) => done,
            Err(_) => {
                tracing::error!("a write job panicked; it was rolled back");
                if let Some(h) = wtx.hook.take() {
                    h.finish(false);
                }
                Done {
                    ok: false,
                    deliver: Box::new(|_| {}),
                }
            }
        };
        let closing = wtx.end_job(done.ok).await;
        dones.push(done);
        // Jobs not run yet are dropped on return: their callers get 503.
        if let Err(e) = closing {
            return Err((dones, e));
        }
    }
    let rest = std::mem::take(&mut wtx.pending);
    if let Err(e) = rows::put_all(&mut wtx.conn(), rest).await {
        return Err((dones, e));
    }
    let audit = std::mem::take(&mut wtx.audit);
    if let Err(e) = super::audit::put(&mut wtx.conn(), audit).await {
        return Err((dones, e));
    }
    match wtx.run("COMMIT").await {
        Ok(()) => Ok(dones),
        Err(e) => Err((dones, e)),
    }
}

/// See `stats.rs`.
async fn refresh_statistics(pool: &WPool) {
    match pool {
        WPool::Pg(p) => stats::refresh_pg(p),
        WPool::Sqlite(p, epoch) => stats::refresh_sqlite(p, epoch).await,
    }
}

/// The versions the database holds (its last version key: close enough).
async fn stored_versions(pool: &WPool) -> u64 {
    let f = Frag::new("SELECT CAST(COALESCE(MAX(vpk), 0) AS BIGINT) FROM resource_version");
    let n = match pool {
        WPool::Sqlite(p, _) => match p.acquire().await {
            Ok(mut c) => fetch_i64(&mut Conn::Sqlite(&mut c), &f).await,
            Err(e) => Err(e.into()),
        },
        WPool::Pg(p) => match p.acquire().await {
            Ok(mut c) => fetch_i64(&mut Conn::Pg(&mut c), &f).await,
            Err(e) => Err(e.into()),
        },
    };
    n.ok()
        .and_then(|v| v.first().copied())
        .and_then(|n| u64::try_from(n).ok())
        .unwrap_or(0)
}
