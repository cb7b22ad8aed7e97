//! Timestamps: the supported range, parsing (epoch ms, ISO 8601, relative) and formatting.
//!
//! Timestamps are milliseconds since the Unix epoch, UTC. The supported range is
//! 1970-01-01T00:00:00.000Z ..= 9999-12-31T23:59:59.999Z; anything finer than a millisecond is
//! truncated. Parsing functions take `now` as an argument so that they are pure.

use crate::error::{Result, StorageError};

/// Earliest supported timestamp (1970-01-01T00:00:00.000Z).
pub const MIN_TIMESTAMP: i64 = 0;
/// Latest supported timestamp (9999-12-31T23:59:59.999Z).
pub const MAX_TIMESTAMP: i64 = 253_402_300_799_999;

fn out_of_range(given: impl ToString) -> StorageError {
    StorageError::InvalidTimestamp {
        given: given.to_string(),
        reason: "outside the supported range 1970-01-01T00:00:00Z to 9999-12-31T23:59:59.999Z"
            .into(),
    }
}

/// Checks that `ms` lies in the supported range.
pub fn check_range(ms: i64) -> Result<i64> {
    if (MIN_TIMESTAMP..=MAX_TIMESTAMP).contains(&ms) {
        Ok(ms)
    } else {
        Err(out_of_range(ms))
    }
}

/// A timestamp given as a JSON/MessagePack float of epoch milliseconds, truncated to the ms.
pub fn from_f64_ms(ms: f64) -> Result<i64> {
    if !ms.is_finite() || ms < MIN_TIMESTAMP as f64 || ms >= (MAX_TIMESTAMP + 1) as f64 {
        return Err(out_of_range(ms));
    }
    Ok(ms.trunc() as i64)
}

/// Parses an absolute timestamp: epoch milliseconds (digits, optionally with a fraction) or
/// ISO 8601 / RFC 3339 (`2026-11-27T08:00:00.123Z`, with an offset, or without one as UTC).
pub fn parse_absolute(text: &str) -> Result<i64> {
    let t = text.trim();
    let bad = |reason: &str| StorageError::InvalidTimestamp {
        given: format!("{text:?}"),
        reason: reason.into(),
    };
    if t.is_empty() {
        return Err(bad("it is empty"));
    }
    if t.bytes()
        .all(|b| b.is_ascii_digit() || b == b'.' || b == b'-')
        && !t.contains("--")
    {
        if let Ok(ms) = t.parse::<i64>() {
            return check_range(ms).map_err(|_| out_of_range(format!("{text:?}")));
        }
        if let Ok(ms) = t.parse::<f64>() {
            return from_f64_ms(ms).map_err(|_| out_of_range(format!("{text:?}")));
        }
    }
    let ts = if let Ok(ts) = t.parse::<jiff::Timestamp>() {
        ts
    } else if let Ok(dt) = t.parse::<jiff::civil::DateTime>() {
        dt.to_zoned(jiff::tz::TimeZone::UTC)
            .map_err(|_| bad("not a valid date and time"))?
            .timestamp()
    } else if let Ok(d) = t.parse::<jiff::civil::Date>() {
        d.to_zoned(jiff::tz::TimeZone::UTC)
            .map_err(|_| bad("not a valid date"))?
            .timestamp()
    } else {
        return Err(bad(
            "expected epoch milliseconds, ISO 8601 (2026-11-27T08:00:00Z) or a relative time (-1d)",
        ));
    };
    let ms = ts.as_millisecond();
    check_range(ms).map_err(|_| out_of_range(format!("{text:?}")))
}

/// Parses a relative time such as `-1d`, `-15m`, `-30s`, `-2h`, `-1w` or `-500ms` against `now`;
/// `None` when `text` is not relative.
pub fn parse_relative(text: &str, now: i64) -> Option<Result<i64>> {
    let t = text.trim();
    let rest = t.strip_prefix('-')?;
    let split = rest.find(|c: char| !c.is_ascii_digit())?;
    let (num, unit) = rest.split_at(split);
    let n: i64 = num.parse().ok()?;
    let unit_ms: i64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        "w" => 7 * 86_400_000,
        _ => return None,
    };
    Some(
        n.checked_mul(unit_ms)
            .and_then(|d| now.checked_sub(d))
            .ok_or_else(|| out_of_range(format!("{text:?}")))
            .and_then(|ms| check_range(ms).map_err(|_| out_of_range(format!("{text:?}")))),
    )
}

/// Parses a query-parameter time: relative, epoch ms or ISO 8601.
pub fn parse_query_time(text: &str, now: i64) -> Result<i64> {
    match parse_relative(text, now) {
        Some(r) => r,
        None => parse_absolute(text),
    }
}

/// Formats epoch milliseconds as ISO 8601 UTC with milliseconds, e.g. `2026-11-27T08:00:00.123Z`.
pub fn format_iso(ms: i64) -> String {
    match jiff::Timestamp::from_millisecond(ms) {
        Ok(ts) => format!("{ts:.3}"),
        Err(_) => ms.to_string(),
    }
}

/// Milliseconds since the epoch now, from the system clock.
pub fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_absolute_forms() {
        assert_eq!(parse_absolute("1700000000123").unwrap(), 1_700_000_000_123);
        assert_eq!(
            parse_absolute("1700000000123.9").unwrap(),
            1_700_000_000_123
        );
        assert_eq!(
            parse_absolute("2023-11-14T22:13:20.123Z").unwrap(),
            1_700_000_000_123
        );
        assert_eq!(
            parse_absolute("2023-11-14T23:13:20.123+01:00").unwrap(),
            1_700_000_000_123
        );
        assert_eq!(
            parse_absolute("2023-11-14T22:13:20.123999Z").unwrap(),
            1_700_000_000_123
        );
        assert_eq!(
            parse_absolute("2023-11-14T22:13:20.123").unwrap(),
            1_700_000_000_123
        );
        assert_eq!(parse_absolute("1970-01-01").unwrap(), 0);
    }

    #[test]
    fn rejects_out_of_range_and_garbage() {
        assert!(parse_absolute("-5").is_err());
        assert!(parse_absolute("253402300800000").is_err());
        assert!(parse_absolute("1969-12-31T23:59:59Z").is_err());
        assert!(parse_absolute("yesterday")
            .unwrap_err()
            .to_string()
            .contains("ISO 8601"));
        assert!(from_f64_ms(f64::NAN).is_err());
        assert!(from_f64_ms(1e300).is_err());
    }

    #[test]
    fn parses_relative() {
        let now = 10 * 86_400_000;
        assert_eq!(parse_query_time("-1d", now).unwrap(), 9 * 86_400_000);
        assert_eq!(parse_query_time("-15m", now).unwrap(), now - 900_000);
        assert_eq!(parse_query_time("-1w", now).unwrap(), 3 * 86_400_000);
        assert!(parse_query_time("-20d", now).is_err());
        assert!(parse_query_time("-1y", now).is_err());
    }

    #[test]
    fn formats_iso_with_millis() {
        assert_eq!(format_iso(1_700_000_000_120), "2023-11-14T22:13:20.120Z");
        assert_eq!(format_iso(0), "1970-01-01T00:00:00.000Z");
    }
}
