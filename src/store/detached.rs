//! Writes nobody waits for: records of requests that changed nothing (the
//! audit of reads, searches and refusals). They go through a bounded queue
//! to one task that builds them and stores them many per write job, so that
//! the request does not wait for an fsync; a full queue makes the request
//! wait for room rather than drop a record. `Store::close` stores what is
//! queued before it stops the writer.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Mutex, mpsc};
use tokio::task::JoinHandle;

use super::{AuditRecord, StoreError, Visibility, Writer};

/// Builds the records to store, off the request's path (it may cost CPU).
pub type Deferred = Box<dyn FnOnce() -> Vec<AuditRecord> + Send>;

/// Records queued at most; beyond, requests wait for room.
const QUEUE: usize = 8192;
/// Records stored by one write job at most.
const MAX_BATCH: usize = 1024;
/// How long the first record of a batch waits for others. On SQLite every
/// commit makes each read connection drop its whole page cache at its next
/// query (it cannot tell which pages changed): committing the records of
/// reads as they come, hundreds of times a second, made every read start
/// cold. A few commits a second keep the readers' caches warm; a crash may
/// lose this much more of the records of requests that changed nothing.
const LINGER: Duration = Duration::from_millis(100);

pub struct Detached {
    sender: Mutex<Option<mpsc::Sender<Deferred>>>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Detached {
    pub fn start(writer: Arc<Writer>) -> Detached {
        let (tx, rx) = mpsc::channel(QUEUE);
        Detached {
            sender: Mutex::new(Some(tx)),
            task: Mutex::new(Some(tokio::spawn(run(writer, rx)))),
        }
    }

    /// Queues a record; waits only while the queue is full.
    pub async fn send(&self, make: Deferred) -> Result<(), StoreError> {
        let sender = self.sender.lock().await.clone().ok_or(StoreError::WriterGone)?;
        sender.send(make).await.map_err(|_| StoreError::WriterGone)
    }

    /// Stops taking records and waits until the queued ones are stored.
    pub async fn close(&self) {
        self.sender.lock().await.take();
        if let Some(task) = self.task.lock().await.take() {
            let _ = task.await;
        }
    }
}

async fn run(writer: Arc<Writer>, mut rx: mpsc::Receiver<Deferred>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let deadline = tokio::time::Instant::now() + LINGER;
        while batch.len() < MAX_BATCH {
            let room = MAX_BATCH - batch.len();
            match tokio::time::timeout_at(deadline, rx.recv_many(&mut batch, room)).await {
                // The time is up, or the queue closed (the gateway stops):
                // store what was gathered.
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        // Building a batch is CPU work of milliseconds: not on the threads
        // that answer requests.
        let makes = std::mem::replace(&mut batch, Vec::with_capacity(MAX_BATCH));
        let records: Vec<AuditRecord> =
            tokio::task::spawn_blocking(move || makes.into_iter().flat_map(|m| m()).collect())
                .await
                .unwrap_or_else(|e| {
                    tracing::error!(error = %e, "building detached records failed");
                    Vec::new()
                });
        if records.is_empty() {
            continue;
        }
        let n = records.len();
        metrics::histogram!("apa_store_detached_batch_size").record(n as f64);
        let stored = writer
            .submit(Visibility::All, move |tx| {
                Box::pin(async move {
                    tx.put_audit(records);
                    Ok::<_, StoreError>(())
                })
            })
            .await;
        if let Err(e) = stored {
            metrics::counter!("apa_store_detached_lost_total").increment(n as u64);
            tracing::error!(error = %e, records = n, "detached records could not be stored");
        }
    }
}
