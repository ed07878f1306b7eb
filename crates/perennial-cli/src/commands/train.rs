//! `perennial train ALGORITHM`: resolves flags into a run config, then trains.

use anyhow::{bail, Result};
use perennial::checkpoint::{AlgorithmConfig, DataConfig, RunConfig, RunDir, ScheduleConfig};
use perennial::data::omniglot::{Split, SplitScheme};
use perennial::data::rng::streams;
use perennial::data::sinusoid::{SinusoidSampler, SinusoidSpec};
use perennial::data::{paths, EpisodeSampler, EpisodeSpec};
use perennial::eval::Summary;
use perennial::lifelong::oml::OmlConfig;
use perennial::meta::metric::ProtoNetConfig;
use perennial::meta::optimization::fastnet::FastNetConfig;
use perennial::meta::optimization::maml::{MamlConfig, MamlVariant};
use perennial::meta::optimization::reptile::ReptileConfig;
use perennial::meta::StepReport;
use perennial::nn::BackboneConfig;
use perennial::optim::AdamConfig;
use perennial::train::{build_learner, train, Observer, TaskSource};

use crate::cli::{MamlArgs, OmlArgs, ProtonetArgs, ReptileArgs, TrainArgs};
use crate::progress::bar;

fn is_sinusoid(a: &TrainArgs) -> bool {
    a.dataset == "sinusoid"
}

/// The config fields every algorithm shares; `val_ways`/`val_shots` default to the
/// training episode's.
fn base_config(
    a: &TrainArgs,
    algorithm: AlgorithmConfig,
    meta_batch: u64,
    val: Option<(usize, usize)>,
) -> Result<RunConfig> {
    if !matches!(a.dataset.as_str(), "omniglot" | "sinusoid") {
        bail!("--dataset {}: expected omniglot or sinusoid", a.dataset);
    }
    let splits: SplitScheme = a.splits.parse()?;
    let train_split: Split = a.train_split.parse()?;
    if !matches!(train_split, Split::Train | Split::TrainVal) {
        bail!(
            "--train-split {}: expected train or trainval",
            a.train_split
        );
    }
    let sinusoid = is_sinusoid(a);
    if !sinusoid && a.ways < 2 {
        bail!("--ways {}: an episode needs at least 2 classes", a.ways);
    }
    let queries = a.queries.unwrap_or(if sinusoid { 10 } else { 15 });
    let data_dir = paths::data_dir(a.data.data_dir.as_deref());
    let data_dir = std::fs::canonicalize(&data_dir).unwrap_or(data_dir);
    let (val_ways, val_shots) = val.unwrap_or((a.ways, a.shots));
    if !sinusoid && val_ways < 2 {
        bail!("--val-ways {val_ways}: an episode needs at least 2 classes");
    }
    let no_val = sinusoid || splits == SplitScheme::Lake || train_split == Split::TrainVal;
    let config = RunConfig {
        algorithm,
        seed: a.seed,
        data: DataConfig {
            dataset: a.dataset.clone(),
            data_dir,
            splits,
            train_split,
        },
        train_episode: EpisodeSpec::new(if sinusoid { 1 } else { a.ways }, a.shots, queries),
        val_episode: EpisodeSpec::new(val_ways, val_shots, queries),
        schedule: ScheduleConfig {
            episodes: a.episodes,
            val_every: if no_val { 0 } else { a.val_every },
            val_episodes: a.val_episodes,
            checkpoint_every: a.checkpoint_every,
            log_every: a.log_every,
            meta_batch,
        },
        sinusoid: sinusoid.then(|| SinusoidSpec::new(a.shots, queries)),
    };
    if let Some(s) = &config.sinusoid {
        s.validate()?;
    }
    config.schedule.validate()?;
    Ok(config)
}

fn net_config(a: &TrainArgs, hidden: usize) -> Result<FastNetConfig> {
    Ok(if is_sinusoid(a) {
        FastNetConfig::sinusoid(hidden)
    } else {
        FastNetConfig {
            backbone: conv4(a)?,
            outputs: a.ways,
            ..Default::default()
        }
    })
}

/// The Conv4 backbone with `--init`.
fn conv4(a: &TrainArgs) -> Result<BackboneConfig> {
    let init = a.init.parse()?;
    Ok(match BackboneConfig::default() {
        BackboneConfig::Conv4 {
            in_channels,
            hidden,
            image_size,
            ..
        } => BackboneConfig::Conv4 {
            in_channels,
            hidden,
            image_size,
            init,
        },
        other => other,
    })
}

/// Trains (or resumes) a ProtoNet run.
pub fn protonet(a: ProtonetArgs, quiet: bool) -> Result<()> {
    let config = if a.common.resume {
        None
    } else {
        if is_sinusoid(&a.common) {
            bail!("--dataset sinusoid: protonet classifies; use maml, fomaml, anil, metasgd or reptile for regression");
        }
        let p = ProtoNetConfig {
            backbone: conv4(&a.common)?,
            distance: a.distance.parse()?,
            optimizer: AdamConfig {
                lr: a.lr,
                step_every: a.lr_step,
                gamma: a.lr_gamma,
                ..Default::default()
            },
        };
        p.optimizer.validate()?;
        Some(base_config(
            &a.common,
            AlgorithmConfig::Protonet { protonet: p },
            1,
            Some((a.val_ways, a.val_shots.unwrap_or(a.common.shots))),
        )?)
    };
    run(&a.common, config, quiet)
}

/// Trains (or resumes) a MAML-family run.
pub fn maml(variant: MamlVariant, a: MamlArgs, quiet: bool) -> Result<()> {
    let config = if a.common.resume {
        None
    } else {
        let sine = is_sinusoid(&a.common);
        let m = MamlConfig {
            variant,
            net: net_config(&a.common, a.hidden)?,
            inner_steps: a.inner_steps,
            // Meta-SGD's learned rates are tuned for the training step count.
            eval_steps: a.eval_steps.unwrap_or(match (variant, sine) {
                (MamlVariant::Metasgd, _) => a.inner_steps,
                (_, true) => 10,
                (_, false) => 3,
            }),
            inner_lr: a.inner_lr.unwrap_or(if sine { 0.01 } else { 0.4 }),
            optimizer: AdamConfig {
                lr: a.meta_lr,
                step_every: 0,
                ..Default::default()
            },
            msl_iterations: a.msl_iterations,
            per_step_bn: a.per_step_bn,
        };
        m.validate()?;
        Some(base_config(
            &a.common,
            AlgorithmConfig::maml_family(m),
            a.meta_batch.unwrap_or(if sine { 25 } else { 32 }),
            None,
        )?)
    };
    run(&a.common, config, quiet)
}

/// Trains (or resumes) a Reptile run.
pub fn reptile(a: ReptileArgs, quiet: bool) -> Result<()> {
    let config = if a.common.resume {
        None
    } else {
        let sine = is_sinusoid(&a.common);
        let r = ReptileConfig {
            net: net_config(&a.common, a.hidden)?,
            inner_steps: a.inner_steps,
            eval_steps: a.eval_steps,
            inner_lr: a.inner_lr.unwrap_or(if sine { 0.01 } else { 0.1 }),
            meta_lr: a.meta_lr,
            anneal_steps: if a.no_anneal { 0 } else { a.common.episodes },
        };
        r.validate()?;
        Some(base_config(
            &a.common,
            AlgorithmConfig::Reptile { reptile: r },
            a.meta_batch,
            None,
        )?)
    };
    run(&a.common, config, quiet)
}

/// Trains (or resumes) an OML run.
pub fn oml(a: OmlArgs, quiet: bool) -> Result<()> {
    let config = if a.common.resume {
        None
    } else {
        if is_sinusoid(&a.common) {
            bail!("--dataset sinusoid: oml learns classes online; use maml, fomaml, anil, metasgd or reptile for regression");
        }
        let o = OmlConfig {
            backbone: conv4(&a.common)?,
            inner_lr: a.inner_lr,
            optimizer: AdamConfig {
                lr: a.lr,
                step_every: a.lr_step,
                gamma: a.lr_gamma,
                ..Default::default()
            },
        };
        o.validate()?;
        Some(base_config(
            &a.common,
            AlgorithmConfig::Oml { oml: o },
            1,
            None,
        )?)
    };
    run(&a.common, config, quiet)
}

struct Bars {
    bar: indicatif::ProgressBar,
    loss: f64,
    acc: Option<f64>,
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
        if let Some(a) = r.accuracy {
            self.acc = Some(match self.acc {
                None => a,
                Some(m) => 0.98 * m + 0.02 * a,
            });
        }
        self.bar.set_position(done);
        let val = self
            .val
            .map(|v| format!(" val {:.2}%", v * 100.0))
            .unwrap_or_default();
        let acc = self
            .acc
            .map(|a| format!(" acc {:.1}%", a * 100.0))
            .unwrap_or_default();
        self.bar
            .set_message(format!("loss {:.3}{acc}{val}", self.loss));
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

/// Creates the run (`config`) or resumes it (`None`), then trains to the end.
fn run(a: &TrainArgs, config: Option<RunConfig>, quiet: bool) -> Result<()> {
    let device = super::device(&a.device)?;
    let (run, config) = match config {
        None => {
            let run = RunDir::open(&a.out)?;
            let config = run.config()?;
            (run, config)
        }
        Some(config) => {
            // Build the learner once to check the config before creating anything.
            build_learner(&config, device)?;
            (RunDir::create(&a.out, &config)?, config)
        }
    };
    let state = run.state()?;
    if state.finished {
        eprintln!(
            "run {} already finished ({} updates)",
            a.out.display(),
            state.next_episode
        );
        return Ok(());
    }
    let (source, val_sampler): (Box<dyn TaskSource>, Option<EpisodeSampler>) = match &config
        .sinusoid
    {
        Some(spec) => (
            Box::new(
                SinusoidSampler::new(*spec, config.seed)?.with_stream(streams::TRAIN_EPISODES),
            ),
            None,
        ),
        None => {
            let want_val = config.schedule.val_every > 0;
            let splits = if want_val {
                vec![config.data.train_split, Split::Val]
            } else {
                vec![config.data.train_split]
            };
            let sets = super::omniglot_splits(&config.data.data_dir, config.data.splits, &splits)?;
            let train_sampler =
                EpisodeSampler::new(sets[0].clone(), config.train_episode, config.seed)?
                    .with_stream(streams::TRAIN_EPISODES);
            let val_sampler = match sets.get(1) {
                Some(v) => Some(
                    EpisodeSampler::new(v.clone(), config.val_episode, config.seed)?
                        .with_stream(streams::VAL_EPISODES),
                ),
                None => None,
            };
            (Box::new(train_sampler), val_sampler)
        }
    };
    let mut learner = build_learner(&config, device)?;
    tracing::info!(
        run = %a.out.display(), device = ?device, threads = tch::get_num_threads(),
        updates = config.schedule.episodes, from = state.next_episode,
        algorithm = %config.algorithm, "training"
    );
    let pb = bar(config.schedule.episodes, "train", quiet);
    pb.set_position(state.next_episode);
    pb.reset_eta();
    let mut obs = Bars {
        bar: pb,
        loss: 0.0,
        acc: None,
        val: None,
    };
    let t = std::time::Instant::now();
    let state = train(
        learner.as_mut(),
        &run,
        &config.schedule,
        source.as_ref(),
        val_sampler.as_ref(),
        device,
        &mut obs,
    )?;
    obs.bar.finish_and_clear();
    let best = state
        .best_val_accuracy
        .map(|v| {
            format!(
                ", best validation accuracy {:.2}% at update {}",
                v * 100.0,
                state.best_episode.unwrap_or(0)
            )
        })
        .unwrap_or_default();
    eprintln!(
        "trained {} {} updates in {:.1}s{best}; run in {}",
        state.next_episode,
        config.algorithm,
        t.elapsed().as_secs_f64(),
        a.out.display()
    );
    Ok(())
}
