//! The commands: each resolves its flags into library settings and runs.

mod adapt;
mod bench;
mod continual;
mod download;
mod eval;
mod launch;
mod report;
mod serve;
mod train;

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use perennial::data::omniglot::{Omniglot, Split, SplitScheme};
use perennial::data::{paths, ClassSet};
use perennial::meta::optimization::maml::MamlVariant;
use tch::Device;

use crate::cli::{Cli, Command, TrainAlgorithm};

/// Runs the parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    let quiet = cli.quiet;
    let serving = match &cli.command {
        Command::Serve(_) => true,
        Command::Bench(b) => b.family == "serve",
        _ => false,
    };
    if cli.threads.is_none() && (serving || matches!(cli.command, Command::Continual(_))) {
        // The streams' MLPs on batches of 10 are far too small to split over threads:
        // one thread runs them several times faster (10x on a busy 2-core machine).
        // The server's batches of a few images likewise: OpenMP's wake-ups took a fifth
        // of the time, and one thread doubled its throughput (docs/serve.md), leaving
        // the other core to the HTTP side.
        tch::set_num_threads(1);
    }
    match cli.command {
        Command::Train { algorithm } => match algorithm {
            TrainAlgorithm::Protonet(a) => train::protonet(a, quiet),
            TrainAlgorithm::Maml(a) => train::maml(MamlVariant::Maml, a, quiet),
            TrainAlgorithm::Fomaml(a) => train::maml(MamlVariant::Fomaml, a, quiet),
            TrainAlgorithm::Anil(a) => train::maml(MamlVariant::Anil, a, quiet),
            TrainAlgorithm::Metasgd(a) => train::maml(MamlVariant::Metasgd, a, quiet),
            TrainAlgorithm::Reptile(a) => train::reptile(a, quiet),
            TrainAlgorithm::Oml(a) => train::oml(a, quiet),
            TrainAlgorithm::Relation(a) => train::relation(a, quiet),
            TrainAlgorithm::Matching(a) => train::matching(a, quiet),
            TrainAlgorithm::Triplet(a) => train::triplet(a, quiet),
            TrainAlgorithm::Contrastive(a) => train::contrastive(a, quiet),
            TrainAlgorithm::Mann(a) => train::mann(a, quiet),
            TrainAlgorithm::KvMemory(a) => train::kv_memory(a, quiet),
        },
        Command::Eval(a) => eval::eval(a, quiet),
        Command::EvalEpisodes(a) => eval::eval_episodes(a, quiet),
        Command::Adapt(a) => adapt::adapt(a),
        Command::Predict(a) => adapt::predict(a),
        Command::Download(a) => download::download(a, quiet),
        Command::Bench(a) => bench::bench(a),
        Command::Continual(a) => continual::continual(a, quiet),
        Command::Report(a) => report::report(a),
        Command::Serve(a) => serve::serve(a),
        Command::Launch(a) => launch::launch(a, cli.threads, quiet),
    }
}

/// Parses `--device`.
pub fn device(spec: &str) -> Result<Device> {
    let cuda = |i: usize| {
        if !tch::Cuda::is_available() {
            bail!("--device {spec}: CUDA is not available (this libtorch has no CUDA, or there is no GPU)");
        }
        if i >= tch::Cuda::device_count() as usize {
            bail!(
                "--device {spec}: only {} CUDA device(s)",
                tch::Cuda::device_count()
            );
        }
        Ok(Device::Cuda(i))
    };
    match spec {
        "auto" => Ok(Device::cuda_if_available()),
        "cpu" => Ok(Device::Cpu),
        "cuda" => cuda(0),
        s => match s.strip_prefix("cuda:").and_then(|n| n.parse().ok()) {
            Some(i) => cuda(i),
            None => bail!("--device {spec}: expected cpu, cuda, cuda:N or auto"),
        },
    }
}

/// The image side a run's learner takes, or an error naming the run if it does not
/// classify images (a sinusoid run).
pub fn image_size(config: &perennial::checkpoint::RunConfig, run_dir: &Path) -> Result<usize> {
    match config.image_size() {
        Some(s) => Ok(s),
        None => bail!(
            "{}: a {} run on {} does not classify images",
            run_dir.display(),
            config.algorithm,
            config.data.dataset
        ),
    }
}

/// Loads Omniglot from `data` and returns the classes of `split`.
pub fn omniglot_split(data: &Path, scheme: SplitScheme, split: Split) -> Result<Arc<ClassSet>> {
    Ok(omniglot_splits(data, scheme, &[split])?.remove(0))
}

/// Loads several splits with one read of the data.
pub fn omniglot_splits(
    data: &Path,
    scheme: SplitScheme,
    splits: &[Split],
) -> Result<Vec<Arc<ClassSet>>> {
    let o = Omniglot::load(data)
        .with_context(|| format!("loading Omniglot from {}", data.display()))?;
    splits
        .iter()
        .map(|&s| Ok(Arc::new(o.split(scheme, s, &paths::splits_dir(data))?)))
        .collect()
}

/// The process's peak resident memory in MB (NaN where /proc is not available).
pub fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}
