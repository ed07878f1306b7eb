//! `perennial serve`: flags into [`perennial_serve::Options`]; the service lives in
//! the `perennial-serve` crate.

use std::io::Write;

use anyhow::{bail, Result};
use perennial_serve::{Options, Role, Settings};

use crate::cli::{ServeAction, ServeArgs};

/// Runs `serve` (or `serve token` / `serve rollback`).
pub fn serve(a: ServeArgs) -> Result<()> {
    match a.action {
        Some(ServeAction::Token { store, role }) => {
            let token = perennial_serve::auth::add_token(&store, Role::parse(&role)?)?;
            println!("{token}");
            Ok(())
        }
        Some(ServeAction::Rollback { store, to }) => {
            let v = perennial_serve::rollback(&store, to)?;
            println!("version {v} is current");
            Ok(())
        }
        None => {
            let Some(store) = a.store else {
                bail!("--store DIR is needed (the store's folder: created on first start)");
            };
            if a.max_body_mb == 0 || a.keep_versions == 0 || a.queue == 0 {
                bail!("--max-body-mb, --keep-versions and --queue must be at least 1");
            }
            let mut options = Options::new(store, a.encoder);
            options.addr = a.addr;
            options.public_read = a.public_read;
            options.queue = a.queue;
            options.limits.body = a.max_body_mb << 20;
            options.worker.keep_versions = a.keep_versions;
            options.settings = Settings {
                consolidate_every: a.consolidate_every,
                consolidate_episodes: a.consolidate_episodes,
                unknown_quantile: a.unknown_quantile,
                shift_radius: a.shift_radius,
                seed: None,
                classify: a
                    .classify
                    .as_deref()
                    .map(perennial::lifelong::Classify::parse)
                    .transpose()?,
                example_index: match (a.example_index, a.no_example_index) {
                    (true, _) => Some(true),
                    (_, true) => Some(false),
                    _ => None,
                },
            };
            let running = perennial_serve::start(options)?;
            // One line on stdout, for people and for scripts that started it on port 0.
            println!("listening on http://{}", running.addr());
            std::io::stdout().flush()?;
            running.wait()
        }
    }
}
