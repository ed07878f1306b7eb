#!/usr/bin/env python3
"""FAISS peer of the perennial-store benchmark (see docs/store.md).

Times FAISS's IndexHNSWFlat (inner product on unit vectors = cosine) on the same data,
with the same M, efConstruction, batch size, threads and efSearch ladder as
`cargo run --release -p perennial-store --example store_bench`, and prints the same two
JSON lines with "impl": "faiss":

  store_insert_<n>_d<dim>      add all n vectors in batches; per_sec = n / seconds,
                               p50_ms / p99_ms per batch
  store_query_<n>_d<dim>_k<k>  efSearch = first of the ladder whose recall@k against
                               exact search (IndexFlatIP) on --recall-queries queries
                               reaches --target-recall; then --queries single queries,
                               one thread: per_sec, p50_ms, p99_ms, recall_at_<k>

The data is regenerated here from the recipe in crates/perennial-store/src/bench.rs
(SplitMix64 counters, Box-Muller, 1000 Gaussian clusters, sigma 0.5, unit rows), or read
from the raw little-endian f32 files `base.f32` and `queries.f32` that
`store_bench --dump DIR` writes (--data DIR), for bit-identical inputs.

  PY=${PERENNIAL_CACHE:-$HOME/.cache/perennial}/peer-faiss-venv/bin/python
  $PY scripts/peer_store_bench.py --n 1000000 --threads 2
  $PY scripts/peer_store_bench.py --self-check   # first values of the data set
"""

import argparse
import json
import os
import resource
import sys
import time

import numpy as np

CLUSTERS = 1000
SIGMA = 0.5
CENTRE_SALT = 0xC3A5C85C97CB3127
QUERY_SALT = 0x9E6C63D0676A9A99
GAMMA = np.uint64(0x9E3779B97F4A7C15)
LADDER = [10, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512]


def splitmix64_at(seed, i):
    """u(s, i) for a uint64 array of counters i (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = np.uint64(seed) + (i + np.uint64(1)) * GAMMA
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def normal_at(seed, i):
    """g(s, i): Box-Muller (cosine branch) from counters i and i + 1, float64."""
    scale = 1.0 / float(1 << 53)
    a = ((splitmix64_at(seed, i) >> np.uint64(11)) + np.uint64(1)).astype(np.float64) * scale
    b = (splitmix64_at(seed, i + np.uint64(1)) >> np.uint64(11)).astype(np.float64) * scale
    return np.sqrt(-2.0 * np.log(a)) * np.cos(2.0 * np.pi * b)


def mixture(n, dim, seed, queries=False, chunk=20000):
    """n unit vectors (n x dim float32) of the seeded mixture, as in bench.rs."""
    cseed = seed ^ CENTRE_SALT
    centres = normal_at(cseed, np.uint64(2) * np.arange(CLUSTERS * dim, dtype=np.uint64))
    centres = centres.reshape(CLUSTERS, dim)
    s = seed ^ QUERY_SALT if queries else seed
    per = np.uint64(1 + 2 * dim)
    j = np.arange(dim, dtype=np.uint64)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, chunk):
        end = min(n, start + chunk)
        base = np.arange(start, end, dtype=np.uint64) * per
        c = (splitmix64_at(s, base) % np.uint64(CLUSTERS)).astype(np.int64)
        idx = base[:, None] + np.uint64(1) + np.uint64(2) * j[None, :]
        x = centres[c] + SIGMA * normal_at(s, idx)
        norm = np.zeros(end - start)
        for col in range(dim):  # sequential sum, in the same order as Rust
            norm += x[:, col] * x[:, col]
        out[start:end] = (x / np.sqrt(norm)[:, None]).astype(np.float32)
    return out


def size_label(n):
    if n >= 1_000_000 and n % 1_000_000 == 0:
        return f"{n // 1_000_000}m"
    if n >= 1000 and n % 1000 == 0:
        return f"{n // 1000}k"
    return str(n)


def pct_ms(v, p):
    v = sorted(v)
    return round(v[int(round((len(v) - 1) * p))] * 1e3, 3)


def peak_rss_mb():
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--queries", type=int, default=10_000)
    ap.add_argument("--recall-queries", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--m", type=int, default=16)
    ap.add_argument("--ef-construction", type=int, default=128)
    ap.add_argument("--ef-search", type=int, default=None, help="fix efSearch instead of the ladder")
    ap.add_argument("--target-recall", type=float, default=0.99)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--data", default=None, help="directory with base.f32 and queries.f32")
    ap.add_argument("--self-check", action="store_true", help="print the first values of the data and exit")
    a = ap.parse_args()

    if a.self_check:
        base = mixture(3, 64, 42)
        q = mixture(2, 64, 42, queries=True)
        print("base", [float(x) for x in base[0, :4]], "query", [float(x) for x in q[0, :4]])
        return

    import faiss

    nq = max(a.queries, a.recall_queries, 1)
    if a.data:
        x = np.fromfile(os.path.join(a.data, "base.f32"), dtype="<f4").reshape(-1, a.dim)[: a.n]
        q = np.fromfile(os.path.join(a.data, "queries.f32"), dtype="<f4").reshape(-1, a.dim)[:nq]
        if len(x) < a.n or len(q) < nq:
            sys.exit(f"{a.data} holds {len(x)} vectors and {len(q)} queries, fewer than asked")
    else:
        x = mixture(a.n, a.dim, a.seed)
        q = mixture(nq, a.dim, a.seed, queries=True)
    x = np.ascontiguousarray(x)
    q = np.ascontiguousarray(q)
    label = size_label(a.n)

    faiss.omp_set_num_threads(a.threads)
    index = faiss.IndexHNSWFlat(a.dim, a.m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = a.ef_construction
    lat = []
    t0 = time.perf_counter()
    for s in range(0, a.n, a.batch):
        t = time.perf_counter()
        index.add(x[s : s + a.batch])
        lat.append(time.perf_counter() - t)
    insert_s = time.perf_counter() - t0
    print(json.dumps({
        "bench": f"store_insert_{label}_d{a.dim}",
        "impl": "faiss",
        "n": a.n,
        "dim": a.dim,
        "threads": a.threads,
        "m": a.m,
        "ef_construction": a.ef_construction,
        "batch": a.batch,
        "sync": "none (in memory)",
        "per_sec": round(a.n / insert_s, 1),
        "seconds": round(insert_s, 3),
        "p50_ms": pct_ms(lat, 0.5),
        "p99_ms": pct_ms(lat, 0.99),
        "latency_of": "batch",
        "faiss_version": faiss.__version__,
    }), flush=True)

    # Ground truth by exact inner product, then the ladder.
    k = a.k
    nr = min(a.recall_queries, len(q))
    flat = faiss.IndexFlatIP(a.dim)
    flat.add(x)
    _, truth = flat.search(q[:nr], k)
    del flat
    ladder = [a.ef_search] if a.ef_search else [e for e in LADDER if e >= k]
    ef, recall = 0, 0.0
    for e in ladder:
        index.hnsw.efSearch = e
        _, got = index.search(q[:nr], k)
        found = sum(len(set(g[g >= 0]) & set(t)) for g, t in zip(got, truth))
        ef, recall = e, found / (nr * min(k, a.n))
        if recall >= a.target_recall:
            break

    faiss.omp_set_num_threads(1)
    lat = []
    t0 = time.perf_counter()
    for i in range(a.queries):
        t = time.perf_counter()
        index.search(q[i : i + 1], k)
        lat.append(time.perf_counter() - t)
    query_s = time.perf_counter() - t0
    print(json.dumps({
        "bench": f"store_query_{label}_d{a.dim}_k{k}",
        "impl": "faiss",
        "n": a.n,
        "dim": a.dim,
        "k": k,
        "queries": len(lat),
        "recall_queries": nr,
        "threads": 1,
        "m": a.m,
        "ef_construction": a.ef_construction,
        "ef_search": ef,
        "per_sec": round(len(lat) / query_s, 1),
        "p50_ms": pct_ms(lat, 0.5),
        "p99_ms": pct_ms(lat, 0.99),
        f"recall_at_{k}": round(recall, 4),
        "target_recall": a.target_recall,
        "peak_rss_mb": peak_rss_mb(),
        "faiss_version": faiss.__version__,
    }), flush=True)


if __name__ == "__main__":
    main()
