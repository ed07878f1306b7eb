//! `perennial eval` and `perennial eval-episodes`.

use anyhow::{bail, Context, Result};
use perennial::checkpoint::{RunConfig, RunDir};
use perennial::data::omniglot::Split;
use perennial::data::sinusoid::{SinusoidSampler, SinusoidSpec};
use perennial::data::{folder, EpisodeSampler, EpisodeSpec};
use perennial::eval::{evaluate, evaluate_sequences, summarize, task_accuracy, task_mse};
use perennial::meta::MetaLearner;
use perennial::plot::{line_plot, Series, Style};
use perennial::tensors::{Batch, Task};
use perennial::train::build_learner;
use serde_json::json;
use std::sync::Arc;

use crate::cli::{EvalArgs, EvalEpisodesArgs};
use crate::progress::bar;

fn load_learner(
    run: &RunDir,
    device: tch::Device,
) -> Result<(Box<dyn MetaLearner>, perennial::checkpoint::RunConfig)> {
    let config = run.config()?;
    let mut learner = build_learner(&config, device)?;
    learner.load_model_state(&run.load_best()?)?;
    Ok((learner, config))
}

/// Evaluates a run on sampled episodes.
pub fn eval(a: EvalArgs, quiet: bool) -> Result<()> {
    let device = super::device(&a.device)?;
    let run = RunDir::open(&a.run_dir)?;
    let split: Split = a.split.parse()?;
    let (learner, config) = load_learner(&run, device)?;
    if config.sinusoid.is_some() {
        return eval_sinusoid(&a, &run, config, device, quiet);
    }
    if let Some(outputs) = config.fixed_ways() {
        if outputs != a.ways {
            bail!(
                "--ways {}: this {} run has a {outputs}-way head; evaluate it with --ways {outputs}",
                a.ways,
                config.algorithm
            );
        }
    }
    let data = a
        .data_dir
        .clone()
        .unwrap_or_else(|| config.data.data_dir.clone());
    let mut set = super::omniglot_split(&data, config.data.splits, split)?;
    if a.unrotated {
        set = Arc::new(set.unrotated());
    }
    let sequences = config.algorithm.mann().is_some();
    let queries = a.queries.unwrap_or(if sequences {
        config.train_episode.queries
    } else {
        15
    });
    let spec = EpisodeSpec::new(a.ways, a.shots, queries);
    let sampler = EpisodeSampler::new(set, spec, a.seed)?
        .with_stream(perennial::data::rng::streams::TEST_EPISODES);
    if a.episodes == 0 {
        bail!("--episodes 0: evaluate at least one episode");
    }
    let pb = bar(a.episodes, "eval", quiet || a.json);
    let mut sum = 0.0;
    let mut progress = |i: usize, acc: f64| {
        sum += acc;
        pb.set_position(i as u64 + 1);
        pb.set_message(format!("acc {:.2}%", 100.0 * sum / (i + 1) as f64));
    };
    if sequences {
        let r = evaluate_sequences(
            learner.as_ref(),
            sampler.prefetch(0, Some(a.episodes), 8),
            device,
            &mut progress,
        )
        .context("this learner does not read tasks as sequences")?;
        pb.finish_and_clear();
        let s = r.summary;
        if a.json {
            println!(
                "{}",
                json!({ "accuracy": s.accuracy, "ci95": s.ci95, "episodes": s.episodes,
                        "by_instance": r.by_instance, "instance_counts": r.counts })
            );
        } else {
            let by: Vec<String> = r
                .by_instance
                .iter()
                .enumerate()
                .map(|(i, v)| format!("{}: {:.1}%", i + 1, 100.0 * v))
                .collect();
            println!(
                "{}-class sequences of {} instances, {} split, {} episodes: accuracy {:.2}% ± {:.2}% (95% CI); by instance {}",
                a.ways,
                a.shots + queries,
                split.name(),
                s.episodes,
                100.0 * s.accuracy,
                100.0 * s.ci95,
                by.join(", ")
            );
        }
        return Ok(());
    }
    let s = evaluate(
        learner.as_ref(),
        sampler.prefetch(0, Some(a.episodes), 8),
        device,
        progress,
    );
    pb.finish_and_clear();
    if a.json {
        println!(
            "{}",
            json!({ "accuracy": s.accuracy, "ci95": s.ci95, "episodes": s.episodes })
        );
    } else {
        println!(
            "{}-way {}-shot, {} split, {} episodes: accuracy {:.2}% ± {:.2}% (95% CI)",
            a.ways,
            a.shots,
            split.name(),
            s.episodes,
            100.0 * s.accuracy,
            100.0 * s.ci95
        );
    }
    Ok(())
}

/// Finn et al.'s sinusoid evaluation: query MSE after 0, 1 and 10 inner steps from
/// K = 5 and K = 10 support points (100 query points per task), and a plot per K of
/// the adapted curves on one task.
fn eval_sinusoid(
    a: &EvalArgs,
    run: &RunDir,
    config: RunConfig,
    device: tch::Device,
    quiet: bool,
) -> Result<()> {
    if a.episodes == 0 {
        bail!("--episodes 0: evaluate at least one task");
    }
    let best = run.load_best()?;
    let learner_with = |steps: usize| -> Result<Box<dyn MetaLearner>> {
        let mut c = config.clone();
        if let Some(m) = c.algorithm.maml_mut() {
            m.eval_steps = steps;
        }
        if let Some(r) = c.algorithm.reptile_mut() {
            r.eval_steps = steps;
        }
        let mut l = build_learner(&c, device)?;
        l.load_model_state(&best)?;
        Ok(l)
    };
    const STEPS: [usize; 3] = [0, 1, 10];
    let mut rows = Vec::new();
    let pb = bar(2 * STEPS.len() as u64 * a.episodes, "eval", quiet || a.json);
    for shots in [5usize, 10] {
        let sampler = SinusoidSampler::new(SinusoidSpec::new(shots, 100), a.seed)?
            .with_stream(perennial::data::rng::streams::TEST_EPISODES);
        let mut curves = Vec::new();
        for steps in STEPS {
            let learner = learner_with(steps)?;
            let mses: Vec<f64> = (0..a.episodes)
                .map(|i| {
                    pb.inc(1);
                    task_mse(
                        learner.as_ref(),
                        &Task::from_sinusoid(&sampler.sample(i), device),
                    )
                })
                .collect();
            let s = summarize(&mses);
            let mut sorted = mses.clone();
            sorted.sort_by(|a, b| a.total_cmp(b));
            let median = sorted[sorted.len() / 2];
            rows.push(json!({ "shots": shots, "steps": steps, "mse": s.accuracy, "ci95": s.ci95, "median": median, "tasks": s.episodes }));
            // The adapted curve on task 0, for the plot.
            let t = sampler.sample(0);
            let adapted = learner.adapt(&Task::from_sinusoid(&t, device).support);
            let grid: Vec<f32> = (0..=200).map(|i| -5.0 + 0.05 * i as f32).collect();
            let x = tch::Tensor::from_slice(&grid)
                .view([-1, 1])
                .to_device(device);
            let y: Vec<f32> = adapted
                .predict(&x)
                .flatten(0, -1)
                .to_device(tch::Device::Cpu)
                .try_into()?;
            curves.push(Series::new(
                format!("after {steps} step{}", if steps == 1 { "" } else { "s" }),
                grid.iter()
                    .zip(&y)
                    .map(|(&x, &y)| (x as f64, y as f64))
                    .collect(),
                if steps == 0 {
                    Style::Dashed
                } else {
                    Style::Line
                },
            ));
        }
        let t = sampler.sample(0);
        let mut series = vec![Series::new(
            "true function",
            (0..=200)
                .map(|i| {
                    let x = -5.0 + 0.05 * i as f64;
                    (x, t.eval(x))
                })
                .collect(),
            Style::Line,
        )];
        series.extend(curves);
        series.push(Series::new(
            format!("{shots} support points"),
            t.support_x
                .iter()
                .zip(&t.support_y)
                .map(|(&x, &y)| (x as f64, y as f64))
                .collect(),
            Style::Points,
        ));
        let path = run.root().join(format!("sinusoid-k{shots}.svg"));
        let svg = line_plot(
            &format!(
                "{} on a sinusoid task (A = {:.2}, φ = {:.2}), K = {shots}",
                config.algorithm, t.amplitude, t.phase
            ),
            "x",
            "y",
            &series,
        );
        std::fs::write(&path, svg).with_context(|| format!("writing {}", path.display()))?;
        if !a.json {
            eprintln!("plot: {}", path.display());
        }
    }
    pb.finish_and_clear();
    if a.json {
        println!("{}", json!({ "tasks": a.episodes, "mse": rows }));
    } else {
        println!(
            "sinusoid, {} test tasks, 100 query points each:",
            a.episodes
        );
        for r in &rows {
            println!(
                "  K = {:>2}, {:>2} step(s): MSE {:.3} ± {:.3} (median {:.3})",
                r["shots"],
                r["steps"],
                r["mse"].as_f64().unwrap_or(f64::NAN),
                r["ci95"].as_f64().unwrap_or(f64::NAN),
                r["median"].as_f64().unwrap_or(f64::NAN)
            );
        }
    }
    Ok(())
}

/// One user-supplied episode folder, read into a task.
fn read_episode(dir: &std::path::Path, size: usize, device: tch::Device) -> Result<(Task, usize)> {
    let support = folder::load_labelled(&dir.join("support"), size)
        .with_context(|| format!("episode {}", dir.display()))?;
    let query = folder::load_labelled(&dir.join("query"), size)
        .with_context(|| format!("episode {}", dir.display()))?;
    if support.classes.len() < 2 {
        bail!(
            "episode {}: support has {} class(es); an episode needs at least 2",
            dir.display(),
            support.classes.len()
        );
    }
    let mut query_labels = Vec::with_capacity(query.labels.len());
    for &l in &query.labels {
        let name = &query.classes[l];
        let Some(s) = support.classes.iter().position(|c| c == name) else {
            bail!(
                "episode {}: query class {name:?} has no support examples",
                dir.display()
            );
        };
        query_labels.push(s as i64);
    }
    let ways = support.classes.len();
    let support_labels: Vec<i64> = support.labels.iter().map(|&l| l as i64).collect();
    let task = Task {
        support: Batch::from_pixels(&support.images, &support_labels, size, size, ways, device),
        query: Batch::from_pixels(&query.images, &query_labels, size, size, ways, device),
    };
    Ok((task, ways))
}

/// Evaluates a run on episodes stored as folders.
pub fn eval_episodes(a: EvalEpisodesArgs, quiet: bool) -> Result<()> {
    let device = super::device(&a.device)?;
    let run = RunDir::open(&a.run_dir)?;
    let (learner, config) = load_learner(&run, device)?;
    let size = super::image_size(&config, &a.run_dir)?;
    let dirs = folder::subdirs(&a.episodes_dir).map_err(anyhow::Error::from)?;
    if dirs.is_empty() {
        bail!(
            "{}: no episode folders (expected DIR/<episode>/support/<class>/<image>)",
            a.episodes_dir.display()
        );
    }
    let pb = bar(dirs.len() as u64, "eval", quiet || a.json);
    let mut rows = Vec::new();
    let mut accs = Vec::new();
    for d in &dirs {
        let (task, ways) = read_episode(d, size, device)?;
        let acc = task_accuracy(learner.as_ref(), &task);
        let name = d
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        rows.push(
            json!({ "episode": name, "accuracy": acc, "ways": ways, "queries": task.query.len() }),
        );
        accs.push(acc);
        pb.inc(1);
    }
    pb.finish_and_clear();
    let s = summarize(&accs);
    if a.json {
        println!(
            "{}",
            json!({ "accuracy": s.accuracy, "ci95": s.ci95, "episodes": s.episodes, "per_episode": rows })
        );
    } else {
        for r in &rows {
            println!(
                "{}: {:.2}% ({}-way, {} queries)",
                r["episode"].as_str().unwrap_or(""),
                100.0 * r["accuracy"].as_f64().unwrap_or(0.0),
                r["ways"],
                r["queries"]
            );
        }
        println!(
            "mean over {} episodes: {:.2}% ± {:.2}% (95% CI)",
            s.episodes,
            100.0 * s.accuracy,
            100.0 * s.ci95
        );
    }
    Ok(())
}
