//! The trail file (SQLite): where the records of requests that changed
//! nothing are stored, by one connection of its own, outside sqlx.
//!
//! Why outside sqlx: a record is written for every read, so what storing
//! it costs is paid on every read. Through sqlx, a batch was bound value by
//! value on a tokio worker (the threads that answer requests), sent to the
//! connection's thread, and compiled as multi-row INSERTs of hundreds of
//! rows each. Here one blocking thread builds the records and steps a
//! prepared statement per record (and one per resource it names after its
//! first), bound straight from the record's fields. The read connections
//! still read the file through sqlx (it is attached to them as `trail`).

use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, TransactionBehavior, params};

use super::StoreError;
use super::audit::AuditRecord;

// Its schema is the audit part of the database's (the same tables).
use super::{
    SQLITE_ADDED_COLUMNS as ADDED_COLUMNS, SQLITE_AUDIT_ENTITY as ENTITY_INDEX, SQLITE_AUDIT_SCHEMA as SCHEMA,
};

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
        // The database file's list of added columns, for the tables this
        // file holds.
        for (table, column, decl) in ADDED_COLUMNS {
            let missing: bool = conn.query_row(
                "SELECT EXISTS (SELECT 1 FROM pragma_table_info(?1)) \
                 AND NOT EXISTS (SELECT 1 FROM pragma_table_info(?1) WHERE name = ?2)",
                params![table, column],
                |r| r.get(0),
            )?;
            if missing {
                conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {decl}"))?;
            }
        }
        conn.execute_batch(ENTITY_INDEX)?;
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
                 (id, recorded, client, patient, subtype, action, outcome, network, detail, entity) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )?;
            // An event may name the same resource twice (a transaction
            // that creates and then patches it): one row is enough.
            let mut entity = tx.prepare_cached("INSERT OR IGNORE INTO audit_entity (ref, event) VALUES (?1, ?2)")?;
            for r in records {
                // The first resource in the event's row, the others apart.
                let (first, others) = match r.entities.split_first() {
                    Some((first, others)) => (Some(first), others),
                    None => (None, &[][..]),
                };
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
                    first,
                ])?;
                for e in others {
                    entity.execute(params![e, r.id])?;
                }
            }
        }
        Ok(tx.commit()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rows of a two-column query.
    fn pairs<A: rusqlite::types::FromSql, B: rusqlite::types::FromSql>(conn: &Connection, sql: &str) -> Vec<(A, B)> {
        conn.prepare(sql)
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    fn indexes(conn: &Connection) -> Vec<String> {
        let mut s = conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'audit_event' AND sql IS NOT NULL ORDER BY name")
            .unwrap();
        s.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect()
    }

    #[test]
    fn a_trail_file_of_an_earlier_release_gets_the_slimmer_indexes_the_entity_column_and_keeps_its_events() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("apa-trail.db");
        let path = path.to_str().unwrap();
        {
            // The indexes as releases before 2026-11 made them.
            let old = Connection::open(path).unwrap();
            old.execute_batch(
                "CREATE TABLE audit_event (seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, recorded INTEGER NOT NULL,
                   client TEXT, patient TEXT, subtype TEXT NOT NULL, action TEXT NOT NULL, outcome TEXT NOT NULL,
                   network TEXT, detail BLOB NOT NULL);
                 CREATE INDEX audit_event_recorded ON audit_event (recorded, id);
                 CREATE INDEX audit_event_patient ON audit_event (patient, recorded, id) WHERE patient IS NOT NULL;
                 CREATE INDEX audit_event_client ON audit_event (client, recorded, id) WHERE client IS NOT NULL;
                 INSERT INTO audit_event (id, recorded, client, patient, subtype, action, outcome, detail)
                   VALUES ('e1', 1, 'c', 'p', 'read', 'R', '0', x'7b7d');",
            )
            .unwrap();
        }
        let file = TrailFile::open(path).unwrap();
        let conn = file.conn.lock().unwrap();
        assert_eq!(
            indexes(&conn),
            [
                "audit_event_at",
                "audit_event_of_client",
                "audit_event_of_entity",
                "audit_event_of_patient"
            ]
        );
        let plan: String = conn
            .query_row(
                "EXPLAIN QUERY PLAN SELECT id FROM audit_event WHERE patient = 'p' ORDER BY recorded, id",
                [],
                |r| r.get(3),
            )
            .unwrap();
        assert!(plan.contains("audit_event_of_patient"), "{plan}");
        let kept: i64 = conn
            .query_row("SELECT COUNT(*) FROM audit_event WHERE patient = 'p'", [], |r| r.get(0))
            .unwrap();
        assert_eq!(kept, 1);
    }

    #[test]
    fn an_event_keeps_its_first_resource_in_its_row_and_the_others_apart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("apa-trail.db");
        let file = TrailFile::open(path.to_str().unwrap()).unwrap();
        let record = |id: &str, entities: &[&str]| AuditRecord {
            id: id.into(),
            recorded: 1,
            client: Some("c".into()),
            patient: Some("p".into()),
            subtype: "read".into(),
            action: "R".into(),
            outcome: "0".into(),
            network: None,
            entities: entities.iter().map(|e| e.to_string()).collect(),
            detail: bytes::Bytes::from_static(b"{}"),
        };
        file.put(&[
            record("read", &["Observation/o"]),
            record("transaction", &["Observation/o", "Condition/c", "ServiceRequest/s"]),
            record("search", &[]),
        ])
        .unwrap();
        let conn = file.conn.lock().unwrap();
        let in_row: Vec<(String, Option<String>)> = pairs(&conn, "SELECT id, entity FROM audit_event ORDER BY seq");
        assert_eq!(
            in_row,
            [
                ("read".to_string(), Some("Observation/o".to_string())),
                ("transaction".to_string(), Some("Observation/o".to_string())),
                ("search".to_string(), None)
            ]
        );
        let apart: Vec<(String, String)> = pairs(&conn, "SELECT ref, event FROM audit_entity ORDER BY ref");
        assert_eq!(
            apart,
            [
                ("Condition/c".to_string(), "transaction".to_string()),
                ("ServiceRequest/s".to_string(), "transaction".to_string())
            ]
        );
    }
}
