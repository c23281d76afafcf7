//! The queries behind reads, searches and writes, shared by the read pool
//! and the writer's transaction.

use std::collections::{HashMap, HashSet};

use crate::fhir::search::model::{Include, IndexValue, PageStart, SearchRequest};

use super::exec::{
    Bind, Col, Conn, Frag, execute, fetch_i64, fetch_i64_text_text, fetch_i64x3, fetch_versions, insert_columns,
};
use super::keys::{hash, hash_opt, identifier_key, normalize, param_key};
use super::sql::Builder;
use super::{Current, Grant, MAX_INCLUDED, Method, SearchPage, StoreError, Version, Visibility, Write, wants_total};

pub const VERSION_COLUMNS: &str = "SELECT v.pk, v.vpk, v.rtype, r.id, v.version, v.updated, v.method, v.body";

/// A ninth column after `VERSION_COLUMNS`: the patients of the version
/// (space-separated: ids have no spaces), for the audit record of a read.
/// Stored with the version, so reading them costs a column of the row
/// already read: the probe of `resource_patient` it replaces cost a read by
/// id about 10,000 instructions of the database connection's, and parsing
/// the body again more than the read itself (docs/benchmark.md).
pub fn patients_column() -> &'static str {
    ", v.patients"
}

/// The condition under which the resource whose pk is `{pk}` is visible
/// (none when everything is): every patient it has ever concerned is
/// granted to the party.
pub fn visible(vis: &Visibility) -> Option<Frag> {
    match vis {
        Visibility::All => None,
        Visibility::Party(None) => Some(Frag::new(
            "NOT EXISTS (SELECT 1 FROM resource_patient vp WHERE vp.pk = {pk})",
        )),
        Visibility::Party(Some(party)) => {
            let mut f = Frag::new(
                "NOT EXISTS (SELECT 1 FROM resource_patient vp WHERE vp.pk = {pk} AND NOT EXISTS \
                 (SELECT 1 FROM access_grant vg WHERE vg.party = ",
            );
            f.bind(Bind::Text(party.clone()))
                .push(" AND vg.patient = vp.patient AND vg.denied = 0))");
            Some(f)
        }
    }
}

/// Appends ` AND <visible>` about the pk column `col` to a WHERE clause.
pub fn restrict(f: &mut Frag, vis: &Visibility, col: &str) {
    if let Some(v) = visible(vis) {
        f.push(" AND ").append(Frag {
            sql: v.sql.replace("{pk}", col),
            binds: v.binds,
        });
    }
}

pub async fn read_current(
    c: &mut Conn<'_>,
    rtype: &str,
    id: &str,
    vis: &Visibility,
) -> Result<Option<Version>, StoreError> {
    let mut f = Frag::new(VERSION_COLUMNS);
    f.push(patients_column())
        .push(" FROM resource r JOIN resource_version v ON v.pk = r.pk AND v.version = r.version WHERE r.rtype = ")
        .bind(Bind::Text(rtype.into()))
        .push(" AND r.id = ")
        .bind(Bind::Text(id.into()));
    restrict(&mut f, vis, "r.pk");
    Ok(fetch_versions(c, &f).await?.into_iter().next().map(Version::from))
}

/// Those of `patients` not granted to `party`.
pub async fn ungranted(c: &mut Conn<'_>, party: Option<&str>, patients: &[String]) -> Result<Vec<String>, StoreError> {
    let Some(party) = party else {
        return Ok(patients.to_vec());
    };
    let mut f = Frag::new("SELECT CAST(0 AS BIGINT), patient, patient FROM access_grant WHERE denied = 0 AND party = ");
    f.bind(Bind::Text(party.to_string())).push(" AND patient IN (");
    push_list(&mut f, patients.iter().map(|p| Bind::Text(p.clone())));
    f.push(")");
    let granted: HashSet<String> = fetch_i64_text_text(c, &f)
        .await?
        .into_iter()
        .map(|(_, p, _)| p)
        .collect();
    Ok(patients.iter().filter(|p| !granted.contains(*p)).cloned().collect())
}

/// The parties granted access to a patient (consent aside).
pub async fn grantees(c: &mut Conn<'_>, patient: &str) -> Result<Vec<String>, StoreError> {
    let mut f = Frag::new("SELECT CAST(0 AS BIGINT), party, party FROM access_grant WHERE patient = ");
    f.bind(Bind::Text(patient.to_string()));
    Ok(fetch_i64_text_text(c, &f)
        .await?
        .into_iter()
        .map(|(_, p, _)| p)
        .collect())
}

/// The patients a stored resource has concerned.
pub async fn patients_of(c: &mut Conn<'_>, pk: i64) -> Result<Vec<String>, StoreError> {
    let mut f = Frag::new("SELECT pk, patient, patient FROM resource_patient WHERE pk = ");
    f.bind(Bind::I64(pk));
    Ok(fetch_i64_text_text(c, &f)
        .await?
        .into_iter()
        .map(|(_, p, _)| p)
        .collect())
}

/// The current (not deleted) resources of a type that concern a patient.
pub async fn of_patient(c: &mut Conn<'_>, rtype: &str, patient: &str) -> Result<Vec<Version>, StoreError> {
    let mut f = Frag::new(VERSION_COLUMNS);
    f.push(
        " FROM resource_patient rp JOIN resource r ON r.pk = rp.pk AND r.deleted = 0 \
         JOIN resource_version v ON v.pk = r.pk AND v.version = r.version WHERE rp.patient = ",
    )
    .bind(Bind::Text(patient.to_string()))
    .push(" AND r.rtype = ")
    .bind(Bind::Text(rtype.to_string()));
    Ok(fetch_versions(c, &f).await?.into_iter().map(Version::from).collect())
}

pub async fn current(c: &mut Conn<'_>, rtype: &str, id: &str, vis: &Visibility) -> Result<Option<Current>, StoreError> {
    let mut f = Frag::new("SELECT r.pk, r.version, r.deleted FROM resource r WHERE r.rtype = ");
    f.bind(Bind::Text(rtype.into()))
        .push(" AND r.id = ")
        .bind(Bind::Text(id.into()));
    restrict(&mut f, vis, "r.pk");
    Ok(fetch_i64x3(c, &f)
        .await?
        .first()
        .map(|&(pk, version, deleted)| Current {
            pk,
            version,
            deleted: deleted != 0,
        }))
}

async fn versions_by_pk(c: &mut Conn<'_>, pks: &[i64]) -> Result<Vec<Version>, StoreError> {
    if pks.is_empty() {
        return Ok(Vec::new());
    }
    let mut f = Frag::new(VERSION_COLUMNS);
    f.push(" FROM resource r JOIN resource_version v ON v.pk = r.pk AND v.version = r.version WHERE r.pk IN (");
    for (i, pk) in pks.iter().enumerate() {
        if i > 0 {
            f.push(", ");
        }
        f.bind(Bind::I64(*pk));
    }
    f.push(")");
    let rows = fetch_versions(c, &f).await?;
    let mut by_pk: HashMap<i64, Version> = rows.into_iter().map(|r| (r.pk, Version::from(r))).collect();
    Ok(pks.iter().filter_map(|pk| by_pk.remove(pk)).collect())
}

/// Up to `want` distinct pks of `raw` after (or, descending, at and
/// before) `from`, in pk order. The scan streams; rows naming a resource
/// twice are skipped here rather than by a GROUP BY that would make the
/// database read every match first.
async fn keyset(
    c: &mut Conn<'_>,
    raw: &Frag,
    from: Option<i64>,
    want: usize,
    descending: bool,
) -> Result<Vec<i64>, StoreError> {
    let mut out: Vec<i64> = Vec::with_capacity(want);
    let mut cursor = from;
    loop {
        let ask = (want - out.len()) * 2 + 1;
        let mut f = raw.clone();
        match (cursor, descending) {
            (Some(c), false) => {
                f.push(" AND d.pk > ").bind(Bind::I64(c));
            }
            (Some(c), true) => {
                f.push(if out.is_empty() && cursor == from {
                    " AND d.pk <= "
                } else {
                    " AND d.pk < "
                })
                .bind(Bind::I64(c));
            }
            (None, _) => {}
        }
        f.push(if descending {
            " ORDER BY d.pk DESC LIMIT "
        } else {
            " ORDER BY d.pk LIMIT "
        })
        .bind(Bind::I64(ask as i64));
        let rows = fetch_i64(c, &f).await?;
        let exhausted = rows.len() < ask;
        for pk in rows {
            if out.last() != Some(&pk) {
                out.push(pk);
            }
            cursor = Some(pk);
            if out.len() == want {
                return Ok(out);
            }
        }
        if exhausted {
            return Ok(out);
        }
    }
}

/// The pks of the matches of `req`, one page, in order.
async fn page_pks(
    c: &mut Conn<'_>,
    req: &SearchRequest,
    limit: usize,
    vis: &Visibility,
) -> Result<(Vec<i64>, Option<PageStart>), StoreError> {
    let mut b = Builder::new(vis);
    let compiled = b.compile(req.resource_type.as_deref(), &req.filters)?;
    if req.sort.is_empty() {
        let after = match req.page {
            PageStart::After(after) => Some(after),
            _ => None,
        };
        let mut pks = keyset(c, &compiled.raw, after, limit + 1, false).await?;
        let next = if pks.len() > limit {
            pks.truncate(limit);
            pks.last().map(|pk| PageStart::After(*pk))
        } else {
            None
        };
        return Ok((pks, next));
    }
    // Explicit sort: offset paging (the sort value is computed per match).
    let mut f = Frag::new("SELECT m.pk FROM (");
    f.append(compiled.matches).push(") m ORDER BY ");
    for s in &req.sort {
        let e = b.sort_expr(req.resource_type.as_deref(), &s.key, s.descending)?;
        let e = Frag {
            sql: e.sql.replace("d.pk", "m.pk"),
            binds: e.binds,
        };
        // NULLs (no value) last in both directions and both databases.
        f.push("(").append(e.clone()).push(" IS NULL), ").append(e);
        f.push(if s.descending { " DESC, " } else { " ASC, " });
    }
    f.push("m.pk");
    let offset = match req.page {
        PageStart::Offset(o) => o,
        _ => 0,
    };
    f.push(" LIMIT ")
        .bind(Bind::I64(limit as i64 + 1))
        .push(" OFFSET ")
        .bind(Bind::I64(offset as i64));
    let mut pks = fetch_i64(c, &f).await?;
    let next = if pks.len() > limit {
        pks.truncate(limit);
        Some(PageStart::Offset(offset + limit as u64))
    } else {
        None
    };
    Ok((pks, next))
}

/// Where the previous page starts, for the `previous` link.
async fn previous_page(
    c: &mut Conn<'_>,
    req: &SearchRequest,
    vis: &Visibility,
) -> Result<Option<PageStart>, StoreError> {
    match req.page {
        PageStart::First => Ok(None),
        PageStart::Offset(o) => Ok(Some(if o <= req.count as u64 {
            PageStart::First
        } else {
            PageStart::Offset(o - req.count as u64)
        })),
        PageStart::After(after) => {
            let compiled = Builder::new(vis).compile(req.resource_type.as_deref(), &req.filters)?;
            // The previous page holds the `count` matches at or before `after`.
            let pks = keyset(c, &compiled.raw, Some(after), req.count + 1, true).await?;
            if pks.len() <= req.count {
                Ok(Some(PageStart::First))
            } else {
                Ok(pks.last().map(|pk| PageStart::After(*pk)))
            }
        }
    }
}

pub async fn count(c: &mut Conn<'_>, req: &SearchRequest, vis: &Visibility) -> Result<u64, StoreError> {
    let compiled = Builder::new(vis).compile(req.resource_type.as_deref(), &req.filters)?;
    let mut f = Frag::new("SELECT COUNT(*) FROM (");
    f.append(compiled.matches).push(") m");
    Ok(fetch_i64(c, &f).await?.first().copied().unwrap_or(0).max(0) as u64)
}

pub async fn search(c: &mut Conn<'_>, req: &SearchRequest, vis: &Visibility) -> Result<SearchPage, StoreError> {
    let (pks, next) = if req.count == 0 {
        (Vec::new(), None)
    } else {
        page_pks(c, req, req.count, vis).await?
    };
    let total = if wants_total(req) || req.count == 0 {
        Some(count(c, req, vis).await?)
    } else if req.page == PageStart::First && next.is_none() {
        Some(pks.len() as u64)
    } else {
        None
    };
    let previous = previous_page(c, req, vis).await?;
    let matches = versions_by_pk(c, &pks).await?;
    let included = includes(c, req, &pks, &matches, vis).await?;
    Ok(SearchPage {
        matches,
        included,
        total,
        next,
        previous,
    })
}

/// `_include` and `_revinclude`, `:iterate` applied until nothing new
/// comes in (bounded by MAX_INCLUDED).
async fn includes(
    c: &mut Conn<'_>,
    req: &SearchRequest,
    pks: &[i64],
    matches: &[Version],
    vis: &Visibility,
) -> Result<Vec<Version>, StoreError> {
    if req.include.is_empty() && req.revinclude.is_empty() {
        return Ok(Vec::new());
    }
    let mut seen: HashSet<i64> = pks.iter().copied().collect();
    let mut out: Vec<Version> = Vec::new();
    // (pk, type, id) of the resources whose references are followed next.
    let mut frontier: Vec<(i64, String, String)> = pks
        .iter()
        .zip(matches)
        .map(|(pk, v)| (*pk, v.resource_type.clone(), v.id.clone()))
        .collect();
    let mut first_round = true;
    while !frontier.is_empty() && (out.len() as i64) < MAX_INCLUDED {
        let mut found: Vec<i64> = Vec::new();
        for inc in req.include.iter().filter(|i| first_round || i.iterate) {
            found.extend(include_targets(c, inc, &frontier, vis).await?);
        }
        for inc in req.revinclude.iter().filter(|i| first_round || i.iterate) {
            found.extend(revinclude_sources(c, inc, &frontier, vis).await?);
        }
        let new: Vec<i64> = found.into_iter().filter(|pk| seen.insert(*pk)).collect();
        let room = (MAX_INCLUDED - out.len() as i64).max(0) as usize;
        let new: Vec<i64> = new.into_iter().take(room).collect();
        let versions = versions_by_pk(c, &new).await?;
        frontier = new
            .iter()
            .zip(&versions)
            .map(|(pk, v)| (*pk, v.resource_type.clone(), v.id.clone()))
            .collect();
        out.extend(versions);
        first_round = false;
        if !req.include.iter().chain(&req.revinclude).any(|i| i.iterate) {
            break;
        }
    }
    Ok(out)
}

async fn include_targets(
    c: &mut Conn<'_>,
    inc: &Include,
    from: &[(i64, String, String)],
    vis: &Visibility,
) -> Result<Vec<i64>, StoreError> {
    let Some(param) = &inc.param else { return Ok(Vec::new()) };
    let sources: Vec<i64> = from
        .iter()
        .filter(|(_, t, _)| *t == inc.source_type)
        .map(|(pk, _, _)| *pk)
        .collect();
    if sources.is_empty() {
        return Ok(Vec::new());
    }
    let mut f = Frag::new(
        "SELECT t.pk FROM idx_reference x JOIN resource t ON t.rtype = x.ttype AND t.id = x.tid AND t.deleted = 0 WHERE x.param = ",
    );
    f.bind(Bind::I64(param_key(&inc.source_type, &param.code)));
    if let Some(tt) = &inc.target_type {
        f.push(" AND x.ttype = ").bind(Bind::Text(tt.clone()));
    }
    f.push(" AND x.pk IN (");
    push_list(&mut f, sources.iter().map(|pk| Bind::I64(*pk)));
    f.push(")");
    restrict(&mut f, vis, "t.pk");
    fetch_i64(c, &f).await
}

async fn revinclude_sources(
    c: &mut Conn<'_>,
    inc: &Include,
    to: &[(i64, String, String)],
    vis: &Visibility,
) -> Result<Vec<i64>, StoreError> {
    let Some(param) = &inc.param else { return Ok(Vec::new()) };
    let mut by_type: HashMap<&str, Vec<&str>> = HashMap::new();
    for (_, t, id) in to {
        if inc.target_type.as_deref().is_none_or(|tt| tt == t) {
            by_type.entry(t.as_str()).or_default().push(id.as_str());
        }
    }
    let mut out = Vec::new();
    for (t, ids) in by_type {
        let mut f = Frag::new("SELECT x.pk FROM idx_reference x WHERE x.param = ");
        f.bind(Bind::I64(param_key(&inc.source_type, &param.code)))
            .push(" AND x.ttype = ")
            .bind(Bind::Text(t.to_string()))
            .push(" AND x.tid IN (");
        push_list(&mut f, ids.iter().map(|id| Bind::Text(id.to_string())));
        f.push(")");
        restrict(&mut f, vis, "x.pk");
        out.extend(fetch_i64(c, &f).await?);
    }
    Ok(out)
}

fn push_list(f: &mut Frag, items: impl Iterator<Item = Bind>) {
    for (i, b) in items.enumerate() {
        if i > 0 {
            f.push(", ");
        }
        f.bind(b);
    }
}

/// Up to `limit` (type, id, version) of the current matches of `req`: the
/// lookup behind conditional create, update, delete and references.
pub async fn search_keys(
    c: &mut Conn<'_>,
    req: &SearchRequest,
    limit: usize,
    vis: &Visibility,
) -> Result<Vec<(String, String, i64)>, StoreError> {
    let compiled = Builder::new(vis).compile(req.resource_type.as_deref(), &req.filters)?;
    let mut f = Frag::new("SELECT r.version, r.rtype, r.id FROM resource r WHERE r.pk IN (SELECT m.pk FROM (");
    f.append(compiled.matches)
        .push(") m) ORDER BY r.pk LIMIT ")
        .bind(Bind::I64(limit as i64));
    Ok(fetch_i64_text_text(c, &f)
        .await?
        .into_iter()
        .map(|(v, t, id)| (t, id, v))
        .collect())
}

/// Stores versions and replaces the index rows of the resources written.
pub async fn put_all(c: &mut Conn<'_>, writes: Vec<Write>) -> Result<(), StoreError> {
    if writes.is_empty() {
        return Ok(());
    }
    let deleted = |w: &Write| i64::from(w.method == Method::Delete);
    // New resources first, to learn their pks.
    let new: Vec<&Write> = writes.iter().filter(|w| w.pk.is_none()).collect();
    let mut assigned: HashMap<(String, String), i64> = HashMap::with_capacity(new.len());
    if !new.is_empty() {
        let cols = [
            Col::Text(new.iter().map(|w| w.resource_type.clone()).collect()),
            Col::Text(new.iter().map(|w| w.id.clone()).collect()),
            Col::I64(new.iter().map(|w| w.version).collect()),
            Col::I64(new.iter().map(|w| w.updated).collect()),
            Col::I64(new.iter().map(|w| deleted(w)).collect()),
        ];
        let rows = insert_columns(
            c,
            "resource (rtype, id, version, updated, deleted)",
            &cols,
            "RETURNING pk, rtype, id",
        )
        .await?;
        for (pk, t, id) in rows {
            assigned.insert((t, id), pk);
        }
    }
    let mut pks: Vec<i64> = Vec::with_capacity(writes.len());
    let mut existing: Vec<i64> = Vec::new();
    for w in &writes {
        let pk = match w.pk {
            Some(pk) => {
                let mut f = Frag::new("UPDATE resource SET version = ");
                f.bind(Bind::I64(w.version))
                    .push(", updated = ")
                    .bind(Bind::I64(w.updated))
                    .push(", deleted = ")
                    .bind(Bind::I64(deleted(w)))
                    .push(" WHERE pk = ")
                    .bind(Bind::I64(pk));
                execute(c, &f).await?;
                existing.push(pk);
                pk
            }
            None => *assigned
                .get(&(w.resource_type.clone(), w.id.clone()))
                .ok_or_else(|| StoreError::Unsupported("resource row was not created".into()))?,
        };
        pks.push(pk);
    }
    let versions = [
        Col::I64(pks.clone()),
        Col::I64(writes.iter().map(|w| w.version).collect()),
        Col::Text(writes.iter().map(|w| w.resource_type.clone()).collect()),
        Col::I64(writes.iter().map(|w| w.updated).collect()),
        Col::I64(writes.iter().map(|w| w.method as i64).collect()),
        Col::Blob(writes.iter().map(|w| w.body.clone()).collect()),
        Col::Text(writes.iter().map(|w| w.patients.join(" ")).collect()),
    ];
    insert_columns(
        c,
        "resource_version (pk, version, rtype, updated, method, body, patients)",
        &versions,
        "",
    )
    .await?;
    if !existing.is_empty() {
        for tbl in INDEX_TABLES {
            let mut f = Frag::new(format!("DELETE FROM {tbl} WHERE pk IN ("));
            push_list(&mut f, existing.iter().map(|pk| Bind::I64(*pk)));
            f.push(")");
            execute(c, &f).await?;
        }
    }
    let mut rows = IndexRows::default();
    for (w, pk) in writes.iter().zip(&pks) {
        for (code, value) in &w.index {
            rows.add(&w.resource_type, code, value, *pk);
        }
    }
    rows.insert(c).await?;
    put_compartments(c, &writes, &pks).await
}

/// The index values of one stored resource: (pk, type, (parameter, value)…).
pub type Reindexed = (i64, String, Vec<(String, IndexValue)>);

/// Replaces the index rows of stored resources, their versions untouched
/// (indexing again after the search parameters changed).
pub async fn replace_index(c: &mut Conn<'_>, items: &[Reindexed]) -> Result<(), StoreError> {
    if items.is_empty() {
        return Ok(());
    }
    for tbl in INDEX_TABLES {
        let mut f = Frag::new(format!("DELETE FROM {tbl} WHERE pk IN ("));
        push_list(&mut f, items.iter().map(|(pk, _, _)| Bind::I64(*pk)));
        f.push(")");
        execute(c, &f).await?;
    }
    let mut rows = IndexRows::default();
    for (pk, rtype, index) in items {
        for (code, value) in index {
            rows.add(rtype, code, value, *pk);
        }
    }
    rows.insert(c).await
}

/// The patients of the written versions and the grants they establish.
/// Both only grow: a grant outlives the Task that gave it (an MSS that
/// owned a referral keeps seeing it), a patient outlives the version.
async fn put_compartments(c: &mut Conn<'_>, writes: &[Write], pks: &[i64]) -> Result<(), StoreError> {
    let mut patients: HashSet<(i64, &str)> = HashSet::new();
    // The last decision on a (party, patient) pair stands.
    let mut grants: HashMap<(&str, &str), bool> = HashMap::new();
    for (w, pk) in writes.iter().zip(pks) {
        patients.extend(w.patients.iter().map(|p| (*pk, p.as_str())));
        for Grant { party, patient, denied } in &w.grants {
            grants.insert((party.as_str(), patient.as_str()), *denied);
        }
    }
    if !patients.is_empty() {
        let (pks, ids): (Vec<i64>, Vec<String>) = patients.into_iter().map(|(pk, p)| (pk, p.to_string())).unzip();
        insert_columns(
            c,
            "resource_patient (pk, patient)",
            &[Col::I64(pks), Col::Text(ids)],
            "ON CONFLICT DO NOTHING",
        )
        .await?;
    }
    if !grants.is_empty() {
        let mut parties = Vec::with_capacity(grants.len());
        let mut ids = Vec::with_capacity(grants.len());
        let mut denied = Vec::with_capacity(grants.len());
        for ((party, patient), d) in grants {
            parties.push(party.to_string());
            ids.push(patient.to_string());
            denied.push(i64::from(d));
        }
        insert_columns(
            c,
            "access_grant (party, patient, denied)",
            &[Col::Text(parties), Col::Text(ids), Col::I64(denied)],
            "ON CONFLICT (party, patient) DO UPDATE SET denied = excluded.denied",
        )
        .await?;
    }
    Ok(())
}

const INDEX_TABLES: [&str; 7] = [
    "idx_token",
    "idx_string",
    "idx_date",
    "idx_number",
    "idx_quantity",
    "idx_reference",
    "idx_uri",
];

type Ints = Vec<i64>;
type Floats = Vec<f64>;
type Texts = Vec<String>;

/// The index rows of a group of writes, column by column, per table (in
/// the order of the table's columns).
#[derive(Default)]
struct IndexRows {
    token: (Ints, Ints, Ints, Ints),
    string: (Ints, Texts, Ints, Texts),
    date: (Ints, Ints, Ints, Ints),
    number: (Ints, Floats, Ints),
    quantity: (Ints, Floats, Ints, Ints, Ints),
    reference: (Ints, Texts, Texts, Ints),
    uri: (Ints, Texts, Ints),
}

impl IndexRows {
    fn token(&mut self, key: i64, code: i64, pk: i64, sys: i64) {
        let t = &mut self.token;
        t.0.push(key);
        t.1.push(code);
        t.2.push(pk);
        t.3.push(sys);
    }

    fn add(&mut self, rtype: &str, code: &str, value: &IndexValue, pk: i64) {
        let key = param_key(rtype, code);
        match value {
            IndexValue::Token { system, code: c } => {
                self.token(key, hash_opt(c.as_deref()), pk, hash_opt(system.as_deref()));
            }
            IndexValue::String(s) => {
                let t = &mut self.string;
                t.0.push(key);
                t.1.push(normalize(s));
                t.2.push(pk);
                t.3.push(s.clone());
            }
            IndexValue::Date(r) => {
                let t = &mut self.date;
                t.0.push(key);
                t.1.push(r.lo);
                t.2.push(r.hi);
                t.3.push(pk);
            }
            IndexValue::Number(n) => {
                let t = &mut self.number;
                t.0.push(key);
                t.1.push(*n);
                t.2.push(pk);
            }
            IndexValue::Quantity {
                value,
                system,
                code: c,
                unit,
            } => {
                let t = &mut self.quantity;
                t.0.push(key);
                t.1.push(*value);
                t.2.push(pk);
                t.3.push(hash_opt(c.as_deref().or(unit.as_deref())));
                t.4.push(hash_opt(system.as_deref()));
            }
            IndexValue::Reference {
                rtype: t,
                id,
                identifier,
            } => {
                if let Some(id) = id {
                    let r = &mut self.reference;
                    r.0.push(key);
                    r.1.push(t.clone().unwrap_or_default());
                    r.2.push(id.clone());
                    r.3.push(pk);
                }
                if let Some((sys, val)) = identifier {
                    self.token(identifier_key(rtype, code), hash(val), pk, hash_opt(sys.as_deref()));
                }
            }
            IndexValue::Uri(u) => {
                let t = &mut self.uri;
                t.0.push(key);
                t.1.push(u.clone());
                t.2.push(pk);
            }
        }
    }

    async fn insert(self, c: &mut Conn<'_>) -> Result<(), StoreError> {
        // The same value twice in one resource (two identical codings) is one row.
        const DEDUP: &str = "ON CONFLICT DO NOTHING";
        let t = self.token;
        insert_columns(
            c,
            "idx_token (param, code, pk, sys)",
            &[Col::I64(t.0), Col::I64(t.1), Col::I64(t.2), Col::I64(t.3)],
            DEDUP,
        )
        .await?;
        let t = self.string;
        insert_columns(
            c,
            "idx_string (param, norm, pk, exact)",
            &[Col::I64(t.0), Col::Text(t.1), Col::I64(t.2), Col::Text(t.3)],
            DEDUP,
        )
        .await?;
        let t = self.date;
        insert_columns(
            c,
            "idx_date (param, lo, hi, pk)",
            &[Col::I64(t.0), Col::I64(t.1), Col::I64(t.2), Col::I64(t.3)],
            DEDUP,
        )
        .await?;
        let t = self.number;
        insert_columns(
            c,
            "idx_number (param, value, pk)",
            &[Col::I64(t.0), Col::F64(t.1), Col::I64(t.2)],
            DEDUP,
        )
        .await?;
        let t = self.quantity;
        insert_columns(
            c,
            "idx_quantity (param, value, pk, code, sys)",
            &[
                Col::I64(t.0),
                Col::F64(t.1),
                Col::I64(t.2),
                Col::I64(t.3),
                Col::I64(t.4),
            ],
            DEDUP,
        )
        .await?;
        let t = self.reference;
        insert_columns(
            c,
            "idx_reference (param, ttype, tid, pk)",
            &[Col::I64(t.0), Col::Text(t.1), Col::Text(t.2), Col::I64(t.3)],
            DEDUP,
        )
        .await?;
        let t = self.uri;
        insert_columns(
            c,
            "idx_uri (param, value, pk)",
            &[Col::I64(t.0), Col::Text(t.1), Col::I64(t.2)],
            DEDUP,
        )
        .await?;
        Ok(())
    }
}
