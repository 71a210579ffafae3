//! Time as the store and the policy see it: epoch milliseconds (Bitbucket's REST API speaks them
//! too), plus UTC calendar formatting for messages; and [`monotonic_ms`] for intervals. Only
//! these two read a clock; everything else takes the time as a value so that the policy stays
//! pure.

use std::time::{SystemTime, UNIX_EPOCH};

pub const DAY_MS: i64 = 24 * 60 * 60 * 1000;

/// The current time in epoch milliseconds.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Milliseconds on a monotonic clock, counted from the first call in this process: for rate
/// limits, the failed-authentication throttle and cache lifetimes, which measure intervals. The
/// wall clock ([`now_ms`]) can be stepped back (an NTP correction, a VM resumed from a
/// snapshot): a bucket would then not refill for as long, and a block would last an hour more.
/// Expiry, audit times and last uses stay on the wall clock, where they are compared with
/// dates.
pub fn monotonic_ms() -> i64 {
    monotonic_ms_at(std::time::Instant::now())
}

/// [`monotonic_ms`] of a moment read already: a request reads the clock once as it starts and
/// once as its credentials are decided, and its throttle checks take those instead of reading
/// it again (each read is a `clock_gettime`).
pub fn monotonic_ms_at(at: std::time::Instant) -> i64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let start = *START.get_or_init(|| at);
    i64::try_from(at.saturating_duration_since(start).as_millis()).unwrap_or(i64::MAX)
}

/// `2026-10-01` (UTC) for epoch milliseconds.
pub fn date(ms: i64) -> String {
    let (y, m, d) = civil_from_days(ms.div_euclid(DAY_MS));
    format!("{y:04}-{m:02}-{d:02}")
}

/// `2026-10-01T12:34:56Z` (UTC) for epoch milliseconds.
pub fn datetime(ms: i64) -> String {
    let secs = ms.div_euclid(1000).rem_euclid(86_400);
    format!(
        "{}T{:02}:{:02}:{:02}Z",
        date(ms),
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Parse `YYYY-MM-DD` (years 1970 to 9999), a UTC time as gitgate prints them
/// (`2026-12-05T11:57:51Z`, with a fraction of a second or `+00:00` too), or a whole number of
/// epoch milliseconds, for `--since`. A number too small to be milliseconds of this century
/// (`date +%s`'s seconds, or `20261202`) is refused rather than read as a moment of 1970.
pub fn parse_date(s: &str) -> Option<i64> {
    if let Ok(ms) = s.parse::<i64>() {
        return (ms >= MIN_EPOCH_MS).then_some(ms);
    }
    if let Some((day, time)) = s.split_once(['T', 't']) {
        return Some(parse_date(day)?.checked_add(time_of_day_ms(time)?)?)
            .filter(|_| day.len() == 10);
    }
    let mut parts = s.splitn(3, '-');
    let y: i64 = parts.next()?.parse().ok()?;
    let m: i64 = parts.next()?.parse().ok()?;
    let d: i64 = parts.next()?.parse().ok()?;
    if y < 1970 {
        return None;
    }
    date_ms(y, m, d)
}

/// `HH:MM:SS[.fraction]` followed by `Z` or `+00:00` (UTC only: an offset of another zone would
/// be a different moment than it reads), in milliseconds since midnight.
fn time_of_day_ms(time: &str) -> Option<i64> {
    let time = time
        .strip_suffix(['Z', 'z'])
        .or_else(|| time.strip_suffix("+00:00"))?;
    let (hms, fraction) = time.split_once('.').unwrap_or((time, ""));
    let mut parts = hms.split(':');
    let mut field = |max: i64| -> Option<i64> {
        let p = parts.next()?;
        let v: i64 =
            (p.len() == 2 && p.bytes().all(|b| b.is_ascii_digit())).then(|| p.parse().ok())??;
        (v <= max).then_some(v)
    };
    let (h, m, sec) = (field(23)?, field(59)?, field(59)?);
    if parts.next().is_some()
        || fraction.len() > 9
        || !fraction.bytes().all(|b| b.is_ascii_digit())
        || (time.contains('.') && fraction.is_empty())
    {
        return None;
    }
    let ms = fraction
        .get(..fraction.len().min(3))
        .map_or(0, |f| format!("{f:0<3}").parse::<i64>().unwrap_or(0));
    Some(((h * 60 + m) * 60 + sec) * 1000 + ms)
}

/// Midnight (UTC) of the day `y-m-d`, years 0 to 9999, in epoch milliseconds; `None` for a
/// day the month does not have.
pub fn date_ms(y: i64, m: i64, d: i64) -> Option<i64> {
    // Bounded before the arithmetic below, which a year of twelve digits would overflow.
    if !(0..=9999).contains(&y) || !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    // Inverse of civil_from_days.
    let year = y;
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    // A day the month does not have (2026-02-30) would silently become another one: refuse it.
    if civil_from_days(days) != (year, m as u32, d as u32) {
        return None;
    }
    Some(days * DAY_MS)
}

/// The smallest number `parse_date` takes as epoch milliseconds: 1973-03-03, past any count
/// of seconds until the year 5000.
pub const MIN_EPOCH_MS: i64 = 100_000_000_000;

#[cfg(test)]
mod tests {
    use super::*;

    /// The times gitgate prints are taken back (`gitgate audit --since` what `audit` printed).
    #[test]
    fn a_time_as_gitgate_prints_it_is_a_date_too() {
        let day = parse_date("2026-12-05").unwrap();
        let at = day + ((11 * 60 + 57) * 60 + 51) * 1000;
        assert_eq!(datetime(at), "2026-12-05T11:57:51Z");
        for (s, ms) in [
            ("2026-12-05T11:57:51Z", at),
            ("2026-12-05t11:57:51z", at),
            ("2026-12-05T11:57:51+00:00", at),
            ("2026-12-05T11:57:51.5Z", at + 500),
            ("2026-12-05T11:57:51.123456789Z", at + 123),
            ("2026-12-05T00:00:00Z", day),
        ] {
            assert_eq!(parse_date(s), Some(ms), "{s}");
        }
        for s in [
            "2026-12-05T11:57:51",
            "2026-12-05T11:57:51+01:00",
            "2026-12-05T24:00:00Z",
            "2026-12-05T11:60:00Z",
            "2026-12-05T1:57:51Z",
            "2026-12-05T11:57:51.Z",
            "2026-12-05T11:57Z",
            "2026-12-5T11:57:51Z",
            "2026-12-05T11:57:51:00Z",
            "T11:57:51Z",
        ] {
            assert_eq!(parse_date(s), None, "{s}");
        }
    }

    #[test]
    fn dates_out_of_range_and_numbers_that_are_no_milliseconds_are_refused() {
        for bad in [
            "999999999999-01-01",
            "9223372036854775807-01-01",
            "-5-01-01",
            "1969-12-31",
            "1796202586",
            "20261202",
            "0",
        ] {
            assert_eq!(parse_date(bad), None, "{bad}");
        }
        assert_eq!(parse_date("1796202586000"), Some(1_796_202_586_000));
        assert!(parse_date("9999-12-31").is_some());
    }

    #[test]
    fn the_monotonic_clock_starts_near_zero_and_never_goes_back() {
        let a = monotonic_ms();
        let b = monotonic_ms();
        assert!(a >= 0 && b >= a, "{a} {b}");
        assert!(
            b < now_ms(),
            "counted from the process's first call, not the epoch"
        );
    }

    #[test]
    fn a_moment_read_already_is_on_the_monotonic_clock() {
        let before = monotonic_ms();
        let at = std::time::Instant::now();
        let after = monotonic_ms();
        let ms = monotonic_ms_at(at);
        assert!(before <= ms && ms <= after, "{before} {ms} {after}");
        // The moment given, not the moment asked: five seconds on is five seconds on.
        let later = monotonic_ms_at(at + std::time::Duration::from_secs(5));
        assert!(
            before + 5000 <= later && later <= after + 5000,
            "{before} {later} {after}"
        );
        // A moment before the clock's start (this process began less than an hour ago) is
        // its start, not a wrap-around.
        if let Some(earlier) = at.checked_sub(std::time::Duration::from_secs(3600)) {
            assert_eq!(monotonic_ms_at(earlier), 0);
        }
    }

    #[test]
    fn days_a_month_does_not_have_are_refused() {
        assert_eq!(parse_date("2026-02-30"), None);
        assert_eq!(parse_date("2025-02-29"), None);
        assert_eq!(parse_date("2026-04-31"), None);
        assert_eq!(
            parse_date("2024-02-29").map(date).as_deref(),
            Some("2024-02-29")
        );
        assert_eq!(
            parse_date("2026-12-31").map(date).as_deref(),
            Some("2026-12-31")
        );
    }

    #[test]
    fn formats_known_dates() {
        assert_eq!(date(0), "1970-01-01");
        assert_eq!(datetime(0), "1970-01-01T00:00:00Z");
        // 2026-10-01T00:00:00Z
        assert_eq!(date(1_790_812_800_000), "2026-10-01");
        assert_eq!(
            datetime(1_790_812_800_000 + 3_723_000),
            "2026-10-01T01:02:03Z"
        );
        assert_eq!(date(951_782_400_000), "2000-02-29");
    }

    #[test]
    fn parses_dates_back() {
        for ms in [0, 951_782_400_000, 1_790_812_800_000] {
            assert_eq!(parse_date(&date(ms)), Some(ms));
        }
        assert_eq!(parse_date("123456789012"), Some(123_456_789_012));
        assert_eq!(parse_date("2026-13-01"), None);
        assert_eq!(parse_date("yesterday"), None);
    }

    /// The edges of what is taken are taken: the first number read as milliseconds, the last
    /// second of a day, and a fraction to the nanosecond (nine digits) — but no finer.
    #[test]
    fn the_edges_of_what_is_taken_are_taken() {
        assert_eq!(parse_date("100000000000"), Some(MIN_EPOCH_MS));
        assert_eq!(parse_date("99999999999"), None);
        let day = parse_date("2026-12-05").unwrap();
        assert_eq!(
            parse_date("2026-12-05T23:59:59Z"),
            Some(day + DAY_MS - 1000)
        );
        assert_eq!(parse_date("2026-12-05T11:57:51.1234567890Z"), None);
    }
}
