//! Time as AWS and the logs write it, on one civil-date algorithm (Howard Hinnant's
//! days-from-civil and civil-from-days, public domain) instead of a date-time crate: three
//! formats and one parser are all the extension needs.
//! - [`iso8601_ceil`]: `YYYY-MM-DDThh:mm:ssZ` rounded *up* to the second, the form and
//!   precision of IAM's `aws:CurrentTime` and `aws:TokenIssueTime` comparisons;
//! - [`push_rfc3339_micros`]: `YYYY-MM-DDThh:mm:ss.uuuuuuZ`, every log line's timestamp;
//! - [`parse_amz_date`]: SigV4's `X-Amz-Date` (`YYYYMMDDThhmmssZ`).

use std::cell::RefCell;
use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `YYYY-MM-DDThh:mm:ssZ` for `time`, rounded up to the whole second, so a policy bound is
/// never earlier than the instant it stands for.
pub fn iso8601_ceil(time: SystemTime) -> String {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let seconds = since.as_secs() + u64::from(since.subsec_nanos() > 0);
    let mut text = String::with_capacity(20);
    push_seconds(&mut text, seconds);
    text.push('Z');
    text
}

/// Appends `time` as RFC 3339 with microseconds (`2025-11-24T16:00:00.000001Z`). Every log
/// line starts with one, so the digits are placed by hand: through `write!` and its padding
/// this was 7 % of a cached GET's instructions under callgrind. The date and time of day
/// change once a second: each thread keeps the last second's digits and writes only the
/// microseconds when the second is the same (the civil date and the twelve divisions were
/// about 180 of the 260 instructions this took per audit line).
pub fn push_rfc3339_micros(out: &mut String, time: SystemTime) {
    with_rfc3339_micros(time, |head, micros| {
        out.push_str(head);
        // Pushed as ASCII characters: no validating pass over a byte array (`str::from_utf8`
        // on the 27 bytes was a third of this function's ~320 instructions under callgrind).
        out.reserve(micros.len() + 1);
        for &digit in micros {
            out.push(char::from(digit));
        }
        out.push('Z');
    });
}

/// `time` as [`push_rfc3339_micros`] writes it, in two pieces handed to `f` without a buffer
/// of their own: the text up to the decimal point (`YYYY-MM-DDThh:mm:ss.`, the thread's kept
/// second) and the six digits of the microseconds; the `Z` is the caller's. A line whose rest
/// is kept (an audit line repeated) is then queued from the pieces as they are.
pub fn with_rfc3339_micros<R>(time: SystemTime, f: impl FnOnce(&str, &[u8; 6]) -> R) -> R {
    thread_local! {
        /// The last second formatted on this thread, and its `YYYY-MM-DDThh:mm:ss.` text.
        static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let seconds = since.as_secs();
    let mut micros = [0u8; 6];
    put_digits(&mut micros, u64::from(since.subsec_micros()));
    SECOND.with(|second| {
        let mut kept = second.try_borrow_mut().ok();
        if let Some(second) = kept.as_mut()
            && second.0 != seconds
        {
            match second_digits(seconds).as_ref().and_then(|digits| std::str::from_utf8(digits).ok()) {
                Some(digits) => {
                    second.1.clear();
                    second.1.push_str(digits);
                    second.0 = seconds;
                }
                None => kept = None,
            }
        }
        match kept {
            Some(second) => f(&second.1, &micros),
            // Re-entered on this thread, or past the year 9999: formatted here.
            None => {
                let mut head = String::with_capacity(24);
                push_seconds(&mut head, seconds);
                head.push('.');
                f(&head, &micros)
            }
        }
    })
}

/// The length of `YYYY-MM-DDThh:mm:ss.`, a timestamp's second up to the year 9999: what
/// [`with_rfc3339_micros`] hands out as the second up to then.
pub const SECOND_LEN: usize = 20;

/// `YYYY-MM-DDThh:mm:ss.` for `seconds` since the epoch; `None` past the year 9999.
fn second_digits(seconds: u64) -> Option<[u8; SECOND_LEN]> {
    let (year, month, day) = civil_from_days(seconds / 86_400);
    if year > 9_999 {
        return None;
    }
    let rest = seconds % 86_400;
    let mut text = *b"0000-00-00T00:00:00.";
    put_digits(&mut text[0..4], year);
    put_digits(&mut text[5..7], month);
    put_digits(&mut text[8..10], day);
    put_digits(&mut text[11..13], rest / 3_600);
    put_digits(&mut text[14..16], rest % 3_600 / 60);
    put_digits(&mut text[17..19], rest % 60);
    Some(text)
}

/// Writes `value`'s last `slots.len()` decimal digits into `slots`, zero-padded.
fn put_digits(slots: &mut [u8], mut value: u64) {
    for slot in slots.iter_mut().rev() {
        *slot = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

fn push_seconds(out: &mut String, seconds: u64) {
    let (year, month, day) = civil_from_days(seconds / 86_400);
    let rest = seconds % 86_400;
    let _ = write!(out, "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}", rest / 3_600, rest % 3_600 / 60, rest % 60);
}

/// SigV4's basic format `YYYYMMDDThhmmssZ` → time; `None` unless every field is in range.
pub fn parse_amz_date(text: &str) -> Option<SystemTime> {
    let bytes = text.as_bytes();
    if bytes.len() != 16 || bytes[8] != b'T' || bytes[15] != b'Z' {
        return None;
    }
    let number = |range: std::ops::Range<usize>| {
        let digits = text.get(range)?;
        digits.bytes().all(|b| b.is_ascii_digit()).then(|| digits.parse::<u64>().ok())?
    };
    let (year, month, day) = (number(0..4)?, number(4..6)?, number(6..8)?);
    let (hour, minute, second) = (number(9..11)?, number(11..13)?, number(13..15)?);
    if !(1970..=9999).contains(&year)
        || !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let days = days_from_civil(year, month, day)?;
    Some(UNIX_EPOCH + Duration::from_secs(days * 86_400 + hour * 3_600 + minute * 60 + second))
}

/// Days since 1970-01-01 → (year, month, day).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era = (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// (year ≥ 1970, month, day) → days since 1970-01-01; `None` before the epoch.
fn days_from_civil(year: u64, month: u64, day: u64) -> Option<u64> {
    let y = if month <= 2 { year.checked_sub(1)? } else { year };
    let era = y / 400;
    let year_of_era = y - era * 400;
    let month_index = if month > 2 { month - 3 } else { month + 9 };
    let day_of_year = (153 * month_index + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    (era * 146_097 + day_of_era).checked_sub(719_468)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_exact_across_leap_years_and_month_ends() {
        let cases = [
            (0, "1970-01-01T00:00:00Z"),
            (951_782_400, "2000-02-29T00:00:00Z"),
            (1_709_251_199, "2024-02-29T23:59:59Z"),
            (1_735_689_600, "2025-01-01T00:00:00Z"),
            (4_102_444_799, "2099-12-31T23:59:59Z"),
        ];
        for (seconds, expected) in cases {
            assert_eq!(iso8601_ceil(UNIX_EPOCH + Duration::from_secs(seconds)), expected);
            let basic: String = expected.chars().filter(|c| !matches!(c, '-' | ':')).collect();
            assert_eq!(parse_amz_date(&basic), Some(UNIX_EPOCH + Duration::from_secs(seconds)), "{basic}");
        }
    }

    #[test]
    fn the_two_directions_agree_on_every_day_of_four_centuries() {
        for days in (0..146_097 * 4).step_by(7) {
            let (year, month, day) = civil_from_days(days);
            assert_eq!(days_from_civil(year, month, day), Some(days));
        }
    }

    #[test]
    fn bounds_round_up_and_log_timestamps_keep_microseconds() {
        let time = UNIX_EPOCH + Duration::from_micros(1_764_000_000_000_001);
        assert_eq!(iso8601_ceil(time), "2025-11-24T16:00:01Z");
        let mut line = String::new();
        push_rfc3339_micros(&mut line, time);
        assert_eq!(line, "2025-11-24T16:00:00.000001Z");
        // The hand-placed digits agree with the formatted ones over four centuries of instants,
        // and past year 9999 (formatted, wider) too.
        for micros in (0..146_097u64 * 4 * 86_400_000_000)
            .step_by(86_400_000_000 * 3 + 3_661_000_001)
            .chain([253_402_300_799_999_999, 253_402_300_800_000_000])
        {
            assert_formats_as_write_would(micros);
        }
        // The second kept per thread: the same second again with other microseconds, the next
        // second, and back (a clock stepped back), each as formatting it afresh would write it.
        let base = 1_764_000_000_000_000u64;
        for micros in [base + 999_999, base + 5, base + 1_000_000, base + 999_998, base + 86_400_000_000, base] {
            assert_formats_as_write_would(micros);
        }
    }

    /// The hand-placed timestamp of `micros` after the epoch equals the one `write!` formats.
    fn assert_formats_as_write_would(micros: u64) {
        let time = UNIX_EPOCH + Duration::from_micros(micros);
        let (mut fast, mut formatted) = (String::new(), String::new());
        push_rfc3339_micros(&mut fast, time);
        push_seconds(&mut formatted, micros / 1_000_000);
        let _ = write!(formatted, ".{:06}Z", micros % 1_000_000);
        assert_eq!(fast, formatted, "{micros}");
    }

    #[test]
    fn malformed_amz_dates_are_refused() {
        for bad in [
            "",
            "20250101T000000",
            "20250101 000000Z",
            "2025-1-1T000000Z",
            "20251301T000000Z",
            "20250100T000000Z",
            "20250101T240000Z",
            "19690101T000000Z",
            "2025010+T000000Z",
            "+0250101T000000Z",
        ] {
            assert_eq!(parse_amz_date(bad), None, "{bad:?}");
        }
    }
}
