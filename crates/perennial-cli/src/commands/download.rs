//! `perennial download`.

use anyhow::Result;
use perennial::data::download::{catalogue, fetch, Fetched};
use perennial::data::paths;

use crate::cli::DownloadArgs;
use crate::progress::bar;

/// Fetches a data set's archives into the data directory.
pub fn download(a: DownloadArgs, quiet: bool) -> Result<()> {
    let assets = catalogue(&a.dataset)?;
    let data = paths::data_dir(a.data.data_dir.as_deref());
    for asset in assets {
        let dest = data.join(asset.dir);
        let source = a.from.as_deref().unwrap_or(asset.base);
        let pb = bar(asset.size, asset.file, quiet);
        let got = fetch(asset, source, &dest, &mut |done, _| pb.set_position(done))?;
        pb.finish_and_clear();
        match got {
            Fetched::AlreadyPresent(p) => {
                tracing::info!("{}: already present and verified", p.display())
            }
            Fetched::Downloaded(p) => {
                tracing::info!("{}: downloaded, sha256 verified", p.display())
            }
        }
    }
    Ok(())
}
