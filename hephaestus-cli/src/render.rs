//! Rendering evolutions for people: ages, dates, one-line summaries.

use std::time::{SystemTime, UNIX_EPOCH};

use hephaestus_core::{Evolution, EvolutionKind, VerifyOutcome, VerifyRecord};

/// Seconds since the epoch, now.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// `2026-01-01 12:00:00 UTC`.
pub fn date(ts: i64) -> String {
    hephaestus_core::evolution::format_utc(ts)
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

/// What an evolution touched: its module, else (a snapshot, a hand edit, a rollback)
/// its message's first line, which names it, with its files after it; else its files.
pub fn target(e: &Evolution) -> String {
    if let Some(m) = &e.meta.module {
        return m.clone();
    }
    let files = match e.meta.files.as_slice() {
        [] => None,
        [one] => Some(one.display().to_string()),
        [first, rest @ ..] => Some(format!("{} (+{} more)", first.display(), rest.len())),
    };
    let message = e.meta.message.lines().next().unwrap_or_default();
    let by_message = matches!(e.meta.kind, EvolutionKind::Manual | EvolutionKind::Rollback);
    match (files, by_message && !message.is_empty()) {
        (Some(files), true) if e.meta.kind == EvolutionKind::Manual => {
            format!("{message} [{files}]")
        }
        (_, true) => message.to_owned(),
        (Some(files), false) => files,
        (None, false) => message.to_owned(),
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

/// The widest a TARGET column grows before its cells are cut with `…`.
const TARGET_WIDTH: usize = 48;

/// `heph history` as a table: a header, then one line per evolution, columns aligned
/// (widths in characters), the last column (fitness) only where there is one.
pub fn table(evolutions: &[Evolution], now: i64) -> Vec<String> {
    let rows: Vec<[String; 7]> = evolutions
        .iter()
        .map(|e| {
            [
                e.short_id.clone(),
                age(e.timestamp, now),
                e.meta.kind.as_str().to_owned(),
                cut(&target(e), TARGET_WIDTH),
                changes(e),
                verify(e.meta.verify.as_ref()),
                e.meta
                    .fitness
                    .as_ref()
                    .map(|f| format!("fitness {} -> {}", f.before, f.after))
                    .unwrap_or_default(),
            ]
        })
        .collect();
    let header = [
        "ID", "AGE", "KIND", "TARGET", "CHANGES", "VERIFY", "FITNESS",
    ];
    // A column no row fills is left out (CHANGES of snapshots only, FITNESS outside evolve).
    let shown: Vec<usize> = (0..header.len())
        .filter(|&c| c < 4 || c == 5 || rows.iter().any(|r| !r[c].is_empty()))
        .collect();
    let width = |c: usize| {
        rows.iter()
            .map(|r| r[c].chars().count())
            .chain([header[c].len()])
            .max()
            .unwrap_or(0)
    };
    let widths: Vec<usize> = (0..header.len()).map(width).collect();
    let line = |cells: [&str; 7]| {
        let mut s = String::new();
        for (n, &c) in shown.iter().enumerate() {
            if n > 0 {
                s.push_str("  ");
            }
            let cell = cells[c];
            s.push_str(cell);
            if n + 1 < shown.len() {
                let pad = widths[c].saturating_sub(cell.chars().count());
                s.extend(std::iter::repeat_n(' ', pad));
            }
        }
        s.trim_end().to_owned()
    };
    let mut out = vec![line(header)];
    for r in &rows {
        out.push(line([&r[0], &r[1], &r[2], &r[3], &r[4], &r[5], &r[6]]));
    }
    out
}

/// `text`, cut to at most `max` characters with a final `…`.
fn cut(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut s: String = text.chars().take(max.saturating_sub(1)).collect();
    s.push('…');
    s
}

/// A unified diff with git's colors (bold headers, green additions, red deletions, cyan
/// hunks) when `color`; without its trailing newline.
pub fn colorize_diff(diff: &str, color: bool) -> String {
    if !color {
        return diff.trim_end().to_owned();
    }
    diff.lines()
        .map(|l| {
            if l.starts_with("+++") || l.starts_with("---") || l.starts_with("diff ") {
                format!("\x1b[1m{l}\x1b[0m")
            } else if l.starts_with('+') {
                format!("\x1b[32m{l}\x1b[0m")
            } else if l.starts_with('-') {
                format!("\x1b[31m{l}\x1b[0m")
            } else if l.starts_with("@@") {
                format!("\x1b[36m{l}\x1b[0m")
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
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

    fn evolution(kind: EvolutionKind, id: &str, message: &str) -> Evolution {
        Evolution {
            id: format!("{id}{}", "0".repeat(40 - id.len())),
            short_id: id.to_owned(),
            timestamp: 1_000,
            parent: None,
            meta: hephaestus_core::EvolutionMeta::new(kind, message),
        }
    }

    #[test]
    fn history_is_a_table_with_a_header_and_aligned_columns() {
        let mut modify = evolution(EvolutionKind::SelfModify, "1111111", "m");
        modify.meta.module = Some("crate::agent::a_much_longer_module_name".into());
        modify.meta.changes.replaced = vec!["fn f".into()];
        modify.meta.verify = Some(VerifyRecord::skipped());
        let mut snap = evolution(EvolutionKind::Manual, "2222222", "before the demo");
        snap.meta.files = vec!["src/lib.rs".into()];
        let rows = table(&[modify, snap], 1_005);
        assert_eq!(rows.len(), 3);
        assert!(rows[0].starts_with("ID "), "{rows:?}");
        // Every column starts at the same place on every line.
        for name in ["AGE", "KIND", "TARGET", "VERIFY"] {
            let at = rows[0].find(name).expect(name);
            for row in &rows[1..] {
                let bytes = row.as_bytes();
                assert_eq!(&bytes[at - 2..at], b"  ", "{name} in {row:?}");
                assert_ne!(bytes[at], b' ', "{name} in {row:?}");
            }
        }
        let kind_at = rows[0].find("KIND").expect("KIND");
        assert_eq!(&rows[1][kind_at..kind_at + 11], "self-modify");
        assert_eq!(&rows[2][kind_at..kind_at + 6], "manual");
        let target_at = rows[0].find("TARGET").expect("TARGET");
        assert!(
            rows[2][target_at..].starts_with("before the demo [src/lib.rs]"),
            "{rows:?}"
        );
        // No evolve run: no FITNESS column; lines carry no trailing spaces.
        assert!(!rows[0].contains("FITNESS"));
        assert!(rows.iter().all(|r| !r.ends_with(' ')));
        assert_eq!(cut("abcdef", 4), "abc…");
    }
}
