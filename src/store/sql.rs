//! Turns a parsed search into SQL over the index tables.
//!
//! Every filter can be written two ways: as a *driver* (a `SELECT pk` that
//! walks one index) or as a *check* on a candidate pk (a correlated EXISTS,
//! or `IN` for chains). The most selective driver leads, in pk order, so
//! that `LIMIT` stops early (keyset paging); the others are checks. See
//! docs/storage.md.

use crate::fhir::search::model::{DateRange, Filter, Modifier, ParamRef, ParamType, Prefix, SearchValue, SortKey};

use super::exec::{Bind, Frag};
use super::keys::{hash, identifier_key, is_resource_level, normalize, param_key};
use super::{StoreError, Visibility};

/// A filter, compiled.
struct Pred {
    /// `SELECT <alias>.pk FROM …` producing candidates (duplicates allowed).
    drive: Option<Frag>,
    /// How selective the driver is likely to be; higher leads.
    rank: u8,
    /// A boolean expression over the candidate pk, with `{pk}` to substitute.
    check: Frag,
}

fn substitute(f: &Frag, pk: &str) -> Frag {
    Frag {
        sql: f.sql.replace("{pk}", pk),
        binds: f.binds.clone(),
    }
}

/// The SQL pieces of one search, ready to page, count and sort.
pub struct Compiled {
    /// `SELECT d.pk FROM (driver) d WHERE checks`: the driver's rows, which
    /// may name a resource twice. The database flattens it into one index
    /// scan, so that `ORDER BY d.pk LIMIT n` stops after n rows.
    pub raw: Frag,
    /// The same, one row per matching resource.
    pub matches: Frag,
}

pub struct Builder {
    depth: usize,
    /// The caller's compartment, checked on every set compiled: the
    /// matches, and the resources a chain or `_has` looks through.
    visible: Option<Frag>,
}

fn table(kind: ParamType) -> Option<&'static str> {
    Some(match kind {
        ParamType::Token => "idx_token",
        ParamType::String => "idx_string",
        ParamType::Date => "idx_date",
        ParamType::Number => "idx_number",
        ParamType::Quantity => "idx_quantity",
        ParamType::Reference => "idx_reference",
        ParamType::Uri => "idx_uri",
        ParamType::Composite | ParamType::Special => return None,
    })
}

impl Builder {
    pub fn new(vis: &Visibility) -> Self {
        Builder {
            depth: 0,
            visible: super::rows::visible(vis),
        }
    }

    fn alias(&mut self) -> String {
        self.depth += 1;
        format!("x{}", self.depth)
    }

    /// The set of matching pks of `resource_type` (or of any type).
    pub fn compile(&mut self, resource_type: Option<&str>, filters: &[Filter]) -> Result<Compiled, StoreError> {
        let mut preds = Vec::with_capacity(filters.len());
        for f in filters {
            preds.push(self.filter(resource_type, f)?);
        }
        // Rows of Resource-level parameters (`_tag`…) and of `_id` /
        // `_lastUpdated` are shared by all types: restrict to the type.
        let lead = preds
            .iter()
            .enumerate()
            .filter(|(_, p)| p.drive.is_some())
            .max_by_key(|(i, p)| (p.rank, usize::MAX - i))
            .map(|(i, _)| i);
        let mut sql = Frag::new("SELECT d.pk FROM (");
        let lead_pred = lead.map(|i| preds.remove(i));
        match lead_pred.as_ref().and_then(|p| p.drive.clone()) {
            Some(drive) => {
                sql.append(drive);
            }
            None => {
                sql.push("SELECT r.pk AS pk FROM resource r WHERE r.deleted = 0");
                if let Some(t) = resource_type {
                    sql.push(" AND r.rtype = ").bind(Bind::Text(t.to_string()));
                }
            }
        }
        sql.push(") d WHERE 1 = 1");
        let needs_type_check =
            lead_pred.is_some() && resource_type.is_some() && filters_lead_shared(lead.and_then(|i| filters.get(i)));
        if needs_type_check && let Some(t) = resource_type {
            sql.push(" AND EXISTS (SELECT 1 FROM resource z WHERE z.pk = d.pk AND z.rtype = ")
                .bind(Bind::Text(t.to_string()))
                .push(")");
        }
        for p in &preds {
            sql.push(" AND ").append(substitute(&p.check, "d.pk"));
        }
        if let Some(v) = &self.visible {
            sql.push(" AND ").append(substitute(v, "d.pk"));
        }
        let raw = sql.clone();
        sql.push(" GROUP BY d.pk");
        Ok(Compiled { raw, matches: sql })
    }

    fn filter(&mut self, resource_type: Option<&str>, f: &Filter) -> Result<Pred, StoreError> {
        match f {
            Filter::Values {
                param,
                modifier,
                values,
            } => self.values(resource_type, param, modifier.as_ref(), values),
            Filter::Chain {
                param,
                target_type,
                inner,
            } => {
                // A chain is about as selective as what it chains to.
                let rank = self.filter(Some(target_type), inner)?.rank.saturating_sub(1).max(1);
                let inner_set = self.compile(Some(target_type), std::slice::from_ref(inner))?;
                let x = self.alias();
                let mut drive = Frag::new(format!(
                    "SELECT {x}.pk AS pk FROM resource t{x} JOIN idx_reference {x} ON {x}.param = "
                ));
                drive
                    .bind(Bind::I64(param_key(&param.resource_type, &param.code)))
                    .push(&format!(
                        " AND {x}.ttype = t{x}.rtype AND {x}.tid = t{x}.id WHERE t{x}.pk IN ("
                    ))
                    .append(inner_set.matches)
                    .push(")");
                let mut check = Frag::new("{pk} IN (");
                check.append(drive.clone()).push(")");
                Ok(Pred {
                    drive: Some(drive),
                    rank,
                    check,
                })
            }
            Filter::Has {
                source_type,
                param,
                inner,
            } => {
                let rank = self.filter(Some(source_type), inner)?.rank.saturating_sub(2).max(1);
                let inner_set = self.compile(Some(source_type), std::slice::from_ref(inner))?;
                let x = self.alias();
                let mut drive = Frag::new(format!(
                    "SELECT t{x}.pk AS pk FROM idx_reference {x} JOIN resource t{x} ON t{x}.rtype = {x}.ttype AND t{x}.id = {x}.tid WHERE {x}.param = "
                ));
                drive.bind(Bind::I64(param_key(source_type, &param.code)));
                if let Some(t) = resource_type {
                    drive
                        .push(&format!(" AND {x}.ttype = "))
                        .bind(Bind::Text(t.to_string()));
                }
                drive
                    .push(&format!(" AND {x}.pk IN ("))
                    .append(inner_set.matches)
                    .push(")");
                let mut check = Frag::new("{pk} IN (");
                check.append(drive.clone()).push(")");
                Ok(Pred {
                    drive: Some(drive),
                    rank,
                    check,
                })
            }
        }
    }

    fn values(
        &mut self,
        resource_type: Option<&str>,
        param: &ParamRef,
        modifier: Option<&Modifier>,
        values: &[SearchValue],
    ) -> Result<Pred, StoreError> {
        if param.code == "_id" || param.code == "_lastUpdated" {
            return self.resource_column(resource_type, param, values);
        }
        let x = self.alias();
        let rtype = resource_type.unwrap_or("Resource");
        // :identifier on a reference is a token search on Reference.identifier.
        let (tbl, key) = if modifier == Some(&Modifier::Identifier) {
            ("idx_token", identifier_key(rtype, &param.code))
        } else {
            let Some(t) = table(param.kind) else {
                return Err(StoreError::Unsupported(format!(
                    "search parameter '{}' of type {} is not supported",
                    param.code,
                    param.kind.as_str()
                )));
            };
            (t, param_key(rtype, &param.code))
        };
        // :missing
        if let [SearchValue::Missing(missing)] = values {
            let mut exists = Frag::new(format!(
                "EXISTS (SELECT 1 FROM {tbl} {x} WHERE {x}.pk = {{pk}} AND {x}.param = "
            ));
            exists.bind(Bind::I64(key)).push(")");
            if *missing {
                let mut check = Frag::new("NOT ");
                check.append(exists);
                return Ok(Pred {
                    drive: None,
                    rank: 0,
                    check,
                });
            }
            let mut drive = Frag::new(format!("SELECT {x}.pk AS pk FROM {tbl} {x} WHERE {x}.param = "));
            drive.bind(Bind::I64(key));
            return Ok(Pred {
                drive: Some(drive),
                rank: 1,
                check: exists,
            });
        }
        let mut cond = Frag::new("(");
        for (i, v) in values.iter().enumerate() {
            if i > 0 {
                cond.push(" OR ");
            }
            cond.push("(");
            self.value_cond(&x, param, modifier, v, &mut cond)?;
            cond.push(")");
        }
        cond.push(")");
        // Without statistics, the kind of parameter tells how selective it
        // usually is: identifiers and references name one resource or one
        // patient's; codes and statuses match many.
        let rank = match (param.kind, modifier) {
            (_, Some(Modifier::Not)) => 0,
            (ParamType::Token, _) if param.code.contains("identifier") => 9,
            (ParamType::Token, _) if param.code.starts_with('_') => 5,
            (ParamType::Reference | ParamType::Uri, _) => 9,
            (_, Some(Modifier::Identifier)) => 9,
            (ParamType::String, Some(Modifier::Exact)) => 8,
            (ParamType::Token, _) => 7,
            (ParamType::String, Some(Modifier::Contains)) => 2,
            (ParamType::String, _) => 7,
            (ParamType::Number | ParamType::Quantity, _) => 3,
            (ParamType::Date, _) => 4,
            _ => 1,
        };
        let mut body = Frag::new(format!("{x}.param = "));
        body.bind(Bind::I64(key)).push(" AND ").append(cond);
        if modifier == Some(&Modifier::Not) {
            // :not matches resources with no matching value, including none at all.
            let mut check = Frag::new(format!(
                "NOT EXISTS (SELECT 1 FROM {tbl} {x} WHERE {x}.pk = {{pk}} AND "
            ));
            check.append(body).push(")");
            return Ok(Pred {
                drive: None,
                rank,
                check,
            });
        }
        let mut drive = Frag::new(format!("SELECT {x}.pk AS pk FROM {tbl} {x} WHERE "));
        drive.append(body.clone());
        let mut check = Frag::new(format!("EXISTS (SELECT 1 FROM {tbl} {x} WHERE {x}.pk = {{pk}} AND "));
        check.append(body).push(")");
        Ok(Pred {
            drive: Some(drive),
            rank,
            check,
        })
    }

    fn value_cond(
        &mut self,
        x: &str,
        param: &ParamRef,
        modifier: Option<&Modifier>,
        v: &SearchValue,
        out: &mut Frag,
    ) -> Result<(), StoreError> {
        match v {
            SearchValue::Token { system, code } => {
                match code {
                    Some(c) => {
                        out.push(&format!("{x}.code = ")).bind(Bind::I64(hash(c)));
                    }
                    None => {
                        out.push("1 = 1");
                    }
                }
                match system.as_deref() {
                    Some("") => {
                        out.push(&format!(" AND {x}.sys = 0"));
                    }
                    Some(s) => {
                        out.push(&format!(" AND {x}.sys = ")).bind(Bind::I64(hash(s)));
                    }
                    None => {}
                }
            }
            SearchValue::String(s) => {
                let n = normalize(s);
                match modifier {
                    Some(Modifier::Exact) => {
                        out.push(&format!("{x}.norm = "))
                            .bind(Bind::Text(n))
                            .push(&format!(" AND {x}.exact = "))
                            .bind(Bind::Text(s.clone()));
                    }
                    Some(Modifier::Contains) => {
                        let escaped = n.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_");
                        out.push(&format!("{x}.norm LIKE "))
                            .bind(Bind::Text(format!("%{escaped}%")))
                            .push(" ESCAPE '\\'");
                    }
                    _ => prefix_range(out, &format!("{x}.norm"), n),
                }
            }
            SearchValue::Date { prefix, range } => {
                date_cond(out, &format!("{x}.lo"), &format!("{x}.hi"), *prefix, *range)
            }
            SearchValue::Number { prefix, value, lo, hi } => {
                number_cond(out, &format!("{x}.value"), *prefix, *value, *lo, *hi);
            }
            SearchValue::Quantity {
                prefix,
                value,
                lo,
                hi,
                system,
                code,
            } => {
                number_cond(out, &format!("{x}.value"), *prefix, *value, *lo, *hi);
                if let Some(c) = code.as_deref().filter(|c| !c.is_empty()) {
                    out.push(&format!(" AND {x}.code = ")).bind(Bind::I64(hash(c)));
                }
                if let Some(s) = system.as_deref().filter(|s| !s.is_empty()) {
                    out.push(&format!(" AND {x}.sys = ")).bind(Bind::I64(hash(s)));
                }
            }
            SearchValue::Reference { rtype, id, .. } => {
                let rtype = match modifier {
                    Some(Modifier::Type(t)) => Some(t.as_str()),
                    _ => rtype.as_deref(),
                };
                match rtype {
                    Some(t) => {
                        out.push(&format!("{x}.ttype = ")).bind(Bind::Text(t.to_string()));
                    }
                    None if id.contains(':') => {
                        out.push(&format!("{x}.ttype = ''"));
                    }
                    None => {
                        out.push("1 = 1");
                    }
                }
                out.push(&format!(" AND {x}.tid = ")).bind(Bind::Text(id.clone()));
            }
            SearchValue::Uri(u) => match modifier {
                Some(Modifier::Below) => prefix_range(out, &format!("{x}.value"), u.clone()),
                Some(Modifier::Above) => {
                    // Every stored URI that is a path prefix of the value.
                    out.push(&format!("{x}.value IN ("));
                    let mut first = true;
                    let mut cut = u.len();
                    loop {
                        if !first {
                            out.push(", ");
                        }
                        first = false;
                        out.bind(Bind::Text(u[..cut].to_string()));
                        match u[..cut].rfind('/') {
                            Some(i) if i > 0 && !u[..i].ends_with('/') => cut = i,
                            _ => break,
                        }
                    }
                    out.push(")");
                }
                _ => {
                    out.push(&format!("{x}.value = ")).bind(Bind::Text(u.clone()));
                }
            },
            SearchValue::Missing(_) => {
                return Err(StoreError::Unsupported(format!(
                    "':missing' cannot be combined with other values of '{}'",
                    param.code
                )));
            }
        }
        Ok(())
    }

    /// `_id` and `_lastUpdated` live in the resource table, whose keys
    /// start with the type: without it PostgreSQL reads the whole table.
    fn resource_column(
        &mut self,
        resource_type: Option<&str>,
        param: &ParamRef,
        values: &[SearchValue],
    ) -> Result<Pred, StoreError> {
        let x = self.alias();
        let mut cond = Frag::new("(");
        if let Some(t) = resource_type {
            cond.push(&format!("{x}.rtype = "))
                .bind(Bind::Text(t.to_string()))
                .push(" AND (");
        }
        for (i, v) in values.iter().enumerate() {
            if i > 0 {
                cond.push(" OR ");
            }
            cond.push("(");
            match v {
                SearchValue::Token { code: Some(c), .. } => {
                    cond.push(&format!("{x}.id = ")).bind(Bind::Text(c.clone()));
                }
                SearchValue::Date { prefix, range } => {
                    date_cond(
                        &mut cond,
                        &format!("{x}.updated"),
                        &format!("{x}.updated"),
                        *prefix,
                        *range,
                    );
                }
                SearchValue::Missing(m) => {
                    cond.push(if *m { "1 = 0" } else { "1 = 1" });
                }
                _ => {
                    return Err(StoreError::Unsupported(format!(
                        "unsupported value for '{}'",
                        param.code
                    )));
                }
            }
            cond.push(")");
        }
        cond.push(if resource_type.is_some() { "))" } else { ")" });
        let mut drive = Frag::new(format!(
            "SELECT {x}.pk AS pk FROM resource {x} WHERE {x}.deleted = 0 AND "
        ));
        drive.append(cond.clone());
        let mut check = Frag::new(format!("EXISTS (SELECT 1 FROM resource {x} WHERE {x}.pk = {{pk}} AND "));
        check.append(cond).push(")");
        Ok(Pred {
            drive: Some(drive),
            rank: if param.code == "_id" { 10 } else { 4 },
            check,
        })
    }

    /// An expression giving the sort value of candidate `d.pk`.
    pub fn sort_expr(&self, resource_type: Option<&str>, key: &SortKey, descending: bool) -> Result<Frag, StoreError> {
        let agg = if descending { "MAX" } else { "MIN" };
        Ok(match key {
            SortKey::Id => Frag::new("(SELECT z.id FROM resource z WHERE z.pk = d.pk)"),
            SortKey::LastUpdated => Frag::new("(SELECT z.updated FROM resource z WHERE z.pk = d.pk)"),
            SortKey::Param(p) => {
                let rtype = resource_type.unwrap_or("Resource");
                let col = match p.kind {
                    ParamType::String => "norm",
                    ParamType::Date if descending => "hi",
                    ParamType::Date => "lo",
                    ParamType::Number | ParamType::Quantity | ParamType::Uri => "value",
                    ParamType::Reference => "tid",
                    _ => {
                        return Err(StoreError::Unsupported(format!(
                            "sorting by '{}' (a {} parameter) is not supported",
                            p.code,
                            p.kind.as_str()
                        )));
                    }
                };
                let Some(tbl) = table(p.kind) else {
                    return Err(StoreError::Unsupported(format!(
                        "sorting by '{}' is not supported",
                        p.code
                    )));
                };
                let mut f = Frag::new(format!(
                    "(SELECT {agg}(s.{col}) FROM {tbl} s WHERE s.pk = d.pk AND s.param = "
                ));
                f.bind(Bind::I64(param_key(rtype, &p.code))).push(")");
                f
            }
        })
    }
}

fn filters_lead_shared(f: Option<&Filter>) -> bool {
    match f {
        Some(Filter::Values { param, .. }) => is_resource_level(&param.code),
        _ => false,
    }
}

/// `col` starts with `prefix`, as an index range.
fn prefix_range(out: &mut Frag, col: &str, prefix: String) {
    let upper = format!("{prefix}\u{10FFFF}");
    out.push(&format!("{col} >= "))
        .bind(Bind::Text(prefix))
        .push(&format!(" AND {col} < "))
        .bind(Bind::Text(upper));
}

/// FHIR R4 date prefixes over a stored interval `[lo, hi]` and the searched
/// interval `q` (R4 §3.1.1.4.1.3): eq = contained, gt/lt = extends beyond,
/// ge/le = gt/lt or eq, sa/eb = entirely after/before, ap = overlaps the
/// searched interval widened by 10 % of its distance to now.
fn date_cond(out: &mut Frag, lo: &str, hi: &str, prefix: Prefix, q: DateRange) {
    let contained = |out: &mut Frag| {
        out.push(&format!("({lo} >= "))
            .bind(Bind::I64(q.lo))
            .push(&format!(" AND {hi} <= "))
            .bind(Bind::I64(q.hi))
            .push(")");
    };
    match prefix {
        Prefix::Eq => contained(out),
        Prefix::Ne => {
            out.push("NOT ");
            contained(out);
        }
        Prefix::Gt => {
            out.push(&format!("{hi} > ")).bind(Bind::I64(q.hi));
        }
        Prefix::Lt => {
            out.push(&format!("{lo} < ")).bind(Bind::I64(q.lo));
        }
        Prefix::Ge => {
            out.push(&format!("({hi} > ")).bind(Bind::I64(q.hi)).push(" OR ");
            contained(out);
            out.push(")");
        }
        Prefix::Le => {
            out.push(&format!("({lo} < ")).bind(Bind::I64(q.lo)).push(" OR ");
            contained(out);
            out.push(")");
        }
        Prefix::Sa => {
            out.push(&format!("{lo} > ")).bind(Bind::I64(q.hi));
        }
        Prefix::Eb => {
            out.push(&format!("{hi} < ")).bind(Bind::I64(q.lo));
        }
        Prefix::Ap => {
            let now = crate::clock::now_micros();
            let gap = (now.saturating_sub(q.lo)).unsigned_abs() / 10;
            let gap = i64::try_from(gap).unwrap_or(i64::MAX);
            out.push(&format!("{lo} <= "))
                .bind(Bind::I64(q.hi.saturating_add(gap)))
                .push(&format!(" AND {hi} >= "))
                .bind(Bind::I64(q.lo.saturating_sub(gap)));
        }
    }
}

/// Number and quantity prefixes: eq/ne use the range the written precision
/// implies; ap is ±10 %.
fn number_cond(out: &mut Frag, col: &str, prefix: Prefix, value: f64, lo: f64, hi: f64) {
    match prefix {
        Prefix::Eq => {
            out.push(&format!("{col} >= "))
                .bind(Bind::F64(lo))
                .push(&format!(" AND {col} < "))
                .bind(Bind::F64(hi));
        }
        Prefix::Ne => {
            out.push(&format!("NOT ({col} >= "))
                .bind(Bind::F64(lo))
                .push(&format!(" AND {col} < "))
                .bind(Bind::F64(hi))
                .push(")");
        }
        Prefix::Gt | Prefix::Sa => {
            out.push(&format!("{col} > ")).bind(Bind::F64(value));
        }
        Prefix::Lt | Prefix::Eb => {
            out.push(&format!("{col} < ")).bind(Bind::F64(value));
        }
        Prefix::Ge => {
            out.push(&format!("{col} >= ")).bind(Bind::F64(value));
        }
        Prefix::Le => {
            out.push(&format!("{col} <= ")).bind(Bind::F64(value));
        }
        Prefix::Ap => {
            let d = (value * 0.1).abs().max(hi - lo);
            out.push(&format!("{col} >= "))
                .bind(Bind::F64(value - d))
                .push(&format!(" AND {col} <= "))
                .bind(Bind::F64(value + d));
        }
    }
}
