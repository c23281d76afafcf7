//! The trail file (SQLite): where the records of requests that changed
//! nothing are stored, by one connection of its own, outside sqlx.
//!
//! Why outside sqlx: a record is written for every read, so what storing
//! it costs is paid on every read. Through sqlx, a batch was bound value by
//! value on a tokio worker (the threads that answer requests), sent to the
//! connection's thread, and compiled as multi-row INSERTs of hundreds of
//! rows each. Here one blocking thread builds the records and steps two
//! prepared statements per record, bound straight from the record's
//! fields. The read connections still read the file through sqlx (it is
//! attached to them as `trail`).

use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, TransactionBehavior, params};

use super::StoreError;
use super::audit::AuditRecord;

// Its schema is the audit part of the database's (the same tables).
use super::SQLITE_AUDIT_SCHEMA as SCHEMA;

pub struct TrailFile {
    conn: Mutex<Connection>,
}

impl TrailFile {
    /// Opens (creating if needed) the trail file and applies its schema.
    pub fn open(path: &str) -> Result<TrailFile, StoreError> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(Duration::from_secs(10))?;
        // Durable like the database (FULL: fsync at each commit, about
        // once a second). The WAL grows to ~40 MB between checkpoints so
        // that an index page written by many commits is copied once. The
        // cache holds the patient and entity indexes, which take their
        // rows at random places: a miss costs a read(2) and a copy.
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             PRAGMA temp_store = MEMORY;
             PRAGMA cache_size = -65536;
             PRAGMA wal_autocheckpoint = 10000;
             PRAGMA journal_size_limit = 67108864;",
        )?;
        conn.execute_batch(SCHEMA)?;
        Ok(TrailFile { conn: Mutex::new(conn) })
    }

    /// Stores `records` in one transaction: all of them or none. Blocking.
    pub fn put(&self, records: &[AuditRecord]) -> Result<(), StoreError> {
        let mut conn = self.conn.lock().map_err(|_| StoreError::WriterGone)?;
        // Rolled back when dropped on an error.
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        {
            let mut event = tx.prepare_cached(
                "INSERT OR FAIL INTO audit_event \
                 (id, recorded, client, patient, subtype, action, outcome, network, detail) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?;
            // An event may name the same resource twice (a transaction
            // that creates and then patches it): one row is enough.
            let mut entity = tx.prepare_cached("INSERT OR IGNORE INTO audit_entity (ref, event) VALUES (?1, ?2)")?;
            for r in records {
                event.execute(params![
                    r.id,
                    r.recorded,
                    r.client,
                    r.patient,
                    r.subtype,
                    r.action,
                    r.outcome,
                    r.network,
                    &r.detail[..],
                ])?;
                for e in &r.entities {
                    entity.execute(params![e, r.id])?;
                }
            }
        }
        Ok(tx.commit()?)
    }
}
