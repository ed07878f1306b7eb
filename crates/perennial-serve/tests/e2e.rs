//! End to end through a real HTTP client against the real server on an ephemeral
//! loopback port, on Omniglot characters the encoder never saw.

mod common;

use std::time::{Duration, Instant};

use common::{fixture, options, serve, slices, teach, without_ids};
use perennial_serve::client::{multipart, Client};
use perennial_serve::Role;
use serde_json::{json, Value};

#[test]
fn teaches_predicts_flags_unknown_learns_from_corrections_and_restarts_the_same() {
    let Some(fx) = fixture() else { return };
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let (running, w) = serve(options(&store, Some(&fx.encoder)), Role::Writer);
    let (taught, novel) = fx.chars.split_at(20);
    teach(&w, taught);

    let (status, body) = w.get("/v1/classes").unwrap();
    assert_eq!(status, 200);
    let classes = body["classes"].as_array().unwrap();
    assert_eq!(classes.len(), 20);
    assert!(classes.iter().all(|c| c["examples"] == 5), "{body}");

    // Held-out drawings of the taught characters: 20-way, chance 5%.
    let (mut right, mut flagged, mut n) = (0, 0, 0);
    let mut ids = Vec::new();
    for ch in taught {
        let (status, body) = w.predict(&slices(&ch.held_out)).unwrap();
        assert_eq!(status, 200, "{body}");
        let preds = body["predictions"].as_array().unwrap();
        assert_eq!(preds.len(), ch.held_out.len());
        for p in preds {
            right += usize::from(p["label"] == ch.name.as_str());
            flagged += usize::from(p["unknown"] == true);
            n += 1;
            assert!(p["top"].as_array().unwrap().len() == 5);
            ids.push((
                p["id"].as_str().unwrap().to_string(),
                ch.name.clone(),
                p["label"].clone(),
            ));
        }
    }
    let accuracy = right as f64 / n as f64;
    let known_flagged = flagged as f64 / n as f64;
    // Characters never taught: flagged unknown far more often.
    let (mut novel_flagged, mut m) = (0, 0);
    for ch in novel {
        let (_, body) = w.predict(&slices(&ch.held_out)).unwrap();
        for p in body["predictions"].as_array().unwrap() {
            novel_flagged += usize::from(p["unknown"] == true);
            m += 1;
        }
    }
    let novel_flagged = novel_flagged as f64 / m as f64;
    eprintln!(
        "accuracy {:.1}% on {n} held-out drawings (20-way); flagged unknown: {:.1}% of taught \
         characters' drawings, {:.1}% of never-taught ones",
        100.0 * accuracy,
        100.0 * known_flagged,
        100.0 * novel_flagged
    );
    assert!(accuracy > 0.6, "accuracy {accuracy}");
    assert!(
        novel_flagged > known_flagged + 0.15,
        "{novel_flagged} vs {known_flagged}"
    );

    // The unknown queue holds them; labelling one teaches it.
    let (status, body) = w.get("/v1/unknown?limit=5").unwrap();
    assert_eq!(status, 200);
    let queue = body["unknown"].as_array().unwrap();
    assert!(!queue.is_empty(), "{body}");
    let first = queue[0]["id"].as_i64().unwrap();
    let (status, body) = w
        .post_json(
            &format!("/v1/unknown/{first}/label"),
            &json!({"label": novel[0].name}),
        )
        .unwrap();
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["examples"], 1);
    // It has left the queue: labelling it again is refused, not learnt twice.
    let (status, _) = w
        .post_json(
            &format!("/v1/unknown/{first}/label"),
            &json!({"label": novel[0].name}),
        )
        .unwrap();
    assert_eq!(status, 404);

    // A wrong prediction corrected: the class learns the drawing.
    let (id, truth, _) = ids
        .iter()
        .find(|(_, truth, label)| label != truth.as_str())
        .or(ids.first())
        .unwrap()
        .clone();
    let (status, body) = w
        .post_json("/v1/feedback", &json!({"id": id, "label": truth}))
        .unwrap();
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["examples"], 6);

    // Forget a class: never predicted again.
    let gone = &taught[19];
    let (status, body) = w
        .call(
            "DELETE",
            &format!(
                "/v1/classes/{}",
                perennial_serve::client::escape(&gone.name)
            ),
        )
        .unwrap();
    assert_eq!(
        (status, body["forgotten"].clone()),
        (200, json!(5)),
        "{body}"
    );
    let (_, body) = w.predict(&slices(&gone.held_out)).unwrap();
    assert!(body["predictions"]
        .as_array()
        .unwrap()
        .iter()
        .all(|p| p["label"] != gone.name.as_str()));

    // A restart (the learner rebuilt from the store) answers the same.
    let probe: Vec<&[u8]> = taught.iter().map(|c| c.held_out[0].as_slice()).collect();
    let (_, before) = w.predict(&probe).unwrap();
    let (_, status_before) = w.get("/v1/status").unwrap();
    running.stop().unwrap();
    let running = perennial_serve::start(options(&store, None)).unwrap();
    let w = w.with_base(&format!("http://{}", running.addr()));
    let (status, after) = w.predict(&probe).unwrap();
    assert_eq!(status, 200, "{after}");
    assert_eq!(without_ids(&after), without_ids(&before));
    let (_, status_after) = w.get("/v1/status").unwrap();
    for k in ["version", "classes", "examples"] {
        assert_eq!(status_after[k], status_before[k], "{k}");
    }
    assert_eq!(
        status_after["classes"], 20,
        "19 taught + 1 labelled from the queue"
    );
    running.stop().unwrap();
}

fn is_json_error(body: &Value) -> bool {
    body["error"].as_str().is_some_and(|s| !s.is_empty())
}

/// A PNG whose header claims a picture of `side x side` (no pixel data follows).
fn png_claiming(side: u32) -> Vec<u8> {
    fn crc(bytes: &[u8]) -> u32 {
        let mut c = 0xFFFF_FFFFu32;
        for &b in bytes {
            c ^= u32::from(b);
            for _ in 0..8 {
                c = if c & 1 == 1 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
        }
        !c
    }
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend(side.to_be_bytes());
    ihdr.extend(side.to_be_bytes());
    ihdr.extend([8, 0, 0, 0, 0]);
    out.extend(13u32.to_be_bytes());
    out.extend(&ihdr);
    out.extend(crc(&ihdr).to_be_bytes());
    out
}

/// Sends only the head of a teaching whose body would be `length` bytes, and reads
/// the answer (a client that sent the whole body could see the connection closed
/// under it once the server has answered).
fn declared(addr: std::net::SocketAddr, w: &Client, length: usize) -> (u16, Value) {
    use std::io::{Read, Write};
    let token = w.token().unwrap_or_default();
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "POST /v1/classes/a/examples HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer \
         {token}\r\nContent-Type: multipart/form-data; boundary=x\r\nContent-Length: \
         {length}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

#[test]
fn every_bad_input_gets_its_status_and_a_json_error() {
    let Some(fx) = fixture() else { return };
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let mut o = options(&store, Some(&fx.encoder));
    o.limits.body = 1 << 20;
    o.limits.images = 4;
    let (running, w) = serve(o, Role::Writer);
    let reader = w.with_token(Some(
        perennial_serve::auth::add_token(&store, Role::Reader).unwrap(),
    ));
    let anonymous = w.with_token(None);
    let img = fx.chars[0].taught[0].as_slice();
    let check = |what: &str, (status, body): (u16, Value), want: u16| {
        assert_eq!(status, want, "{what}: {body}");
        assert!(is_json_error(&body), "{what}: {body}");
    };

    check("predict before any class", w.predict(&[img]).unwrap(), 409);
    check("no token", anonymous.predict(&[img]).unwrap(), 401);
    // The scheme is case-insensitive: `bearer` with a good token is let through.
    let (ct, body) = multipart("image", &[img]);
    let lower = ureq::post(&format!("http://{}/v1/predict", running.addr()))
        .set("Authorization", &format!("bearer {}", w.token().unwrap()))
        .set("Content-Type", &ct)
        .send_bytes(&body);
    assert!(
        matches!(lower, Err(ureq::Error::Status(409, _))),
        "lower-case bearer: {lower:?}"
    );
    check(
        "a malformed token",
        w.with_token(Some("secret".into())).predict(&[img]).unwrap(),
        401,
    );
    let forged = format!("pn_{}_{}", "0".repeat(16), "0".repeat(64));
    check(
        "an unknown token",
        w.with_token(Some(forged)).predict(&[img]).unwrap(),
        401,
    );
    check("a reader teaching", reader.teach("a", &[img]).unwrap(), 403);
    check(
        "a reader forgetting",
        reader.call("DELETE", "/v1/classes/a").unwrap(),
        403,
    );
    check(
        "a reader consolidating",
        reader.call("POST", "/v1/consolidate").unwrap(),
        403,
    );

    let (ct, body) = multipart("file", &[img]);
    check(
        "a part not named image",
        w.send("POST", "/v1/predict", &ct, &body).unwrap(),
        400,
    );
    let (ct, body) = multipart("image", &[]);
    check(
        "no image",
        w.send("POST", "/v1/predict", &ct, &body).unwrap(),
        400,
    );
    check(
        "not multipart",
        w.send("POST", "/v1/predict", "application/json", b"{}")
            .unwrap(),
        400,
    );
    check(
        "not an image",
        w.teach("a", &[b"hello, world"]).unwrap(),
        400,
    );
    check("an empty file", w.teach("a", &[b""]).unwrap(), 400);
    check(
        "a decompression bomb",
        w.teach("a", &[&png_claiming(100_000)]).unwrap(),
        413,
    );
    // A body over the limit is refused on its declared length, before it is read.
    check(
        "a body over the limit",
        declared(running.addr(), &w, 2 << 20),
        413,
    );
    check("too many images", w.teach("a", &[img; 5]).unwrap(), 413);
    check(
        "a control character in a label",
        w.teach("a\u{1}b", &[img]).unwrap(),
        400,
    );
    check(
        "a label too long",
        w.teach(&"x".repeat(201), &[img]).unwrap(),
        400,
    );
    check("no such route", w.get("/v1/nothing").unwrap(), 404);
    check("a wrong method", w.get("/v1/predict").unwrap(), 405);
    check(
        "bad JSON",
        w.send("POST", "/v1/feedback", "application/json", b"{")
            .unwrap(),
        400,
    );
    check(
        "an unknown prediction",
        w.post_json("/v1/feedback", &json!({"id": "nope", "label": "a"}))
            .unwrap(),
        404,
    );
    check(
        "forgetting an unknown class",
        w.call("DELETE", "/v1/classes/zzz").unwrap(),
        404,
    );
    check(
        "an unknown queue id that is not a number",
        w.post_json("/v1/unknown/abc/label", &json!({"label": "a"}))
            .unwrap(),
        400,
    );
    check(
        "labelling an input not in the queue",
        w.post_json("/v1/unknown/999/label", &json!({"label": "a"}))
            .unwrap(),
        404,
    );
    check(
        "consolidating with no class",
        w.call("POST", "/v1/consolidate").unwrap(),
        409,
    );
    check(
        "rolling back with no earlier version",
        w.call("POST", "/v1/rollback").unwrap(),
        409,
    );

    // Nothing of the above was stored.
    let (_, body) = w.get("/v1/classes").unwrap();
    assert_eq!(body["classes"], json!([]));
    // What is fine is fine: health and the documents need no token.
    assert!(anonymous.healthy());
    let (status, doc) = anonymous.get("/v1/openapi.json").unwrap();
    assert_eq!((status, doc["openapi"].as_str()), (200, Some("3.1.0")));
    assert!(doc["paths"]["/v1/predict"]["post"].is_object());
    running.stop().unwrap();
}

#[test]
fn public_read_lets_predictions_through_but_not_teaching() {
    let Some(fx) = fixture() else { return };
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let mut o = options(&store, Some(&fx.encoder));
    o.public_read = true;
    let (running, w) = serve(o, Role::Writer);
    teach(&w, &fx.chars[..2]);
    let anonymous = w.with_token(None);
    let (status, body) = anonymous.predict(&[&fx.chars[0].held_out[0]]).unwrap();
    assert_eq!(status, 200, "{body}");
    let (status, _) = anonymous.teach("x", &[&fx.chars[0].held_out[0]]).unwrap();
    assert_eq!(status, 401);
    // Metrics count what happened.
    let text = ureq::get(&format!("http://{}/metrics", running.addr()))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    assert!(text.contains("perennial_classes 2"), "{text}");
    assert!(
        text.contains("route=\"/v1/classes/{label}/examples\",status=\"201\"} 2"),
        "{text}"
    );
    assert!(
        text.contains("perennial_request_seconds_bucket{route=\"/v1/predict\""),
        "{text}"
    );
    running.stop().unwrap();
}

fn wait_for_version(w: &Client, version: u64) -> Value {
    let clock = Instant::now();
    loop {
        let (_, s) = w.get("/v1/status").unwrap();
        if s["version"] == version && s["consolidation"]["running"] == false {
            return s;
        }
        assert!(
            clock.elapsed() < Duration::from_secs(300),
            "no version {version}: {s}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn consolidates_by_itself_in_the_background_then_rolls_back_to_the_same_answers() {
    let Some(fx) = fixture() else { return };
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let mut o = options(&store, Some(&fx.encoder));
    o.settings.consolidate_every = Some(6);
    o.settings.consolidate_episodes = Some(4);
    let (running, w) = serve(o, Role::Writer);
    teach(&w, &fx.chars[..5]);
    let probe: Vec<&[u8]> = fx.chars[..6]
        .iter()
        .map(|c| c.held_out[0].as_slice())
        .collect();
    // The sixth class makes a consolidation due: the policy starts it; predictions go on.
    teach(&w, &fx.chars[5..6]);
    let (status, _) = w.predict(&probe).unwrap();
    assert_eq!(status, 200);
    let s = wait_for_version(&w, 1);
    assert_eq!(s["consolidation"]["last"]["version"], 1, "{s}");
    assert!(
        s["consolidation"]["last"]["reason"]
            .as_str()
            .unwrap()
            .contains("new classes"),
        "{s}"
    );
    let (_, v1) = w.predict(&probe).unwrap();
    // Asked for: a second one.
    let (status, body) = w.call("POST", "/v1/consolidate").unwrap();
    assert_eq!((status, body["version"].clone()), (202, json!(2)), "{body}");
    let s = wait_for_version(&w, 2);
    assert_eq!(s["versions"].as_array().unwrap().len(), 3, "{s}");
    let (_, v2) = w.predict(&probe).unwrap();
    assert_ne!(
        without_ids(&v2),
        without_ids(&v1),
        "a consolidation changes the representation"
    );
    // Roll back: version 1 answers as it did, and so does a restart on it.
    let (status, body) = w.call("POST", "/v1/rollback").unwrap();
    assert_eq!((status, body["version"].clone()), (200, json!(1)), "{body}");
    let (_, back) = w.predict(&probe).unwrap();
    assert_eq!(without_ids(&back), without_ids(&v1));
    running.stop().unwrap();
    let running = perennial_serve::start(options(&store, None)).unwrap();
    let w = w.with_base(&format!("http://{}", running.addr()));
    let (_, again) = w.predict(&probe).unwrap();
    assert_eq!(without_ids(&again), without_ids(&v1));
    let (status, body) = w.post_json("/v1/rollback", &json!({"version": 0})).unwrap();
    assert_eq!((status, body["version"].clone()), (200, json!(0)), "{body}");
    running.stop().unwrap();
    // Offline, the command's rollback makes version 2 current again.
    assert_eq!(perennial_serve::rollback(&store, Some(2)).unwrap(), 2);
}

#[test]
fn a_corrupt_or_busy_store_is_refused_with_a_clear_message() {
    let Some(fx) = fixture() else { return };
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let (running, w) = serve(options(&store, Some(&fx.encoder)), Role::Writer);
    teach(&w, &fx.chars[..2]);
    let busy = perennial_serve::start(options(&store, None))
        .unwrap_err()
        .to_string();
    assert!(busy.contains("another server"), "{busy}");
    running.stop().unwrap();

    // The store's own encoder is accepted; another one is refused.
    let err = perennial_serve::start(options(&store, Some(&fx.encoder))).map(|r| r.stop());
    assert!(err.is_ok(), "the store's own encoder is accepted");
    let other = dir.path().join("other-encoder");
    copy_dir(&fx.encoder, &other);
    let best = other.join("best.safetensors");
    let mut named = perennial::nn::params::load_named(&best).unwrap();
    named[0].1 = &named[0].1 + 1.0;
    perennial::nn::params::save_named(&named, &best).unwrap();
    let e = perennial_serve::start(options(&store, Some(&other))).unwrap_err();
    assert!(e.to_string().contains("another encoder"), "{e}");

    // Weights whose bytes changed under a valid header: the checksum refuses them.
    let weights = store.join("versions/v000000.safetensors");
    let good = std::fs::read(&weights).unwrap();
    let mut flipped = good.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 0x40;
    std::fs::write(&weights, &flipped).unwrap();
    let e = format!(
        "{:#}",
        perennial_serve::start(options(&store, None)).unwrap_err()
    );
    assert!(e.contains("SHA-256") && e.contains("v000000"), "{e}");
    std::fs::write(&weights, &good).unwrap();

    // Weights cut short.
    let weights = store.join("versions/v000000.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
    let e = format!(
        "{:#}",
        perennial_serve::start(options(&store, None)).unwrap_err()
    );
    assert!(e.contains("corrupt") && e.contains("v000000"), "{e}");
    std::fs::write(&weights, &bytes).unwrap();

    // A database that is not one.
    let db = store.join("perennial.db");
    let _ = std::fs::remove_file(store.join("perennial.db-wal"));
    let _ = std::fs::remove_file(store.join("perennial.db-shm"));
    std::fs::write(&db, vec![0x5a; 8192]).unwrap();
    let e = format!(
        "{:#}",
        perennial_serve::start(options(&store, None)).unwrap_err()
    );
    assert!(e.contains("corrupt") && e.contains("not loaded"), "{e}");

    // No store and no encoder; a folder holding something else.
    let e = perennial_serve::start(options(&dir.path().join("new"), None)).unwrap_err();
    assert!(e.to_string().contains("--encoder"), "{e}");
    let e = perennial_serve::start(options(&other, Some(&fx.encoder))).unwrap_err();
    assert!(e.to_string().contains("not empty"), "{e}");
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        if e.path().is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

#[test]
fn a_full_queue_answers_503_with_a_json_error_and_the_rest_are_served() {
    let Some(fx) = fixture() else { return };
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let mut o = options(&store, Some(&fx.encoder));
    o.queue = 1;
    let (running, w) = serve(o, Role::Writer);
    teach(&w, &fx.chars[..2]);
    let big: Vec<&[u8]> = fx.chars[..4]
        .iter()
        .flat_map(|c| c.held_out.iter().map(Vec::as_slice))
        .take(64)
        .collect();
    let one = fx.chars[0].held_out[0].as_slice();
    // A long prediction keeps the learner busy while 16 clients ask at once: with room
    // for one request in the queue, some are refused, and every other one is served.
    let mut refused = 0;
    for _ in 0..5 {
        let answers: Vec<(u16, Value)> = std::thread::scope(|s| {
            let long = s.spawn(|| w.predict(&big).unwrap());
            std::thread::sleep(Duration::from_millis(5));
            let small: Vec<_> = (0..16)
                .map(|_| s.spawn(|| w.predict(&[one]).unwrap()))
                .collect();
            let mut all: Vec<_> = small.into_iter().map(|h| h.join().unwrap()).collect();
            all.push(long.join().unwrap());
            all
        });
        for (status, body) in &answers {
            match status {
                200 => assert!(body["predictions"].is_array(), "{body}"),
                503 => {
                    assert!(is_json_error(body), "{body}");
                    refused += 1;
                }
                s => panic!("answered {s}: {body}"),
            }
        }
        if refused > 0 {
            break;
        }
    }
    assert!(refused > 0, "no request was refused with a queue of one");
    let text = ureq::get(&format!("http://{}/metrics", running.addr()))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    assert!(
        text.contains(&format!("perennial_rejected_total {refused}")),
        "{text}"
    );
    running.stop().unwrap();
}

/// The WAL file of an example index's version folder.
fn wal_in(dir: &std::path::Path) -> std::path::PathBuf {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with("wal-"))
        .unwrap_or_else(|| panic!("no log in {}", dir.display()))
        .path()
}

#[test]
fn knn_on_the_example_index_answers_as_in_memory_reloads_on_restart_and_refuses_damage() {
    let Some(fx) = fixture() else { return };
    let dir = tempfile::tempdir().unwrap();
    let knn = perennial::lifelong::Classify::Knn { k: 5 };
    let open = |name: &str, index: Option<bool>| {
        let mut o = options(&dir.path().join(name), Some(&fx.encoder));
        o.settings.classify = Some(knn);
        o.settings.example_index = index;
        o.settings.consolidate_episodes = Some(4);
        o
    };
    let indexed = dir.path().join("indexed");
    let (running, w) = serve(open("indexed", Some(true)), Role::Writer);
    let (ram, r) = serve(open("ram", None), Role::Writer);
    let chars = &fx.chars[..8];
    teach(&w, chars);
    teach(&r, chars);
    let probe: Vec<&[u8]> = chars
        .iter()
        .flat_map(|c| c.held_out[..3].iter().map(Vec::as_slice))
        .collect();
    let labels = |body: &Value| -> Vec<(Value, Value)> {
        body["predictions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                let top: Vec<Value> = p["top"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|t| t["label"].clone())
                    .collect();
                (p["label"].clone(), json!(top))
            })
            .collect()
    };
    let (_, a) = w.predict(&probe).unwrap();
    let (_, b) = r.predict(&probe).unwrap();
    assert_eq!(
        labels(&a),
        labels(&b),
        "the index answers as the tensors do"
    );
    let right = a["predictions"]
        .as_array()
        .unwrap()
        .iter()
        .zip(chars.iter().flat_map(|c| [&c.name; 3]))
        .filter(|(p, name)| p["label"] == name.as_str())
        .count();
    assert!(right >= 16, "8-way kNN: {right} of 24 right");
    let (_, s) = w.get("/v1/status").unwrap();
    assert_eq!(s["example_index"]["entries"], 40, "{s}");
    let (_, s) = r.get("/v1/status").unwrap();
    assert!(s["example_index"].is_null(), "{s}");
    ram.stop().unwrap();
    // Forgetting leaves the index; a restart reloads it as it is.
    let gone = perennial_serve::client::escape(&chars[3].name);
    let (status, _) = w.call("DELETE", &format!("/v1/classes/{gone}")).unwrap();
    assert_eq!(status, 200);
    let (_, before) = w.predict(&probe).unwrap();
    running.stop().unwrap();
    let running = perennial_serve::start(options(&indexed, None)).unwrap();
    let w = w.with_base(&format!("http://{}", running.addr()));
    let (_, s) = w.get("/v1/status").unwrap();
    assert_eq!(s["example_index"]["entries"], 35, "{s}");
    assert_eq!(s["example_index"]["origin"], "loaded", "{s}");
    let (_, after) = w.predict(&probe).unwrap();
    assert_eq!(labels(&after), labels(&before));
    // A consolidation writes the next version's index and drops the old one.
    let (status, body) = w.call("POST", "/v1/consolidate").unwrap();
    assert_eq!(status, 202, "{body}");
    let s = wait_for_version(&w, 1);
    assert_eq!(s["example_index"]["entries"], 35, "{s}");
    let examples = indexed.join("examples");
    assert!(examples.join("v000001").is_dir() && !examples.join("v000000").exists());
    // Rolled back: version 0's index is written again and answers as before.
    let (status, body) = w.call("POST", "/v1/rollback").unwrap();
    assert_eq!((status, body["version"].clone()), (200, json!(0)), "{body}");
    let (_, back) = w.predict(&probe).unwrap();
    assert_eq!(labels(&back), labels(&before));
    assert!(examples.join("v000000").is_dir() && !examples.join("v000001").exists());
    let (status, body) = w.post_json("/v1/rollback", &json!({"version": 1})).unwrap();
    assert_eq!((status, body["version"].clone()), (200, json!(1)), "{body}");
    running.stop().unwrap();
    // Damaged index files: the server refuses to start, and says what to do.
    std::fs::write(
        wal_in(&examples.join("v000001")),
        b"damaged damaged damaged",
    )
    .unwrap();
    let e = format!(
        "{:#}",
        perennial_serve::start(options(&indexed, None)).unwrap_err()
    );
    assert!(
        e.contains("example store") && e.contains("remove the folder"),
        "{e}"
    );
    // Turned off, the index's folder goes and the server answers from memory.
    let mut o = options(&indexed, None);
    o.settings.example_index = Some(false);
    let running = perennial_serve::start(o).unwrap();
    assert!(!examples.exists());
    let w = w.with_base(&format!("http://{}", running.addr()));
    let (status, _) = w.predict(&probe).unwrap();
    assert_eq!(status, 200);
    running.stop().unwrap();
}
