//! Planner statistics that follow the data.
//!
//! Both databases choose their plans from statistics about the tables, and a
//! gateway starts on an empty database and fills while it serves:
//! statistics taken once, at start, describe an empty or tiny database for
//! as long as the process lives, and the compartment check of every
//! organisation read joins tables that grow with it. So the writer refreshes
//! the statistics each time the database has about doubled since the last
//! refresh, then at least every `MAX_GAP` versions and every `MAX_AGE` of
//! writing, and SQLite read connections opened before a refresh are replaced
//! (a connection loads the statistics once, when it reads the schema).
//! `plans.rs` checks the plans of the hot statements on a grown database.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sqlx::pool::PoolConnectionMetadata;
use sqlx::{PgPool, SqlitePool};

/// Fewer versions written than this since the last refresh never warrant a
/// new one (nor one at start: without statistics SQLite assumes large tables
/// and uses the indexes, which is right for a small database too).
pub const MIN_GAP: u64 = 500;
/// More versions than this since the last refresh always do.
pub const MAX_GAP: u64 = 25_000;
/// Nor does a refresh wait longer than this while writes come in.
pub const MAX_AGE: Duration = Duration::from_secs(600);

/// SQLite's `ANALYZE` looks at about this many rows of each index, so that
/// a refresh costs milliseconds whatever the size of the database (the row
/// counts it records are then estimated from the B-tree's pages).
const SQLITE_ANALYSIS_LIMIT: &str = "PRAGMA analysis_limit = 1000";

/// When to refresh, from what the writer has stored.
#[derive(Debug)]
pub struct Schedule {
    /// Versions in the database at the last refresh (estimated at start).
    at_last: u64,
    /// Versions written since.
    since: u64,
    last: Instant,
}

impl Schedule {
    /// `stored`: the versions the database holds when the writer starts.
    pub fn new(stored: u64) -> Schedule {
        Schedule {
            at_last: stored,
            since: 0,
            last: Instant::now(),
        }
    }

    /// Is a refresh due at start? Only when there is something to measure.
    pub fn due_at_start(&self) -> bool {
        self.at_last >= MIN_GAP
    }

    /// Counts the versions of a committed batch; true when a refresh is due.
    pub fn written(&mut self, versions: u64) -> bool {
        self.since += versions;
        self.since >= self.at_last.clamp(MIN_GAP, MAX_GAP) || (self.since > 0 && self.last.elapsed() >= MAX_AGE)
    }

    /// The refresh was made.
    pub fn refreshed(&mut self) {
        self.at_last += self.since;
        self.since = 0;
        self.last = Instant::now();
    }
}

/// When the SQLite statistics were last refreshed, for the read pool.
#[derive(Debug)]
pub struct Epoch {
    start: Instant,
    /// Microseconds after `start` of the last refresh (0: none yet).
    refreshed: AtomicU64,
}

impl Epoch {
    pub fn new() -> Arc<Epoch> {
        Arc::new(Epoch {
            start: Instant::now(),
            refreshed: AtomicU64::new(0),
        })
    }

    fn mark(&self) {
        let now = u64::try_from(self.start.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.refreshed.store(now, Ordering::Release);
    }

    /// May a read connection of this age still be used? Not when it was
    /// opened before the last refresh: its plans come from the old
    /// statistics.
    pub fn current(&self, meta: &PoolConnectionMetadata) -> bool {
        let refreshed = Duration::from_micros(self.refreshed.load(Ordering::Acquire));
        let since_refresh = self.start.elapsed().saturating_sub(refreshed);
        refreshed.is_zero() || meta.age <= since_refresh
    }
}

/// SQLite: `ANALYZE` on the writer's connection (it takes the write lock for
/// the few milliseconds it lasts), then the readers are told.
pub async fn refresh_sqlite(pool: &SqlitePool, epoch: &Epoch) {
    let started = Instant::now();
    let sql = format!("{SQLITE_ANALYSIS_LIMIT}; ANALYZE main");
    match sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(pool).await {
        Ok(_) => {
            epoch.mark();
            metrics::histogram!("apa_store_analyze_seconds").record(started.elapsed().as_secs_f64());
        }
        Err(e) => tracing::warn!(error = %e, "ANALYZE failed"),
    }
}

/// PostgreSQL: `ANALYZE` of our tables, in the background (it only reads,
/// and takes no lock that writes wait for); cached plans are invalidated by
/// the server itself.
pub fn refresh_pg(pool: &PgPool) {
    let p = pool.clone();
    tokio::spawn(async move {
        let started = Instant::now();
        // Our tables only (the database may hold other schemas).
        let sql = "ANALYZE resource, resource_version, idx_token, idx_string, idx_date, idx_number, idx_quantity, \
                   idx_reference, idx_uri, resource_patient, access_grant";
        match sqlx::raw_sql(sql).execute(&p).await {
            Ok(_) => metrics::histogram!("apa_store_analyze_seconds").record(started.elapsed().as_secs_f64()),
            Err(e) => tracing::warn!(error = %e, "ANALYZE failed"),
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_database_is_not_analysed_at_start() {
        assert!(!Schedule::new(0).due_at_start());
        assert!(Schedule::new(10_000).due_at_start());
    }

    #[test]
    fn a_growing_database_is_analysed_each_time_it_doubles() {
        let mut s = Schedule::new(0);
        let mut refreshed_at = Vec::new();
        let mut total = 0;
        for _ in 0..2_000 {
            total += 5; // a prescription Bundle
            if s.written(5) {
                s.refreshed();
                refreshed_at.push(total);
            }
        }
        assert_eq!(refreshed_at, vec![500, 1_000, 2_000, 4_000, 8_000]);
    }

    #[test]
    fn a_large_database_is_analysed_every_max_gap_versions() {
        let mut s = Schedule::new(10_000_000);
        assert!(!s.written(MAX_GAP - 1));
        assert!(s.written(1));
    }
}
