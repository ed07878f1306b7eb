//! Where the data lives: `--data-dir`, else `$PERENNIAL_DATA`, else a per-user cache.

use std::path::{Path, PathBuf};

/// Resolves the data directory: the explicit flag wins, then the `PERENNIAL_DATA`
/// environment variable, then `<user cache dir>/perennial/data`
/// (`~/.cache/perennial/data` on Linux).
pub fn data_dir(flag: Option<&Path>) -> PathBuf {
    if let Some(p) = flag {
        return p.to_path_buf();
    }
    if let Some(p) = std::env::var_os("PERENNIAL_DATA").filter(|v| !v.is_empty()) {
        return PathBuf::from(p);
    }
    default_data_dir()
}

/// The per-user default data directory.
pub fn default_data_dir() -> PathBuf {
    dirs::cache_dir()
        .unwrap_or_else(std::env::temp_dir)
        .join("perennial")
        .join("data")
}

/// The folder with the Vinyals split files: `<data>/splits`, or `<data>/../splits`
/// when the data directory points at the `omniglot/` folder itself.
pub fn splits_dir(data: &Path) -> PathBuf {
    let direct = data.join("splits");
    if direct.is_dir() {
        return direct;
    }
    match data.parent() {
        Some(parent) if parent.join("splits").is_dir() => parent.join("splits"),
        _ => direct,
    }
}

/// The shared data folder for tests and benchmarks: `$PERENNIAL_TEST_DATA`, else
/// `../shared/data` beside the workspace. `None` (with a note on stderr) when it has no
/// `omniglot/` folder, so data-dependent tests skip with a clear message.
pub fn shared_test_data() -> Option<PathBuf> {
    let p = std::env::var_os("PERENNIAL_TEST_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data"));
    if p.join("omniglot").is_dir() {
        Some(p)
    } else {
        eprintln!(
            "SKIP: no shared data at {} (set PERENNIAL_TEST_DATA)",
            p.display()
        );
        None
    }
}
