//! `perennial continual --stream omniglot-classes`: the class-incremental Omniglot
//! protocol of OML and ANML on a meta-learned representation.

use std::sync::Arc;

use anyhow::{bail, Context, Result};
use perennial::checkpoint::RunDir;
use perennial::data::classinc::{ClassStream, ClassStreamSpec};
use perennial::data::omniglot::{Split, SplitScheme};
use perennial::data::paths;
use perennial::data::stream::Part;
use perennial::lifelong::class_stream::{
    restore_class_checkpoint, run_class_stream, save_class_checkpoint, ClassImages, ClassLearner,
};
use perennial::lifelong::encoder::{at_most_a_quarter, open_run};
use perennial::lifelong::heads::{LaMamlHead, OnlineHead};
use perennial::lifelong::{
    Checkpoints, ConsolidationConfig, ConsolidationPolicy, Encoding, LearnerConfig, LifelongLearner,
};
use perennial::plot::heat_map;
use tch::Tensor;

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
    let out = &a.out;
    if out.join("result.json").exists() {
        bail!(
            "{}: already holds a finished run (result.json); choose another --out",
            out.display()
        );
    }
    let checkpoints = Checkpoints::new(out);
    super::continual::check_resume(&checkpoints, out, a.resume)?;
    let run = RunDir::open(encoder_dir)?;
    let config = run.config()?;
    let every = match (a.strategy.as_str(), config.oml.is_some()) {
        ("perennial", false) => a.consolidate_every.unwrap_or(50),
        _ => a.consolidate_every.unwrap_or(0),
    };
    if every > 0 && a.strategy != "perennial" {
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
        consolidation.validate(Some(a.train_per_task.unwrap_or(15)))?;
        if config.protonet.is_none() {
            bail!(
                "--consolidate-every: meta-consolidation trains a ProtoNet encoder; \
                 --encoder {} is {} run (use --consolidate-every 0)",
                encoder_dir.display(),
                if config.oml.is_some() {
                    "an OML".to_string()
                } else {
                    format!("a {}", config.algorithm)
                }
            );
        }
    }
    if !(a.consolidate_lr > 0.0 && a.consolidate_lr.is_finite()) {
        bail!(
            "invalid --consolidate-lr = {}: must be positive",
            a.consolidate_lr
        );
    }
    if config.protonet.is_none() && config.oml.is_none() {
        bail!(
            "--encoder {}: a {} run; the encoder must be a ProtoNet or OML run",
            encoder_dir.display(),
            config.algorithm
        );
    }
    let oml_lr = config.oml.as_ref().map(|o| a.oml_lr.unwrap_or(o.inner_lr));
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
    // Shift averaging is part of Perennial's learner; the baselines keep their
    // published single-image features unless asked.
    let shift = a
        .shift_radius
        .unwrap_or(usize::from(a.strategy == "perennial"));
    at_most_a_quarter("--shift-radius", shift, stream.side())?;
    at_most_a_quarter("--consolidate-jitter", a.consolidate_jitter, stream.side())?;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;

    let encoder = open_run(encoder_dir, a.consolidate_lr)?;
    let images = class_images(&stream);
    let mut learner: Box<dyn ClassLearner> = match a.strategy.as_str() {
        "perennial" => Box::new(LifelongLearner::new(
            encoder,
            LearnerConfig {
                shift_radius: shift,
                unknown_quantile: a.unknown_quantile,
                seed: a.seed,
                consolidation,
                consolidation_lr: a.consolidate_lr,
                policy: ConsolidationPolicy {
                    every_new_classes: every,
                    ..ConsolidationPolicy::never()
                },
                ..LearnerConfig::default()
            },
        )?),
        s => {
            let encoding = Encoding::new(encoder, shift)?;
            let dim = encoding.dim(&images.train[0].narrow(0, 0, 1));
            let classes = stream.len();
            match s {
                "lamaml" => Box::new(LaMamlHead::new(
                    encoding,
                    dim,
                    classes,
                    super::continual::lamaml_config(&a),
                    a.seed,
                )?),
                "oml" => Box::new(
                    OnlineHead::new(encoding, dim, classes, oml_lr.unwrap_or(a.lr))?.named("oml"),
                ),
                _ => Box::new(OnlineHead::new(encoding, dim, classes, a.lr)?),
            }
        }
    };
    let oml_or_naive_lr = match a.strategy.as_str() {
        "naive" => Some(a.lr),
        "oml" => oml_lr,
        _ => None,
    };
    let consolidation_json = (every > 0).then(|| {
        let mut settings = serde_json::to_value(consolidation).expect("settings serialise");
        settings["every"] = every.into();
        serde_json::json!({ "settings": settings, "lr": a.consolidate_lr })
    });
    // Everything that decides the run's numbers; a resume must match it.
    let run_config = serde_json::json!({
        "stream": "omniglot-classes",
        "strategy": learner.name(),
        "spec": spec,
        "encoder": encoder_dir.display().to_string(),
        "lr": oml_or_naive_lr,
        "shift_radius": shift,
        "unknown_quantile": (a.strategy == "perennial").then_some(a.unknown_quantile),
        "lamaml": (a.strategy == "lamaml").then(|| super::continual::lamaml_config(&a)),
        "consolidation": consolidation_json,
    });
    let start = if a.resume {
        let r = restore_class_checkpoint(&checkpoints, &run_config, learner.as_mut())
            .with_context(|| format!("cannot resume {}", out.display()))?;
        tracing::info!(classes = r.rows.len(), "resuming");
        r
    } else {
        Default::default()
    };
    let stopped = std::cell::Cell::new(false);
    let pb = bar(stream.len() as u64, learner.name(), quiet);
    pb.set_position(start.rows.len() as u64);
    pb.set_message("encoding the test images");
    let total = stream.len();
    let record = run_class_stream(
        learner.as_mut(),
        &images,
        start,
        &mut |record, learner| {
            let done = record.rows.len();
            let stop = a.stop_after == Some(done) && done < total;
            if (done % CHECKPOINT_EVERY != 0 || done == total) && !stop {
                return Ok(());
            }
            save_class_checkpoint(&checkpoints, &run_config, record, learner)?;
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
        &mut |done, total| {
            pb.set_position(done as u64);
            pb.set_message(format!("class {done}/{total}"));
        },
    );
    pb.finish_and_clear();
    if stopped.get() {
        eprintln!(
            "stopped after {} classes as asked; continue with the same flags and --resume ({})",
            a.stop_after.unwrap_or(0),
            out.display()
        );
        return Ok(());
    }
    let record = record?;
    let consolidations = learner.consolidations();
    let (encode_s, wall_s) = (record.encode_s, record.wall_s);
    let matrix = record.matrix()?;
    let m = matrix.metrics();
    let seen = matrix.seen_accuracy();
    let speed = perennial::lifelong::strategy::mean_speed(&record.speed);

    let result = serde_json::json!({
        "stream": "omniglot-classes",
        "scenario": "class-incremental",
        "strategy": learner.name(),
        "spec": spec,
        "encoder": encoder_dir.display().to_string(),
        "lr": oml_or_naive_lr,
        "shift_radius": shift,
        "encoder_algorithm": config.algorithm,
        "unknown_quantile": (a.strategy == "perennial").then_some(a.unknown_quantile),
        "lamaml": (a.strategy == "lamaml").then(|| super::continual::lamaml_config(&a)),
        "consolidation": consolidation_json.map(|mut c| {
            c["runs"] = serde_json::to_value(&consolidations).expect("records serialise");
            c
        }),
        "seed": a.seed,
        "acc": m.acc,
        "bwt": m.bwt,
        "bwt_own_labels": record.own_label_bwt(),
        "fwt": m.fwt,
        "forgetting": m.forgetting,
        "final_own_labels": record.final_own_labels,
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
    let (labels, blocks) = block_matrix(&matrix.r, 30);
    write(
        &out.join("matrix.svg"),
        &heat_map(
            &format!("Accuracy matrix, blocks of classes: {title}"),
            "after learning classes",
            "tested on classes",
            &labels,
            &labels,
            &blocks,
        ),
    )?;
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
    // The run is finished: its checkpoint has served.
    let ck_dir = out.join("checkpoint");
    if ck_dir.exists() {
        std::fs::remove_dir_all(&ck_dir)
            .with_context(|| format!("cannot remove {}", ck_dir.display()))?;
    }
    if a.json {
        let line = serde_json::json!({
            "acc": m.acc, "bwt": m.bwt, "bwt_own_labels": record.own_label_bwt(),
            "fwt": m.fwt, "forgetting": m.forgetting, "points": record.points, "accuracy_at": record.accuracy_at,
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
            "{title}: accuracy on all seen classes after {}; BWT {} (within each class's own label set {})  forgetting {}  ({:.1} s); written to {}",
            at.join("  "),
            pct(m.bwt),
            pct(record.own_label_bwt()),
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

/// Classes between checkpoints.
const CHECKPOINT_EVERY: usize = 10;

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
