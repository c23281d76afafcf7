//! Idempotency records: what was answered to a client's request made
//! under a key, so that the same request under the same key gets the same
//! answer and another one is told apart. The store knows nothing of what
//! the request or the response mean.

use super::exec::{Bind, Frag, fetch_texts};
use super::{Store, StoreError, Visibility, WriteTx};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyRecord {
    pub client: String,
    pub key: String,
    /// A hash of the request (method, path, body…), chosen by the caller.
    pub request_hash: String,
    pub status: u16,
    pub response: String,
    /// Microseconds since the epoch.
    pub created: i64,
}

const COLUMNS: &str =
    "SELECT client, ikey, request_hash, CAST(status AS TEXT), response, CAST(created AS TEXT) FROM idempotency";

fn record(row: Vec<Option<String>>) -> Option<IdempotencyRecord> {
    let mut it = row.into_iter();
    Some(IdempotencyRecord {
        client: it.next()??,
        key: it.next()??,
        request_hash: it.next()??,
        status: it.next()??.parse().ok()?,
        response: it.next()??,
        created: it.next()??.parse().ok()?,
    })
}

fn select(client: &str, key: &str) -> Frag {
    let mut f = Frag::new(COLUMNS);
    f.push(" WHERE client = ")
        .bind(Bind::Text(client.to_string()))
        .push(" AND ikey = ")
        .bind(Bind::Text(key.to_string()));
    f
}

impl Store {
    /// The record of `key` for `client`, if one was saved.
    pub async fn idempotency_record(&self, client: &str, key: &str) -> Result<Option<IdempotencyRecord>, StoreError> {
        let f = select(client, key);
        let rows = self.with_conn(async |c| fetch_texts(c, &f, 6).await).await?;
        Ok(rows.into_iter().next().and_then(record))
    }

    /// Saves `rec` unless the key already has a record, and returns the
    /// record that stands: `rec`, or the one saved first (by a concurrent
    /// request under the same key).
    pub async fn save_idempotency_record(&self, rec: IdempotencyRecord) -> Result<IdempotencyRecord, StoreError> {
        self.write(Visibility::All, move |tx| {
            Box::pin(async move {
                if tx.insert_idempotency_record(&rec).await? {
                    return Ok(rec);
                }
                let existing = tx.fetch_texts(&select(&rec.client, &rec.key), 6).await?;
                existing
                    .into_iter()
                    .next()
                    .and_then(record)
                    .ok_or_else(|| StoreError::Unsupported("idempotency record vanished".into()))
            })
        })
        .await
    }
}

impl WriteTx {
    /// Saves `rec` in the job's transaction, so that it commits with what
    /// the request wrote; false when the key already has a record.
    pub async fn insert_idempotency_record(&mut self, rec: &IdempotencyRecord) -> Result<bool, StoreError> {
        let mut ins =
            Frag::new("INSERT INTO idempotency (client, ikey, request_hash, status, response, created) VALUES (");
        ins.bind(Bind::Text(rec.client.clone()))
            .push(", ")
            .bind(Bind::Text(rec.key.clone()))
            .push(", ")
            .bind(Bind::Text(rec.request_hash.clone()))
            .push(", ")
            .bind(Bind::I64(i64::from(rec.status)))
            .push(", ")
            .bind(Bind::Text(rec.response.clone()))
            .push(", ")
            .bind(Bind::I64(rec.created))
            .push(") ON CONFLICT DO NOTHING");
        Ok(self.execute(&ins).await? == 1)
    }

    pub(crate) async fn fetch_texts(
        &mut self,
        f: &Frag,
        columns: usize,
    ) -> Result<Vec<Vec<Option<String>>>, StoreError> {
        self.prepare_read().await?;
        fetch_texts(&mut self.conn(), f, columns).await
    }
}
