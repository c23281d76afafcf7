//! The R4 primitive types and their JSON forms: the regexes of the
//! specification (from the definitions), the JSON kind each must be
//! written as, the ranges of the integer types and the calendar.

use std::collections::HashMap;

use regex::Regex;
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Primitive {
    Base64Binary,
    Boolean,
    Canonical,
    Code,
    Date,
    DateTime,
    Decimal,
    Id,
    Instant,
    Integer,
    Markdown,
    Oid,
    PositiveInt,
    String,
    Time,
    UnsignedInt,
    Uri,
    Url,
    Uuid,
    Xhtml,
}

const ALL: [(Primitive, &str); 20] = [
    (Primitive::Base64Binary, "base64Binary"),
    (Primitive::Boolean, "boolean"),
    (Primitive::Canonical, "canonical"),
    (Primitive::Code, "code"),
    (Primitive::Date, "date"),
    (Primitive::DateTime, "dateTime"),
    (Primitive::Decimal, "decimal"),
    (Primitive::Id, "id"),
    (Primitive::Instant, "instant"),
    (Primitive::Integer, "integer"),
    (Primitive::Markdown, "markdown"),
    (Primitive::Oid, "oid"),
    (Primitive::PositiveInt, "positiveInt"),
    (Primitive::String, "string"),
    (Primitive::Time, "time"),
    (Primitive::UnsignedInt, "unsignedInt"),
    (Primitive::Uri, "uri"),
    (Primitive::Url, "url"),
    (Primitive::Uuid, "uuid"),
    (Primitive::Xhtml, "xhtml"),
];

impl Primitive {
    pub fn from_code(code: &str) -> Option<Primitive> {
        ALL.iter().find(|(_, c)| *c == code).map(|(p, _)| *p)
    }

    pub fn code(self) -> &'static str {
        ALL.iter().find(|(p, _)| *p == self).map_or("", |(_, c)| c)
    }
}

/// Why a primitive value is refused. The messages never repeat the value:
/// it may be personal data (a name, a birth date).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// `""`: an element must have a value or children (ele-1).
    Empty,
    /// Written as the wrong JSON kind (`"5"` for an integer, `"true"` for a
    /// boolean, a number for a string).
    Kind(&'static str),
    /// Does not match the type's format.
    Format(&'static str),
    /// A well-formed value out of the type's range.
    Range(&'static str),
}

impl Fault {
    pub fn message(self, p: Primitive) -> String {
        match self {
            Fault::Empty => format!("a {} must not be empty", p.code()),
            Fault::Kind(k) => format!("a {} must be written as a JSON {k}", p.code()),
            Fault::Format(f) | Fault::Range(f) => format!("not a valid {}: {f}", p.code()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the R4 regex of {ty} does not compile: {source}")]
pub struct RegexError {
    ty: String,
    source: regex::Error,
}

/// The compiled formats, built once.
pub struct Formats {
    base64: Regex,
    code: Regex,
    date: Regex,
    date_time: Regex,
    id: Regex,
    instant: Regex,
    oid: Regex,
    time: Regex,
    uuid: Regex,
}

impl Formats {
    /// From the regexes of the definitions (XML Schema syntax).
    pub fn new(regexes: &HashMap<Box<str>, Box<str>>) -> Result<Formats, RegexError> {
        let compile = |ty: &str| {
            let src = regexes.get(ty).map_or("", |s| &**s);
            Regex::new(&format!("^(?:{})$", xsd_to_rust(src))).map_err(|source| RegexError {
                ty: ty.to_string(),
                source,
            })
        };
        Ok(Formats {
            base64: compile("base64Binary")?,
            code: compile("code")?,
            date: compile("date")?,
            date_time: compile("dateTime")?,
            id: compile("id")?,
            instant: compile("instant")?,
            oid: compile("oid")?,
            time: compile("time")?,
            uuid: compile("uuid")?,
        })
    }

    pub fn check(&self, p: Primitive, v: &Value) -> Result<(), Fault> {
        match p {
            Primitive::Boolean => match v {
                Value::Bool(_) => Ok(()),
                _ => Err(Fault::Kind("boolean (true or false)")),
            },
            Primitive::Decimal => match v {
                Value::Number(_) => Ok(()),
                _ => Err(Fault::Kind("number")),
            },
            Primitive::Integer | Primitive::PositiveInt | Primitive::UnsignedInt => {
                let Value::Number(n) = v else {
                    return Err(Fault::Kind("number"));
                };
                // As written: `1.0` and `1e2` are decimals, not integers.
                let Some(i) = n.as_i64() else {
                    return Err(Fault::Format("a whole number without fraction or exponent"));
                };
                let low = match p {
                    Primitive::PositiveInt => 1,
                    Primitive::UnsignedInt => 0,
                    _ => i64::from(i32::MIN),
                };
                if i < low || i > i64::from(i32::MAX) {
                    return Err(Fault::Range(match p {
                        Primitive::PositiveInt => "must be between 1 and 2147483647",
                        Primitive::UnsignedInt => "must be between 0 and 2147483647",
                        _ => "must be between -2147483648 and 2147483647",
                    }));
                }
                Ok(())
            }
            _ => {
                let Value::String(s) = v else {
                    return Err(Fault::Kind("string"));
                };
                if s.is_empty() {
                    return Err(Fault::Empty);
                }
                self.check_str(p, s)
            }
        }
    }

    fn check_str(&self, p: Primitive, s: &str) -> Result<(), Fault> {
        let ok = match p {
            // `[ \r\n\t\S]+` in XML Schema, where `\s` is only these four:
            // any non-empty text.
            Primitive::String | Primitive::Markdown => true,
            // `\S*`
            Primitive::Uri | Primitive::Url | Primitive::Canonical => !s.bytes().any(is_xsd_space),
            Primitive::Code => self.code.is_match(s),
            Primitive::Id => self.id.is_match(s),
            Primitive::Oid => self.oid.is_match(s),
            Primitive::Uuid => self.uuid.is_match(s),
            Primitive::Base64Binary => self.base64.is_match(s),
            Primitive::Time => self.time.is_match(s),
            Primitive::Date => {
                return check_date(&self.date, s, "YYYY, YYYY-MM or YYYY-MM-DD");
            }
            Primitive::DateTime => {
                return check_date(
                    &self.date_time,
                    s,
                    "YYYY, YYYY-MM, YYYY-MM-DD or YYYY-MM-DDThh:mm:ss[.fff] with a time zone (Z or ±hh:mm)",
                );
            }
            Primitive::Instant => {
                return check_date(
                    &self.instant,
                    s,
                    "YYYY-MM-DDThh:mm:ss[.fff] with a time zone (Z or ±hh:mm)",
                );
            }
            Primitive::Xhtml => return check_xhtml(s),
            Primitive::Boolean
            | Primitive::Decimal
            | Primitive::Integer
            | Primitive::PositiveInt
            | Primitive::UnsignedInt => true,
        };
        if ok {
            Ok(())
        } else {
            Err(Fault::Format(match p {
                Primitive::Uri | Primitive::Url | Primitive::Canonical => "must not contain whitespace",
                Primitive::Code => "no leading, trailing or double whitespace",
                Primitive::Id => "1 to 64 characters among A-Z, a-z, 0-9, '-' and '.'",
                Primitive::Oid => "urn:oid: followed by a dotted OID",
                Primitive::Uuid => "urn:uuid: followed by a lower-case UUID",
                Primitive::Base64Binary => "base64 text",
                Primitive::Time => "hh:mm:ss[.fff]",
                _ => "malformed",
            }))
        }
    }
}

fn is_xsd_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// XML Schema's `\s` is space, tab, CR and LF only; Rust's is Unicode
/// whitespace (a French no-break space would fail a code or a uri).
fn xsd_to_rust(src: &str) -> String {
    src.replace("[^\\s]", "[^ \\t\\n\\r]")
        .replace("\\s", "[ \\t\\n\\r]")
        .replace("\\S", "[^ \\t\\n\\r]")
}

/// The regex, then the calendar: the regex lets 2023-02-30 through.
fn check_date(re: &Regex, s: &str, form: &'static str) -> Result<(), Fault> {
    if !re.is_match(s) {
        return Err(Fault::Format(form));
    }
    let b = s.as_bytes();
    if b.len() < 10 {
        return Ok(());
    }
    let num = |r: std::ops::Range<usize>| s.get(r).and_then(|t| t.parse::<u32>().ok()).unwrap_or(0);
    let (year, month, day) = (num(0..4), num(5..7), num(8..10));
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let days = match month {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    };
    if day > days {
        return Err(Fault::Range("no such day in that month"));
    }
    Ok(())
}

/// The JSON form of Narrative.div: one `div` element in the XHTML
/// namespace. Its content rules (txt-1, txt-2) need an XHTML parser and
/// are not checked.
fn check_xhtml(s: &str) -> Result<(), Fault> {
    let t = s.trim();
    let has_ns =
        t.contains("xmlns=\"http://www.w3.org/1999/xhtml\"") || t.contains("xmlns='http://www.w3.org/1999/xhtml'");
    if t.starts_with("<div") && t.ends_with("</div>") && has_ns {
        Ok(())
    } else {
        Err(Fault::Format(
            "a <div xmlns=\"http://www.w3.org/1999/xhtml\"> element and its content",
        ))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::fhir::validate::definitions::Definitions;

    fn formats() -> Formats {
        let defs = Definitions::r4().expect("definitions load");
        Formats::new(&defs.regexes).expect("regexes compile")
    }

    #[test]
    fn spec_forms_pass() {
        let f = formats();
        let good = [
            (Primitive::Date, json!("2024")),
            (Primitive::Date, json!("2024-02")),
            (Primitive::Date, json!("2024-02-29")),
            (Primitive::DateTime, json!("2024-03-05T10:15:00+01:00")),
            (Primitive::DateTime, json!("2024-03-05T10:15:00.250Z")),
            (Primitive::DateTime, json!("2024-03-05")),
            (Primitive::Instant, json!("2024-03-05T10:15:00Z")),
            (Primitive::Time, json!("23:59:60")),
            (Primitive::Decimal, json!(72)),
            (Primitive::Integer, json!(-2147483648_i64)),
            (Primitive::PositiveInt, json!(1)),
            (Primitive::UnsignedInt, json!(0)),
            (Primitive::Boolean, json!(false)),
            (Primitive::Code, json!("in-progress")),
            (Primitive::Code, json!("two words")),
            (Primitive::Id, json!("a-B.9")),
            (Primitive::Oid, json!("urn:oid:1.2.250.1.213.1.4.8")),
            (Primitive::Uuid, json!("urn:uuid:c757873d-ec9a-4326-a141-556f43239520")),
            (Primitive::Uri, json!("https://rpps.esante.gouv.fr")),
            (Primitive::Base64Binary, json!("aGVsbG8=")),
            (Primitive::String, json!("Marée\u{a0}haute")),
            (Primitive::Code, json!("sur\u{a0}place")),
            (
                Primitive::Xhtml,
                json!("<div xmlns=\"http://www.w3.org/1999/xhtml\"><p>ok</p></div>"),
            ),
        ];
        for (p, v) in good {
            assert_eq!(f.check(p, &v), Ok(()), "{p:?} {v}");
        }
    }

    #[test]
    fn malformed_forms_fail() {
        let f = formats();
        let bad = [
            (Primitive::Date, json!("2024-13-01")),
            (Primitive::Date, json!("2023-02-29")),
            (Primitive::Date, json!("05/03/2024")),
            (Primitive::DateTime, json!("2024-03-05T10:15:00")),
            (Primitive::DateTime, json!("2024-03-05T10:15Z")),
            (Primitive::Instant, json!("2024-03-05")),
            (Primitive::Time, json!("24:00:00")),
            (Primitive::Decimal, json!("72.5")),
            (Primitive::Integer, json!(2147483648_i64)),
            (Primitive::Integer, json!(1.5)),
            (Primitive::Integer, json!("1")),
            (Primitive::PositiveInt, json!(0)),
            (Primitive::UnsignedInt, json!(-1)),
            (Primitive::Boolean, json!("true")),
            (Primitive::Code, json!(" lead")),
            (Primitive::Code, json!("a  b")),
            (Primitive::Id, json!("has_underscore")),
            (Primitive::Id, json!("x".repeat(65))),
            (Primitive::Oid, json!("1.2.250")),
            (Primitive::Uuid, json!("urn:uuid:C757873D-EC9A-4326-A141-556F43239520")),
            (Primitive::Uri, json!("http://a b")),
            (Primitive::Base64Binary, json!("abc")),
            (Primitive::String, json!("")),
            (Primitive::String, json!(5)),
            (Primitive::Xhtml, json!("<p>no div</p>")),
        ];
        for (p, v) in bad {
            assert!(f.check(p, &v).is_err(), "{p:?} {v} should fail");
        }
    }
}
