//! What the service's tests share: Omniglot, a small encoder trained once, servers on
//! ephemeral loopback ports.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use perennial::data::omniglot::Split;
use perennial_serve::bench::{characters, encoder, Character};
use perennial_serve::client::Client;
use perennial_serve::{Options, Role, Running, Settings};

/// Omniglot and the encoder, or `None` (skipped) without the shared data.
pub struct Fixture {
    pub encoder: PathBuf,
    /// 30 evaluation characters: 5 drawings to teach, 15 held out.
    pub chars: Vec<Character>,
}

pub fn fixture() -> Option<&'static Fixture> {
    static F: OnceLock<Option<Fixture>> = OnceLock::new();
    F.get_or_init(|| {
        let data = perennial::data::paths::shared_test_data()?;
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("serve-encoder-150");
        let encoder = encoder(&data, &dir, 150).expect("the test encoder trains");
        let chars = characters(&data, Split::Test, 30, 5).expect("Omniglot's evaluation set");
        Some(Fixture { encoder, chars })
    })
    .as_ref()
}

/// Server options on an ephemeral port, consolidating only when asked.
pub fn options(store: &Path, encoder: Option<&Path>) -> Options {
    let mut o = Options::new(store, encoder);
    o.addr = ([127, 0, 0, 1], 0).into();
    o.settings = Settings {
        consolidate_every: Some(0),
        ..Settings::default()
    };
    o
}

/// A started server and a client with a new token of `role`.
pub fn serve(options: Options, role: Role) -> (Running, Client) {
    let token = perennial_serve::auth::add_token(&options.store, role).unwrap();
    let running = perennial_serve::start(options).unwrap();
    let client = Client::new(format!("http://{}", running.addr()), Some(token));
    (running, client)
}

pub fn slices(images: &[Vec<u8>]) -> Vec<&[u8]> {
    images.iter().map(Vec::as_slice).collect()
}

/// The predictions of a body, without their ids (which differ between requests).
pub fn without_ids(body: &serde_json::Value) -> Vec<serde_json::Value> {
    body["predictions"]
        .as_array()
        .expect("predictions")
        .iter()
        .map(|p| {
            let mut p = p.clone();
            p.as_object_mut().unwrap().remove("id");
            p
        })
        .collect()
}

/// Teaches the first `n` characters, 5 drawings each, one request each.
pub fn teach(client: &Client, chars: &[Character]) {
    for ch in chars {
        let (status, body) = client.teach(&ch.name, &slices(&ch.taught)).unwrap();
        assert_eq!(status, 201, "{body}");
        assert_eq!(body["class"], ch.name.as_str());
        assert_eq!(body["added"], ch.taught.len());
    }
}
