//! `cargo xtask bench NAME`: a dispatcher for molt's benchmarks; `cargo xtask bench` lists them.
//!
//! A benchmark is an entry in [`BENCHMARKS`]: a name, a line saying what it measures,
//! and the function that runs it with the remaining command-line arguments.

use std::path::Path;

use anyhow::{bail, Result};

/// One benchmark `cargo xtask bench` knows.
pub struct Bench {
    /// The name given on the command line.
    pub name: &'static str,
    /// What it measures, one line.
    pub about: &'static str,
    /// Runs it from the workspace root with the arguments after its name.
    pub run: fn(&Path, &[String]) -> Result<()>,
}

/// Every benchmark, in the order `cargo xtask bench` lists them.
pub const BENCHMARKS: &[Bench] = &[
    Bench {
        name: "decode",
        about: "decoder throughput (verify + decompress) on a ~100 MiB tree vs `zstd -dc`",
        run: crate::bench_decode::run,
    },
    Bench {
        name: "install",
        about: "`molt-agent install` of a ~200 MiB tree onto loop-mounted ext4 vs `zstd -dc | tar -x && sync`; agent peak RSS (root)",
        run: crate::bench_install::run,
    },
];

/// Prints the benchmark names.
pub fn list() {
    if BENCHMARKS.is_empty() {
        println!("no benchmarks yet");
        return;
    }
    println!("benchmarks (cargo xtask bench NAME):");
    for b in BENCHMARKS {
        println!("  {:<12} {}", b.name, b.about);
    }
}

pub fn run(root: &Path, name: &str, args: &[String]) -> Result<()> {
    match BENCHMARKS.iter().find(|b| b.name == name) {
        Some(b) => (b.run)(root, args),
        None => {
            let known: Vec<&str> = BENCHMARKS.iter().map(|b| b.name).collect();
            if known.is_empty() {
                bail!("unknown benchmark `{name}`: there are no benchmarks yet");
            }
            bail!("unknown benchmark `{name}`; known: {}", known.join(", "))
        }
    }
}
