//! The store's speed benchmark: prints the `store_insert_*` and `store_query_*` JSON
//! lines (see `perennial_store::bench` and docs/store.md).
//!
//! ```text
//! cargo run --release -p perennial-store --example store_bench -- \
//!     [--n 1000000] [--dim 64] [--k 10] [--queries 10000] [--recall-queries 1000]
//!     [--seed 42] [--m 16] [--ef-construction 128] [--ef-search EF] [--target-recall 0.99]
//!     [--batch 1000] [--threads T] [--quantization f32|f16|i8] [--dir DIR] [--dump DIR]
//!     [--huge-pages-ab]
//! ```
//!
//! `--dump DIR` only writes the data set as raw little-endian `f32` rows to
//! `DIR/base.f32` and `DIR/queries.f32` (for `peer_store_bench.py --data DIR`) and exits.

use std::io::Write;
use std::path::PathBuf;

use perennial_store::bench::{bench_store, mixture, BenchOptions, Stream};

fn peak_rss_mb() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some((kb / 1024.0).round())
}

fn write_f32(path: &std::path::Path, v: &[f32]) -> std::io::Result<()> {
    let mut w = std::io::BufWriter::new(std::fs::File::create(path)?);
    for x in v {
        w.write_all(&x.to_le_bytes())?;
    }
    w.flush()
}

fn main() {
    let mut o = BenchOptions::default();
    let mut dump: Option<PathBuf> = None;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut val = || {
            it.next().cloned().unwrap_or_else(|| {
                eprintln!("{flag} needs a value");
                std::process::exit(2)
            })
        };
        let num = |s: String| -> usize {
            s.parse().unwrap_or_else(|_| {
                eprintln!("{flag}: not a number: {s}");
                std::process::exit(2)
            })
        };
        match flag.as_str() {
            "--huge-pages-ab" => {
                o.huge_pages_ab = true;
                continue;
            }
            "--n" => o.n = num(val()),
            "--dim" => o.dim = num(val()),
            "--k" => o.k = num(val()),
            "--queries" => o.queries = num(val()),
            "--recall-queries" => o.recall_queries = num(val()),
            "--seed" => o.seed = num(val()) as u64,
            "--m" => o.params.m = num(val()),
            "--ef-construction" => o.params.ef_construction = num(val()),
            "--ef-search" => {
                o.params.ef_search = num(val());
                o.fixed_ef = true;
            }
            "--target-recall" => {
                o.target_recall = val().parse().unwrap_or_else(|_| {
                    eprintln!("--target-recall: not a number");
                    std::process::exit(2)
                })
            }
            "--quantization" => {
                o.params.quantization = match val().as_str() {
                    "f32" => perennial_store::Quantization::F32,
                    "f16" => perennial_store::Quantization::F16,
                    "i8" => perennial_store::Quantization::I8,
                    q => {
                        eprintln!("--quantization: f32, f16 or i8, not {q}");
                        std::process::exit(2)
                    }
                }
            }
            "--batch" => o.batch = num(val()),
            "--threads" => o.threads = num(val()),
            "--dir" => o.dir = Some(PathBuf::from(val())),
            "--dump" => dump = Some(PathBuf::from(val())),
            other => {
                eprintln!("unknown argument {other} (see the source's header for usage)");
                std::process::exit(2);
            }
        }
    }
    if let Some(d) = dump {
        let nq = o.queries.max(o.recall_queries);
        let r = std::fs::create_dir_all(&d)
            .and_then(|()| {
                write_f32(
                    &d.join("base.f32"),
                    &mixture(o.n, o.dim, o.seed, Stream::Base),
                )
            })
            .and_then(|()| {
                write_f32(
                    &d.join("queries.f32"),
                    &mixture(nq, o.dim, o.seed, Stream::Queries),
                )
            });
        if let Err(e) = r {
            eprintln!("{}: {e}", d.display());
            std::process::exit(1);
        }
        return;
    }
    match bench_store(&o) {
        Ok((mut ins, mut q)) => {
            ins["peak_rss_mb"] = serde_json::json!(peak_rss_mb());
            q["peak_rss_mb"] = serde_json::json!(peak_rss_mb());
            println!("{ins}");
            println!("{q}");
        }
        Err(e) => {
            eprintln!("store_bench: {e}");
            std::process::exit(if e.is_refusal() { 2 } else { 1 });
        }
    }
}
