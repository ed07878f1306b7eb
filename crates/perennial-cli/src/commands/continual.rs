//! `perennial continual`: one learner over one task stream, through the one continual
//! loop ([`perennial::lifelong::run()`]), with the accuracy matrix, its metrics and plots
//! written to a run directory. Flags → a stream, a learner (from the registry
//! [`perennial::lifelong::registry`]) and the run's description → one library call →
//! one finishing sequence.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use perennial::checkpoint::RunDir;
use perennial::data::classinc::{ClassStream, ClassStreamSpec};
use perennial::data::mnist::Mnist;
use perennial::data::omniglot::{Split, SplitScheme};
use perennial::data::paths;
use perennial::data::stream::{Part, Scenario, Stream, StreamName, StreamSpec};
use perennial::lifelong::encoder::open_run;
use perennial::lifelong::registry::{self, Kind, StrategySettings};
use perennial::lifelong::{
    run, Checkpoints, ClassImages, Classifier, ConsolidationConfig, ConsolidationPolicy,
    ConsolidationRecord, Encoding, KvMemoryLearner, LaMamlConfig, Learner, LearnerConfig,
    LifelongLearner, MerConfig, ModelLearner, Naive, RunRecord, RunSettings, TaskStream,
    UnknownRates, SPEED_POINTS,
};
use perennial::plot::{heat_map, line_plot, Series, Style};
use serde::Serialize;
use tch::Tensor;

use crate::cli::ContinualArgs;
use crate::progress::bar;

/// Classes between checkpoints of the class stream (the MNIST streams checkpoint after
/// every task).
const CLASS_CHECKPOINT_EVERY: usize = 10;

/// Meta-consolidation's settings as a run records them.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
struct ConsolidationDescription {
    settings: ConsolidationSettings,
    lr: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    runs: Option<Vec<ConsolidationRecord>>,
}

/// The schedule and the episodes of meta-consolidation.
#[derive(Debug, Clone, Copy, Serialize, serde::Deserialize)]
struct ConsolidationSettings {
    every: usize,
    #[serde(flatten)]
    episodes: ConsolidationConfig,
}

/// Everything that decides a run's numbers; a resume must match it, and `report`
/// groups runs by it.
#[derive(Debug, Clone, Serialize)]
struct Description {
    stream: String,
    scenario: Scenario,
    strategy: String,
    spec: serde_json::Value,
    batch: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    lr: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    network: Option<Vec<usize>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    encoder: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    shift_radius: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    unknown_quantile: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    consolidation: Option<ConsolidationDescription>,
    /// The strategy's own settings (`buffer`, `ewc_lambda`, `mer`, `lamaml`, ...).
    #[serde(flatten)]
    settings: serde_json::Map<String, serde_json::Value>,
}

/// The learning-speed curve of a run.
#[derive(Debug, Serialize)]
struct LearningSpeed<'a> {
    examples: Vec<String>,
    mean_accuracy: Vec<f64>,
    tasks: &'a [Vec<perennial::lifelong::SpeedPoint>],
}

/// `result.json`: the description, the measures and the record.
#[derive(Debug, Serialize)]
struct RunResult<'a> {
    #[serde(flatten)]
    description: &'a Description,
    #[serde(skip_serializing_if = "Option::is_none")]
    encoder_algorithm: Option<String>,
    seed: u64,
    #[serde(flatten)]
    measures: Measures,
    matrix: &'a [Vec<f64>],
    #[serde(skip_serializing_if = "Option::is_none")]
    baseline: Option<&'a [f64]>,
    seen_accuracy: Vec<f64>,
    #[serde(skip_serializing_if = "<[usize]>::is_empty")]
    points: &'a [usize],
    #[serde(skip_serializing_if = "<[f64]>::is_empty")]
    accuracy_at: &'a [f64],
    #[serde(skip_serializing_if = "<[UnknownRates]>::is_empty")]
    unknown: &'a [UnknownRates],
    #[serde(skip_serializing_if = "<[f64]>::is_empty")]
    final_own_labels: &'a [f64],
    learning_speed: LearningSpeed<'a>,
    encode_s: f64,
    wall_s: f64,
    peak_rss_mb: f64,
}

/// The measures of a finished run.
#[derive(Debug, Clone, Copy, Serialize)]
struct Measures {
    acc: f64,
    bwt: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bwt_own_labels: Option<f64>,
    fwt: Option<f64>,
    forgetting: Option<f64>,
}

/// The `--json` line.
#[derive(Debug, Serialize)]
struct Line<'a> {
    #[serde(flatten)]
    measures: Measures,
    #[serde(skip_serializing_if = "<[usize]>::is_empty")]
    points: &'a [usize],
    #[serde(skip_serializing_if = "<[f64]>::is_empty")]
    accuracy_at: &'a [f64],
    matrix: &'a [Vec<f64>],
}

/// A stream, built from the flags.
enum Built {
    Mnist(Stream),
    Classes(ClassImages),
}

impl Built {
    fn tasks(&self) -> &dyn TaskStream {
        match self {
            Built::Mnist(s) => s,
            Built::Classes(images) => images,
        }
    }
}

/// A run ready to start: its stream, its learner and its description.
struct Setup {
    built: Built,
    learner: Box<dyn Learner>,
    description: Description,
    /// The algorithm of the encoder the learner builds on.
    encoder_algorithm: Option<String>,
}

/// Runs `perennial continual`.
pub fn continual(a: ContinualArgs, quiet: bool) -> Result<()> {
    let classes = a.stream == "omniglot-classes";
    let entry = registry::find(&a.strategy)?;
    if entry.needs_encoder() && !classes {
        bail!(
            "--strategy {} runs on omniglot-classes (it learns on a meta-trained \
             representation); the MNIST streams take: {}",
            entry.name,
            classifier_strategies().join(", ")
        );
    }
    if !classes {
        for (flag, given) in [
            ("--shift-radius", a.shift_radius.is_some()),
            ("--encoder", a.encoder.is_some()),
            ("--consolidate-every", a.consolidate_every.is_some()),
            ("--oml-lr", a.oml_lr.is_some()),
        ] {
            if given {
                bail!("{flag}: omniglot-classes only (it takes a meta-trained encoder)");
            }
        }
    }
    if a.batch == 0 {
        bail!("invalid --batch = 0: must be at least 1");
    }
    let out = &a.out;
    if out.join("result.json").exists() {
        bail!(
            "{}: already holds a finished run (result.json); choose another --out",
            out.display()
        );
    }
    let checkpoints = Checkpoints::new(out);
    check_resume(&checkpoints, out, a.resume)?;
    let settings = StrategySettings {
        seed: a.seed,
        batch: a.batch,
        buffer: a.buffer,
        ewc_lambda: a.ewc_lambda,
        memory_per_task: a.memory_per_task,
        agem_sample: a.agem_sample,
        mer: mer_config(&a),
        lamaml: lamaml_config(&a),
    };
    let own: serde_json::Map<String, serde_json::Value> = match entry.kind {
        Kind::Classifier { settings: s, .. } => match s(&settings) {
            serde_json::Value::Object(m) => m,
            _ => serde_json::Map::new(),
        },
        _ => serde_json::Map::new(),
    };
    let Setup {
        built,
        mut learner,
        description,
        encoder_algorithm,
    } = if classes {
        class_stream(&a, entry, &settings, own)?
    } else {
        mnist_stream(&a, entry, &settings, own)?
    };
    let stream = built.tasks();
    let run_settings = RunSettings {
        batch: description.batch,
        test_examples: None,
    };
    let config = serde_json::to_value(&description)?;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let start = if a.resume {
        let r = checkpoints
            .restore(&config, learner.as_mut())
            .with_context(|| format!("cannot resume {}", out.display()))?;
        tracing::info!(
            "resuming {} after task {} of {}",
            out.display(),
            r.record.tasks_done(),
            stream.len()
        );
        r.record
    } else {
        RunRecord::default()
    };

    let tasks = stream.len();
    let batches = |t: usize| stream.examples(t, Part::Train).div_ceil(run_settings.batch);
    let total: usize = (0..tasks).map(batches).sum();
    let done: usize = (0..start.tasks_done()).map(batches).sum();
    let pb = bar(total as u64, learner.name(), quiet);
    pb.set_position(done as u64);
    if learner.encodes() {
        pb.set_message("encoding the stream");
    }
    let stopped = std::cell::Cell::new(false);
    let every = if classes { CLASS_CHECKPOINT_EVERY } else { 1 };
    let record = run(
        learner.as_mut(),
        stream,
        &run_settings,
        start,
        &mut |record, learner| {
            let done = record.tasks_done();
            let stop = a.stop_after == Some(done) && done < tasks;
            if (done % every != 0 || done == tasks) && !stop {
                return Ok(());
            }
            checkpoints.save(&config, record, learner)?;
            if stop {
                stopped.set(true);
                return Err(perennial::error::Error::config(
                    "--stop-after",
                    done,
                    "reached",
                ));
            }
            Ok(())
        },
        &mut |t, _, _| {
            pb.inc(1);
            pb.set_message(format!("task {}/{tasks}", t + 1));
        },
    );
    pb.finish_and_clear();
    if stopped.get() {
        eprintln!(
            "stopped after {} tasks as asked; continue with the same flags and --resume ({})",
            a.stop_after.unwrap_or(0),
            out.display()
        );
        return Ok(());
    }
    let record = record?;
    let mut description = description;
    if let Some(c) = description.consolidation.as_mut() {
        c.runs = Some(learner.consolidations());
    }
    finish(
        &a,
        &built,
        learner.name(),
        &description,
        encoder_algorithm,
        &record,
    )
}

/// The MNIST streams' learners: a classifier strategy on GEM's MLP.
fn mnist_stream(
    a: &ContinualArgs,
    entry: &registry::Entry,
    settings: &StrategySettings,
    own: serde_json::Map<String, serde_json::Value>,
) -> Result<Setup> {
    let name: StreamName = a.stream.parse()?;
    let Kind::Classifier { build, .. } = entry.kind else {
        bail!("--strategy {}: runs on omniglot-classes only", entry.name);
    };
    let scenario = match name {
        StreamName::SplitMnist => a.scenario.parse()?,
        _ => {
            if a.scenario != "class" && a.scenario != "domain" {
                bail!(
                    "--scenario {}: {} is domain-incremental",
                    a.scenario,
                    name.as_str()
                );
            }
            Scenario::DomainIncremental
        }
    };
    let mut spec = StreamSpec::default_for(name, a.seed);
    if let Some(t) = a.tasks {
        spec.tasks = t;
    }
    if a.train_per_task.is_some() {
        spec.train_per_task = a.train_per_task;
    }
    if a.test_per_task.is_some() {
        spec.test_per_task = a.test_per_task;
    }
    let mut sizes = vec![784];
    for h in a.hidden.split(',').filter(|s| !s.is_empty()) {
        sizes.push(
            h.trim()
                .parse::<usize>()
                .with_context(|| format!("invalid --hidden = {}: widths like 100,100", a.hidden))?,
        );
    }
    sizes.push(10);
    let learner = ModelLearner::new(Classifier::new(&sizes, a.lr, a.seed)?, build(settings)?);
    let data = paths::data_dir(a.data.data_dir.as_deref());
    let train = Arc::new(Mnist::load(&data, "train")?);
    let test = Arc::new(Mnist::load(&data, "t10k")?);
    let stream = Stream::new(name, scenario, spec.clone(), train, test)?;
    let description = Description {
        stream: name.as_str().to_string(),
        scenario,
        strategy: entry.name.to_string(),
        spec: serde_json::to_value(&spec)?,
        batch: a.batch,
        lr: Some(a.lr),
        network: Some(sizes),
        encoder: None,
        shift_radius: None,
        unknown_quantile: None,
        consolidation: None,
        settings: own,
    };
    Ok(Setup {
        built: Built::Mnist(stream),
        learner: Box::new(learner),
        description,
        encoder_algorithm: None,
    })
}

/// The Omniglot class stream's learners, on a meta-trained encoder: Perennial's, OML's
/// head, or any classifier strategy on a head over the encoder's features.
fn class_stream(
    a: &ContinualArgs,
    entry: &registry::Entry,
    settings: &StrategySettings,
    mut own: serde_json::Map<String, serde_json::Value>,
) -> Result<Setup> {
    let Some(encoder_dir) = a.encoder.as_ref() else {
        bail!(
            "--stream omniglot-classes needs --encoder RUN_DIR: a ProtoNet, Matching, \
             triplet, contrastive, Relation or OML run meta-trained on the background \
             characters (perennial train protonet|matching|triplet|... --splits lake ...)"
        );
    };
    let config = RunDir::open(encoder_dir)?.config()?;
    // Encoders that stay frozen: OML's and the Relation Network's.
    let frozen = config.algorithm.oml().is_some() || config.algorithm.relation().is_some();
    let perennial = matches!(entry.kind, Kind::Lifelong);
    let every = match (perennial, frozen) {
        (true, false) => a.consolidate_every.unwrap_or(50),
        _ => a.consolidate_every.unwrap_or(0),
    };
    if every > 0 && !perennial {
        bail!("--consolidate-every: only perennial meta-consolidates its encoder");
    }
    let consolidation = ConsolidationConfig {
        episodes: a.consolidate_episodes,
        ways: a.consolidate_ways,
        shots: a.consolidate_shots,
        queries: a.consolidate_queries,
        neighbours: a.consolidate_neighbours,
        jitter: a.consolidate_jitter,
    };
    if every > 0 {
        // (The learner refuses a frozen encoder, a bad rate and other encoders itself.)
        consolidation.validate(Some(a.train_per_task.unwrap_or(15)))?;
    }
    let oml_lr = config
        .algorithm
        .oml()
        .map(|o| a.oml_lr.unwrap_or(o.inner_lr));
    if matches!(entry.kind, Kind::KvMemory) && config.algorithm.kv_memory().is_none() {
        bail!(
            "--strategy kv-memory: --encoder {} is a {} run; the key-value memory reads \
             the keys a kv-memory run learnt (perennial train kv-memory --splits lake ...)",
            encoder_dir.display(),
            config.algorithm
        );
    }
    let classify = perennial::lifelong::Classify::parse(&a.classify)?;
    if classify != perennial::lifelong::Classify::Prototypes && !perennial {
        bail!("--classify: only --strategy perennial classifies by prototypes or examples");
    }
    if perennial {
        own.insert("classify".into(), classify.to_string().into());
    }
    if (a.memory_size.is_some() || a.store.is_some()) && !matches!(entry.kind, Kind::KvMemory) {
        bail!("--memory-size/--store: only --strategy kv-memory has a key-value memory");
    }
    if matches!(entry.kind, Kind::Oml) && oml_lr.is_none() {
        bail!(
            "--strategy oml: --encoder {} is a {} run; OML's online head needs the \
             representation OML meta-trained for it (perennial train oml --splits lake ...)",
            encoder_dir.display(),
            config.algorithm
        );
    }
    if config.data.splits != SplitScheme::Lake {
        bail!(
            "--encoder {}: trained on the {:?} split, whose training characters include \
             evaluation-alphabet characters of this stream; train one with --splits lake",
            encoder_dir.display(),
            config.data.splits
        );
    }
    let data = paths::data_dir(a.data.data_dir.as_deref());
    let set = super::omniglot_split(&data, SplitScheme::Lake, Split::Test)?;
    let spec = ClassStreamSpec {
        classes: a.tasks.unwrap_or(600),
        train_per_class: a.train_per_task.unwrap_or(15),
        seed: a.seed,
    };
    let stream = ClassStream::new(Arc::clone(&set), spec.clone())?;
    if let Some(side) = config.image_size() {
        if side != stream.side() {
            bail!(
                "--encoder {}: takes {side}x{side} images, the stream has {s}x{s}",
                encoder_dir.display(),
                s = stream.side()
            );
        }
    }
    // Shift averaging is part of Perennial's learner; the baselines keep their
    // published single-image features unless asked.
    // (The shift and the consolidation jitter are bounded by the learner, which knows
    // the encoder's image side.)
    let shift = a.shift_radius.unwrap_or(usize::from(perennial));
    let encoder = open_run(encoder_dir, a.consolidate_lr)?;
    let images = class_images(&stream);
    let n = stream.len();
    let (learner, lr): (Box<dyn Learner>, Option<f64>) = match entry.kind {
        Kind::Lifelong => {
            let config = LearnerConfig {
                shift_radius: shift,
                unknown_quantile: a.unknown_quantile,
                seed: a.seed,
                consolidation,
                consolidation_lr: a.consolidate_lr,
                policy: ConsolidationPolicy {
                    every_new_classes: every,
                    ..ConsolidationPolicy::never()
                },
                classify,
                ..LearnerConfig::default()
            };
            (Box::new(LifelongLearner::new(encoder, config)?), None)
        }
        Kind::Oml => {
            let encoding = Encoding::new(encoder, shift)?;
            let dim = encoding.dim(&images.train[0].narrow(0, 0, 1));
            let lr = oml_lr.unwrap_or(a.lr);
            let head = Classifier::linear_zero(dim, n, lr)?;
            let l = ModelLearner::on_features(encoding, head, Box::new(Naive)).named("oml");
            (Box::new(l), Some(lr))
        }
        Kind::KvMemory => {
            let encoding = Encoding::new(encoder, shift)?;
            let dim = encoding.dim(&images.train[0].narrow(0, 0, 1));
            let size = a
                .memory_size
                .unwrap_or(images.train.iter().map(|t| t.size()[0] as usize).sum());
            own.insert("memory_size".into(), size.into());
            let learner = match &a.store {
                None => KvMemoryLearner::new(encoding, size, dim, n)?,
                Some(dir) => {
                    let store =
                        perennial_store::Store::open(dir, perennial_store::StoreConfig::new(dim))
                            .with_context(|| format!("--store {}", dir.display()))?;
                    if !a.resume && !store.is_empty() {
                        bail!(
                            "--store {}: holds {} entries; a new run starts from an empty memory \
                             (another directory, or --resume to continue the run that wrote it)",
                            dir.display(),
                            store.len()
                        );
                    }
                    own.insert("store".into(), dir.display().to_string().into());
                    KvMemoryLearner::with_store(encoding, store, size, dim, n)?
                }
            };
            (Box::new(learner), None)
        }
        Kind::Classifier { build, .. } => {
            let encoding = Encoding::new(encoder, shift)?;
            let dim = encoding.dim(&images.train[0].narrow(0, 0, 1));
            let head = Classifier::linear_zero(dim, n, a.lr)?;
            let l = ModelLearner::on_features(encoding, head, build(settings)?);
            (Box::new(l), Some(a.lr))
        }
    };
    let description = Description {
        stream: "omniglot-classes".into(),
        scenario: Scenario::ClassIncremental,
        strategy: entry.name.to_string(),
        spec: serde_json::to_value(&spec)?,
        // Images arrive one at a time.
        batch: 1,
        lr,
        network: None,
        encoder: Some(encoder_dir.display().to_string()),
        shift_radius: Some(shift),
        unknown_quantile: perennial.then_some(a.unknown_quantile),
        consolidation: (every > 0).then_some(ConsolidationDescription {
            settings: ConsolidationSettings {
                every,
                episodes: consolidation,
            },
            lr: a.consolidate_lr,
            runs: None,
        }),
        settings: own,
    };
    Ok(Setup {
        built: Built::Classes(images),
        learner,
        description,
        encoder_algorithm: Some(config.algorithm.name().to_string()),
    })
}

/// The stream's images as tensors, `[n, 1, side, side]` per class and part.
fn class_images(stream: &ClassStream) -> ClassImages {
    let side = stream.side() as i64;
    let part = |part: Part| -> Vec<Tensor> {
        (0..stream.len())
            .map(|c| {
                let n = stream.examples(c, part) as i64;
                Tensor::from_slice(&stream.images(c, part)).view([n, 1, side, side])
            })
            .collect()
    };
    ClassImages {
        train: part(Part::Train),
        test: part(Part::Test),
    }
}

/// The names of the learners that run on any stream.
fn classifier_strategies() -> Vec<&'static str> {
    registry::all()
        .iter()
        .filter(|e| !e.needs_encoder())
        .map(|e| e.name)
        .collect()
}

/// Writes a finished run (matrix.csv, matrix.svg, accuracy.svg, result.json last, as
/// it marks a finished run), removes its checkpoint, and prints the summary.
fn finish(
    a: &ContinualArgs,
    built: &Built,
    name: &str,
    description: &Description,
    encoder_algorithm: Option<String>,
    record: &RunRecord,
) -> Result<()> {
    let out = &a.out;
    let matrix = record.matrix()?;
    let m = matrix.metrics();
    let measures = Measures {
        acc: m.acc,
        bwt: m.bwt,
        bwt_own_labels: record.own_label_bwt(),
        fwt: m.fwt,
        forgetting: m.forgetting,
    };
    let seen = matrix.seen_accuracy();
    let speed = record.mean_speed();
    let examples: Vec<String> = SPEED_POINTS
        .iter()
        .map(|k| k.to_string())
        .chain(["all".to_string()])
        .collect();
    let (title, heat) = match built {
        Built::Mnist(s) => {
            let names: Vec<String> = (0..TaskStream::len(s)).map(|t| format!("{t}")).collect();
            let title = format!(
                "{name} on {} ({:?})",
                description.stream, description.scenario
            );
            let heat = heat_map(
                &format!("Accuracy matrix: {title}"),
                "after training on task",
                "tested on task",
                &names,
                &names,
                &matrix.r,
            );
            (title, heat)
        }
        Built::Classes(_) => {
            let title = format!("{name} on {}", description.stream);
            let (labels, blocks) = block_matrix(&matrix.r, 30);
            let heat = heat_map(
                &format!("Accuracy matrix, blocks of classes: {title}"),
                "after learning classes",
                "tested on classes",
                &labels,
                &labels,
                &blocks,
            );
            (title, heat)
        }
    };
    write(&out.join("matrix.csv"), &matrix.to_csv())?;
    write(&out.join("matrix.svg"), &heat)?;
    write(
        &out.join("accuracy.svg"),
        &curve_plot(
            &format!("Accuracy over the stream: {title}"),
            ("tasks learnt", "mean accuracy on the tasks seen"),
            name,
            &seen,
        ),
    )?;
    let result = RunResult {
        description,
        encoder_algorithm,
        seed: a.seed,
        measures,
        matrix: &matrix.r,
        baseline: matrix.baseline.as_deref(),
        seen_accuracy: seen,
        points: &record.points,
        accuracy_at: &record.accuracy_at,
        unknown: &record.unknown,
        final_own_labels: &record.final_own_labels,
        learning_speed: LearningSpeed {
            examples: examples.clone(),
            mean_accuracy: speed.clone(),
            tasks: &record.speed,
        },
        encode_s: record.encode_s,
        wall_s: record.wall_s,
        peak_rss_mb: super::peak_rss_mb(),
    };
    write(
        &out.join("result.json"),
        &serde_json::to_string_pretty(&result)?,
    )?;
    // A finished run needs no checkpoint.
    let ck = out.join("checkpoint");
    if ck.exists() {
        std::fs::remove_dir_all(&ck).with_context(|| format!("cannot remove {}", ck.display()))?;
    }
    if a.json {
        let line = Line {
            measures,
            points: &record.points,
            accuracy_at: &record.accuracy_at,
            matrix: &matrix.r,
        };
        println!("{}", serde_json::to_string(&line)?);
        return Ok(());
    }
    let pct = |v: Option<f64>| v.map_or("n/a".into(), |v| format!("{:+.2}", 100.0 * v));
    if record.points.is_empty() {
        println!(
            "{title}: ACC {:.2}%  BWT {}  FWT {}  forgetting {}  ({} tasks, {:.1} s); written to {}",
            100.0 * m.acc,
            pct(m.bwt),
            pct(m.fwt),
            pct(m.forgetting),
            record.tasks_done(),
            record.wall_s,
            out.display()
        );
    } else {
        let at: Vec<String> = record
            .points
            .iter()
            .zip(&record.accuracy_at)
            .map(|(p, v)| format!("{p}: {:.2}%", 100.0 * v))
            .collect();
        println!(
            "{title}: accuracy on all seen classes after {}; BWT {} (within each class's own label set {})  forgetting {}  ({:.1} s); written to {}",
            at.join("  "),
            pct(m.bwt),
            pct(record.own_label_bwt()),
            pct(m.forgetting),
            record.wall_s,
            out.display()
        );
    }
    let curve: Vec<String> = examples
        .iter()
        .zip(&speed)
        .map(|(k, v)| format!("{k}: {:.2}%", 100.0 * v))
        .collect();
    println!(
        "learning speed (mean accuracy on the task being learnt, after examples; measured \
         at batch ends, batch {}): {}",
        description.batch,
        curve.join("  ")
    );
    if description.unknown_quantile.is_some() {
        let rates: Vec<String> = record
            .unknown
            .iter()
            .map(|u| {
                format!(
                    "{}: {:.1}% known / {} novel",
                    u.classes,
                    100.0 * u.known_flagged,
                    u.novel_flagged
                        .map_or("n/a".into(), |v| format!("{:.1}%", 100.0 * v))
                )
            })
            .collect();
        println!(
            "flagged unknown (test images of known / of the next 50 classes): {}",
            rates.join("  ")
        );
    }
    Ok(())
}

/// MER's settings from the flags; the replay draw per inner batch is one batch.
fn mer_config(a: &ContinualArgs) -> MerConfig {
    MerConfig {
        capacity: a.buffer,
        replay: a.batch,
        batches: a.mer_batches,
        beta: a.mer_beta,
        gamma: a.mer_gamma,
    }
}

/// La-MAML's settings from the flags; the replay draw per glance is one batch.
fn lamaml_config(a: &ContinualArgs) -> LaMamlConfig {
    LaMamlConfig {
        capacity: a.buffer,
        replay: a.batch,
        glances: a.glances,
        alpha_init: a.lamaml_alpha,
        alpha_lr: a.lamaml_alpha_lr,
        ..LaMamlConfig::default()
    }
}

/// Refuses to overwrite an unfinished run without `--resume`, and `--resume` without a
/// checkpoint.
fn check_resume(checkpoints: &Checkpoints, out: &Path, resume: bool) -> Result<()> {
    if checkpoints.exists() && !resume {
        bail!(
            "{}: holds an unfinished run (checkpoint/); pass --resume to continue it, or \
             choose another --out",
            out.display()
        );
    }
    if resume && !checkpoints.exists() {
        bail!(
            "--resume: {} holds no checkpoint to resume from",
            out.display()
        );
    }
    Ok(())
}

/// A line plot of one curve whose `i`-th value belongs to x = i + 1.
pub fn curve_plot(title: &str, axes: (&str, &str), name: &str, values: &[f64]) -> String {
    let points = values
        .iter()
        .enumerate()
        .map(|(i, &v)| ((i + 1) as f64, v))
        .collect();
    line_plot(
        title,
        axes.0,
        axes.1,
        &[Series::new(name, points, Style::Line)],
    )
}

/// Writes `text` to `path` atomically (beside it, then renamed).
pub fn write(path: &Path, text: &str) -> Result<()> {
    let tmp: PathBuf = path.with_extension("partial");
    std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// The matrix `r` (`t × t`, lower triangle) averaged over blocks of classes, at most
/// `max_blocks` a side: block `(I, J)` is the mean of `r[i][j]` over `i` in `I`, `j` in
/// `J` and `j ≤ i` (zero where no class of `J` is known yet). Returns the blocks' labels.
fn block_matrix(r: &[Vec<f64>], max_blocks: usize) -> (Vec<String>, Vec<Vec<f64>>) {
    let t = r.len();
    let size = t.div_ceil(max_blocks.max(1)).max(1);
    let n = t.div_ceil(size);
    let span = |b: usize| b * size..((b + 1) * size).min(t);
    let labels = (0..n)
        .map(|b| {
            let s = span(b);
            if s.len() == 1 {
                format!("{}", s.start + 1)
            } else {
                format!("{}-{}", s.start + 1, s.end)
            }
        })
        .collect();
    let blocks = (0..n)
        .map(|bi| {
            (0..n)
                .map(|bj| {
                    let cells: Vec<f64> = span(bi)
                        .flat_map(|i| span(bj).filter(move |&j| j <= i).map(move |j| (i, j)))
                        .map(|(i, j)| r[i][j])
                        .collect();
                    if cells.is_empty() {
                        0.0
                    } else {
                        cells.iter().sum::<f64>() / cells.len() as f64
                    }
                })
                .collect()
        })
        .collect();
    (labels, blocks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_average_the_known_cells() {
        let r = vec![
            vec![1.0, 0.0, 0.0],
            vec![0.5, 1.0, 0.0],
            vec![0.2, 0.4, 0.6],
        ];
        let (labels, b) = block_matrix(&r, 2);
        assert_eq!(labels, ["1-2", "3"]);
        assert_eq!(b[0][0], (1.0 + 0.5 + 1.0) / 3.0);
        assert_eq!(b[0][1], 0.0);
        assert_eq!(b[1][0], (0.2 + 0.4) / 2.0);
        assert_eq!(b[1][1], 0.6);
        let (labels, b) = block_matrix(&r, 30);
        assert_eq!(labels, ["1", "2", "3"]);
        assert_eq!(b, r);
    }
}
