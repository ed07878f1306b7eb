//! `perennial continual`: one strategy over one task stream, with the accuracy matrix,
//! its metrics, and plots written to a run directory.

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use perennial::data::mnist::Mnist;
use perennial::data::paths;
use perennial::data::stream::{Scenario, Stream, StreamName, StreamSpec};
use perennial::lifelong::{
    run_stream, Agem, Checkpoints, Classifier, Ewc, Joint, LaMaml, LaMamlConfig, Mer, MerConfig,
    Naive, Replay, RunRecord, RunSettings, Strategy, SPEED_POINTS,
};
use perennial::plot::{heat_map, line_plot, Series, Style};

use crate::cli::ContinualArgs;
use crate::progress::bar;

/// The strategies `continual` runs today.
pub const STRATEGIES: &[&str] = &["naive", "joint", "er", "ewc", "agem", "mer", "lamaml"];

/// Runs `perennial continual`.
pub fn continual(a: ContinualArgs, quiet: bool) -> Result<()> {
    if a.stream == "omniglot-classes" {
        return super::classinc::continual_classes(a, quiet);
    }
    if a.stop_after.is_some() {
        bail!("--stop-after: omniglot-classes only (MNIST runs checkpoint after every task)");
    }
    if a.shift_radius.is_some() {
        bail!("--shift-radius: omniglot-classes only");
    }
    if a.encoder.is_some() {
        bail!("--encoder: only the omniglot-classes stream takes a meta-learned encoder");
    }
    let name: StreamName = a.stream.parse()?;
    if a.batch == 0 {
        bail!("invalid --batch = 0: must be at least 1");
    }
    let mut strategy: Box<dyn Strategy> = match a.strategy.as_str() {
        "naive" => Box::new(Naive),
        "joint" => Box::new(Joint::new(a.seed)),
        "er" => Box::new(Replay::new(a.buffer, a.seed)?),
        "ewc" => Box::new(Ewc::new(a.ewc_lambda, a.batch)?),
        "agem" => Box::new(Agem::new(a.memory_per_task, a.agem_sample, a.seed)?),
        "mer" => Box::new(Mer::new(mer_config(&a), a.seed)?),
        "lamaml" => Box::new(LaMaml::new(lamaml_config(&a), a.seed)?),
        s @ ("perennial" | "oml") => bail!(
            "--strategy {s} runs on omniglot-classes (it learns on a meta-trained \
             representation); available here: {}",
            STRATEGIES.join(", ")
        ),
        s => bail!(
            "invalid --strategy = {s}: known strategies: {}",
            STRATEGIES.join(", ")
        ),
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
    let settings = RunSettings {
        batch: a.batch,
        test_examples: None,
    };

    let out = &a.out;
    if out.join("result.json").exists() {
        bail!(
            "{}: already holds a finished run (result.json); choose another --out",
            out.display()
        );
    }
    let checkpoints = Checkpoints::new(out);
    check_resume(&checkpoints, out, a.resume)?;
    // Everything that decides the run's numbers; a resume must match it.
    let config = serde_json::json!({
        "stream": name.as_str(),
        "scenario": scenario,
        "strategy": strategy.name(),
        "spec": spec,
        "batch": a.batch,
        "lr": a.lr,
        "network": sizes,
        "buffer": (["er", "mer", "lamaml"].contains(&a.strategy.as_str())).then_some(a.buffer),
        "ewc_lambda": (a.strategy == "ewc").then_some(a.ewc_lambda),
        "memory_per_task": (a.strategy == "agem").then_some(a.memory_per_task),
        "agem_sample": (a.strategy == "agem").then_some(a.agem_sample),
        "mer": (a.strategy == "mer").then(|| mer_config(&a)),
        "lamaml": (a.strategy == "lamaml").then(|| lamaml_config(&a)),
    });
    let data = paths::data_dir(a.data.data_dir.as_deref());
    let train = Arc::new(Mnist::load(&data, "train")?);
    let test = Arc::new(Mnist::load(&data, "t10k")?);
    let stream = Stream::new(name, scenario, spec.clone(), train, test)?;
    let mut model = Classifier::new(&sizes, a.lr, a.seed)?;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let record = if a.resume {
        let r = checkpoints
            .restore(&config, &mut model, strategy.as_mut())
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

    let batches = |t: usize| {
        stream
            .examples(t, perennial::data::stream::Part::Train)
            .div_ceil(a.batch)
    };
    let total: usize = (0..stream.len()).map(batches).sum();
    let done: usize = (0..record.tasks_done()).map(batches).sum();
    let pb = bar(total as u64, strategy.name(), quiet);
    pb.set_position(done as u64);
    let record = run_stream(
        strategy.as_mut(),
        &mut model,
        &stream,
        &settings,
        record,
        &mut |r, m, s| checkpoints.save(&config, r, m, s),
        &mut |t, _, _| {
            pb.inc(1);
            pb.set_message(format!("task {}/{}", t + 1, stream.len()));
        },
    )?;
    pb.finish_and_clear();
    let wall_s = record.wall_s;
    let matrix = record.matrix()?;
    let m = matrix.metrics();
    let speed = record.mean_speed();
    let speed_asked: Vec<String> = SPEED_POINTS
        .iter()
        .map(|k| k.to_string())
        .chain(["all".to_string()])
        .collect();

    let mut result = config.clone();
    let extra = serde_json::json!({
        "acc": m.acc,
        "bwt": m.bwt,
        "fwt": m.fwt,
        "forgetting": m.forgetting,
        "matrix": matrix.r,
        "baseline": matrix.baseline,
        "seen_accuracy": matrix.seen_accuracy(),
        "learning_speed": {
            "examples": speed_asked,
            "mean_accuracy": speed,
            "tasks": record.speed,
        },
        "seed": a.seed,
        "wall_s": wall_s,
        "peak_rss_mb": super::bench::peak_rss_mb(),
    });
    if let (Some(r), Some(e)) = (result.as_object_mut(), extra.as_object()) {
        r.extend(e.clone());
    }
    write(&out.join("matrix.csv"), &matrix.to_csv())?;
    let names: Vec<String> = (0..stream.len()).map(|t| format!("{t}")).collect();
    let title = format!("{} on {} ({:?})", strategy.name(), name.as_str(), scenario);
    write(
        &out.join("matrix.svg"),
        &heat_map(
            &format!("Accuracy matrix: {title}"),
            "after training on task",
            "tested on task",
            &names,
            &names,
            &matrix.r,
        ),
    )?;
    let seen = matrix.seen_accuracy();
    write(
        &out.join("accuracy.svg"),
        &curve_plot(
            &format!("Accuracy over the stream: {title}"),
            ("tasks learnt", "mean accuracy on tasks seen"),
            strategy.name(),
            &seen,
        ),
    )?;
    // result.json last: its presence marks a finished run.
    write(
        &out.join("result.json"),
        &serde_json::to_string_pretty(&result)?,
    )?;
    // A finished run needs no checkpoint.
    let _ = std::fs::remove_dir_all(out.join("checkpoint"));
    if a.json {
        let line = serde_json::json!({
            "acc": m.acc, "bwt": m.bwt, "fwt": m.fwt, "forgetting": m.forgetting,
            "matrix": matrix.r,
        });
        println!("{line}");
    } else {
        let pct = |v: Option<f64>| v.map_or("n/a".into(), |v| format!("{:+.2}", 100.0 * v));
        println!(
            "{title}: ACC {:.2}%  BWT {}  FWT {}  forgetting {}  ({} tasks, {:.1} s); written to {}",
            100.0 * m.acc,
            pct(m.bwt),
            pct(m.fwt),
            pct(m.forgetting),
            stream.len(),
            wall_s,
            out.display()
        );
        let curve: Vec<String> = speed_asked
            .iter()
            .zip(&speed)
            .map(|(k, v)| format!("{k}: {:.2}%", 100.0 * v))
            .collect();
        println!(
            "learning speed (mean accuracy on the task being learnt, after examples; \
             measured at batch ends, batch {}): {}",
            a.batch,
            curve.join("  ")
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

/// Refuses to overwrite an unfinished run without `--resume`, and `--resume` without a
/// checkpoint.
pub fn check_resume(checkpoints: &Checkpoints, out: &Path, resume: bool) -> Result<()> {
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

/// La-MAML's settings from the flags; the replay draw per glance is one batch.
pub fn lamaml_config(a: &ContinualArgs) -> LaMamlConfig {
    LaMamlConfig {
        capacity: a.buffer,
        replay: a.batch,
        glances: a.glances,
        alpha_init: a.lamaml_alpha,
        alpha_lr: a.lamaml_alpha_lr,
        ..LaMamlConfig::default()
    }
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
    let tmp = path.with_extension("partial");
    std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}
