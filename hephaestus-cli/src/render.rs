//! Rendering evolutions for people: ages, dates, one-line summaries.

use std::time::{SystemTime, UNIX_EPOCH};

use hephaestus_core::{Evolution, EvolutionKind, VerifyOutcome, VerifyRecord};

use hephaestus_core::civil::civil_from_days;

/// Seconds since the epoch, now.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// `2026-01-01 12:00:00 UTC`.
pub fn date(ts: i64) -> String {
    let (y, m, d) = civil_from_days(ts.div_euclid(86_400));
    let s = ts.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

/// `just now`, `5 minutes ago`, `3 days ago`; the date beyond a year.
pub fn age(ts: i64, now: i64) -> String {
    let secs = now - ts;
    if secs < 0 {
        return "in the future".to_owned();
    }
    let unit = |n: i64, what: &str| {
        if n == 1 {
            format!("1 {what} ago")
        } else {
            format!("{n} {what}s ago")
        }
    };
    match secs {
        0..=9 => "just now".to_owned(),
        10..=59 => unit(secs, "second"),
        60..=3599 => unit(secs / 60, "minute"),
        3600..=86_399 => unit(secs / 3600, "hour"),
        86_400..=31_535_999 => unit(secs / 86_400, "day"),
        _ => date(ts)[..10].to_owned(),
    }
}

/// `passed 1234ms`, `failed 800ms`, `skipped`, or `-`.
pub fn verify(v: Option<&VerifyRecord>) -> String {
    match v {
        None => "-".to_owned(),
        Some(v) if v.outcome == VerifyOutcome::Skipped => "skipped".to_owned(),
        Some(v) => format!("{} {}ms", v.outcome, v.duration.as_millis()),
    }
}

/// What an evolution touched: its module, else its files, else its message (always
/// the message for a rollback, which names its target).
pub fn target(e: &Evolution) -> String {
    if let Some(m) = &e.meta.module {
        return m.clone();
    }
    if e.meta.kind == EvolutionKind::Rollback {
        return e.meta.message.lines().next().unwrap_or_default().to_owned();
    }
    match e.meta.files.as_slice() {
        [] => e.meta.message.lines().next().unwrap_or_default().to_owned(),
        [one] => one.display().to_string(),
        [first, rest @ ..] => format!("{} (+{} more)", first.display(), rest.len()),
    }
}

/// `+fn a ~fn b -fn c` (at most three, then a count).
pub fn changes(e: &Evolution) -> String {
    let c = &e.meta.changes;
    let all: Vec<String> = c
        .added
        .iter()
        .map(|i| format!("+{i}"))
        .chain(c.replaced.iter().map(|i| format!("~{i}")))
        .chain(c.removed.iter().map(|i| format!("-{i}")))
        .collect();
    match all.len() {
        0 => String::new(),
        n if n <= 3 => all.join(" "),
        n => format!("{} (+{} more)", all[..3].join(" "), n - 3),
    }
}

/// The one-line form used by `heph history`.
pub fn line(e: &Evolution, now: i64) -> String {
    let mut s = format!(
        "{}  {:>14}  {:<11}  {}",
        e.short_id,
        age(e.timestamp, now),
        e.meta.kind.as_str(),
        target(e)
    );
    let changes = changes(e);
    if !changes.is_empty() {
        s.push_str("  ");
        s.push_str(&changes);
    }
    s.push_str("  ");
    s.push_str(&verify(e.meta.verify.as_ref()));
    if let Some(f) = &e.meta.fitness {
        s.push_str(&format!("  fitness {} -> {}", f.before, f.after));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_and_dates() {
        assert_eq!(age(100, 105), "just now");
        assert_eq!(age(0, 120), "2 minutes ago");
        assert_eq!(age(0, 86_400 * 3), "3 days ago");
        assert_eq!(date(1_767_225_600), "2026-01-01 00:00:00 UTC");
        assert_eq!(age(0, 86_400 * 400), "1970-01-01");
    }
}
