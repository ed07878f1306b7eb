//! Brute-force k-nearest search over the contiguous key matrix: eight-lane dot products
//! and squared distances the compiler vectorises, a bounded max-heap per thread, and
//! `std::thread::scope` over row ranges for large stores.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use crate::entries::Entries;
use crate::{Filter, Metric};

/// Rows below which the search stays on the calling thread.
const ROWS_PER_THREAD: usize = 16_384;

/// Dot product with eight independent accumulators (vectorised, deterministic).
#[inline]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let ca = a.chunks_exact(8);
    let cb = b.chunks_exact(8);
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut tail = 0f32;
    for (x, y) in ra.iter().zip(rb) {
        tail += x * y;
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

/// Squared Euclidean distance, like [`dot`].
#[inline]
pub(crate) fn l2sq(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let ca = a.chunks_exact(8);
    let cb = b.chunks_exact(8);
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            let d = x[i] - y[i];
            acc[i] += d * d;
        }
    }
    let mut tail = 0f32;
    for (x, y) in ra.iter().zip(rb) {
        let d = x - y;
        tail += d * d;
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

/// The store's distance: `1 - dot` for cosine (keys and query are unit vectors), squared
/// Euclidean for L2. Lower is closer.
#[inline]
pub(crate) fn distance(metric: Metric, a: &[f32], b: &[f32]) -> f32 {
    match metric {
        Metric::Cosine => 1.0 - dot(a, b),
        Metric::L2 => l2sq(a, b),
    }
}

/// A candidate, ordered by (distance, id): the heap's top is the worst kept.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Cand {
    pub dist: f32,
    pub id: u64,
    pub row: usize,
}

impl PartialEq for Cand {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Cand {}
impl PartialOrd for Cand {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Cand {
    fn cmp(&self, o: &Self) -> Ordering {
        self.dist.total_cmp(&o.dist).then(self.id.cmp(&o.id))
    }
}

fn scan(
    e: &Entries,
    metric: Metric,
    q: &[f32],
    k: usize,
    filter: Option<&Filter<'_>>,
    rows: std::ops::Range<usize>,
) -> BinaryHeap<Cand> {
    let mut heap = BinaryHeap::with_capacity(k + 1);
    let d = e.dim;
    for row in rows {
        let dist = distance(metric, q, &e.keys[row * d..(row + 1) * d]);
        let c = Cand {
            dist,
            id: e.ids[row],
            row,
        };
        if heap.len() == k && c >= *heap.peek().expect("k > 0") {
            continue;
        }
        if let Some(f) = filter {
            if !f(&e.view(row)) {
                continue;
            }
        }
        heap.push(c);
        if heap.len() > k {
            heap.pop();
        }
    }
    heap
}

/// The `k` nearest live entries passing `filter`, nearest first (ties by id).
pub(crate) fn top_k(
    e: &Entries,
    metric: Metric,
    q: &[f32],
    k: usize,
    filter: Option<&Filter<'_>>,
    threads: usize,
) -> Vec<Cand> {
    let n = e.len();
    if k == 0 || n == 0 {
        return Vec::new();
    }
    let threads = threads.clamp(1, n.div_ceil(ROWS_PER_THREAD).max(1));
    let heap = if threads == 1 {
        scan(e, metric, q, k, filter, 0..n)
    } else {
        let per = n.div_ceil(threads);
        std::thread::scope(|s| {
            let hs: Vec<_> = (0..threads)
                .map(|t| {
                    let r = (t * per).min(n)..((t + 1) * per).min(n);
                    s.spawn(move || scan(e, metric, q, k, filter, r))
                })
                .collect();
            let mut all = BinaryHeap::with_capacity(k * threads);
            for h in hs {
                match h.join() {
                    Ok(part) => all.extend(part),
                    Err(p) => std::panic::resume_unwind(p),
                }
            }
            while all.len() > k {
                all.pop();
            }
            all
        })
    };
    heap.into_sorted_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernels_match_naive() {
        for n in [0usize, 1, 7, 8, 9, 31, 64, 65] {
            let a: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos()).collect();
            let d: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            let l: f32 = a.iter().zip(&b).map(|(x, y)| (x - y) * (x - y)).sum();
            assert!((dot(&a, &b) - d).abs() < 1e-4, "{n}");
            assert!((l2sq(&a, &b) - l).abs() < 1e-4, "{n}");
        }
    }
}
