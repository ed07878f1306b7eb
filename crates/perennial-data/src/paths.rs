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
/// `omniglot/` and `mnist/` folders, so that data-dependent tests skip with a clear
/// message on a machine without the data.
///
/// # Panics
///
/// Under continuous integration (`CI` set and not empty or `false`) a missing data set
/// is a failure, not a skip: a green CI run always means the data tests ran.
pub fn shared_test_data() -> Option<PathBuf> {
    let p = std::env::var_os("PERENNIAL_TEST_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data"));
    let missing: Vec<&str> = ["omniglot", "mnist"]
        .into_iter()
        .filter(|d| !p.join(d).is_dir())
        .collect();
    if missing.is_empty() {
        return Some(p);
    }
    let what = format!(
        "no {} data at {} (set PERENNIAL_TEST_DATA)",
        missing.join(" or "),
        p.display()
    );
    if is_ci(std::env::var("CI").ok().as_deref()) {
        panic!("{what}: under CI the data tests must run, not skip");
    }
    eprintln!("SKIP: {what}");
    None
}

/// Whether a value of the `CI` environment variable says this is a CI run.
fn is_ci(value: Option<&str>) -> bool {
    value.is_some_and(|v| !v.is_empty() && v != "false" && v != "0")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ci_is_told_by_its_variable() {
        for v in ["true", "1", "yes"] {
            assert!(is_ci(Some(v)), "{v}");
        }
        for v in [None, Some(""), Some("false"), Some("0")] {
            assert!(!is_ci(v), "{v:?}");
        }
    }
}
