//! Crash durability: a child process writes to a store in a loop and prints each write
//! once it is acknowledged; the parent kills it with SIGKILL at seeded random moments,
//! reopens the store, and checks that every acknowledged write is there, nothing
//! unacknowledged is there except the batch in flight, and the HNSW index agrees with
//! the entries and with exact search.
//!
//! The child is this test binary itself, run as `--exact child_writer` with
//! `PERENNIAL_STORE_CHILD_DIR` set; without that variable `child_writer` does nothing.

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use perennial_store::bench::{normal_at, splitmix64_at};
use perennial_store::{HnswParams, IndexKind, NewEntry, Store, StoreConfig};

const DIR_VAR: &str = "PERENNIAL_STORE_CHILD_DIR";
const ROUND_VAR: &str = "PERENNIAL_STORE_CHILD_ROUND";
const DIM: usize = 24;
const ROUNDS: u64 = 12;
const MAX_BATCH: u64 = 8;

fn config() -> StoreConfig {
    StoreConfig {
        index: IndexKind::Hnsw(HnswParams {
            m: 12,
            ef_construction: 64,
            ef_search: 64,
            ..HnswParams::default()
        }),
        // Small, so that kills also land in compactions and index saves.
        auto_compact_bytes: Some(48 << 10),
        threads: 1,
        ..StoreConfig::new(DIM)
    }
}

/// The key of entry `id`: a fixed function of the id, so the parent can check it.
fn key_for(id: u64) -> Vec<f32> {
    (0..DIM)
        .map(|j| normal_at(0xD0D0, 2 * (id * DIM as u64 + j as u64)) as f32)
        .collect()
}

fn value_for(id: u64) -> i64 {
    (id as i64) * 7 - 3
}

fn unit(v: &[f32]) -> Vec<f32> {
    let n = v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    v.iter().map(|x| (*x as f64 / n) as f32).collect()
}

/// The writer. Protocol on stdout, one line per acknowledged write:
/// `READY`, `I first last` (ids inserted), `D id` (deleted), `A id age` (age set); and
/// `P id` just before a delete is attempted.
#[test]
fn child_writer() {
    let Ok(dir) = std::env::var(DIR_VAR) else {
        return;
    };
    let round: u64 = std::env::var(ROUND_VAR).unwrap().parse().unwrap();
    let mut store = Store::open(&dir, config()).expect("child: open");
    let out = std::io::stdout();
    let mut out = out.lock();
    writeln!(out, "READY").unwrap();
    out.flush().unwrap();
    let mut live: Vec<u64> = store.iter().map(|e| e.id).collect();
    let mut age = 1_000_000 * (round + 1);
    for step in 0u64.. {
        let r = splitmix64_at(round ^ 0xC41D, step);
        match r % 16 {
            0 if !live.is_empty() => {
                let id = live.swap_remove((r >> 8) as usize % live.len());
                // Announced first: if the kill lands inside, the delete may have happened.
                writeln!(out, "P {id}").unwrap();
                out.flush().unwrap();
                assert!(store.delete(id).unwrap());
                writeln!(out, "D {id}").unwrap();
            }
            1 if !live.is_empty() => {
                let id = live[(r >> 8) as usize % live.len()];
                age += 1;
                assert!(store.set_age(id, age).unwrap());
                writeln!(out, "A {id} {age}").unwrap();
            }
            _ => {
                let first = store.stats().next_id;
                let n = 1 + (r >> 8) % MAX_BATCH;
                let keys: Vec<Vec<f32>> = (first..first + n).map(key_for).collect();
                let ids = store
                    .insert_many(keys.iter().zip(first..).map(|(k, id)| NewEntry {
                        key: k,
                        value: value_for(id),
                        age: id,
                        metadata: (id % 2 == 0).then_some("even"),
                    }))
                    .unwrap();
                assert_eq!(ids, first..first + n);
                live.extend(ids.clone());
                writeln!(out, "I {} {}", ids.start, ids.end - 1).unwrap();
            }
        }
        out.flush().unwrap();
    }
}

#[derive(Default)]
struct Acked {
    inserted: BTreeMap<u64, ()>,
    deleted: HashSet<u64>,
    age: BTreeMap<u64, u64>,
    /// A delete announced but not acknowledged: it may or may not have happened.
    pending_delete: Option<u64>,
}

impl Acked {
    fn apply(&mut self, line: &str) {
        if !matches!(line.as_bytes().first(), Some(b'I' | b'D' | b'A' | b'P')) {
            return; // the test harness's own lines
        }
        let f: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .map(|x| {
                x.parse()
                    .unwrap_or_else(|_| panic!("bad line from the child: {line:?}"))
            })
            .collect();
        match line.as_bytes().first() {
            Some(b'I') => {
                for id in f[0]..=f[1] {
                    self.inserted.insert(id, ());
                }
            }
            Some(b'D') => {
                self.deleted.insert(f[0]);
                self.pending_delete = None;
            }
            Some(b'P') => self.pending_delete = Some(f[0]),
            Some(b'A') => {
                self.age.insert(f[0], f[1]);
            }
            _ => {}
        }
    }
}

fn verify(store: &Store, acked: &Acked, round: u64) {
    let max_acked = acked.inserted.keys().next_back().copied();
    // Every acknowledged insert is there (unless its delete was acknowledged), intact.
    for &id in acked.inserted.keys() {
        if acked.deleted.contains(&id) {
            assert!(
                !store.contains(id),
                "round {round}: deleted id {id} is back"
            );
            continue;
        }
        if acked.pending_delete == Some(id) && !store.contains(id) {
            continue;
        }
        let e = store
            .get(id)
            .unwrap_or_else(|| panic!("round {round}: acknowledged id {id} is missing"));
        assert_eq!(e.value, value_for(id), "round {round}: id {id}");
        assert_eq!(e.metadata, (id % 2 == 0).then_some("even"));
        let want = unit(&key_for(id));
        assert!(
            e.key.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-6),
            "round {round}: key of {id} differs"
        );
        // Ages only grow; an unacknowledged later update may have landed.
        let min_age = acked.age.get(&id).copied().unwrap_or(id);
        assert!(
            e.age >= min_age,
            "round {round}: id {id} age {} < {min_age}",
            e.age
        );
    }
    // Anything else is from the batch in flight when the child was killed.
    for e in store.iter() {
        if !acked.inserted.contains_key(&e.id) {
            let lo = max_acked.map_or(0, |m| m + 1);
            assert!(
                e.id >= lo && e.id < lo + MAX_BATCH,
                "round {round}: id {} was never acknowledged (last acked {max_acked:?})",
                e.id
            );
            assert_eq!(e.value, value_for(e.id));
        }
    }
    // The index holds exactly the live entries and agrees with exact search.
    assert_eq!(
        store.stats().index_entries,
        Some(store.len()),
        "round {round}"
    );
    let ids: Vec<u64> = store.iter().map(|e| e.id).collect();
    let mut overlap = 0;
    let mut total = 0;
    for (i, &id) in ids.iter().enumerate().filter(|(i, _)| i % 7 == 0).take(60) {
        let k = key_for(id);
        let hits = store.search(&k, 10, None).unwrap();
        assert_eq!(
            hits[0].id, id,
            "round {round}: HNSW misses entry {id} (sample {i})"
        );
        let exact = store.search_exact(&k, 10, None).unwrap();
        assert_eq!(exact[0].id, id);
        let e: HashSet<u64> = exact.iter().map(|h| h.id).collect();
        overlap += hits.iter().filter(|h| e.contains(&h.id)).count();
        total += exact.len();
    }
    if total > 0 {
        let r = overlap as f64 / total as f64;
        assert!(
            r >= 0.9,
            "round {round}: HNSW and exact agree on only {r:.3}"
        );
    }
}

#[test]
fn kill9_durability() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    let exe = std::env::current_exe().unwrap();
    let started = Instant::now();
    let mut acked = Acked::default();
    let mut kills_before_ready = 0;
    let mut torn = 0;
    for round in 0..ROUNDS {
        let mut child = Command::new(&exe)
            .args(["--exact", "child_writer", "--nocapture", "--test-threads=1"])
            .env(DIR_VAR, &dir)
            .env(ROUND_VAR, round.to_string())
            .env_remove("RUST_BACKTRACE")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let r = splitmix64_at(0x5EED, round);
        // Every third round the kill may land during start-up (before READY); otherwise
        // 50–300 ms into the writing.
        let early = round % 3 == 2;
        let delay = Duration::from_millis(if early { r % 15 } else { 50 + r % 251 });
        let mut ready = false;
        if !early {
            ready = true;
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let line = rx
                    .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                    .expect("child did not get ready");
                if line.ends_with("READY") {
                    break;
                }
            }
        }
        std::thread::sleep(delay);
        child.kill().unwrap(); // SIGKILL on Unix
        let status = child.wait().unwrap();
        assert!(!status.success(), "child ended by itself: {status:?}");
        reader.join().unwrap();
        for line in rx.try_iter() {
            ready |= line.ends_with("READY");
            acked.apply(&line);
        }
        kills_before_ready += usize::from(!ready);
        if round % 4 == 1 {
            // Also a torn write as a power loss can leave it: the first bytes of a record.
            let log = std::fs::read_dir(&dir)
                .unwrap()
                .map(|e| e.unwrap().path())
                .find(|p| p.extension().is_some_and(|x| x == "log"))
                .unwrap();
            let mut f = std::fs::OpenOptions::new().append(true).open(log).unwrap();
            let cut = 9 + (r >> 16) as usize % 100;
            let mut rec = [0u8; 8 + 129];
            rec[0] = 129;
            rec[8] = 1;
            f.write_all(&rec[..cut]).unwrap();
        }
        let store = Store::open(&dir, config())
            .unwrap_or_else(|e| panic!("round {round}: reopen after SIGKILL failed: {e}"));
        verify(&store, &acked, round);
        torn += usize::from(store.stats().torn_bytes_dropped > 0);
        // What the store now holds is fact for the next rounds: the in-flight batch's
        // entries that landed, and the in-flight delete if it landed.
        if let Some(id) = acked.pending_delete.take() {
            if !store.contains(id) {
                acked.deleted.insert(id);
            }
        }
        for e in store.iter() {
            acked.inserted.insert(e.id, ());
        }
        eprintln!(
            "round {round}: killed after {delay:?}{}, {} acknowledged inserts so far, {} live, {:?}",
            if early { " (from spawn)" } else { "" },
            acked.inserted.len(),
            store.len(),
            store.stats()
        );
    }
    assert!(
        acked.inserted.len() >= 50,
        "only {} acknowledged inserts: the kills came too early to test anything",
        acked.inserted.len()
    );
    assert!(torn >= ROUNDS as usize / 4, "torn tails cut: {torn}");
    eprintln!(
        "{ROUNDS} rounds ({kills_before_ready} killed before READY, {torn} torn tails cut) in {:.1}s",
        started.elapsed().as_secs_f64()
    );
}
