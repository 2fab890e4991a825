//! Micro-benchmarks of the built-in rewrite rules (`templates/rules/`): for each rule,
//! the code it matches and the code it writes, on the same data, timed in alternation
//! (15 rounds, the fastest round of each side kept). Prints a Markdown table.
//! Run: `cargo run --release` (see tests/bench/rules.sh).

#![allow(clippy::all)]

use std::fmt::Write as _;
use std::hint::black_box;
use std::io::Write as _;
use std::time::Instant;

struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 11
    }
}

fn time(mut f: impl FnMut() -> u64) -> u128 {
    let t = Instant::now();
    black_box(f());
    t.elapsed().as_nanos()
}

fn bench(rule: &str, workload: &str, mut before: impl FnMut() -> u64, mut after: impl FnMut() -> u64) {
    assert_eq!(before(), after(), "{rule}: before and after disagree");
    let (mut b, mut a) = (u128::MAX, u128::MAX);
    for round in 0..15 {
        if round % 2 == 0 {
            b = b.min(time(&mut before));
            a = a.min(time(&mut after));
        } else {
            a = a.min(time(&mut after));
            b = b.min(time(&mut before));
        }
    }
    println!(
        "| `{rule}` | {workload} | {:.3} µs | {:.3} µs | **{:.2}×** |",
        b as f64 / 1000.0,
        a as f64 / 1000.0,
        b as f64 / a as f64
    );
}

fn main() {
    let mut rng = Lcg(7);
    let nums: Vec<u32> = (0..100_000).map(|_| rng.next() as u32).collect();
    let pairs: Vec<(u32, u32)> = (0..100_000).map(|_| (rng.next() as u32 % 1000, rng.next() as u32)).collect();
    let words = ["a", "tiny", "word", "considerably", "longer", "wordings", "x", "evolution"];
    let text: String = (0..100_000).map(|_| words[(rng.next() % 8) as usize]).collect::<Vec<_>>().join(" ");
    let names: Vec<String> = (0..10_000).map(|i| format!("name-{}-{}", i % 7, rng.next() % 100_000)).collect();
    let groups: Vec<Vec<u64>> = (0..1000).map(|_| (0..100).map(|_| rng.next() % 1000).collect()).collect();
    let rows: Vec<(String, u64)> = (0..10_000).map(|i| (format!("row{i}"), rng.next() % 1_000_000)).collect();

    println!("| rule | workload | before | after | speed-up |");
    println!("| --- | --- | ---: | ---: | ---: |");
    bench("sort-unstable", "sort 100k random u32", || {
        let mut v = nums.clone(); v.sort(); v[500] as u64
    }, || {
        let mut v = nums.clone(); v.sort_unstable(); v[500] as u64
    });
    bench("sort-unstable-by-key", "sort 100k (u32, u32) by a key with many ties", || {
        let mut v = pairs.clone(); v.sort_by_key(|p| p.0); v[500].0 as u64
    }, || {
        let mut v = pairs.clone(); v.sort_unstable_by_key(|p| p.0); v[500].0 as u64
    });
    bench("collect-len-to-count", "long words of a 100k-word text", || {
        black_box(&text).split_whitespace().filter(|w| w.len() > 5).collect::<Vec<_>>().len() as u64
    }, || {
        black_box(&text).split_whitespace().filter(|w| w.len() > 5).count() as u64
    });
    bench("collect-is-empty-to-next", "any of 100k u32 above a threshold", || {
        black_box(&nums).iter().filter(|x| **x > 1000).collect::<Vec<_>>().is_empty() as u64
    }, || {
        black_box(&nums).iter().filter(|x| **x > 1000).next().is_none() as u64
    });
    bench("format-to-string", "100k u32 to strings", || {
        black_box(&nums).iter().map(|n| format!("{}", n).len() as u64).sum()
    }, || {
        black_box(&nums).iter().map(|n| n.to_string().len() as u64).sum()
    });
    bench("format-push-string", "a 10k-line report", || {
        let mut s = String::new();
        for (k, v) in black_box(&rows) { s += &format!("{}: {}\n", k, v); }
        s.len() as u64
    }, || {
        let mut s = String::new();
        for (k, v) in black_box(&rows) { let _ = write!(s, "{}: {}\n", k, v); }
        s.len() as u64
    });
    bench("push-str-format", "a 10k-line report", || {
        let mut s = String::new();
        for (k, v) in black_box(&rows) { s.push_str(&format!("{}={};", k, v)); }
        s.len() as u64
    }, || {
        let mut s = String::new();
        for (k, v) in black_box(&rows) { let _ = write!(s, "{}={};", k, v); }
        s.len() as u64
    });
    bench("to-string-eq", "look up a missing name among 10k", || {
        black_box(&names).iter().position(|n| n.to_string() == "nobody").unwrap_or(0) as u64
    }, || {
        black_box(&names).iter().position(|n| n == "nobody").unwrap_or(0) as u64
    });
    bench("for-clone-to-ref", "sum 1000 groups of 100 u64", || {
        let g = black_box(&groups);
        let mut t = 0;
        for x in g.clone() { t += x.iter().sum::<u64>(); }
        t
    }, || {
        let g = black_box(&groups);
        let mut t = 0;
        for x in g.iter() { t += x.iter().sum::<u64>(); }
        t
    });
    bench("cloned-filter-count", "count 10k names by prefix", || {
        black_box(&names).iter().cloned().filter(|n| n.starts_with("name-3")).count() as u64
    }, || {
        black_box(&names).iter().filter(|n| n.starts_with("name-3")).count() as u64
    });
    bench("bufwriter-file-create", "20k lines written to /dev/null", || {
        let mut f = std::fs::File::create("/dev/null").expect("/dev/null");
        for i in 0..20_000u32 { writeln!(f, "{i},{}", i * 2).expect("write"); }
        1
    }, || {
        let mut f = std::io::BufWriter::new(std::fs::File::create("/dev/null").expect("/dev/null"));
        for i in 0..20_000u32 { writeln!(f, "{i},{}", i * 2).expect("write"); }
        1
    });
    bench("vec-zeroed", "a zeroed 4 MiB buffer, 16 bytes used", || {
        let n = black_box(4 << 20);
        let mut b = Vec::with_capacity(n);
        b.resize(n, 0u8);
        b[..16].iter().map(|&x| x as u64).sum::<u64>() + b.len() as u64
    }, || {
        let n = black_box(4 << 20);
        let b = vec![0u8; n];
        b[..16].iter().map(|&x| x as u64).sum::<u64>() + b.len() as u64
    });
    bench("clone-len", "length of 10k names", || {
        black_box(&names).clone().len() as u64
    }, || {
        black_box(&names).len() as u64
    });
}
