//! Measurements of the physical-condition assessments (domain.md §4) in
//! canonical UCUM units: conversion of a value and a unit as MSS software
//! exports them, plausibility bounds per measured quantity, and the BMI
//! derived from weight and height.
//!
//! Values are exact decimals, never floats: 72 stays 72 and 1.50 stays
//! 1.50. A conversion keeps the resolution of the input: the result has the
//! fewest decimals whose last place is no coarser than one unit of the
//! input's last digit converted (165 cm → 1.65 m, 1650 mm → 165.0 cm,
//! 160 lb → 72.6 kg since 1 lb ≈ 0.45 kg, 2 min → 120 s), rounded half away
//! from zero. Conversions by a power of ten are therefore exact shifts.
//!
//! Units are looked up in a closed table per quantity: UCUM codes plus the
//! spellings MSS software is known to write. Anything else is refused, never
//! guessed: "M" is not a metre, "livre" is not a pound, "kPa" is not
//! converted. No UCUM crate is used: the one complete implementation on
//! crates.io (`ucum-units` 0.1) converts in `f64`, which would lose the
//! precision rules above, and would accept any commensurable unit (µg for a
//! body weight) where we want a short, reviewed list.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use serde_json::{Value, json};

use crate::fhir::error::{Issue, Severity};

pub const UCUM: &str = "http://unitsofmeasure.org";

// ---------------------------------------------------------------------------
// Exact decimals

/// An exact decimal number: `mantissa × 10^-scale`. Two decimals with the
/// same value but different precision (72 and 72.0) are different values
/// here; compare magnitudes with [`Decimal::cmp_value`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Decimal {
    mantissa: i128,
    scale: u32,
}

/// Beyond this a value is not a measurement typed by a person or exported
/// by an MSS tool, and exact arithmetic on it could overflow.
const MAX_DIGITS: usize = 15;
const MAX_SCALE: u32 = 9;

impl Decimal {
    pub const fn from_int(n: i64) -> Decimal {
        Decimal {
            mantissa: n as i128,
            scale: 0,
        }
    }

    /// Number of digits after the decimal point.
    pub fn scale(&self) -> u32 {
        self.scale
    }

    /// FHIR `decimal` grammar: `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`.
    pub fn parse(s: &str) -> Result<Decimal, UnitError> {
        let bad = || UnitError::NotANumber { found: s.to_string() };
        let (negative, body) = match s.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        let (number, exponent) = match body.find(['e', 'E']) {
            Some(i) => {
                let exp: i32 = body[i + 1..]
                    .strip_prefix('+')
                    .unwrap_or(&body[i + 1..])
                    .parse()
                    .map_err(|_| bad())?;
                (&body[..i], exp)
            }
            None => (body, 0),
        };
        let (int, frac) = match number.split_once('.') {
            Some((int, frac)) => {
                if frac.is_empty() {
                    return Err(bad());
                }
                (int, frac)
            }
            None => (number, ""),
        };
        let digits_ok = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
        if int.is_empty() || !digits_ok(int) || !digits_ok(frac) || (int.len() > 1 && int.starts_with('0')) {
            return Err(bad());
        }
        let significant = format!("{int}{frac}");
        let significant = significant.trim_start_matches('0');
        if significant.len() > MAX_DIGITS {
            return Err(UnitError::TooManyDigits { found: s.to_string() });
        }
        let mut mantissa: i128 = format!("{int}{frac}").parse().map_err(|_| bad())?;
        let mut scale = frac.len() as i64 - i64::from(exponent);
        if scale < 0 {
            // 7.2e2 is 720: an integer, not "720 with a precision of hundreds".
            let shift = u32::try_from(-scale).map_err(|_| UnitError::TooManyDigits { found: s.to_string() })?;
            mantissa = 10i128
                .checked_pow(shift)
                .and_then(|p| mantissa.checked_mul(p))
                .filter(|m| m.unsigned_abs() < 10u128.pow(MAX_DIGITS as u32))
                .ok_or_else(|| UnitError::TooManyDigits { found: s.to_string() })?;
            scale = 0;
        }
        let scale = u32::try_from(scale)
            .ok()
            .filter(|s| *s <= MAX_SCALE)
            .ok_or_else(|| UnitError::TooManyDigits { found: s.to_string() })?;
        Ok(Decimal {
            mantissa: if negative { -mantissa } else { mantissa },
            scale,
        })
    }

    /// As [`Decimal::parse`], after trimming, with a decimal comma accepted
    /// (French spreadsheets and MSS CSV exports write 72,5). Thousands
    /// separators are not: "1,500" is 1.5, never 1500, and "1 500" is refused.
    pub fn parse_localized(s: &str) -> Result<Decimal, UnitError> {
        let t = s.trim();
        if t.matches(',').count() == 1 && !t.contains('.') {
            Decimal::parse(&t.replace(',', ".")).map_err(|_| UnitError::NotANumber { found: s.to_string() })
        } else {
            Decimal::parse(t)
        }
    }

    /// A JSON number (as written, thanks to `arbitrary_precision`), or a
    /// string holding one (some flat APIs quote numbers).
    pub fn from_json(v: &Value) -> Result<Decimal, UnitError> {
        match v {
            Value::Number(n) => Decimal::parse(&n.to_string()),
            Value::String(s) => Decimal::parse_localized(s),
            other => Err(UnitError::NotANumber {
                found: other.to_string(),
            }),
        }
    }

    /// The JSON number with exactly the digits of [`Display`].
    pub fn to_json(&self) -> Value {
        // Display writes `-?digits(.digits)?`, always a valid JSON number.
        Value::Number(serde_json::Number::from_str(&self.to_string()).expect("decimal text is a JSON number"))
    }

    /// Compares magnitudes regardless of precision (72 = 72.0).
    pub fn cmp_value(&self, other: &Decimal) -> Ordering {
        let scale = self.scale.max(other.scale);
        match (self.rescaled(scale), other.rescaled(scale)) {
            (Some(a), Some(b)) => a.cmp(&b),
            // Unreachable with the digit limits; floats are good enough to order.
            _ => self.as_f64().total_cmp(&other.as_f64()),
        }
    }

    fn rescaled(&self, scale: u32) -> Option<i128> {
        10i128
            .checked_pow(scale - self.scale.min(scale))
            .and_then(|p| self.mantissa.checked_mul(p))
    }

    /// For display and statistics only: conversions never go through floats.
    pub fn as_f64(&self) -> f64 {
        self.mantissa as f64 / 10f64.powi(self.scale as i32)
    }

    /// `self × num / den` rounded to the resolution of `self` (see module docs).
    fn convert(&self, num: i128, den: i128) -> Option<Decimal> {
        // Smallest scale s with 10^-s ≤ (num/den)·10^-scale_in.
        let mut out = 0u32;
        while num.checked_mul(10i128.checked_pow(out)?)? < den.checked_mul(10i128.checked_pow(self.scale)?)? {
            out += 1;
        }
        let (n, d) = if out >= self.scale {
            let p = 10i128.checked_pow(out - self.scale)?;
            (self.mantissa.checked_mul(num)?.checked_mul(p)?, den)
        } else {
            let p = 10i128.checked_pow(self.scale - out)?;
            (self.mantissa.checked_mul(num)?, den.checked_mul(p)?)
        };
        Some(Decimal {
            mantissa: div_round(n, d),
            scale: out,
        })
    }
}

/// Integer division rounded half away from zero (`d` > 0).
fn div_round(n: i128, d: i128) -> i128 {
    let q = n / d;
    let r = n % d;
    if 2 * r.abs() >= d { q + n.signum() } else { q }
}

impl fmt::Display for Decimal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let digits = self.mantissa.unsigned_abs().to_string();
        let sign = if self.mantissa < 0 { "-" } else { "" };
        let scale = self.scale as usize;
        if scale == 0 {
            return write!(f, "{sign}{digits}");
        }
        let padded = format!("{digits:0>width$}", width = scale + 1);
        let (int, frac) = padded.split_at(padded.len() - scale);
        write!(f, "{sign}{int}.{frac}")
    }
}

impl FromStr for Decimal {
    type Err = UnitError;
    fn from_str(s: &str) -> Result<Decimal, UnitError> {
        Decimal::parse(s)
    }
}

// ---------------------------------------------------------------------------
// Unit tables

/// One accepted spelling: `value_in_base = value × num / den`.
struct Unit {
    code: &'static str,
    num: i128,
    den: i128,
}

const fn u(code: &'static str, num: i128, den: i128) -> Unit {
    Unit { code, num, den }
}

/// Base kg. 1 lb = 0.45359237 kg exactly (international avoirdupois pound).
const MASS: &[Unit] = &[
    u("kg", 1, 1),
    u("g", 1, 1000),
    u("[lb_av]", 45_359_237, 100_000_000),
    u("Kg", 1, 1),
    u("KG", 1, 1),
    u("kgs", 1, 1),
    u("kilo", 1, 1),
    u("kilos", 1, 1),
    u("gr", 1, 1000),
    u("lb", 45_359_237, 100_000_000),
    u("lbs", 45_359_237, 100_000_000),
];

/// Dynamometers read kilograms-force; UCUM `kgf`, reported as `kg`.
const FORCE_AS_MASS: &[Unit] = &[
    u("kg", 1, 1),
    u("kgf", 1, 1),
    u("Kg", 1, 1),
    u("KG", 1, 1),
    u("[lb_av]", 45_359_237, 100_000_000),
    u("lb", 45_359_237, 100_000_000),
    u("lbs", 45_359_237, 100_000_000),
];

/// Base m. 1 in = 2.54 cm exactly.
const LENGTH: &[Unit] = &[
    u("m", 1, 1),
    u("cm", 1, 100),
    u("mm", 1, 1000),
    u("km", 1000, 1),
    u("[in_i]", 254, 10_000),
    u("[ft_i]", 3048, 10_000),
    u("CM", 1, 100),
    u("Cm", 1, 100),
    u("MM", 1, 1000),
    u("mètres", 1, 1),
    u("metres", 1, 1),
    u("meters", 1, 1),
    u("in", 254, 10_000),
    u("inch", 254, 10_000),
    u("inches", 254, 10_000),
    u("ft", 3048, 10_000),
];

/// Base kg/m2.
const BMI: &[Unit] = &[u("kg/m2", 1, 1), u("kg/m²", 1, 1), u("kg/m^2", 1, 1), u("kg.m-2", 1, 1)];

/// Base /min.
const PER_MINUTE: &[Unit] = &[
    u("/min", 1, 1),
    u("1/min", 1, 1),
    u("{beats}/min", 1, 1),
    u("{beat}/min", 1, 1),
    u("bpm", 1, 1),
    u("BPM", 1, 1),
    u("Bpm", 1, 1),
    u("bat/min", 1, 1),
    u("batt/min", 1, 1),
    u("battements/min", 1, 1),
];

/// Base mm[Hg]. French practice also speaks cmHg ("12/8").
const PRESSURE: &[Unit] = &[
    u("mm[Hg]", 1, 1),
    u("cm[Hg]", 10, 1),
    u("mmHg", 1, 1),
    u("mm Hg", 1, 1),
    u("MMHG", 1, 1),
    u("cmHg", 10, 1),
    u("cm Hg", 10, 1),
];

/// Base s.
const DURATION: &[Unit] = &[
    u("s", 1, 1),
    u("min", 60, 1),
    u("ms", 1, 1000),
    u("sec", 1, 1),
    u("secs", 1, 1),
    u("sec.", 1, 1),
    u("seconds", 1, 1),
    u("seconde", 1, 1),
    u("secondes", 1, 1),
    u("mn", 60, 1),
    u("minutes", 60, 1),
];

/// Base min.
const MINUTES: &[Unit] = &[
    u("min", 1, 1),
    u("h", 60, 1),
    u("mn", 1, 1),
    u("minutes", 1, 1),
    u("heures", 60, 1),
];

/// Base min/wk.
const MINUTES_PER_WEEK: &[Unit] = &[
    u("min/wk", 1, 1),
    u("h/wk", 60, 1),
    u("min/week", 1, 1),
    u("min/sem", 1, 1),
    u("min/semaine", 1, 1),
    u("h/week", 60, 1),
    u("h/sem", 60, 1),
    u("h/semaine", 60, 1),
];

/// Base min/d.
const MINUTES_PER_DAY: &[Unit] = &[
    u("min/d", 1, 1),
    u("h/d", 60, 1),
    u("min/day", 1, 1),
    u("min/j", 1, 1),
    u("min/jour", 1, 1),
    u("h/day", 60, 1),
    u("h/j", 60, 1),
    u("h/jour", 60, 1),
];

/// Base d/wk.
const DAYS_PER_WEEK: &[Unit] = &[
    u("d/wk", 1, 1),
    u("days/week", 1, 1),
    u("d/week", 1, 1),
    u("j/sem", 1, 1),
    u("j/semaine", 1, 1),
    u("jours/semaine", 1, 1),
];

/// Base /d. ANS "Mesures de santé" writes 1/(24.h), the PA IG /d: one quantity.
const PER_DAY: &[Unit] = &[
    u("/d", 1, 1),
    u("1/d", 1, 1),
    u("1/(24.h)", 1, 1),
    u("{steps}/d", 1, 1),
    u("steps/day", 1, 1),
    u("pas/jour", 1, 1),
    u("pas/j", 1, 1),
];

/// Base {#}: repetitions.
const COUNT: &[Unit] = &[
    u("{#}", 1, 1),
    u("1", 1, 1),
    u("{count}", 1, 1),
    u("{repetitions}", 1, 1),
    u("reps", 1, 1),
    u("répétitions", 1, 1),
    u("repetitions", 1, 1),
];

/// Base {score}.
const SCORE: &[Unit] = &[
    u("{score}", 1, 1),
    u("1", 1, 1),
    u("score", 1, 1),
    u("pts", 1, 1),
    u("points", 1, 1),
];

/// Base {MET}.min/wk (MET is no UCUM unit: it goes in an annotation).
const MET_MINUTES_PER_WEEK: &[Unit] = &[
    u("{MET}.min/wk", 1, 1),
    u("MET.min/wk", 1, 1),
    u("MET-min/wk", 1, 1),
    u("MET-min/week", 1, 1),
    u("MET-min/semaine", 1, 1),
    u("MET.min/sem", 1, 1),
];

/// Base %.
const PERCENT: &[Unit] = &[u("%", 1, 1), u("pourcent", 1, 1), u("percent", 1, 1)];

// ---------------------------------------------------------------------------
// Measured quantities

/// A quantity measured in an APA assessment or follow-up (domain.md §4, §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Measure {
    BodyWeight,
    BodyHeight,
    Bmi,
    WaistCircumference,
    HeartRate,
    SystolicBloodPressure,
    DiastolicBloodPressure,
    /// 6-minute walk test distance.
    SixMinuteWalkDistance,
    TimedUpAndGo,
    /// Five times sit-to-stand: duration.
    FiveTimesSitToStand,
    /// 30-second chair stand: repetitions.
    ChairStand30s,
    /// One-leg balance: duration.
    UnipodalStance,
    /// Sit-and-reach: distance, negative when the fingers stay short of the toes.
    SitAndReach,
    GripStrength,
    StepsPerDay,
    ModerateToVigorousMinutesPerWeek,
    ModerateToVigorousDaysPerWeek,
    MinutesPerActiveDay,
    StrengthDaysPerWeek,
    MetMinutesPerWeek,
    AttendanceRate,
    RicciGagnonScore,
    /// IPAQ time of moderate or vigorous activity (LOINC 77592-4, 77593-2).
    IpaqMinutes,
    /// ONAPS-PAQ score.
    OnapsPaqScore,
    /// Borg rating of perceived exertion, 6–20 scale.
    BorgRpe,
    EpicesScore,
}

/// What [`Measure::spec`] says about a quantity.
struct Spec {
    name: &'static str,
    /// The canonical UCUM code; also the first entry of `units` with factor
    /// 1 relative to it (see `canonical_factor`).
    canonical: &'static str,
    /// Human-readable unit for `Quantity.unit`.
    display: &'static str,
    units: &'static [Unit],
    min: Decimal,
    max: Decimal,
}

const fn d(n: i64) -> Decimal {
    Decimal::from_int(n)
}

impl Measure {
    pub const ALL: [Measure; 26] = [
        Measure::BodyWeight,
        Measure::BodyHeight,
        Measure::Bmi,
        Measure::WaistCircumference,
        Measure::HeartRate,
        Measure::SystolicBloodPressure,
        Measure::DiastolicBloodPressure,
        Measure::SixMinuteWalkDistance,
        Measure::TimedUpAndGo,
        Measure::FiveTimesSitToStand,
        Measure::ChairStand30s,
        Measure::UnipodalStance,
        Measure::SitAndReach,
        Measure::GripStrength,
        Measure::StepsPerDay,
        Measure::ModerateToVigorousMinutesPerWeek,
        Measure::ModerateToVigorousDaysPerWeek,
        Measure::MinutesPerActiveDay,
        Measure::StrengthDaysPerWeek,
        Measure::MetMinutesPerWeek,
        Measure::AttendanceRate,
        Measure::RicciGagnonScore,
        Measure::IpaqMinutes,
        Measure::OnapsPaqScore,
        Measure::BorgRpe,
        Measure::EpicesScore,
    ];

    /// Bounds are wide on purpose: they catch unit mix-ups (72 kg sent as
    /// grams, 1.65 m sent as cm) and typing slips, not unusual patients.
    /// Adults and adolescents of APA programmes; frail elderly people
    /// included, hence the zero lower bounds of performance tests.
    fn spec(self) -> Spec {
        let s = |name, canonical, display, units, min, max| Spec {
            name,
            canonical,
            display,
            units,
            min,
            max,
        };
        match self {
            Measure::BodyWeight => s("body weight", "kg", "kg", MASS, d(10), d(350)),
            Measure::BodyHeight => s("body height", "cm", "cm", LENGTH, d(50), d(250)),
            Measure::Bmi => s("body mass index", "kg/m2", "kg/m2", BMI, d(10), d(80)),
            Measure::WaistCircumference => s("waist circumference", "cm", "cm", LENGTH, d(40), d(250)),
            Measure::HeartRate => s("heart rate", "/min", "/min", PER_MINUTE, d(25), d(250)),
            Measure::SystolicBloodPressure => s("systolic blood pressure", "mm[Hg]", "mmHg", PRESSURE, d(50), d(300)),
            Measure::DiastolicBloodPressure => s("diastolic blood pressure", "mm[Hg]", "mmHg", PRESSURE, d(20), d(200)),
            Measure::SixMinuteWalkDistance => s("6-minute walk distance", "m", "m", LENGTH, d(0), d(1200)),
            Measure::TimedUpAndGo => s("Timed Up and Go duration", "s", "s", DURATION, d(2), d(600)),
            Measure::FiveTimesSitToStand => s("5 times sit-to-stand duration", "s", "s", DURATION, d(2), d(300)),
            Measure::ChairStand30s => s("30-second chair stand count", "{#}", "repetitions", COUNT, d(0), d(60)),
            Measure::UnipodalStance => s("one-leg stance duration", "s", "s", DURATION, d(0), d(600)),
            Measure::SitAndReach => s("sit-and-reach distance", "cm", "cm", LENGTH, d(-60), d(60)),
            Measure::GripStrength => s("grip strength", "kg", "kg", FORCE_AS_MASS, d(0), d(120)),
            Measure::StepsPerDay => s("steps per day", "/d", "steps/day", PER_DAY, d(0), d(100_000)),
            Measure::ModerateToVigorousMinutesPerWeek => s(
                "moderate to vigorous activity per week",
                "min/wk",
                "min/wk",
                MINUTES_PER_WEEK,
                d(0),
                d(10_080),
            ),
            Measure::ModerateToVigorousDaysPerWeek => s(
                "days of moderate to vigorous activity per week",
                "d/wk",
                "d/wk",
                DAYS_PER_WEEK,
                d(0),
                d(7),
            ),
            Measure::MinutesPerActiveDay => s(
                "minutes of activity per active day",
                "min/d",
                "min/d",
                MINUTES_PER_DAY,
                d(0),
                d(1440),
            ),
            Measure::StrengthDaysPerWeek => s(
                "days of muscle strengthening per week",
                "d/wk",
                "d/wk",
                DAYS_PER_WEEK,
                d(0),
                d(7),
            ),
            Measure::MetMinutesPerWeek => s(
                "physical activity in MET-minutes per week",
                "{MET}.min/wk",
                "MET-min/wk",
                MET_MINUTES_PER_WEEK,
                d(0),
                d(50_000),
            ),
            Measure::AttendanceRate => s("attendance rate", "%", "%", PERCENT, d(0), d(100)),
            // 9 items scored 1–5 (domain.md marks the scale ⚠): kept loose.
            Measure::RicciGagnonScore => s("Ricci & Gagnon score", "{score}", "score", SCORE, d(0), d(45)),
            // The PA IG records the IPAQ items in `min` without saying over
            // what (IPAQ asks the time on a day of activity; totals per week
            // are common): bounded by the minutes of a week.
            Measure::IpaqMinutes => s("IPAQ activity time", "min", "min", MINUTES, d(0), d(10_080)),
            // Its scale is not verified (domain.md §4 🧩): bounds only catch
            // what cannot be a score.
            Measure::OnapsPaqScore => s("ONAPS-PAQ score", "{score}", "score", SCORE, d(0), d(10_000)),
            Measure::BorgRpe => s(
                "Borg rating of perceived exertion",
                "{score}",
                "score",
                SCORE,
                d(6),
                d(20),
            ),
            Measure::EpicesScore => s("EPICES score", "{score}", "score", SCORE, d(0), d(100)),
        }
    }

    pub fn name(self) -> &'static str {
        self.spec().name
    }

    /// The canonical UCUM code (`Quantity.code`).
    pub fn canonical_unit(self) -> &'static str {
        self.spec().canonical
    }

    /// The plausible range, in the canonical unit, bounds included.
    pub fn bounds(self) -> (Decimal, Decimal) {
        let s = self.spec();
        (s.min, s.max)
    }

    /// Every spelling accepted for this quantity.
    pub fn accepted_units(self) -> impl Iterator<Item = &'static str> {
        self.spec().units.iter().map(|u| u.code)
    }
}

impl fmt::Display for Measure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

// ---------------------------------------------------------------------------
// Measurements

/// A plausible value of a measured quantity in its canonical UCUM unit. Only
/// [`normalize`] and [`bmi`] make one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Measurement {
    measure: Measure,
    value: Decimal,
}

impl Measurement {
    pub fn measure(&self) -> Measure {
        self.measure
    }
    pub fn value(&self) -> Decimal {
        self.value
    }
    pub fn unit(&self) -> &'static str {
        self.measure.canonical_unit()
    }

    /// Reads a stored FHIR `Quantity`: it must already be canonical (UCUM
    /// system, canonical code, a JSON number) and plausible. No conversion
    /// here: converting is for inputs that are not FHIR yet.
    pub fn from_quantity(measure: Measure, quantity: &Value) -> Result<Measurement, UnitError> {
        let expected = measure.canonical_unit();
        let system = quantity.get("system").and_then(Value::as_str);
        let code = quantity.get("code").and_then(Value::as_str);
        if system != Some(UCUM) || code != Some(expected) {
            return Err(UnitError::NotCanonical {
                measure,
                expected,
                found: match (system, code) {
                    (Some(UCUM), Some(c)) => c.to_string(),
                    (Some(s), Some(c)) => format!("{s}|{c}"),
                    (_, None) => String::new(),
                    (None, Some(c)) => format!("|{c}"),
                },
            });
        }
        let value = match quantity.get("value") {
            Some(v @ Value::Number(_)) => Decimal::from_json(v)?,
            other => {
                return Err(UnitError::NotANumber {
                    found: other.map(Value::to_string).unwrap_or_default(),
                });
            }
        };
        checked(measure, value)
    }

    /// The FHIR `Quantity` (`valueQuantity`, `component.valueQuantity`).
    pub fn quantity_json(&self) -> Value {
        let spec = self.measure.spec();
        json!({
            "value": self.value.to_json(),
            "unit": spec.display,
            "system": UCUM,
            "code": spec.canonical,
        })
    }
}

/// A measurement and, when the input was not already the canonical UCUM
/// code, the value and unit as received (for `Observation.note` or an
/// original-value extension).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Normalized {
    pub measurement: Measurement,
    pub original: Option<(Decimal, String)>,
}

/// Converts `value` expressed in `unit` to the canonical unit of `measure`
/// and checks that it is plausible. `unit` is trimmed; its spelling must be
/// one of [`Measure::accepted_units`] exactly (UCUM is case-sensitive).
pub fn normalize(measure: Measure, value: Decimal, unit: &str) -> Result<Normalized, UnitError> {
    let spec = measure.spec();
    let unit = unit.trim();
    if unit.is_empty() {
        return Err(UnitError::MissingUnit { measure });
    }
    let input = spec
        .units
        .iter()
        .find(|u| u.code == unit)
        .ok_or_else(|| UnitError::UnknownUnit {
            measure,
            unit: unit.to_string(),
            accepted: spec.units.iter().map(|u| u.code).collect::<Vec<_>>().join(", "),
        })?;
    let canonical = spec
        .units
        .iter()
        .find(|u| u.code == spec.canonical)
        .ok_or(UnitError::Internal)?;
    // value × (input/base) ÷ (canonical/base)
    let converted = value
        .convert(input.num * canonical.den, input.den * canonical.num)
        .ok_or_else(|| UnitError::TooManyDigits {
            found: value.to_string(),
        })?;
    let measurement = checked(measure, converted)?;
    let original = (unit != spec.canonical).then(|| (value, unit.to_string()));
    Ok(Normalized { measurement, original })
}

/// [`normalize`] for text input: a localized number and a unit.
pub fn normalize_text(measure: Measure, value: &str, unit: &str) -> Result<Normalized, UnitError> {
    normalize(measure, Decimal::parse_localized(value)?, unit)
}

fn checked(measure: Measure, value: Decimal) -> Result<Measurement, UnitError> {
    let (min, max) = measure.bounds();
    if value.cmp_value(&min) == Ordering::Less || value.cmp_value(&max) == Ordering::Greater {
        return Err(UnitError::OutOfRange {
            measure,
            value,
            unit: measure.canonical_unit(),
            min,
            max,
        });
    }
    Ok(Measurement { measure, value })
}

/// BMI = weight (kg) / height (m)², rounded to one decimal half away from
/// zero: the clinical convention (WHO classes cut at 18.5, 25, 30, 35, 40),
/// and about the precision weight and height measured to 1 kg and 1 cm
/// support. Computed exactly from the decimals, then checked for
/// plausibility like any BMI.
pub fn bmi(weight: &Measurement, height: &Measurement) -> Result<Measurement, UnitError> {
    for (m, expected) in [(weight, Measure::BodyWeight), (height, Measure::BodyHeight)] {
        if m.measure != expected {
            return Err(UnitError::WrongMeasure {
                expected,
                found: m.measure,
            });
        }
    }
    let (w, h) = (weight.value, height.value);
    // kg / (cm/100)² × 10 (one decimal) = wm·10^-ws · 10^5 / (hm²·10^-2hs)
    let exponent = 2 * i64::from(h.scale) - i64::from(w.scale) + 5;
    let pow = |e: i64| u32::try_from(e).ok().and_then(|e| 10i128.checked_pow(e));
    let too_precise = || UnitError::TooManyDigits {
        found: format!("{w} kg, {h} cm"),
    };
    let h2 = h.mantissa.checked_mul(h.mantissa).ok_or_else(too_precise)?;
    let (n, den) = if exponent >= 0 {
        (w.mantissa.checked_mul(pow(exponent).ok_or_else(too_precise)?), h2)
    } else {
        (
            Some(w.mantissa),
            h2.checked_mul(pow(-exponent).ok_or_else(too_precise)?)
                .ok_or_else(too_precise)?,
        )
    };
    let n = n.ok_or_else(too_precise)?;
    if den <= 0 {
        return Err(UnitError::Internal);
    }
    checked(
        Measure::Bmi,
        Decimal {
            mantissa: div_round(n, den),
            scale: 1,
        },
    )
}

// ---------------------------------------------------------------------------
// Errors

/// Why a measurement was refused, worded for an OperationOutcome.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    #[error("'{found}' is not a decimal number")]
    NotANumber { found: String },
    #[error("'{found}' has more digits than a measurement carries (at most 15, of which 9 decimals)")]
    TooManyDigits { found: String },
    #[error("no unit given for {measure}")]
    MissingUnit { measure: Measure },
    #[error("unit '{unit}' is not accepted for {measure} (accepted: {accepted})")]
    UnknownUnit {
        measure: Measure,
        unit: String,
        accepted: String,
    },
    #[error("{value} {unit} is not a plausible {measure} (expected {min} to {max} {unit})")]
    OutOfRange {
        measure: Measure,
        value: Decimal,
        unit: &'static str,
        min: Decimal,
        max: Decimal,
    },
    #[error("a {expected} was expected, not a {found}")]
    WrongMeasure { expected: Measure, found: Measure },
    #[error("a {measure} must be a Quantity with system {UCUM} and code '{expected}', not '{found}'")]
    NotCanonical {
        measure: Measure,
        expected: &'static str,
        found: String,
    },
    #[error("unit table inconsistency")]
    Internal,
}

impl UnitError {
    /// The OperationOutcome issue for this error at `expression` (FHIRPath of
    /// the Quantity or of the flat-API field).
    pub fn to_issue(&self, expression: impl Into<String>) -> Issue {
        let (severity, code) = match self {
            UnitError::MissingUnit { .. } | UnitError::UnknownUnit { .. } | UnitError::NotCanonical { .. } => {
                (Severity::Error, "code-invalid")
            }
            UnitError::NotANumber { .. } | UnitError::TooManyDigits { .. } | UnitError::OutOfRange { .. } => {
                (Severity::Error, "value")
            }
            UnitError::WrongMeasure { .. } => (Severity::Error, "processing"),
            UnitError::Internal => (Severity::Fatal, "exception"),
        };
        Issue {
            severity,
            code,
            diagnostics: self.to_string(),
            expression: vec![expression.into()],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dec(s: &str) -> Decimal {
        Decimal::parse(s).unwrap()
    }

    fn norm(measure: Measure, value: &str, unit: &str) -> Result<String, UnitError> {
        normalize(measure, dec(value), unit).map(|n| n.measurement.value().to_string())
    }

    #[test]
    fn decimals_keep_the_digits_they_were_written_with() {
        for s in [
            "72",
            "72.0",
            "1.50",
            "-3.5",
            "0.05",
            "0",
            "-0.5",
            "100000",
            "0.000000001",
        ] {
            assert_eq!(dec(s).to_string(), s);
        }
        assert_eq!(dec("7.2e1").to_string(), "72");
        assert_eq!(dec("72E-1").to_string(), "7.2");
        assert_eq!(dec("7e+2").to_string(), "700");
        assert_ne!(dec("72"), dec("72.0"));
        assert_eq!(dec("72").cmp_value(&dec("72.0")), Ordering::Equal);
        assert_eq!(dec("-1.5").cmp_value(&dec("-1.49")), Ordering::Less);
    }

    #[test]
    fn malformed_numbers_are_refused() {
        for s in [
            "", "abc", "1.", ".5", "01", "+1", "1,5", "NaN", "1e", "--1", "1.2.3", " 1",
        ] {
            assert!(
                matches!(Decimal::parse(s), Err(UnitError::NotANumber { .. })),
                "{s:?} should be refused"
            );
        }
        for s in ["1234567890123456", "1e400", "1e-400", "0.0000000001"] {
            assert!(
                matches!(Decimal::parse(s), Err(UnitError::TooManyDigits { .. })),
                "{s:?} should be refused"
            );
        }
    }

    #[test]
    fn csv_numbers_may_use_a_decimal_comma() {
        assert_eq!(Decimal::parse_localized(" 72,5 ").unwrap().to_string(), "72.5");
        assert_eq!(Decimal::parse_localized("72.5").unwrap().to_string(), "72.5");
        // A comma is a decimal separator, never a thousands separator.
        assert_eq!(Decimal::parse_localized("1,500").unwrap().to_string(), "1.500");
        assert!(Decimal::parse_localized("1 500").is_err());
        assert!(Decimal::parse_localized("1,5,0").is_err());
        assert!(Decimal::parse_localized("1.5,0").is_err());
    }

    #[test]
    fn json_numbers_round_trip_with_their_precision() {
        let v: Value = serde_json::from_str("[72, 72.50, \"72,5\", true]").unwrap();
        assert_eq!(Decimal::from_json(&v[0]).unwrap().to_string(), "72");
        assert_eq!(Decimal::from_json(&v[1]).unwrap().to_string(), "72.50");
        assert_eq!(Decimal::from_json(&v[2]).unwrap().to_string(), "72.5");
        assert!(Decimal::from_json(&v[3]).is_err());
        assert_eq!(serde_json::to_string(&dec("72.50").to_json()).unwrap(), "72.50");
        assert_eq!(serde_json::to_string(&dec("72").to_json()).unwrap(), "72");
    }

    #[test]
    fn weight_converts_to_kilograms() {
        assert_eq!(norm(Measure::BodyWeight, "72", "kg").unwrap(), "72");
        assert_eq!(norm(Measure::BodyWeight, "72.4", "Kg").unwrap(), "72.4");
        // Powers of ten shift the point and keep the resolution.
        assert_eq!(norm(Measure::BodyWeight, "72000", "g").unwrap(), "72.000");
        assert_eq!(norm(Measure::BodyWeight, "72500", "gr").unwrap(), "72.500");
        // 1 lb ≈ 0.45 kg: one decimal for whole pounds, two for tenths.
        assert_eq!(norm(Measure::BodyWeight, "160", "lb").unwrap(), "72.6");
        assert_eq!(norm(Measure::BodyWeight, "160", "[lb_av]").unwrap(), "72.6");
        assert_eq!(norm(Measure::BodyWeight, "160.5", "lbs").unwrap(), "72.80");
    }

    #[test]
    fn lengths_convert_to_the_unit_of_each_measure() {
        assert_eq!(norm(Measure::BodyHeight, "1.65", "m").unwrap(), "165");
        assert_eq!(norm(Measure::BodyHeight, "1.655", "m").unwrap(), "165.5");
        assert_eq!(norm(Measure::BodyHeight, "165", "cm").unwrap(), "165");
        assert_eq!(norm(Measure::BodyHeight, "1650", "mm").unwrap(), "165.0");
        // 1 in = 2.54 cm: whole inches give whole centimetres (165.1 → 165).
        assert_eq!(norm(Measure::BodyHeight, "65", "[in_i]").unwrap(), "165");
        assert_eq!(norm(Measure::WaistCircumference, "0.92", "m").unwrap(), "92");
        assert_eq!(norm(Measure::SixMinuteWalkDistance, "450", "m").unwrap(), "450");
        assert_eq!(norm(Measure::SixMinuteWalkDistance, "0.45", "km").unwrap(), "450");
        assert_eq!(norm(Measure::SitAndReach, "-5", "cm").unwrap(), "-5");
        assert_eq!(norm(Measure::SitAndReach, "-55", "mm").unwrap(), "-5.5");
    }

    #[test]
    fn vitals_convert_to_ucum() {
        let hr = normalize(Measure::HeartRate, dec("72"), "bpm").unwrap();
        assert_eq!(hr.measurement.value().to_string(), "72");
        assert_eq!(hr.measurement.unit(), "/min");
        assert_eq!(hr.original, Some((dec("72"), "bpm".to_string())));
        assert_eq!(norm(Measure::HeartRate, "64", "{beats}/min").unwrap(), "64");
        assert_eq!(norm(Measure::SystolicBloodPressure, "132", "mmHg").unwrap(), "132");
        // "12/8" in centimetres of mercury.
        assert_eq!(norm(Measure::SystolicBloodPressure, "12", "cmHg").unwrap(), "120");
        assert_eq!(norm(Measure::DiastolicBloodPressure, "8.5", "cm[Hg]").unwrap(), "85");
        assert_eq!(norm(Measure::Bmi, "24.2", "kg/m²").unwrap(), "24.2");
    }

    #[test]
    fn durations_convert_to_seconds() {
        assert_eq!(norm(Measure::TimedUpAndGo, "12.3", "s").unwrap(), "12.3");
        assert_eq!(norm(Measure::TimedUpAndGo, "12.34", "sec").unwrap(), "12.34");
        assert_eq!(norm(Measure::FiveTimesSitToStand, "14", "secondes").unwrap(), "14");
        assert_eq!(norm(Measure::UnipodalStance, "2", "min").unwrap(), "120");
        assert_eq!(norm(Measure::UnipodalStance, "1.5", "mn").unwrap(), "90");
        assert_eq!(norm(Measure::UnipodalStance, "2.25", "min").unwrap(), "135.0");
        assert_eq!(norm(Measure::TimedUpAndGo, "9500", "ms").unwrap(), "9.500");
    }

    #[test]
    fn activity_volumes_counts_and_scores() {
        assert_eq!(
            norm(Measure::ModerateToVigorousMinutesPerWeek, "2.5", "h/wk").unwrap(),
            "150"
        );
        assert_eq!(
            norm(Measure::ModerateToVigorousMinutesPerWeek, "150", "min/semaine").unwrap(),
            "150"
        );
        assert_eq!(norm(Measure::MinutesPerActiveDay, "1", "h/jour").unwrap(), "60");
        assert_eq!(norm(Measure::ModerateToVigorousDaysPerWeek, "3", "j/sem").unwrap(), "3");
        assert_eq!(norm(Measure::StepsPerDay, "6500", "1/(24.h)").unwrap(), "6500");
        assert_eq!(norm(Measure::StepsPerDay, "6500", "pas/jour").unwrap(), "6500");
        assert_eq!(norm(Measure::ChairStand30s, "11", "{#}").unwrap(), "11");
        assert_eq!(norm(Measure::ChairStand30s, "11", "reps").unwrap(), "11");
        assert_eq!(norm(Measure::GripStrength, "28.5", "kgf").unwrap(), "28.5");
        assert_eq!(norm(Measure::MetMinutesPerWeek, "1200", "MET-min/wk").unwrap(), "1200");
        assert_eq!(norm(Measure::AttendanceRate, "85", "%").unwrap(), "85");
        assert_eq!(norm(Measure::BorgRpe, "13", "{score}").unwrap(), "13");
        assert_eq!(norm(Measure::EpicesScore, "30.17", "score").unwrap(), "30.17");
        assert_eq!(norm(Measure::RicciGagnonScore, "18", "pts").unwrap(), "18");
    }

    #[test]
    fn unknown_units_are_refused_not_guessed() {
        for (measure, unit) in [
            (Measure::BodyHeight, "M"),     // mega? metre? not guessed
            (Measure::BodyWeight, "livre"), // 500 g in French usage, not a pound
            (Measure::BodyWeight, "bpm"),   // a unit of another quantity
            (Measure::SystolicBloodPressure, "kPa"),
            (Measure::SystolicBloodPressure, "mmhg"),
            (Measure::TimedUpAndGo, "h"),
            (Measure::AttendanceRate, "1"), // a fraction is not a percentage
        ] {
            let e = normalize(measure, dec("1"), unit).unwrap_err();
            assert!(matches!(e, UnitError::UnknownUnit { .. }), "{measure} in {unit}: {e}");
        }
        let e = normalize(Measure::BodyHeight, dec("165"), "M").unwrap_err();
        assert_eq!(
            e.to_string(),
            "unit 'M' is not accepted for body height (accepted: m, cm, mm, km, [in_i], [ft_i], CM, Cm, MM, \
             mètres, metres, meters, in, inch, inches, ft)"
        );
        assert_eq!(
            normalize(Measure::BodyWeight, dec("72"), "  "),
            Err(UnitError::MissingUnit {
                measure: Measure::BodyWeight
            })
        );
    }

    #[test]
    fn implausible_values_are_refused() {
        let e = normalize(Measure::BodyWeight, dec("72000"), "kg").unwrap_err();
        assert_eq!(
            e.to_string(),
            "72000 kg is not a plausible body weight (expected 10 to 350 kg)"
        );
        // A height in metres labelled cm, a blood pressure in cmHg labelled mmHg.
        assert!(matches!(
            normalize(Measure::BodyHeight, dec("1.65"), "cm"),
            Err(UnitError::OutOfRange { .. })
        ));
        assert!(matches!(
            normalize(Measure::SystolicBloodPressure, dec("12"), "mmHg"),
            Err(UnitError::OutOfRange { .. })
        ));
        // Checked after conversion: 72 g is 0.072 kg.
        let e = normalize(Measure::BodyWeight, dec("72"), "g").unwrap_err();
        assert_eq!(
            e.to_string(),
            "0.072 kg is not a plausible body weight (expected 10 to 350 kg)"
        );
        assert!(normalize(Measure::SitAndReach, dec("-61"), "cm").is_err());
        assert!(normalize(Measure::AttendanceRate, dec("100.5"), "%").is_err());
        assert!(normalize(Measure::BorgRpe, dec("5"), "{score}").is_err());
        assert!(normalize(Measure::ModerateToVigorousDaysPerWeek, dec("8"), "d/wk").is_err());
        // Bounds are inclusive.
        assert!(normalize(Measure::BodyWeight, dec("10"), "kg").is_ok());
        assert!(normalize(Measure::BodyWeight, dec("9.99"), "kg").is_err());
        assert!(normalize(Measure::BodyWeight, dec("350.0"), "kg").is_ok());
        assert!(normalize(Measure::BodyWeight, dec("350.01"), "kg").is_err());
    }

    #[test]
    fn every_measure_accepts_its_canonical_unit_and_bounds() {
        for m in Measure::ALL {
            let spec = m.spec();
            let canonical = spec.units.iter().find(|u| u.code == spec.canonical);
            assert!(canonical.is_some(), "{m}: canonical unit missing from its table");
            let (min, max) = m.bounds();
            assert_eq!(min.cmp_value(&max), Ordering::Less, "{m}");
            for bound in [min, max] {
                let n = normalize(m, bound, spec.canonical).unwrap();
                assert_eq!(n.measurement.value(), bound);
                assert_eq!(n.original, None);
            }
            let mut codes: Vec<&str> = m.accepted_units().collect();
            let all = codes.len();
            codes.sort_unstable();
            codes.dedup();
            assert_eq!(codes.len(), all, "{m}: a spelling appears twice");
        }
    }

    fn measured(measure: Measure, value: &str, unit: &str) -> Measurement {
        normalize(measure, dec(value), unit).unwrap().measurement
    }

    #[test]
    fn bmi_is_weight_over_height_squared_to_one_decimal() {
        let bmi_of = |w: &str, h: &str| {
            bmi(
                &measured(Measure::BodyWeight, w, "kg"),
                &measured(Measure::BodyHeight, h, "cm"),
            )
            .map(|b| b.value().to_string())
        };
        assert_eq!(bmi_of("72", "165").unwrap(), "26.4"); // 26.446…
        assert_eq!(bmi_of("70", "175").unwrap(), "22.9"); // 22.857…
        assert_eq!(bmi_of("72.5", "165").unwrap(), "26.6"); // 26.629…
        assert_eq!(bmi_of("81", "180").unwrap(), "25.0"); // exactly 25
        assert_eq!(bmi_of("72.2", "152").unwrap(), "31.3"); // exactly 31.25: half away from zero
        assert_eq!(bmi_of("72.000", "165.0").unwrap(), "26.4");
        // From converted inputs.
        let b = bmi(
            &measured(Measure::BodyWeight, "160", "lb"),
            &measured(Measure::BodyHeight, "1.65", "m"),
        )
        .unwrap();
        assert_eq!(b.value().to_string(), "26.7"); // 72.6 kg / 1.65² = 26.666…
        assert_eq!(b.unit(), "kg/m2");
    }

    #[test]
    fn bmi_refuses_swapped_inputs_and_implausible_results() {
        let w = measured(Measure::BodyWeight, "72", "kg");
        let h = measured(Measure::BodyHeight, "165", "cm");
        assert_eq!(
            bmi(&h, &w),
            Err(UnitError::WrongMeasure {
                expected: Measure::BodyWeight,
                found: Measure::BodyHeight
            })
        );
        let heavy = measured(Measure::BodyWeight, "300", "kg");
        let short = measured(Measure::BodyHeight, "120", "cm");
        let e = bmi(&heavy, &short).unwrap_err();
        assert_eq!(
            e.to_string(),
            "208.3 kg/m2 is not a plausible body mass index (expected 10 to 80 kg/m2)"
        );
    }

    #[test]
    fn stored_quantities_must_already_be_canonical() {
        let q = json!({"value": 72.5, "unit": "kg", "system": UCUM, "code": "kg"});
        let m = Measurement::from_quantity(Measure::BodyWeight, &q).unwrap();
        assert_eq!(m.value().to_string(), "72.5");
        assert_eq!(
            Measurement::from_quantity(Measure::BodyWeight, &m.quantity_json()),
            Ok(m)
        );

        let lb = json!({"value": 160, "unit": "lb", "system": UCUM, "code": "[lb_av]"});
        let e = Measurement::from_quantity(Measure::BodyWeight, &lb).unwrap_err();
        assert_eq!(
            e.to_string(),
            "a body weight must be a Quantity with system http://unitsofmeasure.org and code 'kg', not '[lb_av]'"
        );
        let no_system = json!({"value": 72, "code": "kg"});
        assert!(matches!(
            Measurement::from_quantity(Measure::BodyWeight, &no_system),
            Err(UnitError::NotCanonical { .. })
        ));
        let text = json!({"value": "72", "system": UCUM, "code": "kg"});
        assert!(matches!(
            Measurement::from_quantity(Measure::BodyWeight, &text),
            Err(UnitError::NotANumber { .. })
        ));
        let implausible = json!({"value": 720, "system": UCUM, "code": "kg"});
        let issue = Measurement::from_quantity(Measure::BodyWeight, &implausible)
            .unwrap_err()
            .to_issue("Observation.valueQuantity");
        assert_eq!(issue.code, "value");
        assert_eq!(issue.expression, vec!["Observation.valueQuantity".to_string()]);
        let issue = normalize(Measure::BodyWeight, dec("72"), "st")
            .unwrap_err()
            .to_issue("weight_unit");
        assert_eq!(issue.code, "code-invalid");
    }

    #[test]
    fn measurements_become_ucum_quantities() {
        let q = measured(Measure::BodyWeight, "160", "lb").quantity_json();
        assert_eq!(
            serde_json::to_string(&q).unwrap(),
            r#"{"value":72.6,"unit":"kg","system":"http://unitsofmeasure.org","code":"kg"}"#
        );
        let q = measured(Measure::SystolicBloodPressure, "12", "cmHg").quantity_json();
        assert_eq!(q["code"], "mm[Hg]");
        assert_eq!(q["unit"], "mmHg");
        assert_eq!(serde_json::to_string(&q["value"]).unwrap(), "120");
        let q = measured(Measure::BodyHeight, "1650", "mm").quantity_json();
        assert_eq!(serde_json::to_string(&q["value"]).unwrap(), "165.0");
    }
}
