//! MNIST in the IDX format (LeCun et al.), gzip-compressed or plain.

use std::io::Read;
use std::path::Path;

use crate::dataset::ClassSet;
use crate::error::{Error, Result};

/// Reads an IDX file (`.gz` or not) and returns its dimensions and raw `u8` payload.
pub fn read_idx(path: &Path) -> Result<(Vec<usize>, Vec<u8>)> {
    let raw = std::fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::Missing {
            what: "MNIST file".into(),
            path: path.to_path_buf(),
            hint: String::new(),
        },
        _ => Error::io(path, e),
    })?;
    let bytes = if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(raw.as_slice())
            .read_to_end(&mut out)
            .map_err(|e| Error::corrupt(path, format!("bad gzip stream: {e}")))?;
        out
    } else {
        raw
    };
    if bytes.len() < 4 || bytes[0] != 0 || bytes[1] != 0 {
        return Err(Error::corrupt(path, "not an IDX file (bad magic)"));
    }
    if bytes[2] != 0x08 {
        return Err(Error::corrupt(
            path,
            format!("IDX element type 0x{:02x} is not u8", bytes[2]),
        ));
    }
    let ndim = bytes[3] as usize;
    let header = 4 + 4 * ndim;
    if bytes.len() < header {
        return Err(Error::corrupt(path, "truncated IDX header"));
    }
    let dims: Vec<usize> = (0..ndim)
        .map(|i| u32::from_be_bytes(bytes[4 + 4 * i..8 + 4 * i].try_into().unwrap()) as usize)
        .collect();
    let n: usize = dims.iter().product();
    if bytes.len() - header != n {
        return Err(Error::corrupt(
            path,
            format!(
                "IDX dims {dims:?} need {n} bytes, file has {}",
                bytes.len() - header
            ),
        ));
    }
    Ok((dims, bytes[header..].to_vec()))
}

/// MNIST images (28 x 28, scaled to `[0, 1]`) and labels of one part.
#[derive(Debug, Clone)]
pub struct Mnist {
    /// Pixels, `n * 784`, in `[0, 1]`.
    pub images: Vec<f32>,
    /// Labels `0..10`.
    pub labels: Vec<u8>,
}

impl Mnist {
    /// Loads `train` (60,000) or `t10k` (10,000) from `dir` (or `dir/mnist`).
    pub fn load(dir: &Path, part: &str) -> Result<Self> {
        let dir = if dir.join("mnist").is_dir() {
            dir.join("mnist")
        } else {
            dir.to_path_buf()
        };
        let pick = |kind: &str| {
            let gz = dir.join(format!(
                "{part}-{kind}-idx{}-ubyte.gz",
                if kind == "images" { 3 } else { 1 }
            ));
            if gz.exists() {
                gz
            } else {
                gz.with_extension("")
            }
        };
        let (ipath, lpath) = (pick("images"), pick("labels"));
        let (idims, pixels) = read_idx(&ipath)?;
        let (ldims, labels) = read_idx(&lpath)?;
        if idims.len() != 3 || idims[1] != 28 || idims[2] != 28 {
            return Err(Error::corrupt(
                &ipath,
                format!("expected (n, 28, 28), found {idims:?}"),
            ));
        }
        if ldims != [idims[0]] {
            return Err(Error::corrupt(
                &lpath,
                format!(
                    "{} labels for {} images",
                    ldims.first().copied().unwrap_or(0),
                    idims[0]
                ),
            ));
        }
        if let Some(l) = labels.iter().find(|&&l| l > 9) {
            return Err(Error::corrupt(&lpath, format!("label {l} is not a digit")));
        }
        Ok(Mnist {
            images: pixels.iter().map(|&p| p as f32 / 255.0).collect(),
            labels,
        })
    }

    /// The images grouped by digit, as a [`ClassSet`] named `split`.
    pub fn class_set(self, split: &str) -> ClassSet {
        let labels: Vec<usize> = self.labels.iter().map(|&l| l as usize).collect();
        ClassSet::from_labelled(
            split,
            28,
            28,
            self.images,
            &labels,
            (0..10).map(|d| d.to_string()).collect(),
        )
    }
}
