//! Durations and timestamps: parsing and formatting.
//!
//! Timestamps are microseconds since the Unix epoch (UTC), durations are microseconds. Parsing
//! reads the fields by hand (it runs once per event) and leaves the calendar's rules to the
//! `time` crate: a date or time that does not exist (`2026-02-30`, `24:00:00`, a leap second
//! `23:59:60`, an offset beyond ±25:59) is an error, never rolled over into a valid one.

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
    let month = ::time::Month::try_from(u8::try_from(mo).ok()?).ok()?;
    ::time::Date::from_calendar_date(i32::try_from(y).ok()?, month, u8::try_from(d).ok()?).ok()?;
    if b.len() == 10 {
        return Some(from_civil(y, mo, d, 0, 0, 0, 0));
    }
    if !(b[10] == b'T' || b[10] == b' ' || b[10] == b't') || b.len() < 19 || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    // Leap seconds are refused, as Flink refuses them.
    ::time::Time::from_hms(u8::try_from(h).ok()?, u8::try_from(mi).ok()?, u8::try_from(sec).ok()?).ok()?;
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
                let (oh, om) = (num(i + 1..i + 3)?, num(i + 4..i + 6)?);
                ::time::UtcOffset::from_hms(i8::try_from(oh).ok()?, i8::try_from(om).ok()?, 0).ok()?;
                offset = sign * (oh * 3600 + om * 60);
            }
            _ => return None,
        }
    }
    Some(from_civil(y, mo, d, h, mi, sec, us) - offset * MICROS_PER_SEC)
}

/// Epoch milliseconds written as a JSON number (`1772150400000`, `1772150400000.5`, `1.7e12`)
/// to microseconds, from the decimal digits as written: digits below the microsecond are
/// dropped toward the past (floor), the rule for timestamp strings too, and nothing goes
/// through a binary float on the way. `None` for anything else, or beyond ±9e15 ms.
pub fn micros_from_epoch_ms(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    let (negative, b) = match b.split_first()? {
        (b'-', rest) => (true, rest),
        _ => (false, b),
    };
    let int_len = b.iter().position(|c| !c.is_ascii_digit()).unwrap_or(b.len());
    let (int, rest) = b.split_at(int_len);
    let (frac, rest) = match rest.split_first() {
        Some((b'.', r)) => {
            let n = r.iter().position(|c| !c.is_ascii_digit()).unwrap_or(r.len());
            if n == 0 {
                return None;
            }
            r.split_at(n)
        }
        _ => (&rest[..0], rest),
    };
    let exp: i64 = match rest.split_first() {
        None => 0,
        Some((b'e' | b'E', e)) => {
            let (sign, digits) = match e.split_first()? {
                (b'-', d) => (-1, d),
                (b'+', d) => (1, d),
                _ => (1, e),
            };
            if digits.is_empty() || digits.len() > 4 || !digits.iter().all(u8::is_ascii_digit) {
                return None;
            }
            sign * std::str::from_utf8(digits).ok()?.parse::<i64>().ok()?
        }
        _ => return None,
    };
    if int.is_empty() {
        return None;
    }
    // The digits of the number, and how many of them are whole microseconds.
    let digits = int.iter().chain(frac);
    let whole = int.len() as i64 + exp + 3;
    let mut us: i64 = 0;
    let mut dropped = false;
    for (i, &d) in digits.enumerate() {
        let d = i64::from(d - b'0');
        if (i as i64) < whole {
            us = us.checked_mul(10)?.checked_add(d)?;
        } else {
            dropped |= d != 0;
        }
    }
    // Zeros the exponent appends beyond the digits written.
    for _ in (int.len() + frac.len()) as i64..whole {
        us = us.checked_mul(10)?;
    }
    // ±9e15 ms: far beyond years 1 to 9999 (checked later), refused before anything overflows.
    if us >= 9_000_000_000_000_000_000 {
        return None;
    }
    Some(if negative { -us - i64::from(dropped) } else { us })
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
    fn epoch_milliseconds_floor_to_the_microsecond_like_strings() {
        let us = micros_from_epoch_ms;
        assert_eq!(us("1772150400000"), Some(1_772_150_400_000_000));
        assert_eq!(us("1.001"), Some(1001));
        assert_eq!(us("1.0019"), Some(1001));
        assert_eq!(us("1772150400000.0009"), Some(1_772_150_400_000_000));
        assert_eq!(us("1772150400000.5"), Some(1_772_150_400_000_500));
        assert_eq!(us("1.7721504e12"), Some(1_772_150_400_000_000));
        assert_eq!(us("17721504000001e-1"), Some(1_772_150_400_000_100));
        assert_eq!(us("-1.0005"), Some(-1001));
        assert_eq!(us("-1.5"), Some(-1500));
        assert_eq!(us("0.0004"), Some(0));
        assert_eq!(us("-0.0004"), Some(-1));
        assert_eq!(us("1e-300"), Some(0));
        assert_eq!(us("9e15"), None);
        assert_eq!(us("1e400"), None);
        for bad in ["", "-", "1.", ".5", "1e", "1e+", "abc", "1.5x", "\"1\""] {
            assert_eq!(us(bad), None, "{bad}");
        }
        // The same instants as strings: sub-microsecond digits are dropped the same way.
        assert_eq!(parse_timestamp("1970-01-01T00:00:00.0010019Z"), us("1.0019"));
        assert_eq!(parse_timestamp("1969-12-31T23:59:59.9989995Z"), us("-1.0005"));
    }

    #[test]
    fn timestamps_round_trip() {
        let t = parse_timestamp("2026-11-25T12:34:56.789Z").unwrap();
        assert_eq!(format_rfc3339(t), "2026-11-25T12:34:56.789Z");
        assert_eq!(parse_timestamp("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_timestamp("1970-01-01T01:00:00+01:00"), Some(0));
        assert_eq!(parse_timestamp("1969-12-31 23:59:59.5"), Some(-500_000));
        assert_eq!(parse_timestamp("2024-02-30x"), None);
        // Dates and times that do not exist are refused, not rolled over (issue 17).
        for bad in [
            "2026-02-30T00:00:00Z",
            "2025-02-29",
            "2026-04-31T12:00:00Z",
            "2026-02-27T23:59:60Z",
            "2026-02-27T24:00:00Z",
            "2026-02-27T12:60:00Z",
            "2026-13-01",
            "2026-00-10",
            "2026-01-00",
            "2026-02-27T12:00:00+26:00",
            "2026-02-27T12:00:00+01:60",
        ] {
            assert_eq!(parse_timestamp(bad), None, "{bad}");
        }
        assert!(parse_timestamp("2024-02-29T23:59:59.999999Z").is_some());
        assert!(parse_timestamp("2026-12-31T23:59:59-23:59").is_some());
        let leap = parse_timestamp("2024-02-29").unwrap();
        assert_eq!(format_rfc3339(leap), "2024-02-29T00:00:00.000Z");
    }
}
