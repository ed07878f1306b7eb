//! The episodic training loop: sample, meta-step, log, validate, checkpoint, resume.

use std::time::Instant;

use perennial_data::sinusoid::SinusoidSampler;
use perennial_data::EpisodeSampler;
use serde_json::json;
use tch::Device;

use crate::checkpoint::{RunConfig, RunDir, RunState, ScheduleConfig};
use crate::dist::DataParallel;
use crate::error::Result;
use crate::eval::{evaluate, Summary};
use crate::meta::{MetaLearner, StepReport};
use crate::tensors::Task;

/// Builds the learner a run configuration describes ([`crate::meta::registry::build`]).
pub fn build_learner(config: &RunConfig, device: Device) -> Result<Box<dyn MetaLearner>> {
    crate::meta::registry::build(config, device)
}

/// Where training tasks come from: task `i` is a pure function of `i`.
pub trait TaskSource {
    /// Tasks `start..end` in order, on `device` (prepared ahead where possible).
    fn tasks(&self, start: u64, end: u64, device: Device) -> Box<dyn Iterator<Item = Task> + '_>;
}

impl TaskSource for EpisodeSampler {
    fn tasks(&self, start: u64, end: u64, device: Device) -> Box<dyn Iterator<Item = Task> + '_> {
        Box::new(
            self.prefetch(start, Some(end), 32)
                .map(move |ep| Task::from_episode(&ep, device)),
        )
    }
}

impl TaskSource for SinusoidSampler {
    fn tasks(&self, start: u64, end: u64, device: Device) -> Box<dyn Iterator<Item = Task> + '_> {
        Box::new((start..end).map(move |i| Task::from_sinusoid(&self.sample(i), device)))
    }
}

/// Events of a training run, for progress bars and logs.
pub trait Observer {
    /// After every training episode (`done` episodes completed).
    fn on_episode(&mut self, _done: u64, _report: &StepReport) {}
    /// After every validation.
    fn on_validation(&mut self, _done: u64, _summary: &Summary, _best: bool) {}
    /// After every checkpoint.
    fn on_checkpoint(&mut self, _done: u64) {}
}

/// An observer that does nothing.
pub struct Silent;
impl Observer for Silent {}

/// Trains `learner` in `run` from its saved state to the end of `schedule`.
///
/// Update `u` uses tasks `u · meta_batch .. (u + 1) · meta_batch` of `source`.
/// Resuming is the same call on the same run directory: the learner is loaded from the
/// last checkpoint (if any), metrics past it are dropped, and training continues at the
/// saved episode index, so the episode sequence is the one an uninterrupted run sees.
pub fn train(
    learner: &mut dyn MetaLearner,
    run: &RunDir,
    schedule: &ScheduleConfig,
    source: &dyn TaskSource,
    val_sampler: Option<&EpisodeSampler>,
    device: Device,
    observer: &mut dyn Observer,
) -> Result<RunState> {
    train_loop(
        learner,
        Some(run),
        schedule,
        source,
        val_sampler,
        device,
        observer,
        None,
    )
}

/// [`train`] as one rank of a data-parallel run ([`crate::dist`]): this rank meta-trains
/// on its share of every meta-batch, the gradients are all-reduced, and every rank takes
/// the same update. `run` is rank 0's run directory (`None` on every other rank: only
/// rank 0 reads checkpoints and writes metrics, the best model and checkpoints; it
/// broadcasts the starting state, so a resumed run resumes on every rank).
#[allow(clippy::too_many_arguments)]
pub fn train_data_parallel(
    learner: &mut dyn MetaLearner,
    run: Option<&RunDir>,
    schedule: &ScheduleConfig,
    source: &dyn TaskSource,
    val_sampler: Option<&EpisodeSampler>,
    device: Device,
    observer: &mut dyn Observer,
    dp: &DataParallel,
) -> Result<RunState> {
    if dp.meta_batch() != schedule.meta_batch {
        return Err(crate::error::Error::config(
            "meta-batch",
            schedule.meta_batch,
            format!(
                "the data-parallel group was set up for meta-batches of {}",
                dp.meta_batch()
            ),
        ));
    }
    if dp.is_root() != run.is_some() {
        return Err(crate::error::Error::config(
            "run directory",
            if run.is_some() { "given" } else { "missing" },
            "rank 0, and only rank 0, writes the run directory",
        ));
    }
    learner.set_gradient_reducer(Some(dp.reducer()))?;
    let out = train_loop(
        learner,
        run,
        schedule,
        source,
        val_sampler,
        device,
        observer,
        Some(dp),
    );
    learner.set_gradient_reducer(None)?;
    out
}

#[allow(clippy::too_many_arguments)]
fn train_loop(
    learner: &mut dyn MetaLearner,
    run: Option<&RunDir>,
    schedule: &ScheduleConfig,
    source: &dyn TaskSource,
    val_sampler: Option<&EpisodeSampler>,
    device: Device,
    observer: &mut dyn Observer,
    dp: Option<&DataParallel>,
) -> Result<RunState> {
    schedule.validate()?;
    let mut state = match run {
        Some(run) => run.state()?,
        None => RunState::default(),
    };
    if let Some(run) = run {
        if state.next_episode > 0 {
            learner.load_training_state(&run.load_checkpoint()?)?;
            tracing::info!(episode = state.next_episode, "resuming");
        }
        run.truncate_metrics(state.next_episode)?;
    }
    if let Some(dp) = dp {
        state.next_episode = dp.broadcast_u64(state.next_episode)?;
        dp.broadcast_state(learner)?;
    }
    let start = Instant::now();
    let (mut loss, mut acc, mut n) = (0.0, 0.0, 0u64);
    let mb = schedule.meta_batch;
    // This process's tasks of every meta-batch: all of them, or a data-parallel share.
    let (lo, hi) = dp.map_or((0, mb), DataParallel::share);
    let mut tasks = match dp {
        None => source.tasks(state.next_episode * mb, schedule.episodes * mb, device),
        Some(_) => Box::new(std::iter::empty()),
    };
    let mut batch = Vec::with_capacity(mb as usize);
    for done in state.next_episode + 1..=schedule.episodes {
        batch.clear();
        match dp {
            None => batch.extend(tasks.by_ref().take(mb as usize)),
            Some(_) => {
                let first = (done - 1) * mb;
                batch.extend(source.tasks(first + lo, first + hi, device));
            }
        }
        let report = learner.meta_step(&batch);
        if let Some(e) = dp.and_then(DataParallel::take_failure) {
            return Err(e);
        }
        (loss, acc, n) = (
            loss + report.loss,
            acc + report.accuracy.unwrap_or(f64::NAN),
            n + 1,
        );
        observer.on_episode(done, &report);
        if done % schedule.log_every == 0 || done == schedule.episodes {
            let (mut l, mut a) = (loss / n as f64, acc / n as f64);
            if let Some(dp) = dp {
                let v = dp.weighted_mean(&[l, a])?;
                (l, a) = (v[0], v[1]);
            }
            if let Some(run) = run {
                run.append_metric(&json!({
                    "episode": done,
                    "loss": l,
                    "accuracy": Some(a).filter(|a| a.is_finite()),
                    "elapsed_s": start.elapsed().as_secs_f64(),
                }))?;
            }
            (loss, acc, n) = (0.0, 0.0, 0);
        }
        let validate =
            schedule.val_every > 0 && (done % schedule.val_every == 0 || done == schedule.episodes);
        let checkpoint = done % schedule.checkpoint_every == 0 || done == schedule.episodes;
        if let (Some(dp), true) = (dp, validate || checkpoint) {
            dp.average_buffers(learner)?;
        }
        if let (true, Some(val), Some(run)) = (validate, val_sampler, run) {
            let s = evaluate(
                &*learner,
                (0..schedule.val_episodes).map(|i| val.sample(i)),
                device,
                |_, _| {},
            );
            let best = state.best_val_accuracy.is_none_or(|b| s.accuracy > b);
            if best {
                run.save_best(&learner.model_state())?;
                state.best_val_accuracy = Some(s.accuracy);
                state.best_episode = Some(done);
            }
            run.append_metric(&json!({
                "episode": done,
                "val_accuracy": s.accuracy,
                "val_ci95": s.ci95,
                "best": best,
            }))?;
            observer.on_validation(done, &s, best);
        }
        if checkpoint {
            state.next_episode = done;
            state.finished = done == schedule.episodes;
            if let Some(run) = run {
                run.save_checkpoint(&learner.training_state())?;
                run.save_state(&state)?;
            }
            observer.on_checkpoint(done);
        }
    }
    if let (Some(run), true) = (run, val_sampler.is_none() || schedule.val_every == 0) {
        // No validation: the final model is the one to evaluate.
        run.save_best(&learner.model_state())?;
    }
    if let Some(dp) = dp {
        if let Some(run) = run {
            // What the hand-off cost rank 0 over this session of the run.
            let t = dp.traffic();
            run.append_metric(&json!({
                "episode": state.next_episode,
                "ranks": dp.world_size(),
                "train_s": start.elapsed().as_secs_f64(),
                "allreduce_calls": t.calls,
                "allreduce_s": t.seconds,
                "allreduce_bytes": t.bytes,
            }))?;
        }
        // No rank leaves (and tears down the group) while rank 0 is still writing.
        dp.barrier()?;
    }
    Ok(state)
}

/// A ProtoNet encoder meta-trained for `episodes` 20-way 5-shot episodes on Omniglot's
/// background characters (Lake's split), with the registry's defaults, in `dir`: made
/// once and reused when finished there (a file lock beside it keeps two processes from
/// training it at once). The small encoder of the example, the service's tests and
/// `bench serve`.
pub fn omniglot_encoder(
    data: &std::path::Path,
    dir: &std::path::Path,
    episodes: u64,
) -> Result<()> {
    use crate::data::omniglot::{Omniglot, Split, SplitScheme};
    use crate::error::Error;
    std::fs::create_dir_all(dir).map_err(|e| Error::run(dir, e.to_string()))?;
    let lock_path = dir.with_extension("lock");
    let lock =
        std::fs::File::create(&lock_path).map_err(|e| Error::run(&lock_path, e.to_string()))?;
    lock.lock()
        .map_err(|e| Error::run(&lock_path, e.to_string()))?;
    let mut config = crate::meta::registry::find("protonet")?
        .config(perennial_data::EpisodeSpec::new(20, 5, 5), 0);
    config.data.data_dir = data.to_path_buf();
    config.data.splits = SplitScheme::Lake;
    config.schedule.episodes = episodes;
    let run = if dir.join("config.toml").exists() {
        RunDir::open(dir)?
    } else {
        RunDir::create(dir, &config)?
    };
    if run.state()?.finished {
        return Ok(());
    }
    let omniglot = Omniglot::load(data)?;
    let splits = crate::data::paths::splits_dir(data);
    let background = omniglot.split(SplitScheme::Lake, Split::Train, &splits)?;
    let sampler = EpisodeSampler::new(
        std::sync::Arc::new(background),
        config.train_episode,
        config.seed,
    )?;
    let mut net = build_learner(&config, Device::Cpu)?;
    train(
        net.as_mut(),
        &run,
        &config.schedule,
        &sampler,
        None,
        Device::Cpu,
        &mut Silent,
    )?;
    Ok(())
}
