//! FHIR primitive values as search sees them: dates widened to their
//! precision, decimals with the range their written precision implies.

use super::model::DateRange;

const MICROS_PER_SEC: i64 = 1_000_000;

/// Days from 1970-01-01 to y-m-d (proleptic Gregorian), Howard Hinnant's
/// `days_from_civil`.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        _ => 28,
    }
}

fn digits(s: &str, n: usize) -> Option<i64> {
    if s.len() != n || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Parses a FHIR `date`, `dateTime` or `instant` (`2024`, `2024-03`,
/// `2024-03-05`, `2024-03-05T10:00`, `2024-03-05T10:00:00.250+01:00`) into
/// the interval it denotes. Values without a time zone are taken as UTC.
/// `None` when the text is not a valid FHIR date.
pub fn date_range(s: &str) -> Option<DateRange> {
    let (date, time) = match s.split_once('T') {
        Some((d, t)) => (d, Some(t)),
        None => (s, None),
    };
    let mut parts = date.split('-');
    let y = digits(parts.next()?, 4)?;
    let m = match parts.next() {
        Some(p) => Some(digits(p, 2)?),
        None => None,
    };
    let d = match parts.next() {
        Some(p) => Some(digits(p, 2)?),
        None => None,
    };
    if parts.next().is_some() {
        return None;
    }
    if let Some(m) = m {
        if !(1..=12).contains(&m) {
            return None;
        }
        if let Some(d) = d
            && !(1..=days_in_month(y, m)).contains(&d)
        {
            return None;
        }
    }
    let Some(time) = time else {
        return Some(match (m, d) {
            (None, _) => span(days_from_civil(y, 1, 1), days_from_civil(y + 1, 1, 1)),
            (Some(m), None) => {
                let next = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                span(days_from_civil(y, m, 1), days_from_civil(next.0, next.1, 1))
            }
            (Some(m), Some(d)) => {
                let day = days_from_civil(y, m, d);
                span(day, day + 1)
            }
        });
    };
    let (m, d) = (m?, d?);
    // Split the zone off: Z, +hh:mm or -hh:mm.
    let (clock, offset_secs) = if let Some(c) = time.strip_suffix('Z') {
        (c, 0)
    } else if let Some(i) = time.rfind(['+', '-']) {
        let (c, z) = time.split_at(i);
        let sign = if z.starts_with('-') { -1 } else { 1 };
        let (zh, zm) = z[1..].split_once(':')?;
        let (zh, zm) = (digits(zh, 2)?, digits(zm, 2)?);
        if zh > 14 || zm > 59 {
            return None;
        }
        (c, sign * (zh * 3600 + zm * 60))
    } else {
        (time, 0)
    };
    let mut hms = clock.split(':');
    let h = digits(hms.next()?, 2)?;
    let mi = digits(hms.next()?, 2)?;
    let sec_part = hms.next();
    if hms.next().is_some() || h > 23 || mi > 59 {
        return None;
    }
    let (sec, frac, frac_digits) = match sec_part {
        None => (0, 0, None),
        Some(sp) => {
            let (whole, frac) = match sp.split_once('.') {
                Some((w, f)) => (w, Some(f)),
                None => (sp, None),
            };
            let sec = digits(whole, 2)?;
            if sec > 60 {
                return None;
            }
            match frac {
                None => (sec, 0, Some(0)),
                Some(f) => {
                    if f.is_empty() || !f.bytes().all(|b| b.is_ascii_digit()) {
                        return None;
                    }
                    let kept = &f[..f.len().min(6)];
                    let micros: i64 = kept.parse().ok()?;
                    let scale = 10_i64.pow(6 - kept.len() as u32);
                    (sec, micros * scale, Some(kept.len() as u32))
                }
            }
        }
    };
    let secs = days_from_civil(y, m, d) * 86_400 + h * 3600 + mi * 60 + sec - offset_secs;
    let lo = secs * MICROS_PER_SEC + frac;
    let width = match frac_digits {
        None => 60 * MICROS_PER_SEC,
        Some(n) => 10_i64.pow(6 - n),
    };
    Some(DateRange { lo, hi: lo + width - 1 })
}

fn span(from_day: i64, to_day: i64) -> DateRange {
    DateRange {
        lo: from_day * 86_400 * MICROS_PER_SEC,
        hi: to_day * 86_400 * MICROS_PER_SEC - 1,
    }
}

/// Formats microseconds since the epoch as a FHIR instant with microsecond
/// precision, e.g. `2026-11-23T08:01:02.123456Z`.
pub fn format_instant(micros: i64) -> String {
    let secs = micros.div_euclid(MICROS_PER_SEC);
    let frac = micros.rem_euclid(MICROS_PER_SEC);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{frac:06}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Formats as an HTTP date (RFC 7231 IMF-fixdate), for `Last-Modified`.
pub fn format_http_date(micros: i64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = micros.div_euclid(MICROS_PER_SEC);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{}, {d:02} {} {y:04} {:02}:{:02}:{:02} GMT",
        DAYS[days.rem_euclid(7) as usize],
        MONTHS[(m - 1) as usize],
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Parses a FHIR decimal as written and returns it with the interval its
/// precision implies: `100` → (100, 99.5, 100.5), `1.50` → (1.5, 1.495, 1.505),
/// `1e2` → (100, 50, 150): one significant figure.
pub fn decimal_with_precision(s: &str) -> Option<(f64, f64, f64)> {
    let valid = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'+' | b'e' | b'E'));
    if !valid {
        return None;
    }
    let value: f64 = s.parse().ok()?;
    if !value.is_finite() {
        return None;
    }
    let (mantissa, exp) = match s.find(['e', 'E']) {
        Some(i) => (&s[..i], s[i + 1..].parse::<i32>().ok()?),
        None => (s, 0),
    };
    // Saturating: `0.5e-2147483648` must not overflow the exponent.
    let decimals = mantissa
        .split_once('.')
        .map_or(0, |(_, f)| i32::try_from(f.len()).unwrap_or(i32::MAX));
    let half = 0.5 * 10f64.powi(exp.saturating_sub(decimals));
    if !half.is_finite() {
        return None;
    }
    Some((value, value - half, value + half))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_widen_to_their_precision() {
        let y = date_range("2024").unwrap();
        assert_eq!(format_instant(y.lo), "2024-01-01T00:00:00.000000Z");
        assert_eq!(format_instant(y.hi), "2024-12-31T23:59:59.999999Z");
        let m = date_range("2024-02").unwrap();
        assert_eq!(format_instant(m.hi), "2024-02-29T23:59:59.999999Z");
        let d = date_range("2024-03-05").unwrap();
        assert_eq!(d.hi - d.lo + 1, 86_400_000_000);
        let t = date_range("2024-03-05T10:00:00.25+01:00").unwrap();
        assert_eq!(format_instant(t.lo), "2024-03-05T09:00:00.250000Z");
        assert_eq!(t.hi - t.lo + 1, 10_000);
        let s = date_range("2024-03-05T10:00:00Z").unwrap();
        assert_eq!(s.hi - s.lo + 1, 1_000_000);
    }

    #[test]
    fn invalid_dates_are_refused() {
        for bad in [
            "24",
            "2024-13",
            "2024-02-30",
            "2024-3-05",
            "2024-03-05T25:00:00Z",
            "2024-03-05T10:00:00+15:00",
            "2024-03-05T10",
            "abc",
            "2024-03-05T10:00:00.Z",
        ] {
            assert_eq!(date_range(bad), None, "{bad}");
        }
    }

    #[test]
    fn http_dates() {
        assert_eq!(format_http_date(784_111_777_000_000), "Sun, 06 Nov 1994 08:49:37 GMT");
    }

    #[test]
    fn decimal_precision() {
        assert_eq!(decimal_with_precision("100"), Some((100.0, 99.5, 100.5)));
        let (v, lo, hi) = decimal_with_precision("1.50").unwrap();
        assert!((v - 1.5).abs() < 1e-12 && (lo - 1.495).abs() < 1e-12 && (hi - 1.505).abs() < 1e-12);
        assert_eq!(
            decimal_with_precision("1e2"),
            Some((100.0, 50.0, 150.0)),
            "one significant figure"
        );
        assert_eq!(decimal_with_precision("abc"), None);
        assert_eq!(decimal_with_precision("NaN"), None);
    }
}
