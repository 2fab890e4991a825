#!/usr/bin/env python3
"""Generate a Rust module of about N lines (default 5000) with every item kind,
comments and doc comments, for benchmarks. Usage: gen_module.py [LINES] > file.rs"""
import sys

lines = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
out = ["//! A generated module for heph benchmarks.", "", "use std::fmt;", ""]
i = 0
while len(out) < lines:
    out += [
        f"// Section {i}: a struct, its impl, a function and a constant.",
        f"/// Point number {i}.",
        "#[derive(Debug, Clone, Copy, PartialEq)]",
        f"pub struct Point{i} {{",
        "    x: f64,",
        "    y: f64,",
        "}",
        "",
        f"impl Point{i} {{",
        "    /// Length of the vector.",
        "    pub fn norm(&self) -> f64 {",
        "        (self.x * self.x + self.y * self.y).sqrt()",
        "    }",
        "",
        "    /* Scales the point. */",
        "    pub fn scale(&self, k: f64) -> Self {",
        "        Self { x: self.x * k, y: self.y * k }",
        "    }",
        "}",
        "",
        f"impl fmt::Display for Point{i} {{",
        "    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {",
        '        write!(f, "({}, {})", self.x, self.y)',
        "    }",
        "}",
        "",
        f"/// Function number {i}.",
        f"pub fn compute_{i}(v: &[u64]) -> u64 {{",
        "    let mut total = 0;",
        "    for x in v {",
        "        total += x * 2; // doubled",
        "    }",
        "    total",
        "}",
        "",
        f"pub const LIMIT_{i}: usize = {i};",
        "",
    ]
    i += 1
print("\n".join(out))
