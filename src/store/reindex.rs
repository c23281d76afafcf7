//! Indexing stored resources again when the search parameters change.
//!
//! Only current versions have index rows, written with the parameters the
//! server knew at the time. When a parameter is added or changed (a new
//! SearchParameter in the package), resources stored before would be
//! silently missed by searches on it. Each resource type's parameters are
//! therefore recorded as a fingerprint (`index_fingerprint`); at start,
//! the types whose fingerprint changed are indexed again, in chunks, by
//! the writer (so that no write interleaves with a half-done chunk), before
//! the gateway serves anything.

use std::collections::HashMap;
use std::sync::Arc;

use crate::fhir::search::model::IndexValue;

use super::exec::{Bind, Col, Frag, fetch_i64_text_text, fetch_versions, insert_columns};
use super::{Pool, Store, StoreError, Visibility, WriteTx, rows};

/// The index values of a resource: (type, JSON body) → (parameter, value).
pub type IndexFn = Arc<dyn Fn(&str, &[u8]) -> Vec<(String, IndexValue)> + Send + Sync>;

/// Resources indexed again per write job.
const CHUNK: i64 = 500;

impl Store {
    /// Brings the index of the stored resources in line with the
    /// parameters the server indexes now. `now` holds the fingerprint of
    /// each resource type's parameters; `unrecorded` the fingerprint to
    /// assume for a type the database holds no record of (what the server
    /// indexed before it kept records). Returns how many resources were
    /// indexed again.
    pub async fn reindex_changed(
        &self,
        now: Vec<(String, i64)>,
        unrecorded: HashMap<String, i64>,
        index: IndexFn,
    ) -> Result<u64, StoreError> {
        // PostgreSQL replicas starting together: one indexes, the others
        // then find the new record and have nothing to do.
        let mut lock = match &self.inner.pool {
            Pool::Pg(p) => {
                let mut c = p.acquire().await?;
                sqlx::query("SELECT pg_advisory_lock(7422002)").execute(&mut *c).await?;
                Some(c)
            }
            Pool::Sqlite(_) => None,
        };
        let result = self.reindex_unlocked(now, unrecorded, index).await;
        if let Some(c) = lock.as_mut() {
            sqlx::query("SELECT pg_advisory_unlock(7422002)")
                .execute(&mut **c)
                .await?;
        }
        result
    }

    async fn reindex_unlocked(
        &self,
        now: Vec<(String, i64)>,
        unrecorded: HashMap<String, i64>,
        index: IndexFn,
    ) -> Result<u64, StoreError> {
        let recorded: HashMap<String, i64> = self
            .with_conn(async |c| {
                fetch_i64_text_text(c, &Frag::new("SELECT fingerprint, rtype, rtype FROM index_fingerprint")).await
            })
            .await?
            .into_iter()
            .map(|(fp, t, _)| (t, fp))
            .collect();
        let mut total = 0;
        for (t, fp) in &now {
            if recorded.get(t).or_else(|| unrecorded.get(t)) != Some(fp) {
                let n = self.reindex_type(t, index.clone()).await?;
                if n > 0 {
                    tracing::info!(resource_type = %t, resources = n, "indexed again: its search parameters changed");
                }
                total += n;
            }
        }
        let (types, fps): (Vec<String>, Vec<i64>) =
            now.into_iter().filter(|(t, fp)| recorded.get(t) != Some(fp)).unzip();
        if !types.is_empty() {
            self.write(Visibility::All, move |tx: &mut WriteTx| {
                Box::pin(async move {
                    tx.prepare_read().await?;
                    insert_columns(
                        &mut tx.conn(),
                        "index_fingerprint (rtype, fingerprint)",
                        &[Col::Text(types), Col::I64(fps)],
                        "ON CONFLICT (rtype) DO UPDATE SET fingerprint = excluded.fingerprint",
                    )
                    .await?;
                    Ok::<_, StoreError>(())
                })
            })
            .await?;
        }
        Ok(total)
    }

    /// Indexes every current resource of a type again; returns how many.
    async fn reindex_type(&self, rtype: &str, index: IndexFn) -> Result<u64, StoreError> {
        let mut after = 0i64;
        let mut total = 0u64;
        loop {
            let (rtype, index) = (rtype.to_string(), index.clone());
            let (n, last) = self
                .write(Visibility::All, move |tx: &mut WriteTx| {
                    Box::pin(async move {
                        tx.prepare_read().await?;
                        let mut f = Frag::new(rows::VERSION_COLUMNS);
                        f.push(
                            " FROM resource r JOIN resource_version v ON v.pk = r.pk AND v.version = r.version \
                             WHERE r.rtype = ",
                        )
                        .bind(Bind::Text(rtype.clone()))
                        .push(" AND r.deleted = 0 AND r.pk > ")
                        .bind(Bind::I64(after))
                        .push(" ORDER BY r.pk LIMIT ")
                        .bind(Bind::I64(CHUNK));
                        let found = fetch_versions(&mut tx.conn(), &f).await?;
                        let last = found.last().map(|v| v.pk);
                        let items: Vec<rows::Reindexed> = found
                            .iter()
                            .filter_map(|v| v.body.as_ref().map(|b| (v.pk, rtype.clone(), index(&rtype, b))))
                            .collect();
                        rows::replace_index(&mut tx.conn(), &items).await?;
                        Ok::<_, StoreError>((found.len() as i64, last))
                    })
                })
                .await?;
            total += n as u64;
            match last {
                Some(pk) if n == CHUNK => after = pk,
                _ => return Ok(total),
            }
        }
    }
}
