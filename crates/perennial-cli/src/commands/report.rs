//! `perennial report RUN_DIR...`: finished `continual` runs side by side, one table
//! and one plot; runs that differ only in their seed are also summarised as a group
//! (mean ± sample standard deviation).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use perennial::plot::{line_plot, Series, Style};
use serde_json::Value;

use crate::cli::ReportArgs;

/// The settings that make two runs comparable; the seed (also in `spec`) is left out.
const GROUP_KEYS: &[&str] = &[
    "stream",
    "scenario",
    "strategy",
    "spec",
    "batch",
    "lr",
    "network",
    "buffer",
    "ewc_lambda",
    "memory_per_task",
    "agem_sample",
    "mer",
    "encoder",
    "unknown_quantile",
    "lamaml",
    "consolidation",
    "shift_radius",
];

/// The numbers compared.
/// `bwt_own_labels` is BWT within each class's own label set (class-incremental
/// Omniglot runs; absent elsewhere).
const MEASURES: &[&str] = &[
    "acc",
    "bwt",
    "bwt_own_labels",
    "fwt",
    "forgetting",
    "wall_s",
];

/// The measures' column titles, in the order of [`MEASURES`].
const TITLES: &[&str] = &["ACC %", "BWT", "own BWT", "FWT", "forget", "wall s"];

/// `cells`, each right-aligned in `width` characters, separated by spaces.
fn columns<S: AsRef<str>>(cells: &[S], width: usize) -> String {
    cells
        .iter()
        .map(|c| format!("{:>width$}", c.as_ref()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// One finished run.
struct Run {
    dir: PathBuf,
    result: Value,
}

impl Run {
    fn load(dir: &Path) -> Result<Run> {
        let p = dir.join("result.json");
        if !p.is_file() {
            let why = if dir.join("checkpoint").is_dir() {
                "an unfinished run (resume it with `perennial continual ... --resume`)"
            } else {
                "not a continual run directory"
            };
            bail!("{}: {why}: no result.json", dir.display());
        }
        let text =
            std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))?;
        let mut result: Value = serde_json::from_str(&text)
            .with_context(|| format!("{}: corrupt result file", p.display()))?;
        for k in ["acc", "matrix", "stream", "strategy"] {
            if result.get(k).is_none() {
                bail!("{}: corrupt result file: no \"{k}\"", p.display());
            }
        }
        // Omniglot class-stream runs from before --shift-radius averaged nothing.
        if result["stream"] == "omniglot-classes" && result.get("shift_radius").is_none() {
            result["shift_radius"] = 0.into();
        }
        Ok(Run {
            dir: dir.to_path_buf(),
            result,
        })
    }

    fn num(&self, key: &str) -> Option<f64> {
        self.result.get(key).and_then(Value::as_f64)
    }

    fn text(&self, key: &str) -> String {
        match self.result.get(key) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Null) | None => "-".into(),
            Some(v) => v.to_string(),
        }
    }

    fn seed(&self) -> Option<u64> {
        self.result
            .get("seed")
            .or_else(|| self.result.get("spec").and_then(|s| s.get("seed")))
            .and_then(Value::as_u64)
    }

    /// The group key: every setting but the seed.
    fn key(&self) -> Value {
        let mut key = serde_json::Map::new();
        for &k in GROUP_KEYS {
            let mut v = self.result.get(k).cloned().unwrap_or(Value::Null);
            if let Some(spec) = v.as_object_mut() {
                spec.remove("seed");
                // Meta-consolidation's log differs from run to run; its settings do not.
                spec.remove("runs");
            }
            key.insert(k.into(), v);
        }
        Value::Object(key)
    }

    /// The strategy with its distinguishing settings, e.g. `er (buffer 200)` or
    /// `perennial (consolidate/50, 120 episodes, jitter 1, shift 1)`.
    fn label(&self) -> String {
        let strategy = self.text("strategy");
        let mut settings: Vec<String> = [
            ("buffer", "buffer "),
            ("ewc_lambda", "λ "),
            ("memory_per_task", "memory/task "),
        ]
        .iter()
        .find_map(|(k, name)| {
            self.result
                .get(*k)
                .filter(|v| !v.is_null())
                .map(|v| format!("{name}{v}"))
        })
        .into_iter()
        .collect();
        let consolidation = self
            .result
            .get("consolidation")
            .and_then(|c| c.get("settings"));
        if let Some((c, every)) = consolidation.and_then(|c| Some((c, c.get("every")?))) {
            if settings.is_empty() {
                settings.push(format!("consolidate/{every}"));
                settings.extend(c.get("episodes").map(|n| format!("{n} episodes")));
                settings.extend(positive(c, "jitter").map(|j| format!("jitter {j}")));
            }
        }
        settings.extend(positive(&self.result, "shift_radius").map(|r| format!("shift {r}")));
        if settings.is_empty() {
            strategy
        } else {
            format!("{strategy} ({})", settings.join(", "))
        }
    }

    fn seen(&self) -> Vec<f64> {
        self.result
            .get("seen_accuracy")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_f64).collect())
            .unwrap_or_default()
    }
}

/// `key`'s value in `v` when it is a positive integer.
fn positive(v: &Value, key: &str) -> Option<u64> {
    v.get(key).and_then(Value::as_u64).filter(|&n| n > 0)
}

fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = if v.len() > 1 {
        v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (mean, var.sqrt())
}

fn pct(v: Option<f64>) -> String {
    v.map_or("n/a".into(), |v| format!("{:.2}", 100.0 * v))
}

/// Runs `perennial report`.
pub fn report(a: ReportArgs) -> Result<()> {
    let runs: Vec<Run> = a.runs.iter().map(|d| Run::load(d)).collect::<Result<_>>()?;
    // Groups in order of first appearance.
    let mut groups: Vec<(Value, Vec<usize>)> = Vec::new();
    for (i, r) in runs.iter().enumerate() {
        let key = r.key();
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, members)) => members.push(i),
            None => groups.push((key, vec![i])),
        }
    }
    // The strategy column fits the longest label.
    let sw = runs
        .iter()
        .map(|r| r.label().chars().count())
        .max()
        .unwrap_or(0)
        .max(24);
    if a.json {
        for r in &runs {
            let mut line = serde_json::json!({
                "run": r.dir.display().to_string(),
                "stream": r.text("stream"),
                "scenario": r.text("scenario"),
                "strategy": r.label(),
                "seed": r.seed(),
            });
            for &m in MEASURES {
                line[m] = r.num(m).map_or(Value::Null, Value::from);
            }
            println!("{line}");
        }
    } else {
        println!(
            "{:<28} {:<16} {:<19} {:<sw$} {:>4} {}",
            "run",
            "stream",
            "scenario",
            "strategy",
            "seed",
            columns(TITLES, 8)
        );
        for r in &runs {
            let dir = r.dir.display().to_string();
            let dir = if dir.chars().count() > 28 {
                let tail: String = dir
                    .chars()
                    .rev()
                    .take(27)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect();
                format!("…{tail}")
            } else {
                dir
            };
            let cells: Vec<String> = MEASURES
                .iter()
                .map(|&m| match m {
                    "wall_s" => r.num(m).map_or("-".into(), |w| format!("{w:.1}")),
                    _ => pct(r.num(m)),
                })
                .collect();
            println!(
                "{:<28} {:<16} {:<19} {:<sw$} {:>4} {}",
                dir,
                r.text("stream"),
                r.text("scenario"),
                r.label(),
                r.seed().map_or("-".into(), |s| s.to_string()),
                columns(&cells, 8)
            );
        }
    }
    let multi: Vec<&(Value, Vec<usize>)> = groups.iter().filter(|(_, m)| m.len() > 1).collect();
    if !multi.is_empty() && !a.json {
        println!();
        println!(
            "{:<16} {:<19} {:<sw$} {:>5} {}",
            "stream",
            "scenario",
            "strategy",
            "runs",
            columns(TITLES, 13)
        );
    }
    for (_, members) in &multi {
        let first = &runs[members[0]];
        let stats: Vec<Option<(f64, f64)>> = MEASURES
            .iter()
            .map(|&m| {
                let v: Vec<f64> = members.iter().filter_map(|&i| runs[i].num(m)).collect();
                (v.len() == members.len()).then(|| mean_std(&v))
            })
            .collect();
        if a.json {
            let mut line = serde_json::json!({
                "group": first.key(),
                "strategy": first.label(),
                "runs": members.len(),
                "seeds": members.iter().map(|&i| runs[i].seed()).collect::<Vec<_>>(),
            });
            for (&m, s) in MEASURES.iter().zip(&stats) {
                line[m] = s.map_or(
                    Value::Null,
                    |(mean, std)| serde_json::json!({"mean": mean, "std": std}),
                );
            }
            println!("{line}");
        } else {
            let cell = |k: usize| {
                stats[k].map_or("n/a".into(), |(mean, std)| {
                    if MEASURES[k] == "wall_s" {
                        format!("{mean:.1} ± {std:.1}")
                    } else {
                        format!("{:.2} ± {:.2}", 100.0 * mean, 100.0 * std)
                    }
                })
            };
            let cells: Vec<String> = (0..MEASURES.len()).map(cell).collect();
            println!(
                "{:<16} {:<19} {:<sw$} {:>5} {}",
                first.text("stream"),
                first.text("scenario"),
                first.label(),
                members.len(),
                columns(&cells, 13)
            );
        }
    }
    if let Some(path) = &a.plot {
        let series: Vec<Series> = groups
            .iter()
            .map(|(_, members)| {
                let curves: Vec<Vec<f64>> = members.iter().map(|&i| runs[i].seen()).collect();
                let len = curves.iter().map(Vec::len).min().unwrap_or(0);
                let points = (0..len)
                    .map(|t| {
                        let v: Vec<f64> = curves.iter().map(|c| c[t]).collect();
                        ((t + 1) as f64, mean_std(&v).0)
                    })
                    .collect();
                let first = &runs[members[0]];
                let name = if members.len() > 1 {
                    format!("{} ×{}", first.label(), members.len())
                } else {
                    first.label()
                };
                Series::new(name, points, Style::Line)
            })
            .collect();
        let svg = line_plot(
            "Mean accuracy on the tasks seen so far",
            "tasks learnt",
            "accuracy (mean over runs of a group)",
            &series,
        );
        std::fs::write(path, svg).with_context(|| format!("cannot write {}", path.display()))?;
        if !a.json {
            println!("\nplot written to {}", path.display());
        }
    }
    Ok(())
}
