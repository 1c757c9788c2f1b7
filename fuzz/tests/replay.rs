//! Deterministic replay of the committed seed corpus (`seeds/<target>/*`)
//! through the fuzz target functions, on stable Rust without libFuzzer.
//!
//! `cargo test --manifest-path fuzz/Cargo.toml`

use std::fs;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use ringcast_fuzz::{hex, TARGETS};

const MAX_CORPUS_BYTES: u64 = 1 << 20;

fn seeds_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds")
}

/// The seed files of one target, sorted by name.
fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = seeds_dir().join(target);
    let mut out: Vec<(String, Vec<u8>)> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.is_file())
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, fs::read(&p).expect("read seed"))
        })
        .collect();
    out.sort();
    out
}

/// Runs `f(input)`, turning a panic into a report line.
fn run_one(f: fn(&[u8]), target: &str, what: &str, input: &[u8]) -> Option<String> {
    let r = catch_unwind(AssertUnwindSafe(|| f(input)));
    r.err().map(|p| {
        let msg = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        format!("{target}/{what}: {msg}\n    input: {}", hex(input))
    })
}

#[test]
fn every_target_has_seeds_and_the_corpus_is_small() {
    let mut total = 0;
    for (target, _) in TARGETS {
        let files = seeds(target);
        assert!(!files.is_empty(), "no seeds for {target}");
        total += files.iter().map(|(_, d)| d.len() as u64).sum::<u64>();
    }
    for entry in fs::read_dir(seeds_dir()).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        assert!(
            TARGETS.iter().any(|(t, _)| *t == name),
            "seeds/{name} matches no target"
        );
    }
    assert!(total < MAX_CORPUS_BYTES, "seed corpus is {total} bytes");
}

#[test]
fn seeds_replay() {
    let mut failures = Vec::new();
    let mut count = 0;
    for (target, f) in TARGETS {
        for (name, data) in seeds(target) {
            count += 1;
            failures.extend(run_one(*f, target, &name, &data));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {count} seeds failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    eprintln!("replayed {count} seeds");
}

/// A cheap, fixed-seed mutation pass over the corpus: every truncation of
/// the short seeds and a few dozen byte edits of each. Not a fuzzer, but it
/// keeps the neighbourhood of every seed honest on every `cargo test`.
#[test]
fn seeds_mutated() {
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut failures = Vec::new();
    let mut runs = 0;
    for (target, f) in TARGETS {
        for (name, data) in seeds(target) {
            if data.len() <= 512 {
                for cut in 0..data.len() {
                    runs += 1;
                    failures.extend(run_one(
                        *f,
                        target,
                        &format!("{name}[..{cut}]"),
                        &data[..cut],
                    ));
                }
            }
            for i in 0..32 {
                let mut m = data.clone();
                let r = next();
                if m.is_empty() {
                    m.push(r as u8);
                } else {
                    let at = (r >> 8) as usize % m.len();
                    match r % 4 {
                        0 => m[at] ^= 1 << ((r >> 40) % 8),
                        1 => m[at] = (r >> 40) as u8,
                        2 => {
                            m.remove(at);
                        }
                        _ => m.insert(at, (r >> 40) as u8),
                    }
                }
                runs += 1;
                failures.extend(run_one(*f, target, &format!("{name}~{i}"), &m));
            }
            if failures.len() > 20 {
                break;
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {runs} mutated inputs failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
