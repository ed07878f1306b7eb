//! The page in a real browser: Debian's headless Chromium driven through ChromeDriver's
//! W3C WebDriver protocol (plain HTTP with ureq) against the real server on an
//! ephemeral loopback port. It types the token, draws a new character with the
//! mouse on the teach pad, teaches it, draws it again on the try pad and checks the
//! answer, then takes a screenshot.
//!
//! Needs `/usr/bin/chromium` and `/usr/bin/chromedriver` (`scripts/install-chromium.sh`):
//! skipped without them, except under CI, where their absence fails the test.
//! `PERENNIAL_UPDATE_SCREENSHOT=1` writes the screenshot to `docs/serve-page.png`.

mod common;

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{fixture, options, serve, teach};
use perennial_serve::Role;
use serde_json::{json, Value};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// The W3C key of an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";
/// How long the page may take to answer anything.
const PATIENCE: Duration = Duration::from_secs(60);

/// A character of three strokes (a "ק"-like hook with a bar), points in the unit
/// square of the pad.
const STROKES: &[&[(f64, f64)]] = &[
    &[
        (0.22, 0.25),
        (0.45, 0.24),
        (0.65, 0.25),
        (0.78, 0.30),
        (0.80, 0.45),
        (0.78, 0.62),
    ],
    &[(0.30, 0.40), (0.30, 0.55), (0.29, 0.70), (0.28, 0.82)],
    &[(0.45, 0.55), (0.55, 0.62), (0.62, 0.72), (0.70, 0.80)],
];

fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().unwrap().port()
}

fn json_of(r: ureq::Response) -> std::io::Result<Value> {
    Ok(serde_json::from_str(&r.into_string()?)?)
}

/// ChromeDriver and one browser session; dropping it ends the session and the driver,
/// also when an assertion failed.
struct Browser {
    agent: ureq::Agent,
    base: String,
    session: Option<String>,
    driver: Child,
    log: PathBuf,
}

impl Browser {
    /// Starts ChromeDriver on a free loopback port and waits until it is ready.
    fn driver(dir: &Path) -> Browser {
        let port = free_port();
        let log = dir.join("chromedriver.log");
        let out = File::create(&log).unwrap();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start chromedriver");
        let browser = Browser {
            agent: ureq::AgentBuilder::new()
                .timeout(Duration::from_secs(120))
                .build(),
            base: format!("http://127.0.0.1:{port}"),
            session: None,
            driver,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = browser
                .agent
                .get(&format!("{}/status", browser.base))
                .timeout(Duration::from_secs(2))
                .call()
                .ok()
                .and_then(|r| json_of(r).ok())
                .is_some_and(|v| v["value"]["ready"] == true);
            if ready {
                return browser;
            }
            assert!(Instant::now() < deadline, "chromedriver never became ready");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A WebDriver command; its `value`. Panics with the driver's error otherwise.
    fn raw(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        let url = format!("{}{path}", self.base);
        let req = self.agent.request(method, &url);
        let res = match body {
            Some(b) => req
                .set("Content-Type", "application/json")
                .send_string(&b.to_string()),
            None => req.call(),
        };
        match res {
            Ok(r) => json_of(r).expect("WebDriver JSON")["value"].take(),
            Err(ureq::Error::Status(code, r)) => {
                let v = json_of(r).unwrap_or(Value::Null);
                panic!(
                    "{method} {path}: HTTP {code}: {} {}",
                    v["value"]["error"], v["value"]["message"]
                )
            }
            Err(e) => panic!("{method} {path}: {e}"),
        }
    }

    /// A command of the session.
    fn cmd(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        let id = self.session.as_deref().expect("a session");
        self.raw(method, &format!("/session/{id}{path}"), body)
    }

    /// Starts headless Chromium with a fresh profile in `dir`.
    fn start_session(&mut self, dir: &Path) {
        let profile = dir.join("profile");
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--window-size=1280,1150",
                    format!("--user-data-dir={}", profile.display()),
                ],
            },
        }}});
        let v = self.raw("POST", "/session", Some(&caps));
        let id = v["sessionId"].as_str().expect("a session id").to_string();
        self.session = Some(id);
    }

    fn goto(&self, url: &str) {
        self.cmd("POST", "/url", Some(&json!({ "url": url })));
    }

    /// Elements matching a CSS selector (maybe none).
    fn all(&self, css: &str) -> Vec<String> {
        let v = self.cmd(
            "POST",
            "/elements",
            Some(&json!({"using": "css selector", "value": css})),
        );
        v.as_array()
            .expect("elements")
            .iter()
            .map(|e| {
                e[ELEMENT]
                    .as_str()
                    .unwrap_or_else(|| panic!("no element id in {e}"))
                    .to_string()
            })
            .collect()
    }

    /// The element of `css`, waiting for it to exist.
    fn wait_for(&self, css: &str) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(e) = self.all(css).into_iter().next() {
                return e;
            }
            assert!(
                Instant::now() < deadline,
                "no element {css} after {PATIENCE:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn find(&self, css: &str) -> String {
        self.all(css)
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("no element {css}"))
    }

    fn text(&self, css: &str) -> String {
        let e = self.find(css);
        let v = self.cmd("GET", &format!("/element/{e}/text"), None);
        v.as_str().unwrap_or_default().to_string()
    }

    fn attribute(&self, css: &str, name: &str) -> Option<String> {
        let e = self.find(css);
        let v = self.cmd("GET", &format!("/element/{e}/attribute/{name}"), None);
        v.as_str().map(str::to_string)
    }

    fn click(&self, css: &str) {
        let e = self.find(css);
        self.cmd("POST", &format!("/element/{e}/click"), Some(&json!({})));
    }

    fn type_into(&self, css: &str, text: &str) {
        let e = self.find(css);
        self.cmd("POST", &format!("/element/{e}/clear"), Some(&json!({})));
        self.cmd(
            "POST",
            &format!("/element/{e}/value"),
            Some(&json!({ "text": text })),
        );
    }

    /// Waits until `css`'s `data-state` is `done`; panics with its text on `error`.
    fn wait_done(&self, css: &str) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            match self.attribute(css, "data-state").as_deref() {
                Some("done") => return self.text(css),
                Some("error") => panic!("{css} failed: {}", self.text(css)),
                _ => {}
            }
            assert!(
                Instant::now() < deadline,
                "{css} not done after {PATIENCE:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Draws `strokes` (unit-square points) with the mouse on the element of `css`.
    /// W3C element-origin offsets are from the element's centre.
    fn draw(&self, css: &str, strokes: &[&[(f64, f64)]]) {
        let e = self.find(css);
        let rect = self.cmd("GET", &format!("/element/{e}/rect"), None);
        let (w, h) = (
            rect["width"].as_f64().expect("width"),
            rect["height"].as_f64().expect("height"),
        );
        let to = |(x, y): (f64, f64)| {
            json!({
                "type": "pointerMove", "duration": 0,
                "origin": { ELEMENT: e },
                "x": ((x - 0.5) * w).round() as i64,
                "y": ((y - 0.5) * h).round() as i64,
            })
        };
        let mut actions = Vec::new();
        for stroke in strokes {
            actions.push(to(stroke[0]));
            actions.push(json!({"type": "pointerDown", "button": 0}));
            // Several small moves per segment, as a hand would make.
            for pair in stroke.windows(2) {
                let ((x0, y0), (x1, y1)) = (pair[0], pair[1]);
                for k in 1..=4 {
                    let t = f64::from(k) / 4.0;
                    actions.push(to((x0 + t * (x1 - x0), y0 + t * (y1 - y0))));
                }
            }
            actions.push(json!({"type": "pointerUp", "button": 0}));
        }
        self.cmd(
            "POST",
            "/actions",
            Some(&json!({"actions": [{
                "type": "pointer", "id": "mouse",
                "parameters": {"pointerType": "mouse"},
                "actions": actions,
            }]})),
        );
        self.cmd("DELETE", "/actions", None);
    }

    /// A screenshot of the viewport, as PNG bytes.
    fn screenshot(&self) -> Vec<u8> {
        let v = self.cmd("GET", "/screenshot", None);
        base64(v.as_str().expect("base64 screenshot"))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(id) = self.session.take() {
            let _ = self
                .agent
                .delete(&format!("{}/session/{id}", self.base))
                .timeout(Duration::from_secs(30))
                .call();
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        if std::thread::panicking() {
            if let Ok(log) = std::fs::read_to_string(&self.log) {
                let lines: Vec<&str> = log.lines().collect();
                let tail = lines[lines.len().saturating_sub(40)..].join("\n");
                eprintln!("chromedriver's log (last 40 lines):\n{tail}");
            }
        }
    }
}

/// Decodes standard base64 (padding and whitespace ignored).
fn base64(s: &str) -> Vec<u8> {
    let digit = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {:?}", c as char),
        }
    };
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes().filter(|c| !c.is_ascii_whitespace() && *c != b'=') {
        acc = (acc << 6) | digit(c);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

#[test]
fn base64_decodes() {
    assert_eq!(base64("TWFu"), b"Man");
    assert_eq!(base64("TWE="), b"Ma");
    assert_eq!(base64("TQ=="), b"M");
    assert_eq!(base64("iVBORw0KGgo="), b"\x89PNG\r\n\x1a\n");
}

#[test]
fn the_page_teaches_a_drawn_character_and_recognises_it() {
    let Some(fx) = fixture() else { return };
    let missing: Vec<&str> = [CHROMIUM, CHROMEDRIVER]
        .into_iter()
        .filter(|p| !Path::new(p).exists())
        .collect();
    if !missing.is_empty() {
        let what = format!("no {}", missing.join(" or "));
        assert!(!ci(), "{what}: run scripts/install-chromium.sh");
        eprintln!("SKIP: {what} (run scripts/install-chromium.sh)");
        return;
    }
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let mut browser = Browser::driver(dir.path());
    browser.start_session(dir.path());

    let store = dir.path().join("store");
    let token = perennial_serve::auth::add_token(&store, Role::Writer).unwrap();
    let (running, client) = serve(options(&store, Some(&fx.encoder)), Role::Writer);
    let known = &fx.chars[..4];
    teach(&client, known);

    browser.goto(&format!("http://{}/", running.addr()));
    browser.wait_for(r#"body[data-ready="1"]"#);
    browser.type_into("#token", &token);

    // Teach a new character from one drawing.
    let label = "hook-and-bar";
    browser.draw("#teach-canvas", STROKES);
    browser.type_into("#teach-label", label);
    browser.click("#teach-submit");
    let taught = browser.wait_done("#teach-result");
    assert!(
        taught.contains(label) && taught.contains("1 added"),
        "{taught}"
    );

    // The same drawing on the try pad: nearest its own class among 5.
    browser.draw("#try-canvas", STROKES);
    browser.click("#try-submit");
    browser.wait_done("#answer");
    let answer = browser.text("#answer-label");
    let top: Vec<String> = browser
        .all("#answer-top li")
        .iter()
        .map(|e| {
            let v = browser.cmd("GET", &format!("/element/{e}/text"), None);
            v.as_str().unwrap_or_default().to_string()
        })
        .collect();
    assert_eq!(answer, label, "top labels: {top:?}");
    assert_eq!(top.len(), 5, "{top:?}");
    for ch in known {
        assert!(
            top.iter().any(|t| t.starts_with(&format!("{} ", ch.name))),
            "{} in {top:?}",
            ch.name
        );
    }
    let unknown = browser.text("#answer-unknown");
    assert!(unknown == "known" || unknown == "unknown", "{unknown:?}");

    // The status panel catches up (it polls every 2 s).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let classes = browser.text("#status-classes");
        if classes == "5" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "status shows {classes:?} classes, not 5 ({})",
            browser.text("#status-error")
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    let png = browser.screenshot();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG screenshot");
    let path = if std::env::var("PERENNIAL_UPDATE_SCREENSHOT").is_ok_and(|v| v == "1") {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/serve-page.png")
    } else {
        dir.path().join("serve-page.png")
    };
    std::fs::write(&path, &png).unwrap();
    eprintln!(
        "answer {answer:?} ({unknown}), top {top:?}; screenshot {} ({} bytes); {:.1} s",
        path.display(),
        png.len(),
        started.elapsed().as_secs_f64()
    );
    drop(browser);
    running.stop().unwrap();
}
