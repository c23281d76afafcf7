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

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Mutex, mpsc};
use tokio::task::JoinHandle;

use super::trail_file::TrailFile;
use super::{AuditRecord, StoreError, Visibility, Writer};

/// Builds the records to store, off the request's path (it may cost CPU).
pub type Deferred = Box<dyn FnOnce() -> Vec<AuditRecord> + Send>;

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
    async fn store(&self, makes: Vec<Deferred>) -> Result<usize, (usize, StoreError)> {
        match self {
            Sink::Writer(writer) => {
                let queued = makes.len();
                // Building a batch is CPU work of milliseconds: not on the
                // threads that answer requests.
                let records = tokio::task::spawn_blocking(move || build(makes))
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
                    let records = build(makes);
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

fn build(makes: Vec<Deferred>) -> Vec<AuditRecord> {
    makes.into_iter().flat_map(|m| m()).collect()
}

pub struct Detached {
    // Taken by every request, for an instant: a std lock, not tokio's.
    sender: std::sync::Mutex<Option<mpsc::Sender<Deferred>>>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Detached {
    pub fn start(sink: Sink) -> Detached {
        let (tx, rx) = mpsc::channel(sink.gathering().queue);
        Detached {
            sender: std::sync::Mutex::new(Some(tx)),
            task: Mutex::new(Some(tokio::spawn(run(sink, rx)))),
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

async fn run(sink: Sink, mut rx: mpsc::Receiver<Deferred>) {
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
        match sink.store(makes).await {
            Ok(0) => {}
            Ok(n) => metrics::histogram!("apa_store_detached_batch_size").record(n as f64),
            Err((n, e)) => {
                metrics::counter!("apa_store_detached_lost_total").increment(n as u64);
                tracing::error!(error = %e, records = n, "detached records could not be stored");
            }
        }
    }
}
