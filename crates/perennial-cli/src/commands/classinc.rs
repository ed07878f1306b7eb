//! `perennial continual --stream omniglot-classes`: the class-incremental Omniglot
//! protocol of OML and ANML on a meta-learned representation.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use perennial::checkpoint::RunDir;
use perennial::continual::classinc::{
    run_class_stream, ClassLearner, LaMamlHead, OnlineHead, PrototypeMemory,
};
use perennial::data::classinc::{ClassStream, ClassStreamSpec};
use perennial::data::omniglot::{Split, SplitScheme};
use perennial::data::paths;
use perennial::data::stream::Part;
use perennial::meta::metric::ProtoNet;
use perennial::meta::oml::Oml;
use perennial::meta::MetaLearner;
use tch::{Device, Tensor};

use super::continual::{curve_plot, write};
use crate::cli::ContinualArgs;
use crate::progress::bar;

/// The learners of this stream.
pub const CLASS_STRATEGIES: &[&str] = &["perennial", "naive", "lamaml", "oml"];

/// Runs the omniglot-classes stream.
pub fn continual_classes(a: ContinualArgs, quiet: bool) -> Result<()> {
    match a.strategy.as_str() {
        "perennial" | "naive" | "lamaml" | "oml" => {}
        "joint" | "er" | "ewc" | "agem" | "mer" => bail!(
            "--strategy {} runs on the MNIST streams; omniglot-classes has: {}",
            a.strategy,
            CLASS_STRATEGIES.join(", ")
        ),
        s => bail!(
            "invalid --strategy = {s}: omniglot-classes has: {}",
            CLASS_STRATEGIES.join(", ")
        ),
    }
    let Some(encoder_dir) = a.encoder.as_ref() else {
        bail!(
            "--stream omniglot-classes needs --encoder RUN_DIR: a ProtoNet or OML run \
             meta-trained on the background characters (perennial train protonet|oml \
             --splits lake ...)"
        );
    };
    if a.resume {
        bail!("--resume: omniglot-classes runs keep no checkpoint (a run takes minutes); run it again");
    }
    let out = &a.out;
    if out.join("result.json").exists() {
        bail!(
            "{}: already holds a finished run (result.json); choose another --out",
            out.display()
        );
    }
    let run = RunDir::open(encoder_dir)?;
    let config = run.config()?;
    let encoder: Box<dyn Encoder> = match (&config.protonet, &config.oml) {
        (Some(p), _) => {
            let mut net = ProtoNet::new(p.clone(), config.seed, Device::Cpu)?;
            net.load_model_state(&run.load_best()?)?;
            Box::new(net)
        }
        (None, Some(o)) => {
            let mut net = Oml::new(o.clone(), config.seed, Device::Cpu)?;
            net.load_model_state(&run.load_best()?)?;
            Box::new(net)
        }
        (None, None) => bail!(
            "--encoder {}: a {} run; the encoder must be a ProtoNet or OML run",
            encoder_dir.display(),
            config.algorithm
        ),
    };
    let oml_lr = config.oml.as_ref().map(|o| o.inner_lr);
    if a.strategy == "oml" && oml_lr.is_none() {
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
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;

    let t0 = Instant::now();
    let side = stream.side() as i64;
    let encode = |c: usize, part: Part| -> Tensor {
        let n = stream.examples(c, part) as i64;
        let x = Tensor::from_slice(&stream.images(c, part)).view([n, 1, side, side]);
        encoder.embed_eval(&x)
    };
    let pb = bar(stream.len() as u64, "encode", quiet);
    let mut train = Vec::with_capacity(stream.len());
    let mut test = Vec::with_capacity(stream.len());
    for c in 0..stream.len() {
        train.push(encode(c, Part::Train));
        test.push(encode(c, Part::Test));
        pb.inc(1);
    }
    pb.finish_and_clear();
    let encode_s = t0.elapsed().as_secs_f64();
    let dim = train[0].size()[1] as usize;
    let mut learner: Box<dyn ClassLearner> = match a.strategy.as_str() {
        "perennial" => Box::new(PrototypeMemory::new(a.unknown_quantile)?),
        "lamaml" => Box::new(LaMamlHead::new(
            dim,
            stream.len(),
            super::continual::lamaml_config(&a),
            a.seed,
        )?),
        "oml" => Box::new(OnlineHead::new(dim, stream.len(), oml_lr.unwrap_or(a.lr))?.named("oml")),
        _ => Box::new(OnlineHead::new(dim, stream.len(), a.lr)?),
    };
    let pb = bar(stream.len() as u64, learner.name(), quiet);
    let record = run_class_stream(learner.as_mut(), &train, &test, &mut |done, total| {
        pb.set_position(done as u64);
        pb.set_message(format!("class {done}/{total}"));
    })?;
    pb.finish_and_clear();
    let wall_s = t0.elapsed().as_secs_f64();
    let matrix = record.matrix()?;
    let m = matrix.metrics();
    let seen = matrix.seen_accuracy();
    let speed = perennial::continual::learner::mean_speed(&record.speed);

    let result = serde_json::json!({
        "stream": "omniglot-classes",
        "scenario": "class-incremental",
        "strategy": learner.name(),
        "spec": spec,
        "encoder": encoder_dir.display().to_string(),
        "lr": match a.strategy.as_str() {
            "naive" => Some(a.lr),
            "oml" => oml_lr,
            _ => None,
        },
        "encoder_algorithm": config.algorithm,
        "unknown_quantile": (a.strategy == "perennial").then_some(a.unknown_quantile),
        "lamaml": (a.strategy == "lamaml").then(|| super::continual::lamaml_config(&a)),
        "seed": a.seed,
        "acc": m.acc,
        "bwt": m.bwt,
        "fwt": m.fwt,
        "forgetting": m.forgetting,
        "points": record.points,
        "accuracy_at": record.accuracy_at,
        "unknown": record.unknown,
        "seen_accuracy": seen,
        "learning_speed": {
            "examples": ["0", "1", "5", "all"],
            "mean_accuracy": speed,
        },
        "matrix": matrix.r,
        "encode_s": encode_s,
        "wall_s": wall_s,
        "peak_rss_mb": super::bench::peak_rss_mb(),
    });
    write(&out.join("matrix.csv"), &matrix.to_csv())?;
    let title = format!("{} on omniglot-classes", learner.name());
    write(
        &out.join("accuracy.svg"),
        &curve_plot(
            &format!("Accuracy on all classes seen: {title}"),
            (
                "classes learnt",
                "accuracy on the seen classes' test images",
            ),
            learner.name(),
            &seen,
        ),
    )?;
    write(
        &out.join("result.json"),
        &serde_json::to_string_pretty(&result)?,
    )?;
    if a.json {
        let line = serde_json::json!({
            "acc": m.acc, "bwt": m.bwt, "fwt": m.fwt, "forgetting": m.forgetting,
            "points": record.points, "accuracy_at": record.accuracy_at,
            "matrix": matrix.r,
        });
        println!("{line}");
    } else {
        let at: Vec<String> = record
            .points
            .iter()
            .zip(&record.accuracy_at)
            .map(|(p, v)| format!("{p}: {:.2}%", 100.0 * v))
            .collect();
        let pct = |v: Option<f64>| v.map_or("n/a".into(), |v| format!("{:+.2}", 100.0 * v));
        println!(
            "{title}: accuracy on all seen classes after {}; BWT {}  forgetting {}  ({:.1} s); written to {}",
            at.join("  "),
            pct(m.bwt),
            pct(m.forgetting),
            wall_s,
            out.display()
        );
        if a.strategy == "perennial" {
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
    }
    Ok(())
}

/// A frozen meta-learned representation.
trait Encoder {
    /// Features `[n, d]` of images `[n, 1, side, side]`, in evaluation mode.
    fn embed_eval(&self, x: &Tensor) -> Tensor;
}

impl Encoder for ProtoNet {
    fn embed_eval(&self, x: &Tensor) -> Tensor {
        ProtoNet::embed_eval(self, x)
    }
}

impl Encoder for Oml {
    fn embed_eval(&self, x: &Tensor) -> Tensor {
        Oml::embed_eval(self, x)
    }
}
