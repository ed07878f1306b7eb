//! The store's speed benchmark (`store_insert_<n>_d<dim>`, `store_query_<n>_d<dim>_k<k>`)
//! and its data set, which `scripts/peer_store_bench.py` regenerates bit for bit (up to
//! the last bit of a rare `f32`, from libm differences) to time FAISS on the same data.
//!
//! # The data: a seeded mixture of Gaussian clusters
//!
//! All randomness is SplitMix64 used as a counter-based generator:
//! `u(s, i) = mix(s + (i + 1)·0x9E3779B97F4A7C15)` (wrapping), where `mix(z)` is
//! `z ^= z >> 30; z *= 0xBF58476D1CE4E5B9; z ^= z >> 27; z *= 0x94D049BB133111EB; z ^ (z >> 31)`.
//! A standard normal is `g(s, i) = sqrt(-2 ln a) · cos(2π b)` with
//! `a = ((u(s, i) >> 11) + 1) / 2^53` and `b = (u(s, i + 1) >> 11) / 2^53`, in `f64`.
//!
//! * [`CLUSTERS`] = 1000 centres: `centre[c][j] = g(seed ^ CENTRE_SALT, 2·(c·dim + j))`.
//! * Point `i` of a stream with seed `s` (`s = seed` for the base vectors,
//!   `seed ^ QUERY_SALT` for the queries) uses counters from `base = i·(1 + 2·dim)`:
//!   cluster `c = u(s, base) mod 1000`, then
//!   `x[j] = centre[c][j] + SIGMA · g(s, base + 1 + 2j)` with [`SIGMA`] = 0.5.
//! * Each point is divided by its Euclidean norm (computed in `f64`, summing `x[j]²` in
//!   order) and rounded to `f32`. The store uses the cosine metric.
//!
//! # What is timed
//!
//! * Insert: all `n` vectors into a fresh store, through [`Store::insert_many`] in
//!   batches of [`BenchOptions::batch`] (one log write and one `fdatasync` per batch,
//!   HNSW insertion on [`BenchOptions::threads`] threads, automatic compactions
//!   included). `per_sec` = n / total seconds; `p50_ms`/`p99_ms` are per *batch*.
//!   Then `close_s` (saving the index) and `reopen_s` (opening the store again, which
//!   reloads the index) are reported beside.
//! * Query: ground truth is exact search for the first [`BenchOptions::recall_queries`]
//!   queries; `ef_search` is the first of 10, 16, 24, 32, 48, 64, 96, 128, 192, 256,
//!   384, 512 (at least k) whose recall@k reaches [`BenchOptions::target_recall`]
//!   (unless fixed). Then [`BenchOptions::queries`] single queries (one at a time, one
//!   thread) are timed: `per_sec` = queries / seconds, `p50_ms`/`p99_ms` per query, and
//!   `recall_at_10` is the recall at that `ef_search`.

use std::path::PathBuf;
use std::time::Instant;

use serde_json::{json, Value};

use crate::{
    Error, HnswParams, IndexKind, Metric, NewEntry, Result, Store, StoreConfig, SyncPolicy,
};

/// Number of cluster centres.
pub const CLUSTERS: usize = 1000;
/// Standard deviation of a point around its centre (centres are N(0, 1) per coordinate).
pub const SIGMA: f64 = 0.5;
/// XORed into the seed for the centres' stream.
pub const CENTRE_SALT: u64 = 0xC3A5_C85C_97CB_3127;
/// XORed into the seed for the queries' stream.
pub const QUERY_SALT: u64 = 0x9E6C_63D0_676A_9A99;
const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// `u(s, i)`: the `i`-th SplitMix64 output of seed `s`.
pub fn splitmix64_at(seed: u64, i: u64) -> u64 {
    let mut z = seed.wrapping_add(i.wrapping_add(1).wrapping_mul(GAMMA));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `g(s, i)`: a standard normal from counters `i` and `i + 1` (Box–Muller, cosine branch).
pub fn normal_at(seed: u64, i: u64) -> f64 {
    let scale = 1.0 / (1u64 << 53) as f64;
    let a = ((splitmix64_at(seed, i) >> 11) + 1) as f64 * scale;
    let b = (splitmix64_at(seed, i + 1) >> 11) as f64 * scale;
    (-2.0 * a.ln()).sqrt() * (std::f64::consts::TAU * b).cos()
}

/// Which points of the data set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// The vectors inserted.
    Base,
    /// The queries.
    Queries,
}

/// `n` unit vectors of the mixture (row-major, `n × dim`), as described in the module
/// documentation; generated on all cores.
pub fn mixture(n: usize, dim: usize, seed: u64, stream: Stream) -> Vec<f32> {
    let cseed = seed ^ CENTRE_SALT;
    let centres: Vec<f64> = (0..CLUSTERS * dim)
        .map(|j| normal_at(cseed, 2 * j as u64))
        .collect();
    let s = match stream {
        Stream::Base => seed,
        Stream::Queries => seed ^ QUERY_SALT,
    };
    let per = 1 + 2 * dim as u64;
    let mut out = vec![0f32; n * dim];
    let threads = std::thread::available_parallelism().map_or(1, |t| t.get());
    let rows_per = n.div_ceil(threads).max(1);
    std::thread::scope(|sc| {
        for (t, chunk) in out.chunks_mut(rows_per * dim.max(1)).enumerate() {
            let centres = &centres;
            sc.spawn(move || {
                let mut x = vec![0f64; dim];
                for (r, row) in chunk.chunks_exact_mut(dim).enumerate() {
                    let i = (t * rows_per + r) as u64;
                    let base = i * per;
                    let c = (splitmix64_at(s, base) % CLUSTERS as u64) as usize;
                    let mut norm = 0f64;
                    for (j, xj) in x.iter_mut().enumerate() {
                        *xj = centres[c * dim + j] + SIGMA * normal_at(s, base + 1 + 2 * j as u64);
                        norm += *xj * *xj;
                    }
                    let norm = norm.sqrt();
                    for (o, v) in row.iter_mut().zip(&x) {
                        *o = (v / norm) as f32;
                    }
                }
            });
        }
    });
    out
}

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Vectors inserted (1 000 000 for the named benchmark).
    pub n: usize,
    /// Their dimension (64).
    pub dim: usize,
    /// Neighbours per query (10).
    pub k: usize,
    /// Timed queries.
    pub queries: usize,
    /// Queries whose recall is measured against exact search.
    pub recall_queries: usize,
    /// Data seed.
    pub seed: u64,
    /// HNSW parameters; `ef_search` is the starting point only when `fixed_ef` is false.
    pub params: HnswParams,
    /// Use `params.ef_search` as is instead of searching for the target recall.
    pub fixed_ef: bool,
    /// Recall@k the query line must reach.
    pub target_recall: f64,
    /// Entries per `insert_many` call.
    pub batch: usize,
    /// Threads for inserting and exact search (0 = all cores). Queries are timed one at a
    /// time on one thread.
    pub threads: usize,
    /// Where to put the store (a fresh temporary directory, removed afterwards, if None).
    pub dir: Option<PathBuf>,
    /// An A/B of huge pages in one process, on one graph: the store is opened with
    /// [`StoreConfig::huge_pages`] off, the queries are timed (under
    /// `before_huge_pages` in the line), the memory is collapsed
    /// ([`crate::pages::collapse_dense_anonymous`]) and they are timed again (the line's
    /// own numbers). Off: the store's default (huge pages on at open).
    pub huge_pages_ab: bool,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            n: 1_000_000,
            dim: 64,
            k: 10,
            queries: 10_000,
            recall_queries: 1000,
            seed: 42,
            params: HnswParams {
                quantization: crate::Quantization::I8,
                ..HnswParams::default()
            },
            fixed_ef: false,
            target_recall: 0.99,
            batch: 1000,
            threads: 0,
            dir: None,
            huge_pages_ab: false,
        }
    }
}

/// `1m`, `100k` or the number itself: the size part of the benchmark names.
pub fn size_label(n: usize) -> String {
    if n >= 1_000_000 && n.is_multiple_of(1_000_000) {
        format!("{}m", n / 1_000_000)
    } else if n >= 1000 && n.is_multiple_of(1000) {
        format!("{}k", n / 1000)
    } else {
        n.to_string()
    }
}

fn percentile_ms(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let i = ((v.len() - 1) as f64 * p).round() as usize;
    (v[i] * 1e3 * 1000.0).round() / 1000.0
}

fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

/// Runs the benchmark; returns the insert line and the query line.
pub fn bench_store(o: &BenchOptions) -> Result<(Value, Value)> {
    if o.n == 0 || o.dim == 0 || o.k == 0 || o.batch == 0 {
        return Err(Error::Invalid(
            "n, dim, k and batch must be positive".into(),
        ));
    }
    let threads = match o.threads {
        0 => std::thread::available_parallelism().map_or(1, |t| t.get()),
        t => t,
    };
    let data = mixture(o.n, o.dim, o.seed, Stream::Base);
    let nq = o.queries.max(o.recall_queries).max(1);
    let queries = mixture(nq, o.dim, o.seed, Stream::Queries);
    let (dir, temporary) = match &o.dir {
        Some(d) => (d.clone(), false),
        None => {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            let d = std::env::temp_dir().join(format!(
                "perennial-store-bench-{}-{nanos}",
                std::process::id()
            ));
            (d, true)
        }
    };
    let result = run(o, threads, &data, &queries, &dir);
    if temporary {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

fn run(
    o: &BenchOptions,
    threads: usize,
    data: &[f32],
    queries: &[f32],
    dir: &std::path::Path,
) -> Result<(Value, Value)> {
    let config = StoreConfig {
        metric: Metric::Cosine,
        index: IndexKind::Hnsw(o.params),
        sync: SyncPolicy::EveryWrite,
        threads,
        huge_pages: !o.huge_pages_ab,
        ..StoreConfig::new(o.dim)
    };
    let mut store = Store::open(dir, config.clone())?;
    if !store.is_empty() {
        return Err(Error::Invalid(format!(
            "benchmark directory {} already holds a store",
            dir.display()
        )));
    }
    let d = o.dim;
    let mut batch_s = Vec::with_capacity(o.n.div_ceil(o.batch));
    let t0 = Instant::now();
    for (b, chunk) in data.chunks(o.batch * d).enumerate() {
        let t = Instant::now();
        store.insert_many(chunk.chunks_exact(d).enumerate().map(|(i, key)| NewEntry {
            key,
            value: (b * o.batch + i) as i64,
            age: 0,
            metadata: None,
        }))?;
        batch_s.push(t.elapsed().as_secs_f64());
    }
    let insert_s = t0.elapsed().as_secs_f64();
    let t = Instant::now();
    store.close()?;
    let close_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut store = Store::open(dir, config)?;
    let reopen_s = t.elapsed().as_secs_f64();
    let origin = store.stats().index_origin;
    let label = size_label(o.n);
    let insert_line = json!({
        "bench": format!("store_insert_{label}_d{d}"),
        "impl": "perennial",
        "n": o.n,
        "dim": d,
        "threads": threads,
        "m": o.params.m,
        "ef_construction": o.params.ef_construction,
        "quantization": format!("{:?}", o.params.quantization).to_lowercase(),
        "batch": o.batch,
        "sync": "fdatasync per batch",
        "per_sec": round(o.n as f64 / insert_s, 1),
        "seconds": round(insert_s, 3),
        "p50_ms": percentile_ms(&mut batch_s, 0.5),
        "p99_ms": percentile_ms(&mut batch_s, 0.99),
        "latency_of": "batch",
        "close_s": round(close_s, 3),
        "reopen_s": round(reopen_s, 3),
        "reopen_index": origin,
        "huge_pages_mb": store.stats().huge_page_bytes.map(|b| b >> 20),
    });

    // Ground truth, then the smallest ef on the ladder that reaches the target recall.
    let k = o.k;
    let nr = o.recall_queries.min(queries.len() / d).max(1);
    let truth: Vec<Vec<u64>> = queries
        .chunks_exact(d)
        .take(nr)
        .map(|q| {
            store
                .search_exact(q, k, None)
                .map(|h| h.into_iter().map(|h| h.id).collect())
        })
        .collect::<Result<_>>()?;
    let recall = |store: &Store| -> Result<f64> {
        let mut found = 0usize;
        for (q, t) in queries.chunks_exact(d).zip(&truth) {
            let hits = store.search(q, k, None)?;
            found += hits.iter().filter(|h| t.contains(&h.id)).count();
        }
        Ok(found as f64 / (truth.len() * k.min(o.n)) as f64)
    };
    let ladder = [10usize, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512];
    let candidates: Vec<usize> = if o.fixed_ef {
        vec![o.params.ef_search]
    } else {
        ladder.iter().copied().filter(|&e| e >= k).collect()
    };
    let (mut ef, mut rec) = (0, 0.0);
    for e in candidates {
        store.set_ef_search(e);
        ef = e;
        rec = recall(&store)?;
        if rec >= o.target_recall {
            break;
        }
    }

    let time_queries = || -> Result<(Vec<f64>, f64)> {
        let mut lat = Vec::with_capacity(o.queries);
        let t0 = Instant::now();
        for q in queries.chunks_exact(d).take(o.queries) {
            let t = Instant::now();
            let hits = store.search(q, k, None)?;
            lat.push(t.elapsed().as_secs_f64());
            std::hint::black_box(hits);
        }
        Ok((lat, t0.elapsed().as_secs_f64()))
    };
    let (mut lat, mut query_s) = time_queries()?;
    let mut before = None;
    if o.huge_pages_ab {
        let mut b = json!({
            "per_sec": round(lat.len() as f64 / query_s, 1),
            "p50_ms": percentile_ms(&mut lat, 0.5),
            "p99_ms": percentile_ms(&mut lat, 0.99),
        });
        let t = Instant::now();
        let hp = crate::pages::collapse_dense_anonymous(crate::pages::MIN_MAPPING_BYTES);
        b["collapse_s"] = json!(round(t.elapsed().as_secs_f64(), 3));
        b["collapsed_mb"] = json!(hp.collapsed_bytes >> 20);
        b["advised_mb"] = json!(hp.advised_bytes >> 20);
        before = Some(b);
        (lat, query_s) = time_queries()?;
    }
    let mut query_line = json!({
        "bench": format!("store_query_{label}_d{d}_k{k}"),
        "impl": "perennial",
        "n": o.n,
        "dim": d,
        "k": k,
        "queries": lat.len(),
        "recall_queries": truth.len(),
        "threads": 1,
        "m": o.params.m,
        "ef_construction": o.params.ef_construction,
        "quantization": format!("{:?}", o.params.quantization).to_lowercase(),
        "ef_search": ef,
        "per_sec": round(lat.len() as f64 / query_s, 1),
        "p50_ms": percentile_ms(&mut lat, 0.5),
        "p99_ms": percentile_ms(&mut lat, 0.99),
        "target_recall": o.target_recall,
    });
    query_line[format!("recall_at_{k}")] = json!(round(rec, 4));
    if let Some(b) = before {
        query_line["before_huge_pages"] = b;
    }
    store.close()?;
    Ok((insert_line, query_line))
}
