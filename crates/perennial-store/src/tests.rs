use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};

use super::*;
use crate::bench::{mixture, normal_at, Stream};

fn vecs(n: usize, dim: usize, seed: u64) -> Vec<Vec<f32>> {
    (0..n)
        .map(|i| {
            (0..dim)
                .map(|j| normal_at(seed, 2 * (i * dim + j) as u64) as f32)
                .collect()
        })
        .collect()
}

fn exact_cfg(dim: usize) -> StoreConfig {
    StoreConfig {
        index: IndexKind::Exact,
        ..StoreConfig::new(dim)
    }
}

fn hnsw_cfg(dim: usize) -> StoreConfig {
    StoreConfig {
        index: IndexKind::Hnsw(HnswParams {
            m: 16,
            ef_construction: 100,
            ef_search: 64,
            ..HnswParams::default()
        }),
        ..StoreConfig::new(dim)
    }
}

/// Inserts the rows of `data` (`dim` wide) with value 0 and age 0.
fn insert_rows(store: &mut Store, data: &[f32], dim: usize) {
    store
        .insert_many(data.chunks_exact(dim).map(|k| NewEntry {
            key: k,
            value: 0,
            age: 0,
            metadata: None,
        }))
        .unwrap();
}

fn fill(store: &mut Store, keys: &[Vec<f32>]) -> Vec<u64> {
    let ids = store
        .insert_many(keys.iter().enumerate().map(|(i, k)| NewEntry {
            key: k,
            value: i as i64,
            age: i as u64,
            metadata: (i % 3 == 0).then_some("{\"tag\":\"third\"}"),
        }))
        .unwrap();
    ids.collect()
}

/// Brute force written independently of the store, for the store's own exact search.
fn naive(
    keys: &[Vec<f32>],
    live: &HashSet<usize>,
    q: &[f32],
    k: usize,
    metric: Metric,
) -> Vec<usize> {
    let norm = |v: &[f32]| -> Vec<f32> {
        let n = v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
        v.iter().map(|x| (*x as f64 / n) as f32).collect()
    };
    let mut d: Vec<(f64, usize)> = live
        .iter()
        .map(|&i| {
            let dist = match metric {
                Metric::Cosine => {
                    let (a, b) = (norm(&keys[i]), norm(q));
                    1.0 - a.iter().zip(&b).map(|(x, y)| (x * y) as f64).sum::<f64>()
                }
                Metric::L2 => keys[i]
                    .iter()
                    .zip(q)
                    .map(|(x, y)| ((x - y) as f64).powi(2))
                    .sum::<f64>(),
            };
            (dist, i)
        })
        .collect();
    d.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    d.truncate(k);
    d.into_iter().map(|x| x.1).collect()
}

fn wal_path(dir: &Path) -> PathBuf {
    let mut logs: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("wal-"))
        .collect();
    assert_eq!(logs.len(), 1, "{logs:?}");
    logs.pop().unwrap()
}

/// Byte offsets of the records of a log.
fn record_starts(b: &[u8]) -> Vec<usize> {
    let mut out = Vec::new();
    let mut at = 32;
    while at < b.len() {
        out.push(at);
        at += 8 + u32::from_le_bytes(b[at..at + 4].try_into().unwrap()) as usize;
    }
    out
}

#[test]
fn exact_search_matches_brute_force_with_deletes() {
    for metric in [Metric::Cosine, Metric::L2] {
        let tmp = tempfile::tempdir().unwrap();
        let keys = vecs(300, 13, 1);
        let cfg = StoreConfig {
            metric,
            ..exact_cfg(13)
        };
        let mut s = Store::open(tmp.path(), cfg).unwrap();
        let ids = fill(&mut s, &keys);
        assert_eq!(ids, (0..300).collect::<Vec<u64>>());
        let mut live: HashSet<usize> = (0..300).collect();
        for i in (0..300).step_by(7) {
            assert!(s.delete(i as u64).unwrap());
            live.remove(&i);
        }
        assert!(!s.delete(0).unwrap());
        assert_eq!(s.len(), live.len());
        for q in vecs(20, 13, 2) {
            let got: Vec<usize> = s
                .search_exact(&q, 10, None)
                .unwrap()
                .iter()
                .map(|h| h.id as usize)
                .collect();
            assert_eq!(got, naive(&keys, &live, &q, 10, metric), "{metric:?}");
            // Without an index, search is exact search.
            let got2: Vec<usize> = s
                .search(&q, 10, None)
                .unwrap()
                .iter()
                .map(|h| h.id as usize)
                .collect();
            assert_eq!(got, got2);
        }
        // Distances are sorted and values come along.
        let h = s.search_exact(&keys[1], 5, None).unwrap();
        assert_eq!(h[0].id, 1);
        assert_eq!(h[0].value, 1);
        assert!(h[0].distance.abs() < 1e-5);
        assert!(h.windows(2).all(|w| w[0].distance <= w[1].distance));
    }
}

#[test]
fn filter_restricts_results() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = vecs(2000, 16, 3);
    for cfg in [exact_cfg(16), hnsw_cfg(16)] {
        let _ = fs::remove_dir_all(tmp.path());
        let mut s = Store::open(tmp.path(), cfg).unwrap();
        fill(&mut s, &keys);
        let even = |e: &EntryView<'_>| e.value % 2 == 0;
        let live: HashSet<usize> = (0..2000).filter(|i| i % 2 == 0).collect();
        for q in vecs(10, 16, 4) {
            let hits = s.search(&q, 10, Some(&even)).unwrap();
            assert_eq!(hits.len(), 10);
            assert!(hits.iter().all(|h| h.value % 2 == 0));
            let exact: Vec<usize> = s
                .search_exact(&q, 10, Some(&even))
                .unwrap()
                .iter()
                .map(|h| h.id as usize)
                .collect();
            assert_eq!(exact, naive(&keys, &live, &q, 10, Metric::Cosine));
        }
        // A filter matching three entries: all three, whatever the index finds.
        let few = |e: &EntryView<'_>| e.id == 5 || e.id == 500 || e.id == 1999;
        let hits = s.search(&keys[0], 10, Some(&few)).unwrap();
        let mut ids: Vec<u64> = hits.iter().map(|h| h.id).collect();
        ids.sort();
        assert_eq!(ids, vec![5, 500, 1999]);
        // Metadata and age are visible to filters.
        let third = |e: &EntryView<'_>| e.metadata.is_some() && e.age < 100;
        let hits = s.search(&keys[3], 50, Some(&third)).unwrap();
        assert_eq!(hits.len(), 34);
        assert!(hits.iter().all(|h| h.id % 3 == 0 && h.id < 100));
        drop(s);
    }
}

#[test]
fn hnsw_recall_on_5k() {
    let tmp = tempfile::tempdir().unwrap();
    let dim = 32;
    let data = mixture(5000, dim, 7, Stream::Base);
    let queries = mixture(200, dim, 7, Stream::Queries);
    let mut s = Store::open(tmp.path(), hnsw_cfg(dim)).unwrap();
    insert_rows(&mut s, &data, dim);
    let mut found = 0;
    for q in queries.chunks_exact(dim) {
        let truth: HashSet<u64> = s
            .search_exact(q, 10, None)
            .unwrap()
            .iter()
            .map(|h| h.id)
            .collect();
        let got = s.search(q, 10, None).unwrap();
        assert_eq!(got.len(), 10);
        found += got.iter().filter(|h| truth.contains(&h.id)).count();
    }
    let recall = found as f64 / 2000.0;
    assert!(recall >= 0.95, "recall@10 {recall}");
}

/// A quantised graph (f16, i8) reranked by the exact keys keeps the recall of the f32
/// one, returns exact distances, and is reloaded as itself, or rebuilt when reopened
/// with another quantisation.
#[test]
fn quantised_index_reranks_to_full_recall() {
    let dim = 32;
    let data = mixture(5000, dim, 7, Stream::Base);
    let queries = mixture(200, dim, 7, Stream::Queries);
    for q in [Quantization::F16, Quantization::I8] {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = |quantization| StoreConfig {
            index: IndexKind::Hnsw(HnswParams {
                quantization,
                ..HnswParams::default()
            }),
            ..StoreConfig::new(dim)
        };
        let mut s = Store::open(tmp.path(), cfg(q)).unwrap();
        insert_rows(&mut s, &data, dim);
        let mut found = 0;
        for query in queries.chunks_exact(dim) {
            let truth = s.search_exact(query, 10, None).unwrap();
            let got = s.search(query, 10, None).unwrap();
            assert_eq!(got.len(), 10);
            assert!(got.windows(2).all(|w| w[0].distance <= w[1].distance));
            for h in &got {
                if let Some(t) = truth.iter().find(|t| t.id == h.id) {
                    assert_eq!(t.distance, h.distance, "{q:?}: distances are exact");
                    found += 1;
                }
            }
        }
        let recall = found as f64 / 2000.0;
        assert!(recall >= 0.95, "{q:?}: recall@10 {recall}");
        s.close().unwrap();
        let s = Store::open(tmp.path(), cfg(q)).unwrap();
        assert_eq!(s.stats().index_origin, "loaded", "{q:?}");
        drop(s);
        let s = Store::open(tmp.path(), cfg(Quantization::F32)).unwrap();
        assert_eq!(s.stats().index_origin, "rebuilt", "{q:?}");
    }
}

#[test]
fn reopen_finds_everything_and_reloads_index() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = vecs(1500, 8, 5);
    let mut s = Store::open(tmp.path(), hnsw_cfg(8)).unwrap();
    fill(&mut s, &keys);
    s.delete(10).unwrap();
    s.set_age(11, 999).unwrap();
    s.close().unwrap();

    let s = Store::open(tmp.path(), hnsw_cfg(8)).unwrap();
    assert_eq!(s.stats().index_origin, "loaded");
    assert_eq!(s.len(), 1499);
    assert!(s.get(10).is_none());
    assert_eq!(s.get(11).unwrap().age, 999);
    let e = s.get(12).unwrap();
    assert_eq!(e.value, 12);
    assert_eq!(e.metadata, Some("{\"tag\":\"third\"}"));
    assert_eq!(s.get(13).unwrap().metadata, None);
    assert_eq!(s.search(&keys[700], 1, None).unwrap()[0].id, 700);
    drop(s); // no close: the saved index is now behind nothing, still loaded

    // More writes without close: the index is caught up from the log on open.
    let mut s = Store::open(tmp.path(), hnsw_cfg(8)).unwrap();
    let more = vecs(50, 8, 6);
    let new_ids = fill(&mut s, &more);
    s.delete(20).unwrap();
    drop(s);
    let s = Store::open(tmp.path(), hnsw_cfg(8)).unwrap();
    assert_eq!(s.stats().index_origin, "loaded");
    assert_eq!(s.stats().index_entries, Some(1548));
    assert_eq!(s.search(&more[3], 1, None).unwrap()[0].id, new_ids[3]);
    assert!(s
        .search(&keys[20], 5, None)
        .unwrap()
        .iter()
        .all(|h| h.id != 20));
    drop(s);

    // Opening as exact, then as HNSW with other parameters: rebuilt.
    let s = Store::open(tmp.path(), exact_cfg(8)).unwrap();
    assert_eq!(s.stats().index_origin, "none");
    drop(s);
    let cfg = StoreConfig {
        index: IndexKind::Hnsw(HnswParams {
            m: 8,
            ..HnswParams::default()
        }),
        ..StoreConfig::new(8)
    };
    let s = Store::open(tmp.path(), cfg).unwrap();
    assert_eq!(s.stats().index_origin, "rebuilt");
    assert_eq!(s.len(), 1548);
}

#[test]
fn compaction_keeps_everything() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = vecs(3000, 8, 8);
    let cfg = StoreConfig {
        auto_compact_bytes: Some(4096),
        ..hnsw_cfg(8)
    };
    let mut s = Store::open(tmp.path(), cfg.clone()).unwrap();
    for (i, k) in keys.iter().enumerate() {
        let id = s.insert(k, i as i64, 0, None).unwrap();
        if i % 5 == 0 {
            s.delete(id).unwrap();
        }
    }
    let st = s.stats();
    assert!(st.generation >= 3, "{st:?}");
    assert_eq!(st.entries, 2400);
    s.compact().unwrap();
    for i in 3000..3010 {
        s.set_age(i - 1000, 5).unwrap();
    }
    drop(s);
    let s = Store::open(tmp.path(), cfg).unwrap();
    assert_eq!(s.len(), 2400);
    assert_eq!(s.stats().index_origin, "loaded");
    for i in 0..3000u64 {
        assert_eq!(s.contains(i), i % 5 != 0, "{i}");
    }
    assert_eq!(s.get(2001).unwrap().age, 5);
    assert_eq!(s.get(2001).unwrap().value, 2001);
    assert_eq!(s.search(&keys[2001], 1, None).unwrap()[0].id, 2001);
    wal_path(tmp.path()); // exactly one log left
                          // next_id survives compaction even when the newest entries were deleted.
    drop(s);
    let mut s = Store::open(tmp.path(), exact_cfg(8)).unwrap();
    assert_eq!(s.insert(&keys[0], 0, 0, None).unwrap(), 3000);
}

#[test]
fn torn_tail_is_cut_off() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = vecs(20, 8, 9);
    let mut s = Store::open(tmp.path(), exact_cfg(8)).unwrap();
    fill(&mut s, &keys);
    drop(s);
    let wal = wal_path(tmp.path());
    let good = fs::metadata(&wal).unwrap().len();
    // A partial record: frame header and part of the payload.
    let mut f = OpenOptions::new().append(true).open(&wal).unwrap();
    f.write_all(&[80, 0, 0, 0, 1, 2, 3, 4, 1, 9, 9]).unwrap();
    drop(f);
    let mut s = Store::open(tmp.path(), exact_cfg(8)).unwrap();
    assert_eq!(s.len(), 20);
    assert_eq!(s.stats().torn_bytes_dropped, 11);
    assert_eq!(fs::metadata(&wal).unwrap().len(), good);
    let id = s.insert(&keys[0], 77, 0, None).unwrap();
    assert_eq!(id, 20);
    drop(s);
    // The last record damaged: cut off as torn (it could not have been acknowledged).
    let len = fs::metadata(&wal).unwrap().len();
    let mut b = fs::read(&wal).unwrap();
    b[len as usize - 3] ^= 0xff;
    fs::write(&wal, &b).unwrap();
    let s = Store::open(tmp.path(), exact_cfg(8)).unwrap();
    assert_eq!(s.len(), 20);
    assert!(!s.contains(20));
    drop(s);
    // A zero-filled tail (file extended, data never written).
    let mut f = OpenOptions::new().append(true).open(&wal).unwrap();
    f.write_all(&[0u8; 4096]).unwrap();
    drop(f);
    let s = Store::open(tmp.path(), exact_cfg(8)).unwrap();
    assert_eq!(s.len(), 20);
    assert_eq!(s.stats().torn_bytes_dropped, 4096);
}

#[test]
fn damage_in_the_middle_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = vecs(20, 8, 10);
    let mut s = Store::open(tmp.path(), exact_cfg(8)).unwrap();
    fill(&mut s, &keys);
    drop(s);
    let wal = wal_path(tmp.path());
    let orig = fs::read(&wal).unwrap();
    let starts = record_starts(&orig);
    assert_eq!(starts.len(), 20);
    // A flipped bit inside the 3rd record's key.
    let mut b = orig.clone();
    b[starts[3] - 5] ^= 0x10;
    fs::write(&wal, &b).unwrap();
    let err = Store::open(tmp.path(), exact_cfg(8))
        .err()
        .expect("must refuse");
    assert!(err.is_refusal(), "{err}");
    match &err {
        Error::Corrupt { offset, reason, .. } => {
            assert!(reason.contains("checksum"), "{reason}");
            assert!(*offset > 32, "{offset}");
        }
        e => panic!("{e}"),
    }
    // An impossible length in the middle.
    let mut b = orig.clone();
    b[starts[5]..starts[5] + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    fs::write(&wal, &b).unwrap();
    assert!(matches!(
        Store::open(tmp.path(), exact_cfg(8)),
        Err(Error::Corrupt { .. })
    ));
    // Bad magic, bad version.
    let mut b = orig.clone();
    b[0] = b'X';
    fs::write(&wal, &b).unwrap();
    let e = Store::open(tmp.path(), exact_cfg(8)).err().unwrap();
    assert!(e.to_string().contains("magic"), "{e}");
    let mut b = orig.clone();
    b[8] = 9;
    fs::write(&wal, &b).unwrap();
    assert!(matches!(
        Store::open(tmp.path(), exact_cfg(8)),
        Err(Error::Corrupt { .. })
    ));
    // Shorter than its header.
    fs::write(&wal, &orig[..20]).unwrap();
    assert!(matches!(
        Store::open(tmp.path(), exact_cfg(8)),
        Err(Error::Corrupt { .. })
    ));
}

#[test]
fn snapshot_damage_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = vecs(50, 8, 11);
    let mut s = Store::open(tmp.path(), exact_cfg(8)).unwrap();
    fill(&mut s, &keys);
    s.compact().unwrap();
    drop(s);
    let snap = tmp.path().join(SNAPSHOT_FILE);
    let orig = fs::read(&snap).unwrap();
    for cut in [orig.len() - 1, orig.len() / 2, 47, 10, 0] {
        fs::write(&snap, &orig[..cut]).unwrap();
        let e = Store::open(tmp.path(), exact_cfg(8))
            .err()
            .expect("truncated");
        assert!(matches!(e, Error::Corrupt { .. }), "{e}");
    }
    let mut b = orig.clone();
    b[200] ^= 1;
    fs::write(&snap, &b).unwrap();
    let e = Store::open(tmp.path(), exact_cfg(8)).err().unwrap();
    assert!(e.to_string().contains("checksum"), "{e}");
    // A count the file cannot hold.
    let mut b = orig.clone();
    b[36..44].copy_from_slice(&u64::MAX.to_le_bytes());
    fs::write(&snap, &b).unwrap();
    assert!(matches!(
        Store::open(tmp.path(), exact_cfg(8)),
        Err(Error::Corrupt { .. })
    ));
    fs::write(&snap, &orig).unwrap();
    assert_eq!(Store::open(tmp.path(), exact_cfg(8)).unwrap().len(), 50);
    // The log the snapshot names is missing.
    fs::remove_file(wal_path(tmp.path())).unwrap();
    let e = Store::open(tmp.path(), exact_cfg(8)).err().unwrap();
    assert!(e.to_string().contains("missing"), "{e}");
}

/// Every single-byte change and every truncation of a small store's files is either
/// accepted or refused with an error: never a panic.
#[test]
fn no_panic_on_any_damage() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = vecs(6, 4, 12);
    let mut s = Store::open(tmp.path(), exact_cfg(4)).unwrap();
    fill(&mut s, &keys[..3]);
    s.compact().unwrap();
    fill(&mut s, &keys[3..]);
    s.delete(1).unwrap();
    s.set_age(2, 3).unwrap();
    drop(s);
    let files = [tmp.path().join(SNAPSHOT_FILE), wal_path(tmp.path())];
    for f in &files {
        let orig = fs::read(f).unwrap();
        for i in 0..orig.len() {
            for v in [0u8, 0xff, orig[i] ^ 1] {
                let mut b = orig.clone();
                b[i] = v;
                fs::write(f, &b).unwrap();
                if let Ok(s) = Store::open(tmp.path(), exact_cfg(4)) {
                    assert!(s.len() <= 6);
                }
            }
            fs::write(f, &orig[..i]).unwrap();
            let _ = Store::open(tmp.path(), exact_cfg(4));
        }
        fs::write(f, &orig).unwrap();
    }
    assert_eq!(Store::open(tmp.path(), exact_cfg(4)).unwrap().len(), 5);
}

#[test]
fn damaged_index_is_rebuilt() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = vecs(500, 8, 13);
    let mut s = Store::open(tmp.path(), hnsw_cfg(8)).unwrap();
    fill(&mut s, &keys);
    s.close().unwrap();
    let blob = tmp.path().join(hnsw::INDEX_FILE);
    let mut b = fs::read(&blob).unwrap();
    let n = b.len();
    b[n / 2] ^= 0xff;
    fs::write(&blob, &b).unwrap();
    let s = Store::open(tmp.path(), hnsw_cfg(8)).unwrap();
    assert_eq!(s.stats().index_origin, "rebuilt");
    assert_eq!(s.search(&keys[42], 1, None).unwrap()[0].id, 42);
    s.close().unwrap();
    fs::write(tmp.path().join(hnsw::INDEX_META_FILE), b"garbage").unwrap();
    let s = Store::open(tmp.path(), hnsw_cfg(8)).unwrap();
    assert_eq!(s.stats().index_origin, "rebuilt");
}

#[test]
fn mismatch_lock_and_bad_input() {
    let tmp = tempfile::tempdir().unwrap();
    let mut s = Store::open(tmp.path(), exact_cfg(8)).unwrap();
    // Locked while open.
    assert!(matches!(
        Store::open(tmp.path(), exact_cfg(8)),
        Err(Error::Locked { .. })
    ));
    assert!(matches!(
        s.insert(&[1.0; 7], 0, 0, None),
        Err(Error::Invalid(_))
    ));
    assert!(matches!(
        s.insert(&[0.0; 8], 0, 0, None),
        Err(Error::Invalid(_))
    ));
    let mut nan = [1.0; 8];
    nan[3] = f32::NAN;
    assert!(matches!(s.insert(&nan, 0, 0, None), Err(Error::Invalid(_))));
    assert!(matches!(
        s.search(&[1.0; 9], 1, None),
        Err(Error::Invalid(_))
    ));
    let big = "x".repeat(MAX_METADATA_BYTES + 1);
    assert!(matches!(
        s.insert(&[1.0; 8], 0, 0, Some(&big)),
        Err(Error::Invalid(_))
    ));
    // A failed batch inserts nothing.
    let ok = [1.0f32; 8];
    let bad = [1.0f32; 3];
    let r = s.insert_many([
        NewEntry {
            key: &ok,
            value: 0,
            age: 0,
            metadata: None,
        },
        NewEntry {
            key: &bad,
            value: 0,
            age: 0,
            metadata: None,
        },
    ]);
    assert!(r.is_err());
    assert!(s.is_empty());
    assert_eq!(s.insert(&ok, 1, 0, None).unwrap(), 0);
    // Empty results.
    assert!(s.search(&ok, 0, None).unwrap().is_empty());
    assert_eq!(s.search(&ok, 5, None).unwrap().len(), 1);
    drop(s);
    let e = Store::open(tmp.path(), exact_cfg(9)).err().unwrap();
    assert!(matches!(e, Error::Mismatch { .. }) && e.is_refusal(), "{e}");
    let l2 = StoreConfig {
        metric: Metric::L2,
        ..exact_cfg(8)
    };
    assert!(matches!(
        Store::open(tmp.path(), l2),
        Err(Error::Mismatch { .. })
    ));
    // An i8 graph needs unit vectors: refused under L2 before anything is opened.
    let i8_l2 = StoreConfig {
        metric: Metric::L2,
        ..StoreConfig::new(8)
    };
    let e = Store::open(tmp.path().join("other"), i8_l2).err().unwrap();
    assert!(
        matches!(e, Error::Invalid(_)) && e.to_string().contains("cosine"),
        "{e}"
    );
    assert!(matches!(
        Store::open(tmp.path(), exact_cfg(0)),
        Err(Error::Invalid(_))
    ));
}

#[test]
fn manual_sync_survives_drop() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = StoreConfig {
        sync: SyncPolicy::Manual,
        ..exact_cfg(4)
    };
    let mut s = Store::open(tmp.path(), cfg.clone()).unwrap();
    s.insert(&[1.0, 2.0, 3.0, 4.0], 1, 0, None).unwrap();
    s.sync().unwrap();
    s.insert(&[1.0, 2.0, 3.0, 5.0], 2, 0, None).unwrap();
    drop(s);
    assert_eq!(Store::open(tmp.path(), cfg).unwrap().len(), 2);
}

const BASE_FIRST: [f32; 4] = [-0.006885846, 0.16355991, 0.1346036, -0.10404321];
const QUERY_FIRST: [f32; 4] = [0.018_513_23, 0.18219763, 0.10295209, 0.00018019296];

#[test]
fn mixture_matches_the_documented_recipe() {
    // The first values of the data set the Python peer regenerates (seed 42, dim 64);
    // scripts/peer_store_bench.py --self-check prints the same numbers.
    let d = mixture(3, 64, 42, Stream::Base);
    let q = mixture(2, 64, 42, Stream::Queries);
    assert_eq!(d.len(), 192);
    for row in d.chunks_exact(64).chain(q.chunks_exact(64)) {
        let n: f32 = row.iter().map(|x| x * x).sum();
        assert!((n - 1.0).abs() < 1e-5);
    }
    assert_eq!(&d[..4], &BASE_FIRST);
    assert_eq!(&q[..4], &QUERY_FIRST);
}

#[test]
fn bench_runs_on_small_n() {
    let o = bench::BenchOptions {
        n: 3000,
        dim: 16,
        queries: 300,
        recall_queries: 100,
        batch: 500,
        threads: 2,
        ..bench::BenchOptions::default()
    };
    let (ins, q) = bench::bench_store(&o).unwrap();
    assert_eq!(ins["bench"], "store_insert_3k_d16");
    assert_eq!(q["bench"], "store_query_3k_d16_k10");
    assert!(ins["per_sec"].as_f64().unwrap() > 0.0);
    assert_eq!(ins["reopen_index"], "loaded");
    assert!(q["recall_at_10"].as_f64().unwrap() >= 0.99, "{q}");
    for f in ["per_sec", "p50_ms", "p99_ms"] {
        assert!(q[f].as_f64().is_some(), "{f}");
    }
}

#[test]
fn huge_pages_from_the_threshold_on_and_answers_unchanged() {
    let dim = 4;
    let n = HUGE_PAGES_MIN_ENTRIES;
    let data = mixture(n, dim, 7, Stream::Base);
    let queries = mixture(20, dim, 7, Stream::Queries);
    let cfg = |huge_pages| StoreConfig {
        index: IndexKind::Exact,
        sync: SyncPolicy::Manual,
        huge_pages,
        ..StoreConfig::new(dim)
    };
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path(), cfg(true)).unwrap();
    insert_rows(&mut store, &data[..(n - 1) * dim], dim);
    store.close().unwrap();
    // One entry short of the threshold: nothing is collapsed at open.
    let mut store = Store::open(dir.path(), cfg(true)).unwrap();
    assert_eq!(store.stats().huge_page_bytes, None);
    insert_rows(&mut store, &data[(n - 1) * dim..], dim);
    let before: Vec<Vec<Hit>> = queries
        .chunks_exact(dim)
        .map(|q| store.search(q, 10, None).unwrap())
        .collect();
    store.close().unwrap();
    // At the threshold it runs at open (how much it collapses is the kernel's business),
    // and every answer is the same as before.
    let store = Store::open(dir.path(), cfg(true)).unwrap();
    let collapsed = store.stats().huge_page_bytes;
    assert!(collapsed.is_some());
    for (q, want) in queries.chunks_exact(dim).zip(&before) {
        assert_eq!(&store.search(q, 10, None).unwrap(), want);
    }
    store.close().unwrap();
    // Switched off, it never runs.
    let store = Store::open(dir.path(), cfg(false)).unwrap();
    assert_eq!(store.stats().huge_page_bytes, None);
}
