//! Fetching the canonical data archives, verified by sha256.
//!
//! This is the only code in Perennial that may reach the network, and only when the
//! user runs `perennial download`. A source may also be a local folder or `file://`
//! URL holding the same files (an offline mirror), which is how the tests exercise it.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// One downloadable file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Asset {
    /// The file name in the data folder, and at an offline mirror (a local folder or a
    /// `file://` URL holds every file of a data set flat, under these names).
    pub file: &'static str,
    /// The sub-folder of the data folder it goes to (`omniglot`, `splits`).
    pub dir: &'static str,
    /// The canonical base URL it is published under.
    pub base: &'static str,
    /// Its name under `base`.
    pub remote: &'static str,
    /// Its size in bytes.
    pub size: u64,
    /// Its sha256, lowercase hex.
    pub sha256: &'static str,
}

/// Where the Omniglot archives are published (Lake et al.'s repository).
pub const OMNIGLOT_BASE: &str = "https://github.com/brendenlake/omniglot/raw/master/python";

/// Where the Vinyals et al. split files are published (torchmeta's copy, MIT licence).
pub const SPLITS_BASE: &str =
    "https://raw.githubusercontent.com/tristandeleu/pytorch-meta/master/torchmeta/datasets/assets/omniglot";

// Sizes and sha256 as listed by TensorFlow Datasets' checksum file for Omniglot; the
// small1 value also matches the copy in the shared data folder.
const OMNIGLOT: &[Asset] = &[
    Asset {
        file: "images_background.zip",
        dir: "omniglot",
        base: OMNIGLOT_BASE,
        remote: "images_background.zip",
        size: 9_464_212,
        sha256: "ad41ab679c8b5d90b271ef46be6987cc81211774a695c29dcc5367b2b26ee640",
    },
    Asset {
        file: "images_evaluation.zip",
        dir: "omniglot",
        base: OMNIGLOT_BASE,
        remote: "images_evaluation.zip",
        size: 6_462_886,
        sha256: "1f61a8f3366785b057fc117d9228e78a16e3d976c8953b2a10fcc74cf0609cee",
    },
];
// The three split files of Vinyals et al. 2016 as torchmeta publishes them; sizes and
// sha256 are those of the copies in the shared data folder, which match torchmeta's
// files byte for byte in size and content.
const SPLITS: &[Asset] = &[
    Asset {
        file: "omniglot__train.json",
        dir: "splits",
        base: SPLITS_BASE,
        remote: "train.json",
        size: 15_034,
        sha256: "3432d95c10f2959c3894a2bebe63f70600b5c567a912d13200699b0634d7b191",
    },
    Asset {
        file: "omniglot__val.json",
        dir: "splits",
        base: SPLITS_BASE,
        remote: "val.json",
        size: 2_519,
        sha256: "4aca6cbef626e818dace533b4c46363830eaaa158f2d06e29beb3e9772258d5f",
    },
    Asset {
        file: "omniglot__test.json",
        dir: "splits",
        base: SPLITS_BASE,
        remote: "test.json",
        size: 6_139,
        sha256: "c3604a268c3e6bfb5f010e839dd986d0f149bfc81a93cf5de239a0543effea86",
    },
];
const OMNIGLOT_ALL: &[Asset] = &[OMNIGLOT[0], OMNIGLOT[1], SPLITS[0], SPLITS[1], SPLITS[2]];
const OMNIGLOT_SMALL: &[Asset] = &[
    Asset {
        file: "images_background_small1.zip",
        dir: "omniglot",
        base: OMNIGLOT_BASE,
        remote: "images_background_small1.zip",
        size: 1_319_022,
        sha256: "f38eb80f801274ac2b4dff5b24289016bfaba4a7d5bb50deebf27104ad6cb8a4",
    },
    Asset {
        file: "images_background_small2.zip",
        dir: "omniglot",
        base: OMNIGLOT_BASE,
        remote: "images_background_small2.zip",
        size: 1_580_917,
        sha256: "3ccaa407515a8778e5d0861875af38b17e418f301ad5bb3b5a6b65d901a41c7f",
    },
];

/// The data sets `download` knows: `omniglot` (both archives and the Vinyals split
/// files), `omniglot-splits` (the split files alone) and `omniglot-small` (the two small
/// background subsets).
pub fn catalogue(name: &str) -> Result<&'static [Asset]> {
    match name {
        "omniglot" => Ok(OMNIGLOT_ALL),
        "omniglot-splits" => Ok(SPLITS),
        "omniglot-small" => Ok(OMNIGLOT_SMALL),
        _ => Err(Error::invalid(
            "data set",
            name,
            "known: omniglot, omniglot-splits, omniglot-small",
        )),
    }
}

/// The sha256 of a file, lowercase hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What [`fetch`] did with one asset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fetched {
    /// The file was already there with the right sha256.
    AlreadyPresent(PathBuf),
    /// The file was fetched and verified.
    Downloaded(PathBuf),
}

/// Fetches `asset` from `source` (an `http(s)://` base URL, under which it is
/// `asset.remote`; or an offline mirror, a `file://` URL or a local folder, where it is
/// `asset.file`) into the folder `dest`, verifying its sha256. The file is written to `<name>.partial`
/// and renamed only once verified, so a failed or interrupted fetch never leaves a
/// file that looks complete. `progress` is called with (bytes so far, total).
pub fn fetch(
    asset: &Asset,
    source: &str,
    dest: &Path,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Fetched> {
    std::fs::create_dir_all(dest).map_err(|e| Error::io(dest, e))?;
    let target = dest.join(asset.file);
    if target.is_file() && sha256_file(&target)? == asset.sha256 {
        return Ok(Fetched::AlreadyPresent(target));
    }
    let http = source.starts_with("http://") || source.starts_with("https://");
    let name = if http { asset.remote } else { asset.file };
    let url = format!("{}/{}", source.trim_end_matches('/'), name);
    let dl_err = |reason: String| Error::Download {
        url: url.clone(),
        reason,
    };
    let mut reader: Box<dyn Read> = if http {
        let resp = ureq::get(&url).call().map_err(|e| dl_err(e.to_string()))?;
        Box::new(resp.into_reader())
    } else {
        let local = PathBuf::from(url.strip_prefix("file://").unwrap_or(&url));
        Box::new(std::fs::File::open(&local).map_err(|e| dl_err(e.to_string()))?)
    };
    let partial = dest.join(format!("{}.partial", asset.file));
    let mut out = std::fs::File::create(&partial).map_err(|e| Error::io(&partial, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut done = 0u64;
    loop {
        let n = reader.read(&mut buf).map_err(|e| dl_err(e.to_string()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        out.write_all(&buf[..n])
            .map_err(|e| Error::io(&partial, e))?;
        done += n as u64;
        progress(done, asset.size);
    }
    out.sync_all().map_err(|e| Error::io(&partial, e))?;
    drop(out);
    let got = hex(&h.finalize());
    if got != asset.sha256 {
        let _ = std::fs::remove_file(&partial);
        return Err(dl_err(format!(
            "sha256 mismatch ({done} bytes): expected {}, got {got}; nothing was kept",
            asset.sha256
        )));
    }
    std::fs::rename(&partial, &target).map_err(|e| Error::io(&target, e))?;
    Ok(Fetched::Downloaded(target))
}
