//! A small blocking client of the API (the bench's load driver and the tests' client):
//! multipart teaching and prediction, JSON everything else. Error statuses are answers,
//! not failures: every call gives the status and the JSON body.

use std::time::Duration;

use anyhow::{anyhow, Result};
use serde_json::Value;

/// A client of one server.
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    token: Option<String>,
    agent: ureq::Agent,
}

/// An answer: the status and the JSON body (`Value::Null` when not JSON).
pub type Answer = (u16, Value);

/// An image as PNG bytes: `side x side` pixels, ink 1 drawn black on white, as
/// Omniglot's drawings are.
pub fn png(pixels: &[f32], side: usize) -> Vec<u8> {
    let grey: Vec<u8> = pixels
        .iter()
        .map(|&ink| (255.0 * (1.0 - ink.clamp(0.0, 1.0))).round() as u8)
        .collect();
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, side as u32, side as u32);
        enc.set_color(png::ColorType::Grayscale);
        enc.set_depth(png::BitDepth::Eight);
        let mut w = enc.write_header().expect("PNG header into memory");
        w.write_image_data(&grey).expect("PNG data into memory");
    }
    out
}

/// A multipart body of files, all named `field`; returns the content type and body.
pub fn multipart(field: &str, files: &[&[u8]]) -> (String, Vec<u8>) {
    let boundary = "perennial-boundary-7f3a9c2e51d84b06";
    let mut body = Vec::new();
    for (i, f) in files.iter().enumerate() {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; \
                 filename=\"{i}.png\"\r\nContent-Type: image/png\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(f);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// Percent-encodes a label for a path.
pub fn escape(label: &str) -> String {
    label
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl Client {
    /// A client of the server at `base` (`http://127.0.0.1:8080`).
    pub fn new(base: impl Into<String>, token: Option<String>) -> Client {
        Client {
            base: base.into().trim_end_matches('/').to_string(),
            token,
            agent: ureq::AgentBuilder::new()
                .timeout(Duration::from_secs(120))
                .build(),
        }
    }

    /// The same server with another token.
    pub fn with_token(&self, token: Option<String>) -> Client {
        Client {
            token,
            ..self.clone()
        }
    }

    /// The token it sends.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// The same client of another server (a restarted one, on a new port).
    pub fn with_base(&self, base: &str) -> Client {
        Client {
            base: base.trim_end_matches('/').to_string(),
            ..self.clone()
        }
    }

    fn request(&self, method: &str, path: &str) -> ureq::Request {
        let r = self.agent.request(method, &format!("{}{path}", self.base));
        match &self.token {
            Some(t) => r.set("Authorization", &format!("Bearer {t}")),
            None => r,
        }
    }

    fn answer(r: std::result::Result<ureq::Response, ureq::Error>) -> Result<Answer> {
        let resp = match r {
            Ok(resp) => resp,
            Err(ureq::Error::Status(_, resp)) => resp,
            Err(e) => return Err(anyhow!("request failed: {e}")),
        };
        let status = resp.status();
        let text = resp.into_string()?;
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
    }

    /// Sends `body` with `content_type`.
    pub fn send(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: &[u8],
    ) -> Result<Answer> {
        Self::answer(
            self.request(method, path)
                .set("Content-Type", content_type)
                .send_bytes(body),
        )
    }

    /// A request without a body.
    pub fn call(&self, method: &str, path: &str) -> Result<Answer> {
        Self::answer(self.request(method, path).call())
    }

    /// `GET path`.
    pub fn get(&self, path: &str) -> Result<Answer> {
        self.call("GET", path)
    }

    /// `POST path` with a JSON body.
    pub fn post_json(&self, path: &str, body: &Value) -> Result<Answer> {
        self.send(
            "POST",
            path,
            "application/json",
            body.to_string().as_bytes(),
        )
    }

    /// Teaches PNG (or JPEG) images of a class.
    pub fn teach(&self, label: &str, images: &[&[u8]]) -> Result<Answer> {
        let (ct, body) = multipart("image", images);
        self.send(
            "POST",
            &format!("/v1/classes/{}/examples", escape(label)),
            &ct,
            &body,
        )
    }

    /// Predicts images.
    pub fn predict(&self, images: &[&[u8]]) -> Result<Answer> {
        let (ct, body) = multipart("image", images);
        self.send("POST", "/v1/predict", &ct, &body)
    }

    /// Whether the server answers `/healthz`.
    pub fn healthy(&self) -> bool {
        matches!(self.get("/healthz"), Ok((200, _)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn png_round_trips_through_the_decoder() {
        let side = 28;
        let px: Vec<f32> = (0..side * side).map(|i| f32::from(i % 7 == 0)).collect();
        let back = perennial_data::folder::decode_image(
            &png(&px, side),
            side,
            &perennial_data::folder::ImageLimits::default(),
        )
        .unwrap();
        assert_eq!(back, px);
    }

    #[test]
    fn labels_are_escaped_for_paths() {
        assert_eq!(escape("a b/ç"), "a%20b%2F%C3%A7");
        assert_eq!(escape("Latin_01"), "Latin_01");
    }
}
