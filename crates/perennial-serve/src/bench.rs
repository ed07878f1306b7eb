//! `perennial bench serve`: a server on loopback with 1000 Omniglot characters taught,
//! under a bounded load the bench drives itself: `serve_predict_c8` (8 concurrent
//! clients, one image a request) and `serve_learn_c4` (4 clients teaching one image a
//! request), each with `per_sec`, `p50_ms`, `p99_ms` and `peak_rss_mb`. With a peer's
//! address (`scripts/bench_serve.sh` starts the FastAPI + PyTorch one) the same load
//! runs against it, in the same run, for the ratio.
//!
//! Also the fixtures the bench and the tests share: Omniglot characters as PNG files,
//! and a small encoder trained once.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use perennial::data::classinc::{ClassStream, ClassStreamSpec};
use perennial::data::omniglot::{Omniglot, Split, SplitScheme};
use perennial::data::paths;
use perennial::data::stream::Part;
use perennial::lifelong::Classify;
use serde_json::{json, Value};

use crate::client::{png, Client};
use crate::{Options, Settings};

/// An Omniglot character: its drawings as PNG files, some to teach and the rest held out.
#[derive(Debug, Clone)]
pub struct Character {
    /// Its name (alphabet and character).
    pub name: String,
    /// Drawings to teach.
    pub taught: Vec<Vec<u8>>,
    /// The other drawings.
    pub held_out: Vec<Vec<u8>>,
}

/// `n` characters of `split` (Lake's: background or evaluation), in a fixed order, with
/// `shots` drawings to teach each.
pub fn characters(data: &Path, split: Split, n: usize, shots: usize) -> Result<Vec<Character>> {
    let omniglot = Omniglot::load(data)?;
    let set = omniglot.split(SplitScheme::Lake, split, &paths::splits_dir(data))?;
    let stream = ClassStream::new(
        Arc::new(set),
        ClassStreamSpec {
            classes: n,
            train_per_class: shots,
            seed: 0,
        },
    )?;
    let side = stream.side();
    let pngs =
        |px: Vec<f32>| -> Vec<Vec<u8>> { px.chunks(side * side).map(|p| png(p, side)).collect() };
    Ok((0..n)
        .map(|c| Character {
            name: stream.class_name(c).to_string(),
            taught: pngs(stream.images(c, Part::Train)),
            held_out: pngs(stream.images(c, Part::Test)),
        })
        .collect())
}

/// A ProtoNet encoder meta-trained for `episodes` 20-way 5-shot episodes on the
/// background characters, in `dir` ([`perennial::train::omniglot_encoder`]).
pub fn encoder(data: &Path, dir: &Path, episodes: usize) -> Result<PathBuf> {
    perennial::train::omniglot_encoder(data, dir, episodes as u64)?;
    Ok(dir.to_path_buf())
}

/// What a load measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Load {
    /// Requests answered 2xx.
    pub ok: usize,
    /// Requests answered otherwise.
    pub failed: usize,
    /// Seconds, first request to last answer.
    pub seconds: f64,
    /// Median latency, ms.
    pub p50_ms: f64,
    /// 99th percentile latency, ms.
    pub p99_ms: f64,
}

/// Runs `clients` threads of `requests` requests each; `send(client, i)` makes one
/// and returns its status.
pub fn drive(
    clients: usize,
    requests: usize,
    send: impl Fn(usize, usize) -> Result<u16> + Sync,
) -> Result<Load> {
    let clock = Instant::now();
    let results: Vec<Result<Vec<(f64, bool)>>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..clients)
            .map(|c| {
                let send = &send;
                s.spawn(move || {
                    (0..requests)
                        .map(|i| {
                            let t = Instant::now();
                            let status = send(c, i)?;
                            Ok((
                                t.elapsed().as_secs_f64() * 1e3,
                                (200..300).contains(&status),
                            ))
                        })
                        .collect()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| bail!("a client thread panicked"))
            })
            .collect()
    });
    let seconds = clock.elapsed().as_secs_f64();
    let mut all = Vec::new();
    for r in results {
        all.extend(r?);
    }
    let mut ms: Vec<f64> = all.iter().map(|(m, _)| *m).collect();
    ms.sort_by(f64::total_cmp);
    let q = |p: f64| ms[((ms.len() as f64 * p).ceil() as usize).clamp(1, ms.len()) - 1];
    Ok(Load {
        ok: all.iter().filter(|(_, ok)| *ok).count(),
        failed: all.iter().filter(|(_, ok)| !*ok).count(),
        seconds,
        p50_ms: q(0.50),
        p99_ms: q(0.99),
    })
}

/// The bench's settings.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Where Omniglot is.
    pub data: PathBuf,
    /// The encoder run to serve (`None`: a small one trained once under `work`).
    pub encoder: Option<PathBuf>,
    /// A folder for the store and the small encoder.
    pub work: PathBuf,
    /// Classes taught before the load.
    pub classes: usize,
    /// Requests per client.
    pub requests: usize,
    /// A peer server to drive with the same load (`http://127.0.0.1:PORT`).
    pub peer: Option<String>,
    /// How Perennial's server classifies.
    pub classify: Classify,
    /// Whether it keeps an example index (`--example-index`).
    pub example_index: bool,
}

/// Teaches `chars` through `client`, one request (5 drawings) per character.
fn teach_all(client: &Client, chars: &[Character]) -> Result<f64> {
    let clock = Instant::now();
    for ch in chars {
        let images: Vec<&[u8]> = ch.taught.iter().map(Vec::as_slice).collect();
        let (status, body) = client.teach(&ch.name, &images)?;
        if status != 201 {
            bail!("teaching {} answered {status}: {body}", ch.name);
        }
    }
    Ok(clock.elapsed().as_secs_f64())
}

/// The two loads against one server; one JSON line each.
fn loads(
    client: &Client,
    chars: &[Character],
    requests: usize,
    server: &str,
    rss: impl Fn() -> Option<f64>,
) -> Result<Vec<Value>> {
    let teach_seconds = teach_all(client, chars)?;
    let n = chars.len();
    let mut out = Vec::new();
    let predict = drive(8, requests, |c, i| {
        let ch = &chars[(c * 7919 + i * 104_729) % n];
        let img = &ch.held_out[(c + i) % ch.held_out.len()];
        Ok(client.predict(&[img])?.0)
    })?;
    out.push(line(
        "serve_predict_c8",
        server,
        8,
        &predict,
        rss(),
        n,
        teach_seconds,
    ));
    let learn = drive(4, requests, |c, i| {
        let ch = &chars[(c * requests + i) % n];
        let img = &ch.held_out[i % ch.held_out.len()];
        Ok(client.teach(&ch.name, &[img])?.0)
    })?;
    out.push(line(
        "serve_learn_c4",
        server,
        4,
        &learn,
        rss(),
        n,
        teach_seconds,
    ));
    Ok(out)
}

fn line(
    name: &str,
    server: &str,
    clients: usize,
    l: &Load,
    rss: Option<f64>,
    classes: usize,
    teach: f64,
) -> Value {
    json!({
        "bench": name,
        "server": server,
        "clients": clients,
        "classes": classes,
        "requests": l.ok + l.failed,
        "failed": l.failed,
        "per_sec": (l.ok as f64 / l.seconds * 10.0).round() / 10.0,
        "p50_ms": (l.p50_ms * 100.0).round() / 100.0,
        "p99_ms": (l.p99_ms * 100.0).round() / 100.0,
        "peak_rss_mb": rss.map(|r| r.round()),
        "teach_classes_seconds": (teach * 10.0).round() / 10.0,
        // libtorch's threads in this process: the server's when it is Perennial's.
        "threads": (server == "perennial").then(tch::get_num_threads),
    })
}

/// The bench: Perennial's server, then the peer's if given; one JSON line per load.
pub fn run(o: &BenchOptions, rss: impl Fn() -> Option<f64>) -> Result<Vec<Value>> {
    let background = characters(&o.data, Split::Train, o.classes.min(964), 5)?;
    let mut chars = background;
    if o.classes > chars.len() {
        chars.extend(characters(
            &o.data,
            Split::Test,
            o.classes - chars.len(),
            5,
        )?);
    }
    if chars.len() < o.classes {
        bail!("Omniglot has {} characters, not {}", chars.len(), o.classes);
    }
    let encoder = match &o.encoder {
        Some(e) => e.clone(),
        None => encoder(&o.data, &o.work.join("encoder"), 300)?,
    };
    let store = o.work.join(format!("store-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&store);
    let mut options = Options::new(&store, Some(&encoder));
    options.addr = ([127, 0, 0, 1], 0).into();
    options.settings = Settings {
        consolidate_every: Some(0),
        classify: Some(o.classify),
        example_index: Some(o.example_index),
        ..Settings::default()
    };
    options.queue = 1024;
    let token = crate::auth::add_token(&store, crate::Role::Writer)?;
    let running = crate::start(options).context("starting the server")?;
    let client = Client::new(format!("http://{}", running.addr()), Some(token));
    let ours = loads(&client, &chars, o.requests, "perennial", &rss).map(|lines| {
        lines
            .into_iter()
            .map(|mut l| {
                l["classify"] = json!(o.classify.to_string());
                l["example_index"] = json!(o.example_index);
                l
            })
            .collect::<Vec<_>>()
    });
    running.stop()?;
    let _ = std::fs::remove_dir_all(&store);
    let mut lines = ours?;
    if let Some(peer) = &o.peer {
        let client = Client::new(peer.clone(), None);
        if !client.healthy() {
            bail!("the peer at {peer} does not answer /healthz");
        }
        lines.extend(loads(
            &client,
            &chars,
            o.requests,
            "python-fastapi",
            || None,
        )?);
    }
    Ok(lines)
}
