//! The few shapes of query the store runs, written once for both backends.
//!
//! sqlx checks types per database, so generic code over `Database` needs
//! heavy bounds; instead `on_conn!` expands the same source for SQLite and
//! PostgreSQL. SQL is written with `?` placeholders and numbered (`$1`…)
//! for PostgreSQL here, in one place.

use std::borrow::Cow;

use bytes::Bytes;
use sqlx::{PgConnection, Row, SqliteConnection};

use super::StoreError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// A value bound to a placeholder.
#[derive(Debug, Clone)]
pub enum Bind {
    I64(i64),
    F64(f64),
    Text(String),
    Bytes(Bytes),
    /// A NULL of a BLOB / BYTEA column (the body of a deletion).
    Null,
    NullText,
    NullInt,
}

/// A piece of SQL with the values of its placeholders, in order.
#[derive(Debug, Clone, Default)]
pub struct Frag {
    pub sql: String,
    pub binds: Vec<Bind>,
}

impl Frag {
    pub fn new(sql: impl Into<String>) -> Self {
        Frag {
            sql: sql.into(),
            binds: Vec::new(),
        }
    }

    pub fn push(&mut self, sql: &str) -> &mut Self {
        self.sql.push_str(sql);
        self
    }

    pub fn bind(&mut self, b: Bind) -> &mut Self {
        self.sql.push('?');
        self.binds.push(b);
        self
    }

    pub fn append(&mut self, other: Frag) -> &mut Self {
        self.sql.push_str(&other.sql);
        self.binds.extend(other.binds);
        self
    }
}

pub enum Conn<'c> {
    Sqlite(&'c mut SqliteConnection),
    Pg(&'c mut PgConnection),
}

impl Conn<'_> {
    pub fn dialect(&self) -> Dialect {
        match self {
            Conn::Sqlite(_) => Dialect::Sqlite,
            Conn::Pg(_) => Dialect::Postgres,
        }
    }
}

pub fn numbered(dialect: Dialect, sql: &str) -> Cow<'_, str> {
    if dialect == Dialect::Sqlite || !sql.contains('?') {
        return Cow::Borrowed(sql);
    }
    let mut out = String::with_capacity(sql.len() + 16);
    let mut n = 0;
    for c in sql.chars() {
        if c == '?' {
            n += 1;
            out.push('$');
            out.push_str(&n.to_string());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

macro_rules! on_conn {
    ($conn:expr, $frag:expr, |$q:ident, $c:ident| $body:expr) => {{
        let frag: &Frag = $frag;
        #[cfg(test)]
        capture::note(frag);
        match $conn {
            Conn::Sqlite(c) => {
                let sql = sqlx::AssertSqlSafe(numbered(Dialect::Sqlite, &frag.sql).into_owned());
                let mut $q = sqlx::query::<sqlx::Sqlite>(sql);
                for b in &frag.binds {
                    $q = match b {
                        Bind::I64(v) => $q.bind(*v),
                        Bind::F64(v) => $q.bind(*v),
                        Bind::Text(v) => $q.bind(v.as_str()),
                        Bind::Bytes(v) => $q.bind(v.as_ref()),
                        Bind::Null => $q.bind(Option::<&[u8]>::None),
                        Bind::NullText => $q.bind(Option::<&str>::None),
                        Bind::NullInt => $q.bind(Option::<i64>::None),
                    };
                }
                let $q = $q;
                let $c: &mut SqliteConnection = c;
                $body
            }
            Conn::Pg(c) => {
                let sql = sqlx::AssertSqlSafe(numbered(Dialect::Postgres, &frag.sql).into_owned());
                let mut $q = sqlx::query::<sqlx::Postgres>(sql);
                for b in &frag.binds {
                    $q = match b {
                        Bind::I64(v) => $q.bind(*v),
                        Bind::F64(v) => $q.bind(*v),
                        Bind::Text(v) => $q.bind(v.as_str()),
                        Bind::Bytes(v) => $q.bind(v.as_ref()),
                        Bind::Null => $q.bind(Option::<&[u8]>::None),
                        Bind::NullText => $q.bind(Option::<&str>::None),
                        Bind::NullInt => $q.bind(Option::<i64>::None),
                    };
                }
                let $q = $q;
                let $c: &mut PgConnection = c;
                $body
            }
        }
    }};
}

/// The plan tests' view of the statements a task runs (`store/plans.rs`).
#[cfg(test)]
pub mod capture {
    use std::sync::{Arc, Mutex};

    use super::Frag;

    tokio::task_local! {
        static CAPTURED: Arc<Mutex<Vec<Frag>>>;
    }

    pub fn note(frag: &Frag) {
        let _ = CAPTURED.try_with(|c| {
            if let Ok(mut c) = c.lock() {
                c.push(frag.clone());
            }
        });
    }

    /// The statements `f` ran, in order.
    pub async fn statements<T>(f: impl std::future::Future<Output = T>) -> (T, Vec<Frag>) {
        let captured = Arc::new(Mutex::new(Vec::new()));
        let out = CAPTURED.scope(captured.clone(), f).await;
        let frags = captured.lock().map(|c| c.clone()).unwrap_or_default();
        (out, frags)
    }
}

/// The plan the database chooses for a statement, one line per step
/// (SQLite's `EXPLAIN QUERY PLAN` details, PostgreSQL's `EXPLAIN` lines).
#[cfg(test)]
pub async fn explain(conn: &mut Conn<'_>, frag: &Frag) -> Result<Vec<String>, StoreError> {
    // SQLite's fourth column is the step's detail, PostgreSQL's only one a line.
    let (prefix, col) = match conn.dialect() {
        Dialect::Sqlite => ("EXPLAIN QUERY PLAN ", 3),
        Dialect::Postgres => ("EXPLAIN ", 0),
    };
    let explained = Frag {
        sql: format!("{prefix}{}", frag.sql),
        binds: frag.binds.clone(),
    };
    let lines = on_conn!(conn, &explained, |q, c| {
        let rows = q.fetch_all(c).await?;
        rows.iter()
            .map(|r| r.try_get::<String, _>(col))
            .collect::<Result<Vec<_>, _>>()
    })?;
    Ok(lines)
}

/// A stored version as read back.
#[derive(Debug, Clone)]
pub struct VersionRow {
    pub pk: i64,
    pub vpk: i64,
    pub resource_type: String,
    pub id: String,
    pub version: i64,
    pub updated: i64,
    pub method: i64,
    pub body: Option<Bytes>,
    /// The version's patients, when the query selected them (a ninth
    /// column, `rows::patients_column`).
    pub patients: Option<Vec<String>>,
}

/// Runs a statement; returns the number of rows it changed.
pub async fn execute(conn: &mut Conn<'_>, frag: &Frag) -> Result<u64, StoreError> {
    Ok(on_conn!(conn, frag, |q, c| q
        .execute(c)
        .await
        .map(|r| r.rows_affected()))?)
}

/// Runs a query whose rows are one `i64` column (pks, counts).
pub async fn fetch_i64(conn: &mut Conn<'_>, frag: &Frag) -> Result<Vec<i64>, StoreError> {
    let rows = on_conn!(conn, frag, |q, c| {
        let rows = q.fetch_all(c).await?;
        rows.iter()
            .map(|r| r.try_get::<i64, _>(0))
            .collect::<Result<Vec<_>, _>>()
    })?;
    Ok(rows)
}

/// Runs a query whose rows are `(i64, text, text)`.
pub async fn fetch_i64_text_text(conn: &mut Conn<'_>, frag: &Frag) -> Result<Vec<(i64, String, String)>, StoreError> {
    let rows = on_conn!(conn, frag, |q, c| {
        let rows = q.fetch_all(c).await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get::<i64, _>(0)?,
                    r.try_get::<String, _>(1)?,
                    r.try_get::<String, _>(2)?,
                ))
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()
    })?;
    Ok(rows)
}

/// Runs a query selecting, in this order: pk, vpk, rtype, id, version,
/// updated, method, body, and optionally the patients.
pub async fn fetch_versions(conn: &mut Conn<'_>, frag: &Frag) -> Result<Vec<VersionRow>, StoreError> {
    let rows = on_conn!(conn, frag, |q, c| {
        let rows = q.fetch_all(c).await?;
        rows.iter()
            .map(|r| {
                Ok(VersionRow {
                    pk: r.try_get(0)?,
                    vpk: r.try_get(1)?,
                    resource_type: r.try_get(2)?,
                    id: r.try_get(3)?,
                    version: r.try_get(4)?,
                    updated: r.try_get(5)?,
                    method: r.try_get(6)?,
                    body: r.try_get::<Option<Vec<u8>>, _>(7)?.map(Bytes::from),
                    // NULL: a version stored before they were (2026-11).
                    patients: if r.len() > 8 {
                        r.try_get::<Option<String>, _>(8)?
                            .map(|l| l.split_whitespace().map(str::to_string).collect())
                    } else {
                        None
                    },
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()
    })?;
    Ok(rows)
}

/// Runs a query whose rows are three `i64` columns.
pub async fn fetch_i64x3(conn: &mut Conn<'_>, frag: &Frag) -> Result<Vec<(i64, i64, i64)>, StoreError> {
    let rows = on_conn!(conn, frag, |q, c| {
        let rows = q.fetch_all(c).await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get::<i64, _>(0)?,
                    r.try_get::<i64, _>(1)?,
                    r.try_get::<i64, _>(2)?,
                ))
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()
    })?;
    Ok(rows)
}

/// Runs a query whose columns are all read as optional text (cast them in
/// the SQL): for the few small administrative tables.
pub async fn fetch_texts(
    conn: &mut Conn<'_>,
    frag: &Frag,
    columns: usize,
) -> Result<Vec<Vec<Option<String>>>, StoreError> {
    let rows = on_conn!(conn, frag, |q, c| {
        let rows = q.fetch_all(c).await?;
        rows.iter()
            .map(|r| {
                (0..columns)
                    .map(|i| r.try_get::<Option<String>, _>(i))
                    .collect::<Result<Vec<_>, _>>()
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()
    })?;
    Ok(rows)
}

/// An audit record as read back: id, recorded, client, patient, subtype,
/// action, outcome, network, detail (in this order in the SELECT).
pub async fn fetch_audit(conn: &mut Conn<'_>, frag: &Frag) -> Result<Vec<super::AuditRecord>, StoreError> {
    let rows = on_conn!(conn, frag, |q, c| {
        let rows = q.fetch_all(c).await?;
        rows.iter()
            .map(|r| {
                Ok(super::AuditRecord {
                    id: r.try_get(0)?,
                    recorded: r.try_get(1)?,
                    client: r.try_get(2)?,
                    patient: r.try_get(3)?,
                    subtype: r.try_get(4)?,
                    action: r.try_get(5)?,
                    outcome: r.try_get(6)?,
                    network: r.try_get(7)?,
                    entities: Vec::new(),
                    detail: Bytes::from(r.try_get::<Vec<u8>, _>(8)?),
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()
    })?;
    Ok(rows)
}

/// Runs a query returning one optional BLOB / BYTEA.
pub async fn fetch_bytes(conn: &mut Conn<'_>, frag: &Frag) -> Result<Option<Vec<u8>>, StoreError> {
    let rows = on_conn!(conn, frag, |q, c| {
        let rows = q.fetch_all(c).await?;
        rows.first().map(|r| r.try_get::<Vec<u8>, _>(0)).transpose()
    })?;
    Ok(rows)
}

/// Rows given column by column, for bulk inserts.
#[derive(Debug, Clone)]
pub enum Col {
    I64(Vec<i64>),
    F64(Vec<f64>),
    Text(Vec<String>),
    /// Text that may be NULL.
    OptText(Vec<Option<String>>),
    Blob(Vec<Option<Bytes>>),
}

impl Col {
    fn len(&self) -> usize {
        match self {
            Col::I64(v) => v.len(),
            Col::F64(v) => v.len(),
            Col::Text(v) => v.len(),
            Col::OptText(v) => v.len(),
            Col::Blob(v) => v.len(),
        }
    }

    fn pg_type(&self) -> &'static str {
        match self {
            Col::I64(_) => "bigint[]",
            Col::F64(_) => "float8[]",
            Col::Text(_) | Col::OptText(_) => "text[]",
            Col::Blob(_) => "bytea[]",
        }
    }

    fn bind_at(&self, i: usize) -> Bind {
        match self {
            Col::I64(v) => Bind::I64(v[i]),
            Col::F64(v) => Bind::F64(v[i]),
            Col::Text(v) => Bind::Text(v[i].clone()),
            Col::OptText(v) => v[i].clone().map_or(Bind::NullText, Bind::Text),
            Col::Blob(v) => v[i].clone().map_or(Bind::Null, Bind::Bytes),
        }
    }
}

/// Rows per multi-row INSERT on SQLite: well under its 32,766 parameters.
const CHUNK_ROWS: usize = 400;

/// `INSERT INTO <into> … <suffix>` of rows given as columns. On PostgreSQL
/// one `SELECT * FROM UNNEST($1::bigint[], …)`: the statement text is the
/// same whatever the number of rows, so it is parsed and planned once per
/// connection. On SQLite, multi-row VALUES (preparing is cheap there).
/// `returning` rows are `(i64, text, text)`.
pub async fn insert_columns(
    conn: &mut Conn<'_>,
    into: &str,
    cols: &[Col],
    suffix: &str,
) -> Result<Vec<(i64, String, String)>, StoreError> {
    insert_columns_or(conn, "", into, cols, suffix).await
}

/// `insert_columns` with a SQLite conflict clause (`OR FAIL`, `OR IGNORE`)
/// in the INSERT; PostgreSQL has none, and none is needed there.
///
/// Why: a multi-row INSERT that may abort halfway (a NOT NULL or UNIQUE
/// constraint under the default `ABORT`) makes SQLite keep a statement
/// journal inside a transaction: a copy of every page it changes, to undo
/// the statement alone. For rows every request writes (the audit trail)
/// that copying and its allocations were a third of the writer's CPU.
/// `OR FAIL` keeps the rows inserted before a violation and returns the
/// error: the writer then rolls back the job or the whole batch anyway.
pub async fn insert_columns_or(
    conn: &mut Conn<'_>,
    sqlite_or: &str,
    into: &str,
    cols: &[Col],
    suffix: &str,
) -> Result<Vec<(i64, String, String)>, StoreError> {
    let rows = cols.first().map_or(0, Col::len);
    if rows == 0 {
        return Ok(Vec::new());
    }
    let returning = suffix.contains("RETURNING");
    match conn {
        Conn::Pg(c) => {
            let args: Vec<String> = cols
                .iter()
                .enumerate()
                .map(|(i, col)| format!("${}::{}", i + 1, col.pg_type()))
                .collect();
            let sql = format!("INSERT INTO {into} SELECT * FROM UNNEST({}) {suffix}", args.join(", "));
            let mut q = sqlx::query::<sqlx::Postgres>(sqlx::AssertSqlSafe(sql));
            for col in cols {
                q = match col {
                    Col::I64(v) => q.bind(v.as_slice()),
                    Col::F64(v) => q.bind(v.as_slice()),
                    Col::Text(v) => q.bind(v.as_slice()),
                    Col::OptText(v) => q.bind(v.as_slice()),
                    Col::Blob(v) => q.bind(
                        v.iter()
                            .map(|b| b.as_ref().map(|b| b.to_vec()))
                            .collect::<Vec<Option<Vec<u8>>>>(),
                    ),
                };
            }
            if returning {
                let out = q.fetch_all(&mut **c).await?;
                Ok(out
                    .iter()
                    .map(|r| {
                        Ok((
                            r.try_get::<i64, _>(0)?,
                            r.try_get::<String, _>(1)?,
                            r.try_get::<String, _>(2)?,
                        ))
                    })
                    .collect::<Result<Vec<_>, sqlx::Error>>()?)
            } else {
                q.execute(&mut **c).await?;
                Ok(Vec::new())
            }
        }
        Conn::Sqlite(_) => {
            let mut out = Vec::new();
            let mut start = 0;
            while start < rows {
                let end = (start + CHUNK_ROWS).min(rows);
                let mut f = Frag::new(format!("INSERT {sqlite_or} INTO {into} VALUES "));
                for i in start..end {
                    f.push(if i == start { "(" } else { ", (" });
                    for (j, col) in cols.iter().enumerate() {
                        if j > 0 {
                            f.push(", ");
                        }
                        f.bind(col.bind_at(i));
                    }
                    f.push(")");
                }
                f.push(" ").push(suffix);
                if returning {
                    out.extend(fetch_i64_text_text(conn, &f).await?);
                } else {
                    execute(conn, &f).await?;
                }
                start = end;
            }
            Ok(out)
        }
    }
}
