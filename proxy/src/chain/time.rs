//! Chain time: `YYYY-MM-DDTHH:MM:SS` in UTC, as graphene prints `time`,
//! `next_maintenance_time` and friends, to and from unix seconds.

use super::ChainError;

fn excerpt(s: &str) -> String {
    s.chars().take(40).collect()
}

/// Parses a BitShares chain time, `"YYYY-MM-DDTHH:MM:SS"` in UTC without a
/// zone suffix, into unix seconds.
///
/// Strict: exactly that shape, ASCII digits only, month 1–12, day valid for
/// the month (proleptic Gregorian leap years), hour 0–23, minute and second
/// 0–59 (the chain never emits leap seconds). Years 0000–9999 are accepted;
/// years before 1970 give negative values.
pub fn parse_chain_time(s: &str) -> Result<i64, ChainError> {
    let bad = |reason| ChainError::BadTimeFormat {
        input: excerpt(s),
        reason,
    };
    let b = s.as_bytes();
    if b.len() != 19 {
        return Err(bad("expected exactly 19 characters, YYYY-MM-DDTHH:MM:SS"));
    }
    for (at, sep) in [(4, b'-'), (7, b'-'), (10, b'T'), (13, b':'), (16, b':')] {
        if b.get(at) != Some(&sep) {
            return Err(bad("separators must be YYYY-MM-DDTHH:MM:SS"));
        }
    }
    let field = |from: usize, to: usize| -> Result<u32, ChainError> {
        let digits = b.get(from..to).unwrap_or_default();
        let mut value = 0u32;
        for &d in digits {
            if !d.is_ascii_digit() {
                return Err(bad("date and time fields must be decimal digits"));
            }
            value = value * 10 + u32::from(d - b'0');
        }
        Ok(value)
    };
    let year = field(0, 4)?;
    let month = field(5, 7)?;
    let day = field(8, 10)?;
    let hour = field(11, 13)?;
    let minute = field(14, 16)?;
    let second = field(17, 19)?;

    let out_of_range = |field, value| ChainError::FieldOutOfRange {
        input: excerpt(s),
        field,
        value,
    };
    if !(1..=12).contains(&month) {
        return Err(out_of_range("month", month));
    }
    if day == 0 || day > days_in_month(year, month) {
        return Err(out_of_range("day", day));
    }
    if hour > 23 {
        return Err(out_of_range("hour", hour));
    }
    if minute > 59 {
        return Err(out_of_range("minute", minute));
    }
    if second > 59 {
        return Err(out_of_range("second", second));
    }
    let days = days_from_civil(i64::from(year), month, day);
    Ok(days * 86_400 + i64::from(hour * 3600 + minute * 60 + second))
}

/// Formats unix seconds as a chain time, `"YYYY-MM-DDTHH:MM:SS"` (UTC). The
/// inverse of [`parse_chain_time`] for years 0000–9999; never panics.
pub fn format_chain_time(unix: i64) -> String {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

fn is_leap_year(year: u32) -> bool {
    (year.is_multiple_of(4) && !year.is_multiple_of(100)) || year.is_multiple_of(400)
}

fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap_year(year) => 29,
        2 => 28,
        _ => 0,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date. Years are counted
/// from March so that the leap day is the last day of the counting year; a
/// 400-year era has 146,097 days.
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year.rem_euclid(400);
    let month_from_march = i64::from((month + 9) % 12);
    let day_of_year = (153 * month_from_march + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    // 719,468 days from 0000-03-01 to 1970-01-01.
    era * 146_097 + day_of_era - 719_468
}

/// Inverse of [`days_from_civil`]: (year, month, day).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days.saturating_add(719_468);
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era.saturating_mul(400);
    (if month <= 2 { year + 1 } else { year }, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::rules::sim::XorShift64;

    #[test]
    fn parse_chain_time_known_values() {
        assert_eq!(parse_chain_time("1970-01-01T00:00:00"), Ok(0));
        assert_eq!(parse_chain_time("1969-12-31T23:59:59"), Ok(-1));
        assert_eq!(parse_chain_time("2026-11-23T19:57:27"), Ok(1_795_463_847));
        assert_eq!(parse_chain_time("2026-11-23T00:00:00"), Ok(1_795_392_000));
        assert_eq!(parse_chain_time("2024-02-29T12:00:00"), Ok(1_709_208_000));
        assert_eq!(parse_chain_time("2000-03-01T00:00:00"), Ok(951_868_800));
        assert_eq!(parse_chain_time("2100-03-01T00:00:00"), Ok(4_107_542_400));
        assert_eq!(parse_chain_time("9999-12-31T23:59:59"), Ok(253_402_300_799));
        assert_eq!(parse_chain_time("0000-03-01T00:00:00"), Ok(-62_162_035_200));
        assert_eq!(parse_chain_time("2000-02-29T00:00:00"), Ok(951_782_400));
    }

    #[test]
    fn parse_chain_time_rejects_bad_input() {
        let out_of_range = |s: &str, f: &str| match parse_chain_time(s) {
            Err(ChainError::FieldOutOfRange { field, .. }) => assert_eq!(field, f, "{s}"),
            other => panic!("{s}: {other:?}"),
        };
        out_of_range("2023-02-29T00:00:00", "day");
        out_of_range("2100-02-29T00:00:00", "day");
        out_of_range("2026-04-31T00:00:00", "day");
        out_of_range("2026-01-00T00:00:00", "day");
        out_of_range("2026-13-01T00:00:00", "month");
        out_of_range("2026-00-01T00:00:00", "month");
        out_of_range("2026-01-01T24:00:00", "hour");
        out_of_range("2026-01-01T00:60:00", "minute");
        out_of_range("2026-01-01T00:00:60", "second");
        for bad in [
            "",
            "garbage",
            "2026-11-23 19:57:27",
            "2026-11-23T19:57:27Z",
            "2026-11-23T19:57:27.000",
            "2026/11/23T19:57:27",
            "2026-11-23T19-57-27",
            "+026-11-23T19:57:27",
            "2026-1a-23T19:57:27",
            "2026-11-23T19:57:2",
            "２026-11-23T19:57:2",
            "2026-11-23T19:57:\u{e9}",
            "2026-11-2\u{e9}19:57:27",
            "\"2026-11-23T19:57:27\"",
        ] {
            assert!(
                matches!(parse_chain_time(bad), Err(ChainError::BadTimeFormat { .. })),
                "{bad:?}: {:?}",
                parse_chain_time(bad)
            );
        }
        let long = "x".repeat(1000);
        let err = parse_chain_time(&long).unwrap_err();
        assert!(err.to_string().len() < 150, "{err}");
    }

    #[test]
    fn parse_chain_time_fuzz_never_panics() {
        let alphabet = b"0123456789-T:Z .+x";
        let mut rng = XorShift64::new(77);
        let mut accepted = 0;
        for _ in 0..200_000 {
            // Mostly well-shaped strings with random digits, some mutated.
            let mut text: Vec<u8> = b"2026-11-23T19:57:27".to_vec();
            for byte in text.iter_mut() {
                if byte.is_ascii_digit() {
                    *byte = b'0' + u8::try_from(rng.below(10)).unwrap();
                }
            }
            if rng.below(4) == 0 {
                let at = usize::try_from(rng.below(19)).unwrap();
                let with = usize::try_from(rng.below(alphabet.len() as u64)).unwrap();
                text[at] = alphabet[with];
            }
            let text = String::from_utf8(text).unwrap();
            if let Ok(t) = parse_chain_time(&text) {
                accepted += 1;
                assert_eq!(format_chain_time(t), text);
            }
        }
        assert!(accepted > 100, "{accepted}");
        let mut bytes = Vec::new();
        for _ in 0..20_000 {
            bytes.clear();
            for _ in 0..rng.below(30) {
                bytes.push(u8::try_from(rng.below(256)).unwrap());
            }
            let text = String::from_utf8_lossy(&bytes);
            let _ = parse_chain_time(&text);
        }
    }

    #[test]
    fn format_and_parse_round_trip() {
        let mut rng = XorShift64::new(5);
        let max = parse_chain_time("9999-12-31T23:59:59").unwrap();
        let min = parse_chain_time("0000-01-01T00:00:00").unwrap();
        let span = u64::try_from(max - min).unwrap();
        for _ in 0..20_000 {
            let t = min + i64::try_from(rng.below(span + 1)).unwrap();
            assert_eq!(parse_chain_time(&format_chain_time(t)), Ok(t));
        }
        // Every day of 1999..=2101 round-trips, so every leap rule is hit.
        let mut t = parse_chain_time("1999-01-01T00:00:00").unwrap();
        while t < parse_chain_time("2102-01-01T00:00:00").unwrap() {
            assert_eq!(
                parse_chain_time(&format_chain_time(t + 86_399)),
                Ok(t + 86_399)
            );
            t += 86_400;
        }
        assert_eq!(format_chain_time(1_795_463_847), "2026-11-23T19:57:27");
        // No panic at the extremes.
        let _ = format_chain_time(i64::MIN);
        let _ = format_chain_time(i64::MAX);
    }
}
