//! Checkpoints of a run over a stream, written after the untrained baseline and after
//! tasks, so that a killed run resumes at the next task and ends with the same record
//! as an uninterrupted one. One format for every learner and stream:
//!
//! ```text
//! RUN_DIR/checkpoint/state.json               format, the run's config, its record so
//!                                             far, the learner's JSON state
//! RUN_DIR/checkpoint/learner-K.safetensors    the learner's tensors after K tasks
//! ```
//!
//! The tensors of step `K` are written first under new names, then `state.json` is
//! replaced atomically to point at them, then the files of older steps are removed: a
//! SIGKILL at any moment leaves `state.json` and the files it names intact.

use std::path::{Path, PathBuf};

use super::run::{Learner, RunRecord};
use super::strategy::StrategyState;
use crate::error::{Error, Result};
use crate::nn::params::{load_named, save_named};

/// The checkpoint format this version writes and reads.
pub const FORMAT: u64 = 2;

/// What `state.json` holds.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SavedState {
    /// The checkpoint format (absent, read as 0, before format 2).
    #[serde(default)]
    pub format: u64,
    /// The run's configuration as the caller described it; a resume must match it.
    pub config: serde_json::Value,
    /// Everything measured so far.
    pub record: RunRecord,
    /// The JSON part of the learner's state.
    pub strategy: serde_json::Value,
}

/// A restored checkpoint.
#[derive(Debug)]
pub struct Restored {
    /// The saved configuration.
    pub config: serde_json::Value,
    /// The record to resume from.
    pub record: RunRecord,
}

/// The checkpoint folder of a continual run.
#[derive(Debug, Clone)]
pub struct Checkpoints {
    dir: PathBuf,
}

impl Checkpoints {
    /// The checkpoints of run directory `run`.
    pub fn new(run: &Path) -> Self {
        Checkpoints {
            dir: run.join("checkpoint"),
        }
    }

    /// The `state.json` path.
    pub fn state_path(&self) -> PathBuf {
        self.dir.join("state.json")
    }

    /// Whether a checkpoint exists.
    pub fn exists(&self) -> bool {
        self.state_path().is_file()
    }

    /// Writes the checkpoint after `record.tasks_done()` tasks.
    /// Writes the checkpoint after `record.tasks_done()` tasks: the learner's state and
    /// the record.
    pub fn save(
        &self,
        config: &serde_json::Value,
        record: &RunRecord,
        learner: &dyn Learner,
    ) -> Result<()> {
        let state = learner.state();
        let saved = SavedState {
            format: FORMAT,
            config: config.clone(),
            record: record.clone(),
            strategy: state.meta,
        };
        self.write_step(record.tasks_done(), &[("learner", state.tensors)], &saved)
    }

    /// Reads the checkpoint, checks it was written for `config`, and restores `learner`
    /// to it.
    pub fn restore(
        &self,
        config: &serde_json::Value,
        learner: &mut dyn Learner,
    ) -> Result<Restored> {
        let saved: SavedState = self.read_state()?;
        if saved.format != FORMAT {
            return Err(Error::run(
                self.state_path(),
                format!(
                    "a checkpoint of format {} (this Perennial, {}, reads format {FORMAT}, \
                     written since one continual loop serves every stream); start the run \
                     afresh in another --out",
                    saved.format,
                    env!("CARGO_PKG_VERSION")
                ),
            ));
        }
        self.check_config(&saved.config, config)?;
        let k = saved.record.tasks_done();
        learner.restore(StrategyState {
            tensors: self.read_group("learner", k)?,
            meta: saved.strategy,
        })?;
        Ok(Restored {
            config: saved.config,
            record: saved.record,
        })
    }

    fn group_path(&self, prefix: &str, k: usize) -> PathBuf {
        self.dir.join(format!("{prefix}-{k}.safetensors"))
    }

    /// Writes step `k`: each non-empty group of named tensors to
    /// `PREFIX-k.safetensors`, then `state` as `state.json` (atomically), then removes
    /// the tensor files of other steps.
    pub fn write_step<S: serde::Serialize>(
        &self,
        k: usize,
        groups: &[(&str, Vec<(String, tch::Tensor)>)],
        state: &S,
    ) -> Result<()> {
        std::fs::create_dir_all(&self.dir).map_err(|e| Error::run(&self.dir, e.to_string()))?;
        let mut keep = Vec::new();
        for (prefix, named) in groups {
            if named.is_empty() {
                continue;
            }
            let named: Vec<(String, tch::Tensor)> =
                named.iter().map(|(n, t)| (n.clone(), t.detach())).collect();
            let path = self.group_path(prefix, k);
            save_named(&named, &path)?;
            keep.push(path);
        }
        let text = serde_json::to_string(state).expect("state serialises");
        let path = self.state_path();
        let tmp = self.dir.join(".state.json.tmp");
        std::fs::write(&tmp, text).map_err(|e| Error::run(&tmp, e.to_string()))?;
        std::fs::rename(&tmp, &path).map_err(|e| Error::run(&path, e.to_string()))?;
        // Older steps are no longer pointed at.
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for e in entries.flatten() {
                let p = e.path();
                let tensors = p.extension().is_some_and(|x| x == "safetensors");
                if tensors && !keep.contains(&p) {
                    let _ = std::fs::remove_file(&p);
                }
            }
        }
        Ok(())
    }

    /// Reads `state.json`.
    pub fn read_state<S: serde::de::DeserializeOwned>(&self) -> Result<S> {
        let path = self.state_path();
        let text = std::fs::read_to_string(&path).map_err(|e| Error::run(&path, e.to_string()))?;
        serde_json::from_str(&text)
            .map_err(|e| Error::run(&path, format!("corrupt checkpoint state: {e}")))
    }

    /// The tensors of group `prefix` at step `k` (none when the group was empty).
    pub fn read_group(&self, prefix: &str, k: usize) -> Result<Vec<(String, tch::Tensor)>> {
        let path = self.group_path(prefix, k);
        if path.is_file() {
            load_named(&path)
        } else {
            Ok(Vec::new())
        }
    }

    /// Refuses a checkpoint written by another configuration than `asked`, naming the
    /// first setting that differs.
    pub fn check_config(&self, saved: &serde_json::Value, asked: &serde_json::Value) -> Result<()> {
        match first_difference(saved, asked) {
            Some(diff) => Err(Error::run(
                self.state_path(),
                format!(
                    "was written by another configuration ({diff}); resume with the same flags"
                ),
            )),
            None => Ok(()),
        }
    }
}

/// The first top-level key whose value differs between two JSON objects, as
/// `key: saved → asked`.
fn first_difference(saved: &serde_json::Value, asked: &serde_json::Value) -> Option<String> {
    match (saved.as_object(), asked.as_object()) {
        (Some(a), Some(b)) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            keys.into_iter().find_map(|k| {
                let (x, y) = (a.get(k), b.get(k));
                (x != y).then(|| {
                    let show = |v: Option<&serde_json::Value>| {
                        v.map_or("absent".to_string(), |v| v.to_string())
                    };
                    format!("{k}: {} → {}", show(x), show(y))
                })
            })
        }
        _ => (saved != asked).then(|| "the configuration".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differences_name_the_key() {
        let a = serde_json::json!({"lr": 0.1, "seed": 0});
        let b = serde_json::json!({"lr": 0.1, "seed": 1});
        assert_eq!(first_difference(&a, &a), None);
        assert_eq!(first_difference(&a, &b).unwrap(), "seed: 0 → 1");
        let c = serde_json::json!({"lr": 0.1});
        assert_eq!(first_difference(&a, &c).unwrap(), "seed: 0 → absent");
    }
}
