//! `perennial train protonet`.

use anyhow::{bail, Result};
use perennial::checkpoint::{DataConfig, RunConfig, RunDir, ScheduleConfig};
use perennial::data::omniglot::{Split, SplitScheme};
use perennial::data::{paths, EpisodeSampler, EpisodeSpec};
use perennial::eval::Summary;
use perennial::meta::metric::ProtoNetConfig;
use perennial::meta::StepReport;
use perennial::nn::Distance;
use perennial::optim::AdamConfig;
use perennial::train::{build_learner, train, Observer};

use crate::cli::TrainArgs;
use crate::progress::bar;

/// Streams of the sampler: training and validation never share episodes.
pub const TRAIN_STREAM: u64 = 0;
/// The validation stream.
pub const VAL_STREAM: u64 = 1;

fn config_from_args(a: &TrainArgs) -> Result<RunConfig> {
    if a.dataset != "omniglot" {
        bail!(
            "--dataset {}: only omniglot is supported for training so far",
            a.dataset
        );
    }
    let splits: SplitScheme = a.splits.parse()?;
    let train_split: Split = a.train_split.parse()?;
    if !matches!(train_split, Split::Train | Split::TrainVal) {
        bail!(
            "--train-split {}: expected train or trainval",
            a.train_split
        );
    }
    let distance: Distance = a.distance.parse()?;
    let data_dir = paths::data_dir(a.data.data_dir.as_deref());
    let data_dir = std::fs::canonicalize(&data_dir).unwrap_or(data_dir);
    Ok(RunConfig {
        algorithm: "protonet".into(),
        seed: a.seed,
        data: DataConfig {
            dataset: a.dataset.clone(),
            data_dir,
            splits,
            train_split,
        },
        train_episode: EpisodeSpec::new(a.ways, a.shots, a.queries),
        val_episode: EpisodeSpec::new(a.val_ways, a.val_shots.unwrap_or(a.shots), a.queries),
        schedule: ScheduleConfig {
            episodes: a.episodes,
            val_every: if splits == SplitScheme::Lake || train_split == Split::TrainVal {
                0
            } else {
                a.val_every
            },
            val_episodes: a.val_episodes,
            checkpoint_every: a.checkpoint_every,
            log_every: a.log_every,
        },
        protonet: ProtoNetConfig {
            distance,
            optimizer: AdamConfig {
                lr: a.lr,
                step_every: a.lr_step,
                gamma: a.lr_gamma,
                ..Default::default()
            },
            ..Default::default()
        },
    })
}

struct Bars {
    bar: indicatif::ProgressBar,
    loss: f64,
    acc: f64,
    val: Option<f64>,
}

impl Observer for Bars {
    fn on_episode(&mut self, done: u64, r: &StepReport) {
        // Exponential moving averages for a readable message.
        self.loss = if self.loss == 0.0 {
            r.loss
        } else {
            0.98 * self.loss + 0.02 * r.loss
        };
        self.acc = if self.acc == 0.0 {
            r.accuracy
        } else {
            0.98 * self.acc + 0.02 * r.accuracy
        };
        self.bar.set_position(done);
        let val = self
            .val
            .map(|v| format!(" val {:.2}%", v * 100.0))
            .unwrap_or_default();
        self.bar.set_message(format!(
            "loss {:.3} acc {:.1}%{val}",
            self.loss,
            self.acc * 100.0
        ));
    }
    fn on_validation(&mut self, done: u64, s: &Summary, best: bool) {
        self.val = Some(s.accuracy);
        tracing::info!(
            episode = done,
            val_accuracy = s.accuracy,
            ci95 = s.ci95,
            best,
            "validation"
        );
    }
}

/// Trains (or resumes) a ProtoNet run.
pub fn protonet(a: TrainArgs, quiet: bool) -> Result<()> {
    let device = super::device(&a.device)?;
    let (run, config) = if a.resume {
        let run = RunDir::open(&a.out)?;
        let config = run.config()?;
        (run, config)
    } else {
        let config = config_from_args(&a)?;
        config.protonet.optimizer.validate()?;
        config.schedule.validate()?;
        // Check the episode shapes before creating anything on disk.
        for (name, v) in [("--ways", a.ways), ("--val-ways", a.val_ways)] {
            if v < 2 {
                bail!("{name} {v}: an episode needs at least 2 classes");
            }
        }
        (RunDir::create(&a.out, &config)?, config)
    };
    let state = run.state()?;
    if state.finished {
        eprintln!(
            "run {} already finished ({} episodes)",
            a.out.display(),
            state.next_episode
        );
        return Ok(());
    }
    let want_val = config.schedule.val_every > 0;
    let splits = if want_val {
        vec![config.data.train_split, Split::Val]
    } else {
        vec![config.data.train_split]
    };
    let sets = super::omniglot_splits(&config.data.data_dir, config.data.splits, &splits)?;
    let train_sampler = EpisodeSampler::new(sets[0].clone(), config.train_episode, config.seed)?
        .with_stream(TRAIN_STREAM);
    let val_sampler = match sets.get(1) {
        Some(v) => Some(
            EpisodeSampler::new(v.clone(), config.val_episode, config.seed)?
                .with_stream(VAL_STREAM),
        ),
        None => None,
    };
    let mut learner = build_learner(&config, device)?;
    tracing::info!(
        run = %a.out.display(), device = ?device, threads = tch::get_num_threads(),
        episodes = config.schedule.episodes, from = state.next_episode, "training protonet"
    );
    let pb = bar(config.schedule.episodes, "train", quiet);
    pb.set_position(state.next_episode);
    pb.reset_eta();
    let mut obs = Bars {
        bar: pb,
        loss: 0.0,
        acc: 0.0,
        val: None,
    };
    let t = std::time::Instant::now();
    let state = train(
        learner.as_mut(),
        &run,
        &config.schedule,
        &train_sampler,
        val_sampler.as_ref(),
        device,
        &mut obs,
    )?;
    obs.bar.finish_and_clear();
    let best = state
        .best_val_accuracy
        .map(|v| {
            format!(
                ", best validation accuracy {:.2}% at episode {}",
                v * 100.0,
                state.best_episode.unwrap_or(0)
            )
        })
        .unwrap_or_default();
    eprintln!(
        "trained {} episodes in {:.1}s{best}; run in {}",
        state.next_episode,
        t.elapsed().as_secs_f64(),
        a.out.display()
    );
    Ok(())
}
