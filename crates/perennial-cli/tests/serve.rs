//! `perennial serve` as a process: tokens from the command line, and the crash test —
//! concurrent writers, `kill -9` at random moments, restart, every acknowledged
//! example present and no half-written class.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use perennial::data::omniglot::Split;
use perennial_serve::bench::{characters, encoder, Character};
use perennial_serve::client::Client;
use serde_json::Value;

fn perennial() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_perennial"));
    c.arg("--threads").arg("1");
    c
}

#[test]
fn serve_token_prints_one_token_on_a_new_store_and_refuses_a_bad_role() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("new-store");
    let out = perennial()
        .args(["serve", "token", "--store"])
        .arg(&store)
        .args(["--role", "writer"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    let token = stdout.trim();
    assert!(
        perennial_serve::auth::parse_token(token).is_some(),
        "{token}"
    );
    // Only its hash is kept.
    let db = std::fs::read(store.join("tokens.db")).unwrap();
    let secret = token.rsplit('_').next().unwrap();
    assert!(!String::from_utf8_lossy(&db).contains(secret));
    let out = perennial()
        .args(["serve", "token", "--store"])
        .arg(&store)
        .args(["--role", "admin"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("reader or writer"));
}

struct Fixture {
    encoder: PathBuf,
    chars: Vec<Character>,
}

fn fixture() -> Option<Fixture> {
    let data = perennial::data::paths::shared_test_data()?;
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("serve-encoder-150");
    Some(Fixture {
        encoder: encoder(&data, &dir, 150).unwrap(),
        chars: characters(&data, Split::Test, 40, 5).unwrap(),
    })
}

/// A server process; killed with SIGKILL when dropped.
struct Server {
    child: Child,
    base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(store: &Path, encoder: &Path) -> Server {
    let mut child = perennial()
        .arg("-q")
        .args([
            "serve",
            "--addr",
            "127.0.0.1:0",
            "--consolidate-every",
            "0",
            "--store",
        ])
        .arg(store)
        .arg("--encoder")
        .arg(encoder)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let base = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    Server { child, base }
}

/// A small deterministic generator for the kill moments.
fn lcg(state: &mut u64) -> u64 {
    *state = state
        .wrapping_mul(6_364_136_223_846_793_005)
        .wrapping_add(1_442_695_040_888_963_407);
    *state >> 33
}

#[test]
fn kill_9_at_random_moments_loses_no_acknowledged_example() {
    let Some(fx) = fixture() else { return };
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let token = perennial_serve::auth::add_token(&store, perennial_serve::Role::Writer).unwrap();
    // Every acknowledged class, with the examples acknowledged.
    let acked: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let kills = 10;
    let mut rng = 0x5eed_u64;
    let mut writes = 0;
    for round in 0..kills {
        let server = start(&store, &fx.encoder);
        let client = Client::new(server.base.clone(), Some(token.clone()));
        check(&client, &acked.lock().unwrap(), round);
        let stop_at = Instant::now() + Duration::from_millis(150 + lcg(&mut rng) % 900);
        let sent = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|w| {
                    let (client, acked, chars) = (client.clone(), acked.clone(), &fx.chars);
                    s.spawn(move || {
                        let mut n = 0;
                        for i in 0.. {
                            if Instant::now() > stop_at {
                                break;
                            }
                            // A new class of two drawings per write: one transaction.
                            let ch = &chars[(w * 10 + i) % chars.len()];
                            let label = format!("r{round}-w{w}-{i}");
                            let images = [ch.taught[0].as_slice(), ch.taught[1].as_slice()];
                            match client.teach(&label, &images) {
                                Ok((201, _)) => {
                                    acked.lock().unwrap().insert(label, 2);
                                    n += 1;
                                }
                                _ => break,
                            }
                        }
                        n
                    })
                })
                .collect();
            // A reader predicts meanwhile: answers or a clear refusal, never a wrong shape.
            let reader = client.clone();
            let probe = fx.chars[0].held_out[0].as_slice();
            s.spawn(move || {
                while Instant::now() < stop_at {
                    match reader.predict(&[probe]) {
                        Ok((200, body)) => {
                            assert_eq!(body["predictions"].as_array().unwrap().len(), 1)
                        }
                        Ok((409, _)) => {} // no class yet
                        Ok((status, body)) => panic!("predict answered {status}: {body}"),
                        Err(_) => break, // killed
                    }
                }
            });
            // kill -9 while the writers write.
            std::thread::sleep(stop_at.saturating_duration_since(Instant::now()));
            drop(server);
            handles
                .into_iter()
                .map(|h| h.join().unwrap())
                .sum::<usize>()
        });
        writes += sent;
    }
    // The last restart: everything acknowledged is there; then answers survive a kill.
    let server = start(&store, &fx.encoder);
    let client = Client::new(server.base.clone(), Some(token.clone()));
    check(&client, &acked.lock().unwrap(), kills);
    let probe: Vec<&[u8]> = fx.chars[..8]
        .iter()
        .map(|c| c.held_out[0].as_slice())
        .collect();
    let (status, before) = client.predict(&probe).unwrap();
    assert_eq!(status, 200, "{before}");
    drop(server);
    let server = start(&store, &fx.encoder);
    let client = client.with_base(&server.base);
    let (_, after) = client.predict(&probe).unwrap();
    let strip = |v: &Value| -> Vec<Value> {
        v["predictions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                let mut p = p.clone();
                p.as_object_mut().unwrap().remove("id");
                p
            })
            .collect()
    };
    assert_eq!(
        strip(&after),
        strip(&before),
        "a restart after kill -9 answers the same"
    );
    eprintln!("{kills} kills, {writes} acknowledged writes, 0 lost");
    assert!(writes >= kills, "the writers wrote: {writes}");
}

/// Every acknowledged class is there with its examples; no class is half-written.
fn check(client: &Client, acked: &HashMap<String, usize>, round: usize) {
    let (status, body) = client.get("/v1/classes").unwrap();
    assert_eq!(status, 200, "{body}");
    let stored: HashMap<String, usize> = body["classes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["label"].as_str().unwrap().to_string(),
                c["examples"].as_u64().unwrap() as usize,
            )
        })
        .collect();
    let lost: Vec<_> = acked
        .iter()
        .filter(|(l, n)| stored.get(*l) != Some(n))
        .collect();
    assert!(lost.is_empty(), "after kill {round}: lost {lost:?}");
    let half: Vec<_> = stored.iter().filter(|(_, n)| **n != 2).collect();
    assert!(half.is_empty(), "after kill {round}: half-written {half:?}");
}
