//! `perennial train ALGORITHM`: resolves flags into a run config, then trains.

use anyhow::{bail, Result};
use perennial::checkpoint::{AlgorithmConfig, DataConfig, RunConfig, RunDir, ScheduleConfig};
use perennial::data::omniglot::{self, Split, SplitScheme};
use perennial::data::rng::streams;
use perennial::data::sinusoid::{SinusoidSampler, SinusoidSpec};
use perennial::data::{paths, EpisodeSampler, EpisodeSpec, Jitter};
use perennial::eval::Summary;
use perennial::lifelong::oml::OmlConfig;
use perennial::meta::memory::{KvMemoryConfig, MannConfig};
use perennial::meta::metric::losses::PairDistance;
use perennial::meta::metric::{
    MatchingConfig, PairEmbeddingConfig, PairLoss, ProtoNetConfig, RelationConfig,
};
use perennial::meta::optimization::fastnet::FastNetConfig;
use perennial::meta::optimization::maml::{MamlConfig, MamlVariant};
use perennial::meta::optimization::reptile::ReptileConfig;
use perennial::meta::StepReport;
use perennial::nn::BackboneConfig;
use perennial::optim::AdamConfig;
use perennial::train::{build_learner, train, Observer, TaskSource};

use crate::cli::{
    ContrastiveArgs, KvMemoryArgs, MamlArgs, MannArgs, MatchingArgs, MetricArgs, OmlArgs,
    ProtonetArgs, RelationArgs, ReptileArgs, TrainArgs, TripletArgs,
};
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
        augment: augment(a, sinusoid)?,
    };
    if let Some(s) = &config.sinusoid {
        s.validate()?;
    }
    config.schedule.validate()?;
    Ok(config)
}

/// The jitter of `--augment-rotate` / `--augment-shift` (`None` when both are 0).
fn augment(a: &TrainArgs, sinusoid: bool) -> Result<Option<Jitter>> {
    let j = Jitter {
        max_degrees: a.augment_rotate,
        max_shift: a.augment_shift,
    };
    if j.is_identity() {
        return Ok(None);
    }
    if sinusoid {
        bail!("--augment-rotate/--augment-shift: sinusoid tasks have no images to jitter");
    }
    // The sampler checks again against the set it is given.
    j.validate(omniglot::SIZE, omniglot::SIZE)?;
    Ok(Some(j))
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
            a.meta_batch,
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

/// The optimiser of a metric learner's flags.
fn metric_optimizer(m: &MetricArgs) -> Result<AdamConfig> {
    let o = AdamConfig {
        lr: m.lr,
        step_every: m.lr_step,
        gamma: m.lr_gamma,
        ..Default::default()
    };
    o.validate()?;
    Ok(o)
}

/// Creates (or resumes) a metric learner's run: episodes of Omniglot only,
/// validation episodes of `--val-ways` x `--val-shots`.
fn metric_run(
    common: &TrainArgs,
    metric: &MetricArgs,
    name: &str,
    algorithm: impl FnOnce() -> Result<AlgorithmConfig>,
    quiet: bool,
) -> Result<()> {
    let config = if common.resume {
        None
    } else {
        if is_sinusoid(common) {
            bail!("--dataset sinusoid: {name} classifies; use maml, fomaml, anil, metasgd or reptile for regression");
        }
        Some(base_config(
            common,
            algorithm()?,
            1,
            Some((metric.val_ways, metric.val_shots.unwrap_or(common.shots))),
        )?)
    };
    run(common, config, quiet)
}

/// Trains (or resumes) a Relation Network run.
pub fn relation(a: RelationArgs, quiet: bool) -> Result<()> {
    if a.common.init != "torch" {
        bail!("--init {}: the Relation Network has its own network, initialised as PyTorch does (--init torch)", a.common.init);
    }
    metric_run(
        &a.common,
        &a.metric,
        "relation",
        || {
            let r = RelationConfig {
                optimizer: metric_optimizer(&a.metric)?,
                ..Default::default()
            };
            r.validate()?;
            Ok(AlgorithmConfig::Relation { relation: r })
        },
        quiet,
    )
}

/// Trains (or resumes) a Matching Networks run.
pub fn matching(a: MatchingArgs, quiet: bool) -> Result<()> {
    metric_run(
        &a.common,
        &a.metric,
        "matching",
        || {
            let m = MatchingConfig {
                backbone: conv4(&a.common)?,
                fce: a.fce,
                scale: a.scale,
                optimizer: metric_optimizer(&a.metric)?,
            };
            m.validate()?;
            Ok(AlgorithmConfig::Matching { matching: m })
        },
        quiet,
    )
}

/// Trains (or resumes) a memory-augmented network (or its LSTM baseline): episodes of
/// `--ways` classes with one support image and `--instances - 1` queries each, read
/// whole as one sequence.
pub fn mann(mut a: MannArgs, quiet: bool) -> Result<()> {
    let common = &mut a.common;
    let config = if common.resume {
        None
    } else {
        if is_sinusoid(common) {
            bail!("--dataset sinusoid: mann classifies sequences of images");
        }
        if common.init != "torch" {
            bail!(
                "--init {}: the memory-augmented network is initialised as PyTorch does (--init torch)",
                common.init
            );
        }
        if common.queries.is_some() || common.shots != 1 {
            bail!("--shots/--queries: a memory-augmented network's sequence shows each class --instances times; set that instead");
        }
        if a.instances < 2 {
            bail!(
                "--instances {}: a class must come back at least once to be learnt",
                a.instances
            );
        }
        common.queries = Some(a.instances - 1);
        let optimizer = AdamConfig {
            lr: a.lr,
            step_every: a.lr_step,
            gamma: a.lr_gamma,
            ..Default::default()
        };
        let m = MannConfig {
            classes: common.ways,
            hidden: a.hidden,
            memory_slots: if a.no_memory { 0 } else { a.memory_slots },
            memory_width: a.memory_width,
            read_heads: a.read_heads,
            gamma: a.gamma,
            key_strength: a.key_strength,
            add_vector: a.add_vector,
            clip_norm: a.clip_norm,
            label_chars: a.label_chars,
            optimizer,
            ..Default::default()
        };
        m.validate()?;
        Some(base_config(
            common,
            AlgorithmConfig::Mann { mann: m },
            a.meta_batch,
            None,
        )?)
    };
    run(&a.common, config, quiet)
}

/// Trains (or resumes) a key-value memory run.
pub fn kv_memory(a: KvMemoryArgs, quiet: bool) -> Result<()> {
    metric_run(
        &a.common,
        &a.metric,
        "kv-memory",
        || {
            let k = KvMemoryConfig {
                backbone: conv4(&a.common)?,
                key_dim: a.key_dim,
                memory_size: a.memory_size,
                k: a.knn,
                margin: a.margin,
                optimizer: metric_optimizer(&a.metric)?,
            };
            k.validate()?;
            Ok(AlgorithmConfig::KvMemory { kv_memory: k })
        },
        quiet,
    )
}

/// A triplet or contrastive run's batch: `ways` x (`shots` + `queries`) images, at
/// least two of each class (an anchor and a positive).
fn pair_batch(common: &TrainArgs) -> Result<()> {
    let queries = common.queries.unwrap_or(15);
    if common.shots + queries < 2 {
        bail!(
            "--shots {} --queries {queries}: a batch needs at least 2 images of each class \
             (K = shots + queries, an anchor and a positive)",
            common.shots
        );
    }
    Ok(())
}

/// Trains (or resumes) a triplet-loss run.
pub fn triplet(a: TripletArgs, quiet: bool) -> Result<()> {
    metric_run(
        &a.common,
        &a.metric,
        "triplet",
        || {
            pair_batch(&a.common)?;
            let loss = PairLoss::Triplet {
                margin: a.margin,
                mining: a.mining.parse()?,
                distance: a.distance.parse()?,
            };
            loss.validate()?;
            Ok(AlgorithmConfig::Triplet {
                triplet: PairEmbeddingConfig {
                    backbone: conv4(&a.common)?,
                    loss,
                    normalize: !a.no_normalize,
                    optimizer: metric_optimizer(&a.metric)?,
                },
            })
        },
        quiet,
    )
}

/// Trains (or resumes) a contrastive-loss run.
pub fn contrastive(a: ContrastiveArgs, quiet: bool) -> Result<()> {
    metric_run(
        &a.common,
        &a.metric,
        "contrastive",
        || {
            pair_batch(&a.common)?;
            let distance: PairDistance = a.distance.parse()?;
            let loss = match a.loss.as_str() {
                "pairs" => PairLoss::Contrastive {
                    margin: a.margin,
                    distance,
                },
                "supcon" => {
                    if a.no_normalize {
                        bail!("--no-normalize: the supervised-contrastive loss compares unit-length embeddings");
                    }
                    PairLoss::SupCon {
                        temperature: a.temperature,
                    }
                }
                other => bail!("--loss {other}: expected pairs or supcon"),
            };
            loss.validate()?;
            Ok(AlgorithmConfig::Contrastive {
                contrastive: PairEmbeddingConfig {
                    backbone: conv4(&a.common)?,
                    loss,
                    normalize: !a.no_normalize,
                    optimizer: metric_optimizer(&a.metric)?,
                },
            })
        },
        quiet,
    )
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

/// A run's training task source and validation sampler (`None` when it does not
/// validate).
type Sources = (Box<dyn TaskSource>, Option<EpisodeSampler>);

/// Loads a run's data and builds its training and validation samplers.
fn task_sources(config: &RunConfig) -> Result<Sources> {
    Ok(match &config.sinusoid {
        Some(_) if config.augment.is_some() => {
            bail!("config.toml: [augment] jitters images; a sinusoid run has none")
        }
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
                    .with_stream(streams::TRAIN_EPISODES)
                    .with_jitter(config.augment)?;
            let val_sampler = match sets.get(1) {
                Some(v) => Some(
                    EpisodeSampler::new(v.clone(), config.val_episode, config.seed)?
                        .with_stream(streams::VAL_EPISODES),
                ),
                None => None,
            };
            (Box::new(train_sampler), val_sampler)
        }
    })
}

/// Creates the run (`config`) or resumes it (`None`), then trains to the end.
///
/// Under a distributed launcher (`WORLD_SIZE` > 1: `perennial launch`, `torchrun
/// --no-python`, SLURM) this process is one rank of a data-parallel run: rank 0 creates
/// or resumes the run directory and sends the configuration to the others, which touch
/// no file.
fn run(a: &TrainArgs, config: Option<RunConfig>, quiet: bool) -> Result<()> {
    let device = super::device(&a.device)?;
    let group = perennial::dist::join()?;
    if group.is_some() && device != tch::Device::Cpu {
        bail!(
            "--device {}: data-parallel training runs on the CPU (Gloo) in this build; \
             the NCCL path for CUDA tensors is not built yet",
            a.device
        );
    }
    let root = group.as_ref().is_none_or(|g| g.rank() == 0);
    let mut early_sources = None;
    let (run, config) = if root {
        let (run, config) = match config {
            None => {
                let run = RunDir::open(&a.out)?;
                let config = run.config()?;
                (run, config)
            }
            Some(config) => {
                // Build the learner once and load the data, to check the config and
                // the data before creating anything: a run that cannot start leaves
                // no directory behind. A directory that holds a run is refused first,
                // without waiting for the data.
                if a.out.join("config.toml").exists() {
                    RunDir::create(&a.out, &config)?;
                }
                build_learner(&config, device)?;
                early_sources = Some(task_sources(&config)?);
                (RunDir::create(&a.out, &config)?, config)
            }
        };
        (Some(run), Some(config))
    } else {
        (None, None)
    };
    let (state, config) = match &group {
        None => (
            run.as_ref()
                .expect("a single process is its own root")
                .state()?,
            config.expect("a single process is its own root"),
        ),
        Some(g) => {
            // Rank 0's configuration and progress, as TOML and JSON bytes.
            let (toml_text, state_text) = match (&run, &config) {
                (Some(r), Some(config)) => (
                    toml::to_string(config)?,
                    serde_json::to_string(&r.state()?)?,
                ),
                _ => (String::new(), String::new()),
            };
            let toml_text = perennial::dist::broadcast_bytes(g, toml_text.as_bytes())?;
            let state_text = perennial::dist::broadcast_bytes(g, state_text.as_bytes())?;
            (
                serde_json::from_slice(&state_text)?,
                toml::from_str(std::str::from_utf8(&toml_text)?)?,
            )
        }
    };
    let state: perennial::checkpoint::RunState = state;
    let config: RunConfig = config;
    if state.finished {
        if root {
            eprintln!(
                "run {} already finished ({} updates)",
                a.out.display(),
                state.next_episode
            );
        }
        return Ok(());
    }
    // A new run loaded its data before its directory was created; a resumed run or
    // another rank loads it now.
    let (source, val_sampler) = match early_sources {
        Some(sources) => sources,
        None => task_sources(&config)?,
    };
    let mut learner = build_learner(&config, device)?;
    let dp = match group {
        Some(g) => Some(perennial::dist::DataParallel::new(
            g,
            config.schedule.meta_batch,
        )?),
        None => None,
    };
    if root {
        tracing::info!(
            run = %a.out.display(), device = ?device, threads = tch::get_num_threads(),
            updates = config.schedule.episodes, from = state.next_episode,
            algorithm = %config.algorithm,
            ranks = dp.as_ref().map_or(1, |d| d.world_size()), "training"
        );
    }
    let pb = bar(config.schedule.episodes, "train", quiet || !root);
    pb.set_position(state.next_episode);
    pb.reset_eta();
    let mut obs = Bars {
        bar: pb,
        loss: 0.0,
        acc: None,
        val: None,
    };
    let t = std::time::Instant::now();
    let state = match &dp {
        None => train(
            learner.as_mut(),
            run.as_ref().expect("a single process is its own root"),
            &config.schedule,
            source.as_ref(),
            val_sampler.as_ref(),
            device,
            &mut obs,
        )?,
        Some(dp) => {
            let mut silent = perennial::train::Silent;
            let observer: &mut dyn perennial::train::Observer =
                if root { &mut obs } else { &mut silent };
            perennial::train::train_data_parallel(
                learner.as_mut(),
                run.as_ref(),
                &config.schedule,
                source.as_ref(),
                val_sampler.as_ref(),
                device,
                observer,
                dp,
            )?
        }
    };
    obs.bar.finish_and_clear();
    if !root {
        return Ok(());
    }
    let ranks = dp
        .as_ref()
        .map(|d| format!(" on {} ranks", d.world_size()))
        .unwrap_or_default();
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
        "trained {} {} updates{ranks} in {:.1}s{best}; run in {}",
        state.next_episode,
        config.algorithm,
        t.elapsed().as_secs_f64(),
        a.out.display()
    );
    Ok(())
}
