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
    match Iso::new(ms) {
        Some(iso) => iso.as_str().to_string(),
        None => match jiff::Timestamp::from_millisecond(ms) {
            Ok(ts) => format!("{ts:.3}"),
            Err(_) => ms.to_string(),
        },
    }
}

/// A timestamp of years 0000 to 9999 as ISO 8601 UTC with milliseconds, formatted on the stack:
/// pages of thousands of points format one per point, and this is about ten times faster than
/// a general formatter with an allocation each.
#[derive(Debug, Clone, Copy)]
pub struct Iso([u8; 24]);

impl Iso {
    /// `None` outside years 0000 to 9999.
    pub fn new(ms: i64) -> Option<Iso> {
        IsoFormatter::default().format(ms).map(|b| Iso(*b))
    }

    /// The formatted text.
    pub fn as_str(&self) -> &str {
        // Only ASCII digits and separators are ever written.
        std::str::from_utf8(&self.0).unwrap_or("")
    }
}

/// Formats timestamps like [`Iso`], reusing the date of the previous one when it is the same
/// day, as it is for consecutive points.
#[derive(Debug, Clone)]
pub struct IsoFormatter {
    day: i64,
    text: [u8; 24],
}

impl Default for IsoFormatter {
    fn default() -> Self {
        IsoFormatter {
            day: i64::MIN,
            text: *b"0000-00-00T00:00:00.000Z",
        }
    }
}

/// "00" to "99".
const PAIRS: &[u8; 200] = b"00010203040506070809101112131415161718192021222324252627282930313233343536373839404142434445464748495051525354555657585960616263646566676869707172737475767778798081828384858687888990919293949596979899";

impl IsoFormatter {
    /// The ISO 8601 bytes of `ms` (ASCII), or `None` outside years 0000 to 9999.
    pub fn format(&mut self, ms: i64) -> Option<&[u8; 24]> {
        // -62167219200000 is 0000-01-01T00:00:00Z.
        if !(-62_167_219_200_000..=MAX_TIMESTAMP).contains(&ms) {
            return None;
        }
        let days = ms.div_euclid(86_400_000);
        let of_day = ms.rem_euclid(86_400_000) as usize;
        let b = &mut self.text;
        let pair = |b: &mut [u8; 24], at: usize, v: usize| {
            b[at..at + 2].copy_from_slice(&PAIRS[v * 2..v * 2 + 2]);
        };
        if days != self.day {
            self.day = days;
            // Days to a civil date (H. Hinnant's algorithm, proleptic Gregorian).
            let z = days + 719_468;
            let era = z.div_euclid(146_097);
            let doe = z - era * 146_097;
            let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
            let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
            let mp = (5 * doy + 2) / 153;
            let day = doy - (153 * mp + 2) / 5 + 1;
            let month = if mp < 10 { mp + 3 } else { mp - 9 };
            let year = (yoe + era * 400 + i64::from(month <= 2)) as usize;
            pair(b, 0, year / 100);
            pair(b, 2, year % 100);
            pair(b, 5, month as usize);
            pair(b, 8, day as usize);
        }
        let secs = of_day / 1000;
        pair(b, 11, secs / 3600);
        pair(b, 14, secs / 60 % 60);
        pair(b, 17, secs % 60);
        let milli = of_day % 1000;
        b[20] = b'0' + (milli / 100) as u8;
        pair(b, 21, milli % 100);
        Some(&self.text)
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
    fn the_stack_formatter_agrees_with_jiff() {
        let jiff_iso = |ms: i64| format!("{:.3}", jiff::Timestamp::from_millisecond(ms).unwrap());
        // jiff's range ends a day early (9999-12-30T22:00Z, to allow any offset).
        let jiff_max = 253_402_207_200_000;
        let mut ms = -62_167_219_200_000i64;
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut fmt = IsoFormatter::default();
        while ms <= jiff_max {
            assert_eq!(Iso::new(ms).unwrap().as_str(), jiff_iso(ms), "{ms}");
            // The reusing formatter, on the same day and on the next.
            for next in [ms, ms + 1, ms + 999, ms + 86_399_999] {
                if next <= jiff_max {
                    let got = fmt.format(next).unwrap();
                    assert_eq!(std::str::from_utf8(got).unwrap(), jiff_iso(next), "{next}");
                }
            }
            // Leap days, century and 400-year boundaries, month ends, and random steps.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ms += (x % 40_000_000_000) as i64 + 1;
        }
        for ms in [
            0,
            951_782_400_000,     // 2000-02-29
            951_868_800_000 - 1, // 2000-02-29T23:59:59.999
            4_107_456_000_000,   // 2100-02-28
            4_107_542_400_000,   // 2100-03-01
            jiff_max,
            -62_167_219_200_000,
            -1,
        ] {
            assert_eq!(Iso::new(ms).unwrap().as_str(), jiff_iso(ms), "{ms}");
        }
        assert_eq!(format_iso(MAX_TIMESTAMP), "9999-12-31T23:59:59.999Z");
        assert!(Iso::new(MAX_TIMESTAMP + 1).is_none());
        assert!(Iso::new(-62_167_219_200_001).is_none());
        assert_eq!(
            format_iso(MAX_TIMESTAMP + 1),
            (MAX_TIMESTAMP + 1).to_string()
        );
    }

    #[test]
    fn formats_iso_with_millis() {
        assert_eq!(format_iso(1_700_000_000_120), "2023-11-14T22:13:20.120Z");
        assert_eq!(format_iso(0), "1970-01-01T00:00:00.000Z");
    }
}
