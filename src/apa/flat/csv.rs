//! CSV exports of MSS software: assessments (one row per patient × test)
//! and session attendance (one row per patient × session), `;`-separated
//! with decimal commas as French software writes them (`,` and tab
//! separators are recognised from the header line). Columns are named in
//! the header, in any order, accents and case ignored; `docs/flat-api.md`
//! lists them.
//!
//! Each row is accepted or refused on its own, with its reason. The
//! accepted rows of one patient's assessment (same INS, MSS, date and
//! assessment id) or of one patient's programme make one transaction, so
//! that a BMI is derived from the weight and height rows and a programme
//! is created once.

use std::collections::BTreeMap;

use serde_json::Value;
use unicode_normalization::UnicodeNormalization;

use crate::apa::identity::{Ins, Siret};

use super::assessment::{self, Item, TestInput};
use super::attendance::{self, Session, SessionInput};
use super::common::{Mapped, Problem, Programme, Warning, When, ins_kind, parse_ins, parse_siret};

/// A refused row: its line in the file (the header is line 1) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub line: u64,
    pub problem: Problem,
}

/// The accepted rows of one group and their transaction.
#[derive(Debug, Clone)]
pub struct Group {
    pub lines: Vec<u64>,
    pub mapped: Mapped,
}

#[derive(Debug, Clone, Default)]
pub struct Batch {
    /// Data rows read (blank lines aside).
    pub rows: usize,
    pub groups: Vec<Group>,
    pub refused: Vec<Refusal>,
}

impl Batch {
    /// Rows mapped into a group (their transaction may still fail).
    pub fn mapped_rows(&self) -> usize {
        self.groups.iter().map(|g| g.lines.len()).sum()
    }
}

/// Header names compared without accents, case, spaces or hyphens.
fn normalize_header(h: &str) -> String {
    h.trim_start_matches('\u{feff}')
        .trim()
        .nfd()
        .filter(char::is_ascii)
        .collect::<String>()
        .to_lowercase()
        .replace([' ', '-'], "_")
}

struct Table {
    headers: Vec<String>,
    rows: Vec<(u64, csv::StringRecord)>,
}

fn delimiter(body: &[u8]) -> u8 {
    let first = body.split(|b| *b == b'\n').next().unwrap_or_default();
    let count = |c: u8| first.iter().filter(|b| **b == c).count();
    [b';', b'\t', b',']
        .into_iter()
        .max_by_key(|c| (count(*c), *c == b';'))
        .unwrap_or(b';')
}

fn read(body: &[u8]) -> Result<Table, Problem> {
    let body = body.strip_prefix("\u{feff}".as_bytes()).unwrap_or(body);
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(delimiter(body))
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(body);
    let headers = reader
        .headers()
        .map_err(|e| Problem::new("line 1", "structure", format!("the header line cannot be read: {e}")))?
        .iter()
        .map(normalize_header)
        .collect();
    // Lines are counted here from the record's first byte: the csv
    // crate's own count skips the header's line when lines end in CRLF.
    let newlines: Vec<usize> = body
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'\n')
        .map(|(i, _)| i)
        .collect();
    let line_of = |p: Option<&csv::Position>| {
        // A record's position is where the reader resumed: blank lines
        // before it are skipped here.
        let mut byte = p.map_or(0, |p| p.byte() as usize);
        while matches!(body.get(byte), Some(b'\r' | b'\n')) {
            byte += 1;
        }
        newlines.partition_point(|n| *n < byte) as u64 + 1
    };
    let mut rows = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| {
            let line = line_of(e.position());
            Problem::new(
                format!("line {line}"),
                "structure",
                format!("the line cannot be read: {e}"),
            )
        })?;
        if record.iter().all(str::is_empty) {
            continue;
        }
        rows.push((line_of(record.position()), record));
    }
    if rows.is_empty() {
        return Err(Problem::required("line 2", "at least one data row"));
    }
    Ok(Table { headers, rows })
}

/// A column found by one of its names.
#[derive(Clone, Copy)]
struct Col {
    index: Option<usize>,
    name: &'static str,
}

impl Table {
    fn col(&self, names: &[&'static str]) -> Col {
        Col {
            index: self.headers.iter().position(|h| names.contains(&h.as_str())),
            name: names[0],
        }
    }

    fn require(&self, names: &[&'static str], missing: &mut Vec<Problem>) -> Col {
        let c = self.col(names);
        if c.index.is_none() {
            missing.push(Problem::new(
                format!("line 1, column {}", names[0]),
                "required",
                format!("the column '{}' is missing from the header line", names[0]),
            ));
        }
        c
    }
}

fn cell(record: &csv::StringRecord, c: Col) -> Option<&str> {
    c.index.and_then(|i| record.get(i)).filter(|s| !s.is_empty())
}

fn at(line: u64, c: Col) -> String {
    format!("line {line}, column {}", c.name)
}

fn need_cell<'r>(record: &'r csv::StringRecord, line: u64, c: Col, what: &str) -> Result<&'r str, Problem> {
    cell(record, c).ok_or_else(|| Problem::required(at(line, c), what))
}

/// Relocates what the JSON mapping calls `$.patient.ins`… to the columns
/// of the group's first line.
/// The patient (INS and its kind) and the MSS (SIRET) of a row: every
/// export names them the same way.
fn patient_and_mss(
    r: &csv::StringRecord,
    line: u64,
    kind_col: Col,
    ins_col: Col,
    siret_col: Col,
) -> Result<(Ins, Siret), Problem> {
    let kind = ins_kind(cell(r, kind_col), &at(line, kind_col))?;
    let ins = parse_ins(
        need_cell(r, line, ins_col, "the patient's INS")?,
        kind,
        &at(line, ins_col),
    )?;
    let mss = parse_siret(
        need_cell(r, line, siret_col, "the SIRET of the MSS")?,
        &at(line, siret_col),
    )?;
    Ok((ins, mss))
}

fn relocate(mapped: &mut Mapped, first: u64, lines: &[u64], columns: &[(&str, Col)]) {
    let place = |loc: &str| {
        columns
            .iter()
            .find(|(json, _)| loc.starts_with(json))
            .map(|(_, c)| at(first, *c))
            .unwrap_or_else(|| {
                let list: Vec<String> = lines.iter().map(u64::to_string).collect();
                format!("lines {}", list.join(", "))
            })
    };
    for (_, loc) in &mut mapped.lookups {
        *loc = place(loc);
    }
    for loc in &mut mapped.entries {
        if loc.starts_with('$') {
            *loc = place(loc);
        }
    }
    for w in &mut mapped.warnings {
        if w.location.starts_with('$') {
            w.location = place(&w.location);
        }
    }
}

// ---------------------------------------------------------------------------
// Assessments

pub fn assessments(body: &[u8]) -> Result<Batch, Problem> {
    let t = read(body)?;
    let mut missing = Vec::new();
    let ins_col = t.require(&["ins", "matricule_ins"], &mut missing);
    let siret_col = t.require(&["siret_mss", "siret", "mss_siret"], &mut missing);
    let date_col = t.require(&["date_bilan", "date"], &mut missing);
    let test_col = t.require(&["test", "epreuve", "mesure"], &mut missing);
    let value_col = t.require(&["valeur", "value"], &mut missing);
    if let Some(p) = missing.into_iter().next() {
        return Err(p);
    }
    let id_col = t.col(&["id_bilan", "source_id", "assessment_id"]);
    let kind_col = t.col(&["type_ins", "ins_kind"]);
    let unit_col = t.col(&["unite", "unit"]);
    let side_col = t.col(&["cote", "side"]);
    let eyes_col = t.col(&["yeux_fermes", "eyes_closed"]);

    let mut batch = Batch {
        rows: t.rows.len(),
        ..Batch::default()
    };
    // Rows of one assessment, in file order of their first row.
    type Acc = (assessment::Head, Vec<Item>, Vec<Warning>);
    let mut groups: BTreeMap<(u64, String), Acc> = BTreeMap::new();
    let mut firsts: BTreeMap<String, u64> = BTreeMap::new();
    for (line, r) in &t.rows {
        let line = *line;
        let head = (|| {
            let (ins, mss) = patient_and_mss(r, line, kind_col, ins_col, siret_col)?;
            let when = When::parse(
                need_cell(r, line, date_col, "the date of the assessment")?,
                &at(line, date_col),
            )?;
            Ok::<_, Problem>(assessment::Head {
                source_id: cell(r, id_col).map(str::to_string),
                ins,
                mss,
                when,
            })
        })();
        let head = match head {
            Ok(h) => h,
            Err(problem) => {
                batch.refused.push(Refusal { line, problem });
                continue;
            }
        };
        let eyes = match cell(r, eyes_col) {
            None => None,
            Some(v) => match assessment::boolean(&Value::String(v.into()), &at(line, eyes_col)) {
                Ok(b) => Some(b),
                Err(problem) => {
                    batch.refused.push(Refusal { line, problem });
                    continue;
                }
            },
        };
        let input = TestInput {
            test: cell(r, test_col).map(str::to_string),
            value: cell(r, value_col).map(|v| Value::String(v.to_string())),
            unit: cell(r, unit_col).map(str::to_string),
            side: cell(r, side_col).map(str::to_string),
            eyes_closed: eyes,
        };
        let columns = [
            ("test", test_col),
            ("value", value_col),
            ("unit", unit_col),
            ("side", side_col),
            ("eyes_closed", eyes_col),
        ];
        let field = |f: &str| {
            columns
                .iter()
                .find(|(n, _)| *n == f)
                .map_or_else(|| format!("line {line}"), |(_, c)| at(line, *c))
        };
        let group_key = format!(
            "{}|{}|{}|{}|{}",
            head.ins.system(),
            head.ins.number().as_str(),
            head.mss,
            head.when.fhir(),
            head.source_id.as_deref().unwrap_or_default()
        );
        let first = *firsts.entry(group_key.clone()).or_insert(line);
        let (_, items, warnings) = groups
            .entry((first, group_key))
            .or_insert_with(|| (head, Vec::new(), Vec::new()));
        match assessment::parse_item(line as usize, &input, &format!("line {line}"), &field, warnings) {
            Ok(item) => items.push(item),
            Err(problem) => batch.refused.push(Refusal { line, problem }),
        }
    }
    for ((first, _), (head, items, warnings)) in groups {
        let (mapped, refused) = assessment::map(&head, items.clone(), warnings);
        let refused_lines: Vec<u64> = refused.iter().map(|(row, _)| *row as u64).collect();
        batch.refused.extend(refused.into_iter().map(|(row, problem)| Refusal {
            line: row as u64,
            problem,
        }));
        if let Some(mut mapped) = mapped {
            let lines: Vec<u64> = items
                .iter()
                .map(|i| i.row as u64)
                .filter(|l| !refused_lines.contains(l))
                .collect();
            relocate(
                &mut mapped,
                first,
                &lines,
                &[("$.patient", ins_col), ("$.mss", siret_col)],
            );
            batch.groups.push(Group { lines, mapped });
        }
    }
    batch.refused.sort_by_key(|r| r.line);
    Ok(batch)
}

// ---------------------------------------------------------------------------
// Attendance

pub fn attendance(body: &[u8]) -> Result<Batch, Problem> {
    let t = read(body)?;
    let mut missing = Vec::new();
    let programme_col = t.require(&["id_parcours", "programme_id"], &mut missing);
    let start_col = t.require(&["debut_parcours", "programme_start"], &mut missing);
    let prescription_col = t.require(&["prescription", "prescription_id"], &mut missing);
    let ins_col = t.require(&["ins", "matricule_ins"], &mut missing);
    let siret_col = t.require(&["siret_mss", "siret", "mss_siret"], &mut missing);
    let date_col = t.require(&["date_seance", "date"], &mut missing);
    let present_col = t.require(&["present", "attended", "presence"], &mut missing);
    if let Some(p) = missing.into_iter().next() {
        return Err(p);
    }
    let kind_col = t.col(&["type_ins", "ins_kind"]);
    let id_col = t.col(&["id_seance", "session_id", "source_id"]);
    let minutes_col = t.col(&["duree_min", "minutes", "duree"]);
    let session_kind_col = t.col(&["type_seance", "kind"]);

    let mut batch = Batch {
        rows: t.rows.len(),
        ..Batch::default()
    };
    type Acc = (attendance::Head, Vec<(u64, Session)>, Vec<Warning>);
    let mut groups: BTreeMap<(u64, String), Acc> = BTreeMap::new();
    let mut firsts: BTreeMap<String, u64> = BTreeMap::new();
    for (line, r) in &t.rows {
        let line = *line;
        let mut warnings = Vec::new();
        let parsed = (|| {
            let (ins, mss) = patient_and_mss(r, line, kind_col, ins_col, siret_col)?;
            let programme = super::common::ProgrammeRef {
                source_id: cell(r, programme_col).map(str::to_string),
                start: cell(r, start_col).map(str::to_string),
                prescription: cell(r, prescription_col).map(str::to_string),
            }
            .parse("$.programme")
            .map_err(|mut p| {
                let first = p.remove(0);
                let col = match first.location.rsplit('.').next() {
                    Some("start") => start_col,
                    Some("prescription") => prescription_col,
                    _ => programme_col,
                };
                Problem::new(at(line, col), first.code, first.message)
            })?;
            let present = assessment::boolean(
                &Value::String(need_cell(r, line, present_col, "whether the patient attended")?.into()),
                &at(line, present_col),
            )?;
            let minutes = match cell(r, minutes_col) {
                None => None,
                Some(m) => Some(m.parse::<u32>().map_err(|_| {
                    Problem::new(
                        at(line, minutes_col),
                        "value",
                        format!("'{m}' is not a whole number of minutes"),
                    )
                })?),
            };
            let input = SessionInput {
                source_id: cell(r, id_col).map(str::to_string),
                date: cell(r, date_col).map(str::to_string),
                minutes,
                attended: Some(present),
                kind: cell(r, session_kind_col).map(str::to_string),
            };
            let field = |f: &str| match f {
                "date" => at(line, date_col),
                "minutes" => at(line, minutes_col),
                "kind" => at(line, session_kind_col),
                "attended" => at(line, present_col),
                _ => format!("line {line}"),
            };
            let session = attendance::parse_session(&input, &format!("line {line}"), &field, &mut warnings)?;
            Ok::<_, Problem>((attendance::Head { ins, mss, programme }, session))
        })();
        let (head, session) = match parsed {
            Ok(v) => v,
            Err(problem) => {
                batch.refused.push(Refusal { line, problem });
                continue;
            }
        };
        let group_key = programme_key(&head);
        let first = *firsts.entry(group_key.clone()).or_insert(line);
        let acc = groups
            .entry((first, group_key))
            .or_insert_with(|| (head, Vec::new(), Vec::new()));
        acc.1.push((line, session));
        acc.2.extend(warnings);
    }
    for ((first, _), (head, sessions, warnings)) in groups {
        let lines: Vec<u64> = sessions.iter().map(|(l, _)| *l).collect();
        let sessions: Vec<Session> = sessions.into_iter().map(|(_, s)| s).collect();
        let mut mapped = attendance::map(&head, &sessions, warnings);
        relocate(
            &mut mapped,
            first,
            &lines,
            &[
                ("$.patient", ins_col),
                ("$.mss", siret_col),
                ("$.programme.prescription", prescription_col),
                ("$.programme.start", start_col),
                ("$.programme", programme_col),
            ],
        );
        batch.groups.push(Group { lines, mapped });
    }
    batch.refused.sort_by_key(|r| r.line);
    Ok(batch)
}

fn programme_key(h: &attendance::Head) -> String {
    let Programme {
        key,
        start,
        prescription,
    } = &h.programme;
    format!(
        "{}|{}|{}|{key}|{}|{prescription}",
        h.ins.system(),
        h.ins.number().as_str(),
        h.mss,
        start.fhir()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const ASSESSMENTS: &str = include_str!("../../../fixtures/flat/assessments.csv");
    const ATTENDANCE: &str = include_str!("../../../fixtures/flat/attendance.csv");

    #[test]
    fn headers_ignore_accents_case_and_spaces() {
        assert_eq!(normalize_header("\u{feff} Unité "), "unite");
        assert_eq!(normalize_header("Côté"), "cote");
        assert_eq!(normalize_header("Date bilan"), "date_bilan");
        assert_eq!(delimiter(b"a;b;c\n1,5;2;3"), b';');
        assert_eq!(delimiter(b"a,b,c\n"), b',');
        assert_eq!(delimiter(b"a\tb\tc\n"), b'\t');
    }

    #[test]
    fn lines_are_counted_in_the_file_whatever_the_line_ends() {
        for body in ["a;b\n1;2\n\n3;4\n", "a;b\r\n1;2\r\n\r\n3;4\r\n", "a;b\n\"1\nx\";2\n3;4"] {
            let t = read(body.as_bytes()).unwrap();
            let lines: Vec<u64> = t.rows.iter().map(|(l, _)| *l).collect();
            assert_eq!(lines, [2, 4], "{body:?}");
        }
    }

    #[test]
    fn the_mss_export_fixture_groups_by_assessment_and_refuses_bad_rows() {
        let b = assessments(ASSESSMENTS.as_bytes()).unwrap();
        assert_eq!(b.rows, 14);
        let refused: Vec<(u64, &str)> = b
            .refused
            .iter()
            .map(|r| (r.line, r.problem.location.as_str()))
            .collect();
        assert_eq!(
            refused,
            [
                (11, "line 11, column unite"),
                (12, "line 12, column valeur"),
                (15, "line 15, column ins")
            ],
            "{:?}",
            b.refused
        );
        assert_eq!(b.groups.len(), 2);
        assert_eq!(b.mapped_rows(), 11);
        // Weight and height give a BMI; the decimal comma is read.
        let first = &b.groups[0].mapped;
        let bmi = first.bundle["entry"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["resource"]["code"]["coding"][0]["code"] == "39156-5")
            .unwrap();
        assert_eq!(bmi["resource"]["valueQuantity"]["value"], serde_json::json!(32.9));
        assert!(first.lookups.iter().any(|(_, at)| at == "line 2, column ins"));
    }

    #[test]
    fn attendance_rows_make_one_transaction_per_programme() {
        let b = attendance(ATTENDANCE.as_bytes()).unwrap();
        assert_eq!(b.rows, 6);
        assert_eq!(b.refused.len(), 1, "{:?}", b.refused);
        assert_eq!(b.refused[0].problem.location, "line 7, column present");
        assert_eq!(b.groups.len(), 1);
        let entries = b.groups[0].mapped.bundle["entry"].as_array().unwrap();
        // The programme, then five sessions.
        assert_eq!(entries.len(), 6);
        assert_eq!(entries[0]["resource"]["resourceType"], "EpisodeOfCare");
        assert_eq!(entries[3]["resource"]["status"], "cancelled");
    }

    #[test]
    fn a_missing_column_refuses_the_file() {
        let p = assessments(b"ins;date_bilan;test;valeur\n1;2;3;4\n").unwrap_err();
        assert_eq!(p.location, "line 1, column siret_mss");
        let p = assessments(b"ins;siret_mss;date_bilan;test;valeur\n").unwrap_err();
        assert_eq!(p.code, "required");
    }
}
