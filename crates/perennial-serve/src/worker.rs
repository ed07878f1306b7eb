//! The learner task: one thread owns the learner and the store (tch tensors are not
//! `Sync`) and takes requests from a bounded queue. It drains what is waiting and
//! serves it in order, with consecutive predictions encoded as one batch and
//! consecutive teachings committed in one transaction (acknowledged after the
//! commit). Consolidation runs on a copy in another thread and comes back through the
//! same queue as a learner rebuilt on the new encoder, which is swapped in at once.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use perennial::lifelong::{
    prune_example_stores, Due, Encoder, LearnerConfig, LifelongLearner, Prediction,
};
use tokio::sync::{mpsc, oneshot};

use crate::error::ApiError;
use crate::state::{ExampleIndexStatus, LastConsolidation, Shared};
use crate::store::{self, Example, Store, Unknown, Version};

/// What a teaching did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Taught {
    /// The class.
    pub class: String,
    /// Examples added.
    pub added: usize,
    /// Examples of the class now.
    pub examples: usize,
}

/// One answer of `POST /v1/predict`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Answer {
    /// Names the prediction for `POST /v1/feedback`.
    pub id: String,
    /// The learner's prediction.
    #[serde(flatten)]
    pub prediction: Prediction,
}

/// Images encoded in one forward pass at most.
const ENCODE_CHUNK: usize = 16;

type Reply<T> = oneshot::Sender<Result<T, ApiError>>;
/// Images to predict and where their answers go.
type Asked = (Vec<Vec<f32>>, Reply<Vec<Answer>>);

/// A request to the learner task.
#[derive(Debug)]
pub enum Request {
    /// Teach examples of a class.
    Learn {
        /// The class.
        label: String,
        /// Its examples' pixels.
        images: Vec<Vec<f32>>,
        /// Where the answer goes.
        reply: Reply<Taught>,
    },
    /// Predict images.
    Predict {
        /// Their pixels.
        images: Vec<Vec<f32>>,
        /// Where the answers go.
        reply: Reply<Vec<Answer>>,
    },
    /// Forget a class.
    Forget {
        /// The class.
        label: String,
        /// The number of examples forgotten.
        reply: Reply<usize>,
    },
    /// A prediction's true label.
    Feedback {
        /// The prediction's id.
        id: String,
        /// Its true class.
        label: String,
        /// Where the answer goes.
        reply: Reply<Taught>,
    },
    /// The unknown queue.
    Unknown {
        /// At most this many.
        limit: usize,
        /// Where the answer goes.
        reply: Reply<Vec<Unknown>>,
    },
    /// Label an input of the unknown queue.
    LabelUnknown {
        /// Its id in the queue.
        id: i64,
        /// Its class.
        label: String,
        /// Where the answer goes.
        reply: Reply<Taught>,
    },
    /// Start a consolidation now.
    Consolidate {
        /// The version it will produce.
        reply: Reply<u64>,
    },
    /// Make an earlier version current again.
    Rollback {
        /// The version (`None`: the one before the current).
        version: Option<u64>,
        /// The version now current.
        reply: Reply<u64>,
    },
    /// A consolidation finished (sent by its thread).
    Consolidated(Box<Result<Rebuilt>>),
}

/// A consolidation's result: a learner rebuilt on the new encoder.
#[derive(Debug)]
pub struct Rebuilt {
    learner: LifelongLearner,
    version: Version,
    replayed: i64,
    epoch: u64,
}

/// The settings of the learner task.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Predictions and teachings drained into one batch at most.
    pub max_batch: usize,
    /// Representation versions whose weights are kept for rollback.
    pub keep_versions: usize,
    /// Inputs kept in the unknown queue.
    pub unknown_bound: usize,
    /// Recent predictions remembered for feedback.
    pub recent_predictions: usize,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            max_batch: 64,
            keep_versions: 5,
            unknown_bound: 1000,
            recent_predictions: 10_000,
        }
    }
}

/// The learner settings of version `version` (each version draws its own episodes).
fn config_of(base: &LearnerConfig, version: u64) -> LearnerConfig {
    base.clone().with_seed(base.seed.wrapping_add(version))
}

/// A learner on version `version` of the store, with every example up to `upto`
/// learnt one at a time in the order they were written (the order they were first
/// learnt in, so the rebuilt learner predicts exactly as the one it replaces).
pub fn rebuild(store: &Store, version: u64, upto: i64) -> Result<LifelongLearner> {
    let encoder = store.encoder(version)?;
    let mut learner = fresh(store, encoder, version)?;
    replay(&mut learner, &store.examples(0, upto)?)?;
    set_new_classes(&mut learner, store, version)?;
    Ok(learner)
}

/// A learner that knows nothing yet on `encoder`, version `version` of the store.
fn fresh(store: &Store, encoder: Box<dyn Encoder>, version: u64) -> Result<LifelongLearner> {
    let base = store.config()?;
    let mut learner = LifelongLearner::new(encoder, config_of(&base, version))?;
    learner.set_version(version);
    Ok(learner)
}

/// Attaches the store's example index to `learner` when the store keeps one
/// (reloaded when it matches the learner's examples, written otherwise).
fn attach_examples(learner: &mut LifelongLearner, store: &Store) -> Result<()> {
    if store.example_index()? {
        let clock = Instant::now();
        let origin = learner.attach_example_store(&store.examples_dir())?;
        tracing::info!(
            version = learner.version(),
            origin,
            entries = learner.example_store().map_or(0, |s| s.len()),
            seconds = clock.elapsed().as_secs_f64(),
            "example index attached"
        );
    }
    Ok(())
}

/// Removes the example index of every version but `version` (or all of it when the
/// store keeps none).
fn prune_examples(store: &Store, version: u64) {
    let dir = store.examples_dir();
    let r = match store.example_index() {
        Ok(true) => prune_example_stores(&dir, version).map_err(anyhow::Error::from),
        Ok(false) if dir.exists() => std::fs::remove_dir_all(&dir).map_err(anyhow::Error::from),
        Ok(false) => Ok(()),
        Err(e) => Err(e),
    };
    if let Err(e) = r {
        tracing::warn!("old example indexes not removed: {e:#}");
    }
}

fn replay(learner: &mut LifelongLearner, examples: &[Example]) -> Result<()> {
    for e in examples {
        let x = learner.images(&e.pixels)?;
        learner.learn(&e.label, &x)?;
    }
    Ok(())
}

/// The policy counts the classes first taught after the version's consolidation.
fn set_new_classes(learner: &mut LifelongLearner, store: &Store, version: u64) -> Result<()> {
    if version > 0 {
        let upto = store
            .versions()?
            .into_iter()
            .find(|v| v.version == version)
            .map_or(0, |v| v.upto);
        learner.set_new_classes(store.classes_after(upto)?);
    }
    Ok(())
}

/// The learner task's state.
pub struct Worker {
    store: Store,
    learner: LifelongLearner,
    shared: Arc<Shared>,
    tx: mpsc::WeakSender<Request>,
    config: WorkerConfig,
    recent: HashMap<String, Vec<f32>>,
    recent_order: VecDeque<String>,
    boot: String,
    seq: u64,
    /// Bumped by a rollback or a forget: a consolidation started before is stale.
    epoch: u64,
    running: Option<u64>,
    /// The unknown-queue input the next teaching labels (it leaves the queue in the
    /// teaching's transaction).
    unqueue: Option<i64>,
    /// Consolidations failed in a row, and when the policy may start one again.
    failures: u32,
    retry_after: Option<Instant>,
}

impl Worker {
    /// The learner task over `store`, its learner rebuilt from it.
    pub fn new(
        store: Store,
        shared: Arc<Shared>,
        tx: mpsc::WeakSender<Request>,
        config: WorkerConfig,
    ) -> Result<Worker> {
        let clock = Instant::now();
        let last = store.last_example()?;
        let mut learner = rebuild(&store, store.current()?, last)?;
        attach_examples(&mut learner, &store)?;
        prune_examples(&store, store.current()?);
        tracing::info!(
            classes = learner.known(),
            version = store.current()?,
            seconds = clock.elapsed().as_secs_f64(),
            "learner rebuilt from the store"
        );
        let boot = {
            let mut b = [0u8; 4];
            getrandom::getrandom(&mut b).context("randomness")?;
            b.iter().map(|x| format!("{x:02x}")).collect()
        };
        let mut w = Worker {
            store,
            learner,
            shared,
            tx,
            config,
            recent: HashMap::new(),
            recent_order: VecDeque::new(),
            boot,
            seq: 0,
            epoch: 0,
            running: None,
            unqueue: None,
            failures: 0,
            retry_after: None,
        };
        w.publish()?;
        Ok(w)
    }

    /// Serves requests until every sender is gone.
    pub fn run(mut self, mut rx: mpsc::Receiver<Request>) {
        while let Some(first) = rx.blocking_recv() {
            let mut batch = vec![first];
            while batch.len() < self.config.max_batch {
                match rx.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(_) => break,
                }
            }
            // Predictions change nothing the status shows.
            let mut changed = batch.iter().any(|r| !matches!(r, Request::Predict { .. }));
            self.serve(batch);
            let waiting = self.retry_after.is_some_and(|t| Instant::now() < t);
            if self.running.is_none() && !waiting && self.learner.due().is_some() {
                changed = true;
                if let Err(e) = self.maybe_consolidate(None) {
                    tracing::warn!("consolidation not started: {}", e.message);
                }
            }
            if changed {
                self.publish_or_log();
            }
        }
    }

    fn serve(&mut self, batch: Vec<Request>) {
        let mut batch = batch.into_iter().peekable();
        while let Some(r) = batch.next() {
            match r {
                Request::Predict { images, reply } => {
                    let mut group = vec![(images, reply)];
                    while let Some(Request::Predict { .. }) = batch.peek() {
                        if let Some(Request::Predict { images, reply }) = batch.next() {
                            group.push((images, reply));
                        }
                    }
                    self.predict(group);
                }
                Request::Learn {
                    label,
                    images,
                    reply,
                } => {
                    let mut group = vec![(label, images, reply)];
                    while let Some(Request::Learn { .. }) = batch.peek() {
                        if let Some(Request::Learn {
                            label,
                            images,
                            reply,
                        }) = batch.next()
                        {
                            group.push((label, images, reply));
                        }
                    }
                    self.learn(group);
                }
                Request::Forget { label, reply } => {
                    let _ = reply.send(self.forget(&label));
                }
                Request::Feedback { id, label, reply } => {
                    // Taken from the recent ones: a correction is learnt once.
                    let r = match self.recent.remove(&id) {
                        Some(px) => {
                            let r = self.learn_one(label, vec![px.clone()]);
                            if r.is_err() {
                                self.recent.insert(id, px);
                            }
                            r
                        }
                        None => Err(ApiError::not_found(format!(
                            "no recent prediction {id:?} (the last {} are kept, until a restart)",
                            self.config.recent_predictions
                        ))),
                    };
                    let _ = reply.send(r);
                }
                Request::Unknown { limit, reply } => {
                    let _ = reply.send(self.store.unknown(limit).map_err(ApiError::internal));
                }
                Request::LabelUnknown { id, label, reply } => {
                    let _ = reply.send(self.label_unknown(id, label));
                }
                Request::Consolidate { reply } => {
                    let r = self.maybe_consolidate(Some(Due::Asked));
                    let _ = reply.send(r);
                }
                Request::Rollback { version, reply } => {
                    let _ = reply.send(self.rollback(version));
                }
                Request::Consolidated(done) => {
                    if let Err(e) = self.install(*done) {
                        tracing::error!("consolidation not installed: {e:#}");
                    }
                }
            }
        }
    }

    fn next_id(&mut self) -> String {
        self.seq += 1;
        format!("{}{:08x}", self.boot, self.seq)
    }

    fn predict(&mut self, group: Vec<Asked>) {
        if self.learner.known() == 0 {
            for (_, reply) in group {
                let _ = reply.send(Err(ApiError::conflict(
                    "the learner knows no class yet: teach one first",
                )));
            }
            return;
        }
        let images: Vec<&Vec<f32>> = group.iter().flat_map(|(im, _)| im.iter()).collect();
        let predictions = self
            .features(&images)
            .and_then(|f| self.learner.predict_encoded(&f));
        let predictions = match predictions {
            Ok(p) => p,
            Err(e) => {
                for (_, reply) in group {
                    let _ = reply.send(Err(ApiError::internal(&e)));
                }
                return;
            }
        };
        let mut predictions = predictions.into_iter();
        let mut unknown = Vec::new();
        let at = store::now();
        for (images, reply) in group {
            let mut answers = Vec::with_capacity(images.len());
            for px in images {
                let p = predictions.next().expect("one prediction per image");
                let id = self.next_id();
                if p.unknown {
                    unknown.push((
                        Unknown {
                            id: 0,
                            prediction: id.clone(),
                            label: p.label.clone(),
                            probability: p.probability,
                            unknown_score: p.unknown_score,
                            at: at.clone(),
                        },
                        px.clone(),
                    ));
                }
                self.remember(id.clone(), px);
                answers.push(Answer { id, prediction: p });
            }
            let _ = reply.send(Ok(answers));
        }
        if let Err(e) = self.store.add_unknown(&unknown, self.config.unknown_bound) {
            tracing::warn!("unknown inputs not queued: {e:#}");
        }
    }

    /// Features of images under the current version, in chunks of a few images.
    fn features(&self, images: &[&Vec<f32>]) -> perennial::Result<tch::Tensor> {
        let f = images
            .chunks(ENCODE_CHUNK)
            .map(|chunk| {
                let pixels: Vec<f32> = chunk.iter().flat_map(|px| px.iter()).copied().collect();
                Ok(self.learner.encode(&self.learner.images(&pixels)?))
            })
            .collect::<perennial::Result<Vec<_>>>()?;
        Ok(tch::Tensor::cat(&f, 0))
    }

    fn remember(&mut self, id: String, px: Vec<f32>) {
        self.recent_order.push_back(id.clone());
        self.recent.insert(id, px);
        while self.recent_order.len() > self.config.recent_predictions {
            if let Some(old) = self.recent_order.pop_front() {
                self.recent.remove(&old);
            }
        }
    }

    fn learn_one(&mut self, label: String, images: Vec<Vec<f32>>) -> Result<Taught, ApiError> {
        let (tx, mut rx) = oneshot::channel();
        self.learn(vec![(label, images, tx)]);
        rx.try_recv()
            .unwrap_or_else(|_| Err(ApiError::internal("no answer")))
    }

    /// Commits a group of teachings in one transaction, then learns them in memory and
    /// answers: an acknowledged example is on disk.
    fn learn(&mut self, group: Vec<(String, Vec<Vec<f32>>, Reply<Taught>)>) {
        let mut ok = Vec::new();
        for (label, images, reply) in group {
            match perennial::lifelong::learner::check_label(&label) {
                Ok(()) => ok.push((label, images, reply)),
                Err(e) => {
                    let _ = reply.send(Err(ApiError::bad_request(e.to_string())));
                }
            }
        }
        if ok.is_empty() {
            return;
        }
        let items: Vec<(&str, &[Vec<f32>])> = ok
            .iter()
            .map(|(l, im, _)| (l.as_str(), im.as_slice()))
            .collect();
        let counts = match self.store.add_examples(&items, self.unqueue.take()) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!("examples not stored: {e:#}");
                for (_, _, reply) in ok {
                    let _ = reply.send(Err(ApiError::internal(format!(
                        "the examples were not stored: {e}"
                    ))));
                }
                return;
            }
        };
        let mut answers = Vec::with_capacity(ok.len());
        for ((label, images, reply), examples) in ok.into_iter().zip(counts) {
            let added = images.len();
            let r = images
                .iter()
                .try_for_each(|px| {
                    let x = self.learner.images(px)?;
                    self.learner.learn(&label, &x).map(|_| ())
                })
                .map(|()| Taught {
                    class: label,
                    added,
                    examples,
                })
                .map_err(|e| ApiError::internal(e.to_string()));
            if r.is_ok() {
                self.shared
                    .metrics
                    .examples_learnt
                    .fetch_add(added as u64, Ordering::Relaxed);
            }
            answers.push((reply, r));
        }
        self.publish_or_log();
        for (reply, r) in answers {
            let _ = reply.send(r);
        }
    }

    /// Publishes before a change is answered, so that whoever was answered reads it
    /// (`GET /v1/classes` after a teaching lists the class).
    fn publish_or_log(&mut self) {
        if let Err(e) = self.publish() {
            tracing::error!("status not published: {e:#}");
        }
    }

    fn forget(&mut self, label: &str) -> Result<usize, ApiError> {
        let n = self.store.forget(label).map_err(ApiError::internal)?;
        self.learner
            .forget(label)
            .map_err(|e| ApiError::internal(e.to_string()))?;
        if n == 0 {
            return Err(ApiError::not_found(format!("no class {label:?}")));
        }
        self.epoch += 1;
        self.publish_or_log();
        Ok(n)
    }

    fn label_unknown(&mut self, id: i64, label: String) -> Result<Taught, ApiError> {
        let px = self
            .store
            .unknown_pixels(id)
            .map_err(ApiError::internal)?
            .ok_or_else(|| ApiError::not_found(format!("no input {id} in the unknown queue")))?;
        self.unqueue = Some(id);
        let taught = self.learn_one(label, vec![px]);
        self.unqueue = None;
        taught
    }

    /// Starts a consolidation when asked, or when the learner's policy says so.
    fn maybe_consolidate(&mut self, asked: Option<Due>) -> Result<u64, ApiError> {
        if let Some(version) = self.running {
            return Err(ApiError::conflict(format!(
                "a consolidation is running (to version {version})"
            )));
        }
        let Some(reason) = asked.or_else(|| self.learner.due()) else {
            return Err(ApiError::conflict("no consolidation is due"));
        };
        let job = self
            .learner
            .consolidation_job(reason)
            .map_err(|e| ApiError::conflict(e.to_string()))?;
        let version = self.store.next_version().map_err(ApiError::internal)?;
        let upto = self.store.last_example().map_err(ApiError::internal)?;
        let dir = self.store.dir().to_path_buf();
        let tx = self.tx.upgrade().ok_or_else(ApiError::busy)?;
        let epoch = self.epoch;
        std::thread::Builder::new()
            .name(format!("consolidate-v{version}"))
            .spawn(move || {
                let r = consolidate(job, &dir, version, upto, epoch);
                let _ = tx.blocking_send(Request::Consolidated(Box::new(r)));
            })
            .map_err(ApiError::internal)?;
        tracing::info!(version, reason = %reason, "consolidation started");
        self.running = Some(version);
        self.shared
            .status
            .write()
            .expect("status")
            .consolidation_since = Some(store::now());
        Ok(version)
    }

    fn install(&mut self, done: Result<Rebuilt>) -> Result<()> {
        let Some(expected) = self.running.take() else {
            return Ok(());
        };
        self.shared
            .status
            .write()
            .expect("status")
            .consolidation_since = None;
        let mut done = match done {
            Ok(d) => {
                self.failures = 0;
                d
            }
            Err(e) => {
                // Not again at once: after 1, 2, 4, ... minutes (at most an hour).
                self.failures += 1;
                let wait = 60u64 << (self.failures - 1).min(6);
                self.retry_after =
                    Some(Instant::now() + std::time::Duration::from_secs(wait.min(3600)));
                return Err(e);
            }
        };
        debug_assert_eq!(done.version.version, expected);
        if done.epoch != self.epoch {
            // A class was forgotten or a version rolled back meanwhile: replay all.
            let encoder = perennial::lifelong::encoder::copy(done.learner.encoder())?;
            let mut learner = fresh(&self.store, encoder, expected)?;
            replay(
                &mut learner,
                &self.store.examples(0, self.store.last_example()?)?,
            )?;
            // The old one releases its example index before the new one takes it.
            done.learner = learner;
            attach_examples(&mut done.learner, &self.store)?;
        } else {
            let last = self.store.last_example()?;
            replay(
                &mut done.learner,
                &self.store.examples(done.replayed, last)?,
            )?;
        }
        // Everything that can fail comes before the commit; after it, the swap.
        let new_classes = self.store.classes_after(done.version.upto)?;
        done.learner.set_new_classes(new_classes);
        self.store.add_version(&done.version)?;
        self.learner = done.learner;
        if let Err(e) = self.store.prune(self.config.keep_versions) {
            tracing::warn!("old versions not pruned: {e:#}");
        }
        prune_examples(&self.store, expected);
        self.shared
            .metrics
            .consolidations
            .fetch_add(1, Ordering::Relaxed);
        self.shared.status.write().expect("status").last =
            Some(LastConsolidation::from(&done.version));
        tracing::info!(version = expected, "consolidation installed");
        Ok(())
    }

    fn rollback(&mut self, version: Option<u64>) -> Result<u64, ApiError> {
        if let Some(v) = self.running {
            return Err(ApiError::conflict(format!(
                "a consolidation is running (to version {v}): roll back after it ends"
            )));
        }
        let current = self.store.current().map_err(ApiError::internal)?;
        let target = match version {
            Some(v) => v,
            None => self
                .store
                .previous_kept()
                .map_err(|e| ApiError::conflict(e.to_string()))?,
        };
        self.store
            .check_kept(target)
            .map_err(|e| ApiError::conflict(e.to_string()))?;
        // Rebuilt first: the store names the version only once it serves.
        let last = self.store.last_example().map_err(ApiError::internal)?;
        let mut learner = rebuild(&self.store, target, last).map_err(ApiError::internal)?;
        // The current learner lets its example index go (the target may be its version).
        if let Some(root) = self.learner.detach_example_store() {
            if let Err(e) = attach_examples(&mut learner, &self.store) {
                if let Err(again) = self.learner.attach_example_store(&root) {
                    tracing::warn!("the example index is detached: {again}");
                }
                return Err(ApiError::internal(e));
            }
        } else {
            attach_examples(&mut learner, &self.store).map_err(ApiError::internal)?;
        }
        self.store.set_current(target).map_err(ApiError::internal)?;
        self.learner = learner;
        prune_examples(&self.store, target);
        self.epoch += 1;
        self.publish_or_log();
        tracing::info!(from = current, to = target, "rolled back");
        Ok(target)
    }

    /// Publishes the status and the class list for the handlers.
    fn publish(&mut self) -> Result<()> {
        let classes = self.learner.classes();
        let versions = self.store.versions()?;
        let mut s = self.shared.status.write().expect("status");
        s.version = self.store.current()?;
        s.examples = classes.iter().map(|c| c.examples).sum();
        s.classes = classes;
        s.running = self.running;
        if s.last.is_none() {
            s.last = versions
                .iter()
                .rev()
                .find(|v| v.version > 0)
                .map(LastConsolidation::from);
        }
        s.versions = versions;
        s.rates = self.learner.recent_rates();
        s.example_index = self.learner.example_store().map(|st| ExampleIndexStatus {
            entries: st.len(),
            origin: self.learner.example_store_origin().unwrap_or("loaded"),
        });
        Ok(())
    }
}

/// Trains a consolidation job, writes its weights, and rebuilds a learner on them
/// from the store (on the consolidation's thread).
fn consolidate(
    job: perennial::lifelong::learner::ConsolidationJob,
    dir: &Path,
    version: u64,
    upto: i64,
    epoch: u64,
) -> Result<Rebuilt> {
    let done = job.run()?;
    let record = done.record(version);
    let encoder = done.into_encoder();
    let sha256 = store::write_weights(dir, version, &encoder.state())?;
    let store = Store::attach(dir)?;
    let replayed = store.last_example()?;
    let mut learner = fresh(&store, encoder, version)?;
    replay(&mut learner, &store.examples(0, replayed)?)?;
    attach_examples(&mut learner, &store)?;
    Ok(Rebuilt {
        learner,
        version: Version {
            version,
            at: store::now(),
            reason: record.reason.to_string(),
            loss: Some(record.loss),
            accuracy: record.accuracy,
            seconds: Some(record.seconds),
            classes: Some(record.classes as u64),
            upto,
            sha256,
            kept: true,
        },
        replayed,
        epoch,
    })
}
