//! The audit trail's table: append-only, one narrow row per event.
//!
//! An event is written for every request, reads included, so its cost is
//! paid on every read: it is one row with the handful of columns auditors
//! search by (`recorded`, `client`, `patient`, `subtype`, `action`,
//! `outcome`, `network`, the first resource it names) and an opaque
//! `detail`, plus one `audit_entity` row per other resource it names (most
//! events name one: a read). No generic index rows, no JSON built on the
//! request's path. The ids are time-ordered (UUID v7, made by the caller),
//! so the table and most of its indexes grow at their end. What the rows
//! mean is the security layer's business (`security::audit`).

use bytes::Bytes;

use super::exec::{Bind, Col, Conn, Dialect, Frag, fetch_audit, insert_columns_or};
use super::{StoreError, Visibility};

/// One event of the audit trail.
#[derive(Debug, Clone)]
pub struct AuditRecord {
    pub id: String,
    /// When it was recorded (µs since the epoch).
    pub recorded: i64,
    /// The client that made the request (as its credential claimed, when
    /// authentication failed).
    pub client: Option<String>,
    /// The patient the event is about (one per event, as IHE BALP has it).
    pub patient: Option<String>,
    pub subtype: String,
    pub action: String,
    pub outcome: String,
    pub network: Option<String>,
    /// The resources the event names, `Type/id` (written, not read back).
    pub entities: Vec<String>,
    /// Everything else, opaque to the store.
    pub detail: Bytes,
}

/// One condition of an audit search; conditions are AND-ed, the values of
/// one condition OR-ed.
#[derive(Debug, Clone)]
pub enum AuditCond {
    Id(Vec<String>),
    Patient(Vec<String>),
    /// `Type/id` references; a `Patient/x` also matches the events whose
    /// patient is x.
    Entity(Vec<String>),
    Client(Vec<String>),
    Subtype(Vec<String>),
    Action(Vec<String>),
    Outcome(Vec<String>),
    Network(Vec<String>),
    /// Recorded within `[lo, hi]` (µs, inclusive bounds).
    Recorded {
        lo: i64,
        hi: i64,
    },
}

/// Where a page of an audit search starts: after this `(recorded, id)`.
pub type AuditCursor = (i64, String);

#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    pub conds: Vec<AuditCond>,
    pub descending: bool,
    pub after: Option<AuditCursor>,
    pub count: usize,
}

#[derive(Debug, Clone, Default)]
pub struct AuditPage {
    pub records: Vec<AuditRecord>,
    pub next: Option<AuditCursor>,
}

/// Where events are kept. On PostgreSQL, one table. On SQLite, the events
/// of writes are in the database file, in the transaction of the change
/// they record; the events of requests that changed nothing are in a file
/// of their own, attached to the read connections as `trail` (see
/// `detached.rs` for why).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Main,
    Trail,
}

impl Part {
    fn tables(self) -> (&'static str, &'static str) {
        match self {
            // Unqualified: SQLite looks in `main` before attached files.
            Part::Main => ("audit_event", "audit_entity"),
            Part::Trail => ("trail.audit_event", "trail.audit_entity"),
        }
    }

    fn select(self) -> Frag {
        Frag::new(format!(
            "SELECT e.id, e.recorded, e.client, e.patient, e.subtype, e.action, e.outcome, e.network, e.detail FROM {} e",
            self.tables().0
        ))
    }
}

pub async fn put(c: &mut Conn<'_>, records: Vec<AuditRecord>) -> Result<(), StoreError> {
    if records.is_empty() {
        return Ok(());
    }
    let n = records.len();
    let mut refs = Vec::new();
    let mut events = Vec::new();
    let (mut ids, mut recorded, mut clients, mut patients) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut subtypes, mut actions, mut outcomes, mut networks, mut details) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let mut firsts = Vec::with_capacity(n);
    for r in records {
        // The first resource in the event's row, the others apart.
        let mut entities = r.entities.into_iter();
        firsts.push(entities.next());
        for e in entities {
            refs.push(e);
            events.push(r.id.clone());
        }
        ids.push(r.id);
        recorded.push(r.recorded);
        clients.push(r.client);
        patients.push(r.patient);
        subtypes.push(r.subtype);
        actions.push(r.action);
        outcomes.push(r.outcome);
        networks.push(r.network);
        details.push(Some(r.detail));
    }
    let cols = [
        Col::Text(ids),
        Col::I64(recorded),
        Col::OptText(clients),
        Col::OptText(patients),
        Col::Text(subtypes),
        Col::Text(actions),
        Col::Text(outcomes),
        Col::OptText(networks),
        Col::Blob(details),
        Col::OptText(firsts),
    ];
    // No statement journal on SQLite (`insert_columns_or`): a failure
    // rolls the whole batch back.
    insert_columns_or(
        c,
        "OR FAIL",
        "audit_event (id, recorded, client, patient, subtype, action, outcome, network, detail, entity)",
        &cols,
        "",
    )
    .await?;
    // An event may name the same resource twice (a transaction that
    // creates and then patches it): one row is enough. (`OR IGNORE` is
    // SQLite's spelling of it without a statement journal.)
    let (or, suffix) = match c.dialect() {
        Dialect::Sqlite => ("OR IGNORE", ""),
        Dialect::Postgres => ("", "ON CONFLICT DO NOTHING"),
    };
    insert_columns_or(
        c,
        or,
        "audit_entity (ref, event)",
        &[Col::Text(refs), Col::Text(events)],
        suffix,
    )
    .await?;
    Ok(())
}

/// The caller's compartment: events about no patient, or about one it is
/// granted.
fn restrict(f: &mut Frag, vis: &Visibility) {
    match vis {
        Visibility::All => {}
        Visibility::Party(None) => {
            f.push(" AND e.patient IS NULL");
        }
        Visibility::Party(Some(party)) => {
            f.push(" AND (e.patient IS NULL OR EXISTS (SELECT 1 FROM access_grant g WHERE g.party = ")
                .bind(Bind::Text(party.clone()))
                .push(" AND g.patient = e.patient AND g.denied = 0))");
        }
    }
}

/// `AND <column> IN (values…)`.
fn any_of(f: &mut Frag, column: &str, values: &[String]) {
    f.push(" AND ");
    in_list(f, column, values);
}

/// `<column> IN (values…)`.
fn in_list(f: &mut Frag, column: &str, values: &[String]) {
    f.push(column).push(" IN (");
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            f.push(", ");
        }
        f.bind(Bind::Text(v.clone()));
    }
    f.push(")");
}

pub async fn read(c: &mut Conn<'_>, part: Part, id: &str, vis: &Visibility) -> Result<Option<AuditRecord>, StoreError> {
    let mut f = part.select();
    f.push(" WHERE e.id = ").bind(Bind::Text(id.into()));
    restrict(&mut f, vis);
    Ok(fetch_audit(c, &f).await?.into_iter().next())
}

/// The first `q.count + 1` events of `part` that match, in the query's
/// order (one more than a page: it tells whether there is a next one).
pub async fn search(
    c: &mut Conn<'_>,
    part: Part,
    q: &AuditQuery,
    vis: &Visibility,
) -> Result<Vec<AuditRecord>, StoreError> {
    let mut f = part.select();
    f.push(" WHERE 1 = 1");
    for cond in &q.conds {
        match cond {
            AuditCond::Id(v) => any_of(&mut f, "e.id", v),
            AuditCond::Patient(v) => any_of(&mut f, "e.patient", v),
            AuditCond::Client(v) => any_of(&mut f, "e.client", v),
            AuditCond::Subtype(v) => any_of(&mut f, "e.subtype", v),
            AuditCond::Action(v) => any_of(&mut f, "e.action", v),
            AuditCond::Outcome(v) => any_of(&mut f, "e.outcome", v),
            AuditCond::Network(v) => any_of(&mut f, "e.network", v),
            AuditCond::Recorded { lo, hi } => {
                f.push(" AND e.recorded >= ")
                    .bind(Bind::I64(*lo))
                    .push(" AND e.recorded <= ")
                    .bind(Bind::I64(*hi));
            }
            AuditCond::Entity(refs) => {
                f.push(" AND (");
                in_list(&mut f, "e.entity", refs);
                f.push(&format!(
                    " OR e.id IN (SELECT ae.event FROM {} ae WHERE ",
                    part.tables().1
                ));
                in_list(&mut f, "ae.ref", refs);
                f.push(")");
                let patients: Vec<String> = refs
                    .iter()
                    .filter_map(|r| r.strip_prefix("Patient/"))
                    .map(str::to_string)
                    .collect();
                if !patients.is_empty() {
                    f.push(" OR ");
                    in_list(&mut f, "e.patient", &patients);
                }
                f.push(")");
            }
        }
    }
    restrict(&mut f, vis);
    let (cmp, dir) = if q.descending { ("<", "DESC") } else { (">", "ASC") };
    if let Some((recorded, id)) = &q.after {
        // The first term bounds the index range; the OR alone would make
        // the database read every event on the far side of the cursor.
        f.push(&format!(" AND e.recorded {cmp}= "))
            .bind(Bind::I64(*recorded))
            .push(&format!(" AND (e.recorded {cmp} "))
            .bind(Bind::I64(*recorded))
            .push(" OR (e.recorded = ")
            .bind(Bind::I64(*recorded))
            .push(&format!(" AND e.id {cmp} "))
            .bind(Bind::Text(id.clone()))
            .push("))");
    }
    f.push(&format!(" ORDER BY e.recorded {dir}, e.id {dir} LIMIT "))
        .bind(Bind::I64(q.count as i64 + 1));
    fetch_audit(c, &f).await
}

/// One page from the matches of each part (each in the query's order).
pub fn page(q: &AuditQuery, parts: Vec<Vec<AuditRecord>>) -> AuditPage {
    let mut records: Vec<AuditRecord> = parts.into_iter().flatten().collect();
    records.sort_by(|a, b| {
        let order = (a.recorded, &a.id).cmp(&(b.recorded, &b.id));
        if q.descending { order.reverse() } else { order }
    });
    let next = if records.len() > q.count {
        records.truncate(q.count);
        records.last().map(|r| (r.recorded, r.id.clone()))
    } else {
        None
    };
    AuditPage { records, next }
}
