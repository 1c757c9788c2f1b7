//! Turns criterion's saved estimates into the markdown tables of
//! `docs/benchmarks.md`.
//!
//! ```text
//! cargo run -p ringcast-bench --bin bench-tables [-- target/criterion]
//! ```
//!
//! For every case it reads `<group>/<function>/new/{benchmark,estimates}.json`
//! and uses the median: throughput in GB/s (10^9 bytes per second of
//! payload; criterion's own printout is GiB/s) and ns per operation for the
//! small sizes. No judgement of the numbers happens here.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use ringcast_bench::{label, SIZES};
use serde_json::Value;

/// Sizes whose ns/op is shown next to the throughput.
const NS_COLUMNS: [usize; 2] = [16, 125];

/// Row order for known functions; others follow alphabetically.
const ORDER: [&str; 18] = [
    "memcpy",
    "scalar",
    "word",
    "portable",
    "sse2",
    "avx2",
    "dispatch",
    "dispatch_misaligned",
    "dispatch_phase1",
    "simdutf8",
    "std",
    "validator_whole",
    "validator_4KiB_pieces",
    "binary",
    "text_ascii",
    "text_mixed",
    "server_unmasked",
    "client_masked",
];

/// Which implementations get a "time / memcpy time" row in the unmask ratios.
const RATIO_ROWS: [&str; 7] = [
    "dispatch",
    "dispatch_misaligned",
    "dispatch_phase1",
    "avx2",
    "sse2",
    "portable",
    "word",
];

struct Case {
    bytes: f64,
    median_ns: f64,
}

/// bench prefix ("unmask", "utf8/ascii") -> function -> size label -> case
type Results = BTreeMap<String, BTreeMap<String, BTreeMap<String, Case>>>;

fn read_json(path: &Path) -> Option<Value> {
    serde_json::from_str(&fs::read_to_string(path).ok()?).ok()
}

fn load(root: &Path) -> Results {
    let mut out = Results::new();
    let Ok(groups) = fs::read_dir(root) else {
        return out;
    };
    for group in groups.flatten() {
        let Ok(functions) = fs::read_dir(group.path()) else {
            continue;
        };
        for function in functions.flatten() {
            let new: PathBuf = function.path().join("new");
            let (Some(b), Some(e)) = (
                read_json(&new.join("benchmark.json")),
                read_json(&new.join("estimates.json")),
            ) else {
                continue;
            };
            let (Some(group_id), Some(function_id), Some(bytes), Some(median_ns)) = (
                b["group_id"].as_str(),
                b["function_id"].as_str(),
                b["throughput"]["Bytes"].as_f64(),
                e["median"]["point_estimate"].as_f64(),
            ) else {
                continue;
            };
            let Some((prefix, size)) = group_id.rsplit_once('/') else {
                continue;
            };
            out.entry(prefix.to_string())
                .or_default()
                .entry(function_id.to_string())
                .or_default()
                .insert(size.to_string(), Case { bytes, median_ns });
        }
    }
    out
}

fn rank(name: &str) -> (usize, String) {
    let pos = ORDER.iter().position(|o| *o == name).unwrap_or(ORDER.len());
    (pos, name.to_string())
}

fn table(prefix: &str, functions: &BTreeMap<String, BTreeMap<String, Case>>) {
    println!("`{prefix}` (GB/s; ns per op for the small sizes):\n");
    let mut header = String::from("| |");
    let mut rule = String::from("|---|");
    for n in SIZES {
        header += &format!(" {} GB/s |", label(n));
        rule += "---:|";
    }
    for n in NS_COLUMNS {
        header += &format!(" {} ns |", label(n));
        rule += "---:|";
    }
    println!("{header}\n{rule}");
    let mut names: Vec<&String> = functions.keys().collect();
    names.sort_by_key(|n| rank(n));
    for name in names {
        let cases = &functions[name];
        let mut row = format!("| `{name}` |");
        for n in SIZES {
            row += &match cases.get(&label(n)) {
                Some(c) => format!(" {:.2} |", c.bytes / c.median_ns),
                None => " – |".to_string(),
            };
        }
        for n in NS_COLUMNS {
            row += &match cases.get(&label(n)) {
                Some(c) => format!(" {:.1} |", c.median_ns),
                None => " – |".to_string(),
            };
        }
        println!("{row}");
    }
    println!();
}

fn ratios(functions: &BTreeMap<String, BTreeMap<String, Case>>) {
    let Some(memcpy) = functions.get("memcpy") else {
        return;
    };
    println!("`unmask` time / `memcpy` time (below 2.00x meets the goal):\n");
    let mut header = String::from("| |");
    let mut rule = String::from("|---|");
    for n in SIZES {
        header += &format!(" {} |", label(n));
        rule += "---:|";
    }
    println!("{header}\n{rule}");
    for name in RATIO_ROWS {
        let Some(cases) = functions.get(name) else {
            continue;
        };
        let mut row = format!("| `{name}` |");
        for n in SIZES {
            let l = label(n);
            row += &match (cases.get(&l), memcpy.get(&l)) {
                (Some(c), Some(m)) => format!(" {:.2}x |", c.median_ns / m.median_ns),
                _ => " – |".to_string(),
            };
        }
        println!("{row}");
    }
    println!();
}

fn main() {
    let root = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "target/criterion".to_string());
    let results = load(Path::new(&root));
    if results.is_empty() {
        eprintln!("no criterion results under {root}; run `cargo bench -p ringcast-bench` first");
        std::process::exit(1);
    }
    for (prefix, functions) in &results {
        table(prefix, functions);
        if prefix == "unmask" {
            ratios(functions);
        }
    }
}
