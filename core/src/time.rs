//! Durations and timestamps: parsing and formatting without a calendar dependency.
//!
//! Timestamps are microseconds since the Unix epoch (UTC), durations are microseconds.

/// Event times must lie in years 1 to 9999; with durations capped at [`MAX_DURATION`], window
/// arithmetic on them cannot overflow.
pub const MIN_EVENT_TIME: i64 = -62_135_596_800_000_000;
pub const MAX_EVENT_TIME: i64 = 253_402_300_799_999_999;
/// The longest duration a job may configure (about 100 years).
pub const MAX_DURATION: i64 = 36_500 * 86_400 * MICROS_PER_SEC;

pub const MICROS_PER_MS: i64 = 1_000;
pub const MICROS_PER_SEC: i64 = 1_000_000;

/// Parses a duration such as `250ms`, `5s`, `1m30s`, `2h`, `7d` or `100us` into microseconds.
pub fn parse_duration(s: &str) -> Option<i64> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    if s == "0" {
        return Some(0);
    }
    let mut total: i64 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(rest.len());
        if digits == 0 {
            return None;
        }
        let number: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let unit = rest[..unit_len].trim();
        rest = &rest[unit_len..];
        let scale = match unit {
            "us" | "µs" | "micros" | "microsecond" | "microseconds" => 1,
            "ms" | "millis" | "millisecond" | "milliseconds" => MICROS_PER_MS,
            "s" | "sec" | "secs" | "second" | "seconds" => MICROS_PER_SEC,
            "m" | "min" | "mins" | "minute" | "minutes" => 60 * MICROS_PER_SEC,
            "h" | "hour" | "hours" => 3_600 * MICROS_PER_SEC,
            "d" | "day" | "days" => 86_400 * MICROS_PER_SEC,
            _ => return None,
        };
        total = total.checked_add((number * scale as f64).round() as i64)?;
    }
    Some(total)
}

/// Formats microseconds as a compact duration (`1m30s`, `250ms`).
pub fn format_duration(us: i64) -> String {
    if us == 0 {
        return "0s".into();
    }
    let sign = if us < 0 { "-" } else { "" };
    let mut rest = us.unsigned_abs();
    let mut out = String::from(sign);
    for (unit, scale) in [("d", 86_400_000_000u64), ("h", 3_600_000_000), ("m", 60_000_000), ("s", 1_000_000), ("ms", 1_000), ("us", 1)] {
        if rest >= scale {
            out.push_str(&format!("{}{}", rest / scale, unit));
            rest %= scale;
        }
    }
    out
}

// Howard Hinnant's days-from-civil algorithm (proleptic Gregorian calendar).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
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

/// Splits a timestamp into (year, month, day, hour, minute, second, microsecond).
pub fn to_civil(ts: i64) -> (i64, i64, i64, i64, i64, i64, i64) {
    let days = ts.div_euclid(86_400 * MICROS_PER_SEC);
    let in_day = ts.rem_euclid(86_400 * MICROS_PER_SEC);
    let (y, mo, d) = civil_from_days(days);
    let secs = in_day / MICROS_PER_SEC;
    (y, mo, d, secs / 3600, secs / 60 % 60, secs % 60, in_day % MICROS_PER_SEC)
}

pub fn from_civil(y: i64, mo: i64, d: i64, h: i64, mi: i64, s: i64, us: i64) -> i64 {
    (days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + s) * MICROS_PER_SEC + us
}

/// Formats as RFC 3339 in UTC with millisecond (or microsecond, when needed) precision.
pub fn format_rfc3339(ts: i64) -> String {
    let (y, mo, d, h, mi, s, us) = to_civil(ts);
    if us % 1000 == 0 {
        format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{:03}Z", us / 1000)
    } else {
        format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{us:06}Z")
    }
}

/// Parses `YYYY-MM-DD[T| ]HH:MM:SS[.fraction][Z|±HH:MM]` or a bare date. A missing offset means UTC.
pub fn parse_timestamp(s: &str) -> Option<i64> {
    let b = s.trim().as_bytes();
    // Digits by hand: this runs once per event for string timestamps.
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = b.get(r)?;
        let mut n = 0i64;
        for &d in part {
            if !d.is_ascii_digit() {
                return None;
            }
            n = n * 10 + (d - b'0') as i64;
        }
        Some(n)
    };
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) {
        return None;
    }
    if b.len() == 10 {
        return Some(from_civil(y, mo, d, 0, 0, 0, 0));
    }
    if !(b[10] == b'T' || b[10] == b' ' || b[10] == b't') || b.len() < 19 || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut i = 19;
    let mut us = 0i64;
    if i < b.len() && b[i] == b'.' {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            if i - start < 6 {
                us = us * 10 + (b[i] - b'0') as i64;
            }
            i += 1;
        }
        let digits = (i - start).min(6);
        if i == start {
            return None;
        }
        us *= 10i64.pow(6 - digits as u32);
    }
    let mut offset = 0i64;
    if i < b.len() {
        match b[i] {
            b'Z' | b'z' if i + 1 == b.len() => {}
            b'+' | b'-' if b.len() == i + 6 && b[i + 3] == b':' => {
                let sign = if b[i] == b'-' { -1 } else { 1 };
                offset = sign * (num(i + 1..i + 3)? * 3600 + num(i + 4..i + 6)? * 60);
            }
            _ => return None,
        }
    }
    Some(from_civil(y, mo, d, h, mi, sec, us) - offset * MICROS_PER_SEC)
}

/// Wall-clock time in microseconds since the epoch.
pub fn now_micros() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Some(250_000));
        assert_eq!(parse_duration("1m30s"), Some(90_000_000));
        assert_eq!(parse_duration("2h"), Some(7_200_000_000));
        assert_eq!(parse_duration("1.5s"), Some(1_500_000));
        assert_eq!(parse_duration("5 minutes"), Some(300_000_000));
        assert_eq!(parse_duration("abc"), None);
        assert_eq!(parse_duration("5x"), None);
        assert_eq!(format_duration(90_000_000), "1m30s");
    }

    #[test]
    fn timestamps_round_trip() {
        let t = parse_timestamp("2026-11-25T12:34:56.789Z").unwrap();
        assert_eq!(format_rfc3339(t), "2026-11-25T12:34:56.789Z");
        assert_eq!(parse_timestamp("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_timestamp("1970-01-01T01:00:00+01:00"), Some(0));
        assert_eq!(parse_timestamp("1969-12-31 23:59:59.5"), Some(-500_000));
        assert_eq!(parse_timestamp("2024-02-30x"), None);
        let leap = parse_timestamp("2024-02-29").unwrap();
        assert_eq!(format_rfc3339(leap), "2024-02-29T00:00:00.000Z");
    }
}
