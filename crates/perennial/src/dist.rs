//! Data-parallel meta-training over a group of processes (PyTorch's c10d engine through
//! [`perennial_dist`]).
//!
//! A meta-batch is parallel over its tasks. With `W` ranks, update `u`'s tasks
//! `u·B .. (u+1)·B` are cut into `W` contiguous shares, rank `r` taking
//! `⌊r·B/W⌋ .. ⌊(r+1)·B/W⌋` from the same (seed, index) sampler, so the union of the
//! shares is exactly the single-process meta-batch. Each rank computes the
//! meta-gradient of its share (the mean over its tasks, as a learner always does); the
//! hand-off ([`crate::optim::GradReduce`], called by the optimiser) weights it by the
//! share's size, all-reduces the sum, and every rank takes the same step, so the ranks'
//! parameters stay identical and equal, to rounding, the single process's.
//!
//! Rank 0 alone reads and writes the run directory: it loads the checkpoint when
//! resuming and broadcasts the whole training state (parameters, buffers, optimiser)
//! before the first update, writes metrics, validates and checkpoints. Batch-norm
//! running statistics (which the learners keep for nothing but evaluation) are averaged
//! over the ranks before every validation and checkpoint; they are the one part of the
//! state that is not the single process's to rounding.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tch::{Kind, Tensor};

pub use perennial_dist::{backend_available, Env, ProcessGroup};

use crate::error::{Error, Result};
use crate::meta::MetaLearner;
use crate::optim::GradReduce;

/// How long a rank waits for the others (to join, or in a collective) before failing,
/// unless `PERENNIAL_DIST_TIMEOUT_S` says otherwise: long enough for rank 0's validation
/// and checkpoints, which the others wait out in their next collective.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// One rank of a data-parallel training run.
#[derive(Debug, Clone)]
pub struct DataParallel {
    group: Arc<ProcessGroup>,
    meta_batch: u64,
    share: (u64, u64),
    failure: Arc<Mutex<Option<String>>>,
    traffic: Arc<Mutex<Traffic>>,
}

/// What the meta-gradient hand-off has cost so far on this rank.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Traffic {
    /// Hand-offs (one per update).
    pub calls: u64,
    /// Seconds spent in them: packing, the all-reduce (waiting for the slowest rank
    /// included) and unpacking.
    pub seconds: f64,
    /// Bytes this rank's buffers held (gradients and flags), summed over the calls.
    pub bytes: u64,
}

/// Joins the group of processes the environment describes (`RANK`, `WORLD_SIZE`,
/// `MASTER_ADDR`, `MASTER_PORT`; see [`Env::from_env`]): `None` when it describes no
/// distributed run (`WORLD_SIZE` unset or 1). Every rank waits for the others up to
/// `PERENNIAL_DIST_TIMEOUT_S` seconds ([`DEFAULT_TIMEOUT`] by default), to join and in
/// every later collective.
pub fn join() -> Result<Option<ProcessGroup>> {
    let Some(env) = Env::from_env()? else {
        return Ok(None);
    };
    if env.world_size == 1 {
        return Ok(None);
    }
    let timeout = match std::env::var("PERENNIAL_DIST_TIMEOUT_S") {
        Ok(v) => match v.trim().parse::<u64>() {
            Ok(s) if (1..=7 * 24 * 3600).contains(&s) => Duration::from_secs(s),
            _ => {
                return Err(Error::config(
                    "PERENNIAL_DIST_TIMEOUT_S",
                    &v,
                    "must be whole seconds from 1 to 604800 (a week)",
                ))
            }
        },
        Err(_) => DEFAULT_TIMEOUT,
    };
    Ok(Some(ProcessGroup::init(&env, timeout)?))
}

/// Rank 0's bytes on every rank (`bytes` is read on rank 0 only): how the other ranks
/// get a run's configuration, which only rank 0 reads from the run directory.
pub fn broadcast_bytes(group: &ProcessGroup, bytes: &[u8]) -> Result<Vec<u8>> {
    let mut len = Tensor::from_slice(&[bytes.len() as i64]);
    group.broadcast(&mut len, 0)?;
    let n = len.int64_value(&[0]);
    let mut t = if group.rank() == 0 {
        Tensor::from_slice(bytes)
    } else {
        Tensor::zeros([n], (Kind::Uint8, tch::Device::Cpu))
    };
    group.broadcast(&mut t, 0)?;
    Ok(Vec::<u8>::try_from(&t)?)
}

impl DataParallel {
    fn check_meta_batch(meta_batch: u64, world_size: usize, flag: &str) -> Result<()> {
        if meta_batch < world_size as u64 {
            return Err(Error::config(
                flag,
                meta_batch,
                format!(
                    "data-parallel training over {world_size} ranks needs at least one task \
                     per rank and update (a meta-batch of at least {world_size})"
                ),
            ));
        }
        Ok(())
    }

    /// A rank of `group`, for a run of `meta_batch` tasks per update.
    pub fn new(group: ProcessGroup, meta_batch: u64) -> Result<Self> {
        Self::with_flag(group, meta_batch, "--meta-batch")
    }

    /// [`DataParallel::new`], naming `flag` (the setting of the meta-batch's size) when
    /// the meta-batch is too small to share.
    pub fn with_flag(group: ProcessGroup, meta_batch: u64, flag: &str) -> Result<Self> {
        let (r, w) = (group.rank() as u64, group.world_size() as u64);
        Self::check_meta_batch(meta_batch, group.world_size(), flag)?;
        Ok(DataParallel {
            share: (r * meta_batch / w, (r + 1) * meta_batch / w),
            group: Arc::new(group),
            meta_batch,
            failure: Arc::new(Mutex::new(None)),
            traffic: Arc::new(Mutex::new(Traffic::default())),
        })
    }

    /// This process's rank.
    pub fn rank(&self) -> usize {
        self.group.rank()
    }

    /// How many ranks train together.
    pub fn world_size(&self) -> usize {
        self.group.world_size()
    }

    /// Whether this is rank 0, the one that reads and writes the run directory.
    pub fn is_root(&self) -> bool {
        self.rank() == 0
    }

    /// The tasks of every update, over all ranks.
    pub fn meta_batch(&self) -> u64 {
        self.meta_batch
    }

    /// This rank's tasks within every meta-batch: `lo..hi` of `0..meta_batch`.
    pub fn share(&self) -> (u64, u64) {
        self.share
    }

    /// What the hand-off has cost so far on this rank.
    pub fn traffic(&self) -> Traffic {
        *self.traffic.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// This rank's share of the meta-batch as a fraction: the weight of its gradient.
    fn weight(&self) -> f64 {
        (self.share.1 - self.share.0) as f64 / self.meta_batch as f64
    }

    /// The hand-off to give the learner ([`MetaLearner::set_gradient_reducer`]).
    pub fn reducer(&self) -> Arc<dyn GradReduce> {
        Arc::new(self.clone())
    }

    /// The first collective failure of the hand-off, if any (the optimiser cannot
    /// return it; the training loop asks after every update).
    pub fn take_failure(&self) -> Option<Error> {
        self.failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .map(|m| Error::Distributed(perennial_dist::Error::Backend(m)))
    }

    /// Every rank's `learner` takes rank 0's whole training state (parameters, buffers,
    /// optimiser), so that all start the same whatever they were built or resumed from.
    pub fn broadcast_state(&self, learner: &mut dyn MetaLearner) -> Result<()> {
        let mut state = learner.training_state();
        for (_, t) in state.iter_mut() {
            let mut c = t.detach().contiguous();
            self.group.broadcast(&mut c, 0)?;
            *t = c;
        }
        learner.load_training_state(&state)
    }

    /// Rank 0's value of an integer (the episode a resumed run continues from).
    pub fn broadcast_u64(&self, v: u64) -> Result<u64> {
        let mut t = Tensor::from_slice(&[v as i64]);
        self.group.broadcast(&mut t, 0)?;
        Ok(t.int64_value(&[0]) as u64)
    }

    /// The sum over the ranks of each number, weighted by the ranks' shares: the
    /// meta-batch's mean of per-rank means (the loss and accuracy of the log lines).
    pub fn weighted_mean(&self, values: &[f64]) -> Result<Vec<f64>> {
        let w = self.weight();
        let mut t = Tensor::from_slice(&values.iter().map(|v| v * w).collect::<Vec<_>>());
        self.group.all_reduce_sum(&mut t)?;
        Ok(Vec::<f64>::try_from(&t)?)
    }

    /// Replaces the learner's floating-point buffers (batch-norm running statistics)
    /// by their mean over the ranks, weighted by the ranks' shares, and its other
    /// buffers (counters) by rank 0's, so that every rank holds the same.
    pub fn average_buffers(&self, learner: &mut dyn MetaLearner) -> Result<()> {
        let Some(buffers) = learner.parts_mut().buffers else {
            return Ok(());
        };
        let w = self.weight();
        for t in buffers.tensors() {
            let mut c = t.detach().contiguous();
            if t.is_floating_point() {
                c *= w;
                self.group.all_reduce_sum(&mut c)?;
            } else {
                self.group.broadcast(&mut c, 0)?;
            }
            tch::no_grad(|| t.shallow_clone().copy_(&c));
        }
        Ok(())
    }

    /// Waits for every rank.
    pub fn barrier(&self) -> Result<()> {
        Ok(self.group.barrier()?)
    }

    fn reduce_flat(&self, params: &[&Tensor], grads: &mut [Option<Tensor>]) -> Result<()> {
        let kind = params.first().map_or(Kind::Float, |p| p.kind());
        let w = self.weight();
        // One buffer: every tensor's gradient (zeros where this rank has none), weighted
        // by this rank's share, then one flag per tensor (1 where it has one), so that a
        // tensor some rank has a gradient for gets one everywhere, and a tensor no rank
        // has one for keeps none, as in a single process.
        let mut parts: Vec<Tensor> = params
            .iter()
            .zip(grads.iter())
            .map(|(p, g)| match g {
                Some(g) => (g.to_kind(kind) * w).reshape([-1]),
                None => Tensor::zeros([p.numel() as i64], (kind, p.device())),
            })
            .collect();
        let flags: Vec<f64> = grads.iter().map(|g| f64::from(g.is_some())).collect();
        let device = params.first().map_or(tch::Device::Cpu, |p| p.device());
        parts.push(Tensor::from_slice(&flags).to_kind(kind).to_device(device));
        let mut flat = Tensor::cat(&parts, 0);
        let bytes = flat.numel() as u64 * flat.kind().elt_size_in_bytes() as u64;
        self.group.all_reduce_sum(&mut flat)?;
        let mut offset = 0i64;
        let total: i64 = params.iter().map(|p| p.numel() as i64).sum();
        for (i, (p, g)) in params.iter().zip(grads.iter_mut()).enumerate() {
            let n = p.numel() as i64;
            let has = flat.double_value(&[total + i as i64]) > 0.0;
            *g = has.then(|| {
                flat.narrow(0, offset, n)
                    .view(p.size().as_slice())
                    .to_kind(p.kind())
            });
            offset += n;
        }
        let mut t = self.traffic.lock().unwrap_or_else(|p| p.into_inner());
        t.calls += 1;
        t.bytes += bytes;
        Ok(())
    }
}

impl GradReduce for DataParallel {
    fn reduce(&self, params: &[&Tensor], grads: &mut [Option<Tensor>]) -> bool {
        let start = std::time::Instant::now();
        let out = tch::no_grad(|| self.reduce_flat(params, grads));
        self.traffic
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .seconds += start.elapsed().as_secs_f64();
        match out {
            Ok(()) => true,
            Err(e) => {
                let mut f = self.failure.lock().unwrap_or_else(|p| p.into_inner());
                f.get_or_insert_with(|| e.to_string());
                false
            }
        }
    }
}
