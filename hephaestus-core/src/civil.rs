//! Calendar dates of Unix day numbers (proleptic Gregorian, UTC), for run ids, commit
//! dates and their display, without a date-time dependency.

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date `(year, month, day)` of a day number (inverse of [`days_from_civil`]).
pub fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// `YYYY-MM-DD HH:MM:SS UTC` of seconds since the epoch.
pub fn format_utc(secs: i64) -> String {
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

/// The date formats of `GIT_AUTHOR_DATE` that matter in practice: `@SECONDS [+HHMM]`,
/// `SECONDS +HHMM` and ISO 8601 `YYYY-MM-DD[T ]HH:MM:SS[Z|+HH:MM|+HHMM]`. Returns
/// seconds since the epoch and the offset in minutes.
pub fn parse_git_date(s: &str) -> Option<(i64, i32)> {
    let s = s.trim();
    let raw = s.strip_prefix('@').unwrap_or(s);
    let mut words = raw.split_whitespace();
    if let Some(Ok(secs)) = words.next().map(str::parse::<i64>) {
        let offset = words.next().and_then(parse_offset).unwrap_or(0);
        return Some((secs, offset));
    }
    let (date, rest) = s.split_at_checked(10)?;
    let mut d = date.split('-').map(str::parse::<i64>);
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let rest = rest.strip_prefix(['T', ' '])?;
    let (time, zone) = rest.split_at_checked(8)?;
    let mut t = time.split(':').map(str::parse::<i64>);
    let (hh, mm, ss) = (t.next()?.ok()?, t.next()?.ok()?, t.next()?.ok()?);
    let zone = zone.trim();
    let offset = if zone.is_empty() || zone == "Z" {
        0
    } else {
        parse_offset(zone)?
    };
    let local = days_from_civil(y, m, day) * 86_400 + hh * 3600 + mm * 60 + ss;
    Some((local - i64::from(offset) * 60, offset))
}

fn parse_offset(z: &str) -> Option<i32> {
    let (sign, digits) = match z.as_bytes().first()? {
        b'+' => (1, &z[1..]),
        b'-' => (-1, &z[1..]),
        _ => return None,
    };
    let digits: String = digits.chars().filter(|c| *c != ':').collect();
    if digits.len() != 4 {
        return None;
    }
    let h: i32 = digits[..2].parse().ok()?;
    let m: i32 = digits[2..].parse().ok()?;
    Some(sign * (h * 60 + m))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_known_dates() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_454), (2026, 1, 1));
        assert_eq!(civil_from_days(days_from_civil(2024, 2, 29)), (2024, 2, 29));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        for z in [-800_000, -1, 0, 59, 60, 11_016, 20_454, 2_932_896] {
            let (y, m, d) = civil_from_days(z);
            assert_eq!(days_from_civil(y, m, d), z);
        }
    }

    #[test]
    fn parses_the_git_date_formats() {
        assert_eq!(
            parse_git_date("2026-01-01T00:00:00Z"),
            Some((1_767_225_600, 0))
        );
        assert_eq!(
            parse_git_date("@1767225600 +0100"),
            Some((1_767_225_600, 60))
        );
        assert_eq!(
            parse_git_date("1767225600 -0230"),
            Some((1_767_225_600, -150))
        );
        assert_eq!(
            parse_git_date("2026-01-01 01:00:00 +01:00"),
            Some((1_767_225_600, 60))
        );
        assert_eq!(parse_git_date("yesterday"), None);
    }

    #[test]
    fn utc_dates() {
        assert_eq!(format_utc(1_767_225_600), "2026-01-01 00:00:00 UTC");
        assert_eq!(format_utc(-1), "1969-12-31 23:59:59 UTC");
    }
}
