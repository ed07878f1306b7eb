//! MAML and its gradient-based relatives, behind one implementation:
//!
//! * **MAML** (Finn, Abbeel & Levine, ICML 2017) with *exact* second-order
//!   meta-gradients: the inner steps are taken with `create_graph`, so the outer
//!   gradient flows through every inner gradient (Hessian-vector products included).
//! * **First-order MAML** (same paper): inner gradients are treated as constants.
//! * **ANIL** (Raghu et al., ICLR 2020): the inner loop adapts the head only; the body's
//!   features are computed once per task, and the outer update trains everything.
//! * **Meta-SGD** (Li et al. 2017): every parameter has its own learned inner learning
//!   rate (a tensor of its shape, initialised to `inner_lr`), meta-trained with θ.
//!
//! Batch norm uses batch statistics everywhere (see [`crate::meta::optimization::fastnet`]). When the
//! body can run many tasks at once ([`crate::nn::Backbone::forward_tasks`], e.g. the
//! sinusoid MLP) and the tasks of a meta-batch have equal sizes, the whole meta-batch is
//! one batched computation: each task's copy of θ is a broadcast view, and one
//! `autograd.grad` of the summed task losses gives every task its own inner gradient.
//! The result is the same meta-gradient as the loop over tasks (a test checks it).
//!
//! Two options from MAML++ (Antoniou, Edwards & Storkey, ICLR 2019), both off by default:
//!
//! * **Multi-step loss** ([`MamlConfig::msl_iterations`]): early in training the
//!   meta-loss is a weighted sum of the query losses after *every* inner step, not only
//!   the last; the weights ([`msl_weights`]) start equal and are annealed onto the last
//!   step over the given number of meta-iterations, after which the plain loss is used.
//! * **Per-step batch norm** ([`MamlConfig::per_step_bn`]): batch norm's scale and shift
//!   have one meta-learned copy per number of inner updates taken (0, 1, …,
//!   `inner_steps`); the forward pass after `j` updates uses copy `j` (the last copy for
//!   `j` beyond `inner_steps`, e.g. at evaluation with more steps). As in MAML++, the
//!   batch-norm parameters are then learned by the outer loop only, never adapted in the
//!   inner loop. Normalisation still uses batch statistics (transductive): MAML++'s
//!   per-step *running* statistics only matter for non-transductive evaluation.

use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};
use crate::meta::optimization::fastnet::{FastNet, FastNetConfig};
use crate::meta::optimization::inner::{sgd_step, Rate};
use crate::meta::{Adapted, MetaLearner, Parts, PartsMut, StepReport};
use crate::nn::ParamSet;
use crate::optim::{Adam, AdamConfig};
use crate::tensors::{Batch, Task};

/// Which member of the family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MamlVariant {
    /// Second-order MAML.
    #[default]
    Maml,
    /// First-order MAML.
    Fomaml,
    /// Almost No Inner Loop: adapt the head only.
    Anil,
    /// Learned per-parameter inner learning rates.
    Metasgd,
}

impl MamlVariant {
    /// The command-line name.
    pub fn name(self) -> &'static str {
        match self {
            MamlVariant::Maml => "maml",
            MamlVariant::Fomaml => "fomaml",
            MamlVariant::Anil => "anil",
            MamlVariant::Metasgd => "metasgd",
        }
    }

    /// Whether inner gradients are differentiated through.
    pub fn second_order(self) -> bool {
        self != MamlVariant::Fomaml
    }
}

impl std::str::FromStr for MamlVariant {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "maml" => Ok(MamlVariant::Maml),
            "fomaml" => Ok(MamlVariant::Fomaml),
            "anil" => Ok(MamlVariant::Anil),
            "metasgd" | "meta-sgd" => Ok(MamlVariant::Metasgd),
            _ => Err(Error::config(
                "algorithm",
                s,
                "known: maml, fomaml, anil, metasgd",
            )),
        }
    }
}

/// Settings of the MAML family.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct MamlConfig {
    /// Which algorithm.
    pub variant: MamlVariant,
    /// The network.
    pub net: FastNetConfig,
    /// Inner gradient steps during meta-training.
    pub inner_steps: usize,
    /// Inner gradient steps when adapting to a new task (evaluation, `adapt`).
    pub eval_steps: usize,
    /// Inner learning rate (Meta-SGD: the initial value of every learned rate).
    pub inner_lr: f64,
    /// The outer optimiser.
    pub optimizer: AdamConfig,
    /// MAML++ multi-step loss, annealed onto the last step over this many
    /// meta-iterations (see [`msl_weights`]); 0 turns it off.
    pub msl_iterations: usize,
    /// MAML++ per-step batch-norm scales and shifts (see the module docs).
    pub per_step_bn: bool,
}

impl Default for MamlConfig {
    /// Finn et al.'s Omniglot 5-way setting: one inner step of 0.4, Adam 1e-3.
    fn default() -> Self {
        MamlConfig {
            variant: MamlVariant::Maml,
            net: FastNetConfig::default(),
            inner_steps: 1,
            eval_steps: 3,
            inner_lr: 0.4,
            optimizer: AdamConfig {
                step_every: 0,
                ..Default::default()
            },
            msl_iterations: 0,
            per_step_bn: false,
        }
    }
}

impl MamlConfig {
    /// Checks the values once, before use.
    pub fn validate(&self) -> Result<()> {
        self.optimizer.validate()?;
        if !(self.inner_lr.is_finite() && self.inner_lr > 0.0) {
            return Err(Error::config(
                "--inner-lr",
                self.inner_lr,
                "must be positive",
            ));
        }
        if self.inner_steps == 0 {
            return Err(Error::config(
                "--inner-steps",
                0,
                "must be at least 1 (with 0 the learner never adapts)",
            ));
        }
        if self.net.outputs == 0 {
            return Err(Error::config("outputs", 0, "must be at least 1"));
        }
        if self.msl_iterations > 0 && self.inner_steps < 2 {
            return Err(Error::config(
                "--msl-iterations",
                self.msl_iterations,
                "the multi-step loss needs --inner-steps 2 or more (with one step it is the plain loss)",
            ));
        }
        if self.per_step_bn && self.variant == MamlVariant::Anil {
            return Err(Error::config(
                "--per-step-bn",
                true,
                "ANIL never runs the body in its inner loop, so per-step batch norm has nothing to do",
            ));
        }
        Ok(())
    }
}

/// MAML++'s multi-step loss weights for the query losses after inner updates
/// `1..=steps`, at meta-iteration `iteration` of an annealing period of `anneal`
/// meta-iterations: all `1/steps` at the start; then every weight but the last shrinks
/// linearly (by `1/(steps·anneal)` per iteration, down to a floor of `0.03/steps`)
/// while the last grows by what they lose, so the weights always sum to one. From
/// `iteration >= anneal` on, only the last step counts (`[0, …, 0, 1]`).
pub fn msl_weights(steps: usize, iteration: u64, anneal: usize) -> Vec<f64> {
    if steps == 0 {
        return Vec::new();
    }
    let mut w = vec![0.0; steps];
    if anneal == 0 || iteration >= anneal as u64 {
        w[steps - 1] = 1.0;
        return w;
    }
    let n = steps as f64;
    let decay = iteration as f64 / (n * anneal as f64);
    let floor = 0.03 / n;
    for v in w.iter_mut().take(steps - 1) {
        *v = (1.0 / n - decay).max(floor);
    }
    w[steps - 1] = (1.0 / n + (n - 1.0) * decay).min(1.0 - (n - 1.0) * floor);
    w
}

/// A MAML-family learner: θ (and Meta-SGD's rates) with Adam.
#[derive(Debug)]
pub struct Maml {
    config: MamlConfig,
    net: FastNet,
    params: ParamSet,
    adam: Adam,
}

const LR_PREFIX: &str = "lr.";
/// Prefix of the per-step batch-norm copies: `step<j>.<name>` for `j` in `1..=inner_steps`
/// (copy 0 is the plain `<name>`).
const STEP_PREFIX: &str = "step";

/// Whether `name` is a batch-norm scale or shift of the body.
fn is_bn(name: &str) -> bool {
    name.starts_with("body.bn")
}

impl Maml {
    /// A freshly initialised learner (deterministic for `seed`).
    pub fn new(config: MamlConfig, seed: u64, device: Device) -> Result<Self> {
        config.validate()?;
        let net = FastNet::new(config.net.clone());
        let mut params = net.init(seed, device);
        if config.variant == MamlVariant::Metasgd {
            let rates: Vec<(String, Tensor)> = params
                .iter()
                .map(|(n, t)| {
                    (
                        format!("{LR_PREFIX}{n}"),
                        t.detach()
                            .full_like(config.inner_lr)
                            .set_requires_grad(true),
                    )
                })
                .collect();
            for (n, t) in rates {
                params.push(n, t);
            }
        }
        if config.per_step_bn {
            let bn: Vec<(String, Tensor)> = params
                .iter()
                .filter(|(n, _)| is_bn(n))
                .map(|(n, t)| (n.to_string(), t.shallow_clone()))
                .collect();
            if bn.is_empty() {
                return Err(Error::config(
                    "--per-step-bn",
                    true,
                    "the network has no batch norm (use a Conv4 body)",
                ));
            }
            for j in 1..=config.inner_steps {
                for (n, t) in &bn {
                    params.push(
                        format!("{STEP_PREFIX}{j}.{n}"),
                        t.detach().copy().set_requires_grad(true),
                    );
                }
            }
        }
        let adam = Adam::new(config.optimizer.clone(), &params);
        Ok(Maml {
            config,
            net,
            params,
            adam,
        })
    }

    /// The settings.
    pub fn config(&self) -> &MamlConfig {
        &self.config
    }

    /// The network.
    pub fn net(&self) -> &FastNet {
        &self.net
    }

    /// The meta-parameters (θ, and `lr.*` for Meta-SGD).
    pub fn params(&self) -> &ParamSet {
        &self.params
    }

    /// Converts the meta-parameters to `kind` (e.g. `Kind::Double` for gradient
    /// checks) and resets the optimiser.
    pub fn set_kind(&mut self, kind: Kind) {
        let device = self
            .params
            .tensors()
            .first()
            .map_or(Device::Cpu, |t| t.device());
        self.params = self.params.map(|_, t| {
            t.detach()
                .to_device(device)
                .to_kind(kind)
                .set_requires_grad(true)
        });
        self.adam = Adam::new(self.config.optimizer.clone(), &self.params);
    }

    fn inner(&self) -> Inner<'_> {
        Inner {
            net: &self.net,
            variant: self.config.variant,
            inner_lr: self.config.inner_lr,
            inner_steps: self.config.inner_steps,
            msl: self.loss_weights(),
            per_step_bn: self.config.per_step_bn,
            params: &self.params,
        }
    }

    /// The weights of the query losses after inner updates `1..=inner_steps` at the
    /// current meta-iteration (the last step alone unless the multi-step loss is on).
    pub fn loss_weights(&self) -> Vec<f64> {
        msl_weights(
            self.config.inner_steps,
            self.adam.steps(),
            self.config.msl_iterations,
        )
    }

    /// Whether `tasks` can run as one batched computation.
    fn batchable(&self, tasks: &[Task]) -> bool {
        tasks.len() > 1
            && self.config.variant != MamlVariant::Anil
            && !self.config.per_step_bn
            && tasks.windows(2).all(|w| {
                w[0].support.x.size() == w[1].support.x.size()
                    && w[0].query.x.size() == w[1].query.x.size()
                    && w[0].support.y.size() == w[1].support.y.size()
            })
            && self.net.has_forward_tasks()
    }

    /// The batched meta-loss of equal-sized tasks (see the module docs), the mean query
    /// loss after the last step, and the per-task query outputs after the last step.
    fn batched_meta_loss(&self, tasks: &[Task]) -> (Tensor, Tensor, Tensor) {
        let t = tasks.len() as i64;
        let stack = |f: &dyn Fn(&Task) -> &Tensor| {
            Tensor::stack(&tasks.iter().map(f).collect::<Vec<_>>(), 0)
        };
        let (xs, ys) = (stack(&|k| &k.support.x), stack(&|k| &k.support.y));
        let xq = stack(&|k| &k.query.x);
        let yq = stack(&|k| &k.query.y);
        let inner = self.inner();
        let model = inner.model();
        let mut fast = model.map(|_, p| {
            let mut shape = vec![t];
            shape.extend(p.size());
            p.unsqueeze(0).expand(&shape, false)
        });
        let create_graph = self.config.variant.second_order();
        let query = |fast: &ParamSet| {
            let out = self
                .net
                .forward_tasks(fast, &xq)
                .expect("checked by batchable");
            (self.net.task_losses(&out, &yq).mean(out.kind()), out)
        };
        let mut total: Option<Tensor> = None;
        for (j, w) in inner.msl.iter().enumerate() {
            let out = self
                .net
                .forward_tasks(&fast, &xs)
                .expect("checked by batchable");
            let loss = self.net.task_losses(&out, &ys).sum(out.kind());
            fast = inner.step(&fast, &loss, create_graph, create_graph);
            if j + 1 < inner.msl.len() && *w > 0.0 {
                let term = query(&fast).0 * *w;
                total = Some(total.map_or_else(|| term.shallow_clone(), |t| t + &term));
            }
        }
        let (last, out) = query(&fast);
        let w = inner.msl.last().copied().unwrap_or(1.0);
        let weighted = match total {
            Some(t) => t + &last * w,
            None => &last * w,
        };
        (weighted, last, out)
    }

    /// The meta-gradient of the mean query loss over `tasks`, one tensor per
    /// meta-parameter (in [`Maml::params`] order), and the step's report. Nothing is
    /// updated and no `.grad` is touched.
    ///
    /// Equal-sized tasks on a body with a batched path run as one computation. Otherwise
    /// the tasks are split over as many worker threads as libtorch has intra-op threads,
    /// each running its share one task at a time with a single intra-op thread (small
    /// convolutions use two cores better this way than by splitting each kernel). Each
    /// worker keeps one task's graph alive at a time, and the tasks' gradients are added
    /// in task order (kept until then: one gradient per task), so the per-task path is
    /// bit-identical at any thread count.
    pub fn meta_gradient(&self, tasks: &[Task]) -> (Vec<Tensor>, StepReport) {
        let (grads, report) = self.raw_meta_gradient(tasks);
        // Channels-last convolutions give gradients in that layout; hand out the
        // parameters' own (contiguous) one.
        (grads.iter().map(Tensor::contiguous).collect(), report)
    }

    fn raw_meta_gradient(&self, tasks: &[Task]) -> (Vec<Tensor>, StepReport) {
        let n = tasks.len().max(1) as f64;
        if self.batchable(tasks) {
            let (weighted, loss, out) = self.batched_meta_loss(tasks);
            let grads = Tensor::run_backward(&[&weighted], &self.params.tensors(), false, false);
            let report = StepReport {
                loss: loss.double_value(&[]),
                accuracy: self.net.accuracy(
                    &out.flatten(0, 1),
                    &Tensor::cat(&tasks.iter().map(|k| &k.query.y).collect::<Vec<_>>(), 0),
                ),
            };
            return (grads, report);
        }
        // Each task's gradient is computed on one thread and the tasks are summed in
        // their order whatever the number of workers, so the meta-gradient, and a run,
        // is bit-identical at any `--threads` (a run resumed on another thread count
        // continues exactly).
        let threads = tch::get_num_threads().max(1) as usize;
        let workers = threads.min(tasks.len()).max(1);
        let parts: Vec<Partial> = if workers == 1 {
            self.inner().task_partials(tasks.iter(), n)
        } else {
            let chunks: Vec<Vec<(usize, Task)>> = (0..workers)
                .map(|w| {
                    tasks
                        .iter()
                        .enumerate()
                        .skip(w)
                        .step_by(workers)
                        .map(|(i, t)| (i, t.shallow_clone()))
                        .collect()
                })
                .collect();
            let (net, variant) = (&self.net, self.config.variant);
            let (inner_lr, inner_steps) = (self.config.inner_lr, self.config.inner_steps);
            let (msl, per_step_bn) = (self.loss_weights(), self.config.per_step_bn);
            let mut indexed = std::thread::scope(|scope| {
                let handles: Vec<_> = chunks
                    .into_iter()
                    .map(|chunk| {
                        let params = self.params.map(|_, t| t.shallow_clone());
                        let msl = msl.clone();
                        scope.spawn(move || {
                            tch::set_num_threads(1);
                            let inner = Inner {
                                net,
                                variant,
                                inner_lr,
                                inner_steps,
                                msl,
                                per_step_bn,
                                params: &params,
                            };
                            let order: Vec<usize> = chunk.iter().map(|(i, _)| *i).collect();
                            order
                                .into_iter()
                                .zip(inner.task_partials(chunk.iter().map(|(_, t)| t), n))
                                .collect::<Vec<_>>()
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .flat_map(|h| h.join().expect("a meta-gradient worker panicked"))
                    .collect::<Vec<_>>()
            });
            // Workers changed the (process-wide) BLAS thread count; restore it.
            tch::set_num_threads(threads as i32);
            indexed.sort_by_key(|(i, _)| *i);
            indexed.into_iter().map(|(_, p)| p).collect()
        };
        let total = Partial::sum_in_order(parts, &self.params.tensors());
        (
            total.grads,
            StepReport {
                loss: total.loss,
                accuracy: total.accuracy,
            },
        )
    }

    /// The meta-loss of `tasks` at the current θ (no gradient kept), for checks: the
    /// quantity [`Maml::meta_gradient`] differentiates (with the multi-step loss on, its
    /// weighted sum over steps).
    pub fn meta_loss(&self, tasks: &[Task]) -> f64 {
        let n = tasks.len().max(1) as f64;
        let inner = self.inner();
        tasks
            .iter()
            .map(|t| inner.task_loss(t).0.double_value(&[]) / n)
            .sum()
    }

    /// Adapts to a support set with `steps` inner steps and returns the fast weights,
    /// detached (θ unchanged).
    pub fn adapt_params(&self, support: &Batch, steps: usize) -> ParamSet {
        tch::with_grad(|| {
            self.inner()
                .inner_loop(support, steps, false, None)
                .0
                .detached_copy()
        })
    }
}

/// Sum of one worker's share of a meta-gradient.
struct Partial {
    grads: Vec<Tensor>,
    loss: f64,
    accuracy: Option<f64>,
}

impl Partial {
    /// The sum of `parts`, added in their order (zero gradients, shaped as `like`, when
    /// there are none).
    fn sum_in_order(parts: Vec<Partial>, like: &[&Tensor]) -> Partial {
        let mut total = Partial {
            grads: Vec::new(),
            loss: 0.0,
            accuracy: Some(0.0),
        };
        for (k, p) in parts.into_iter().enumerate() {
            total.grads = if k == 0 {
                p.grads
            } else {
                total
                    .grads
                    .iter()
                    .zip(&p.grads)
                    .map(|(a, b)| a + b)
                    .collect()
            };
            total.loss += p.loss;
            total.accuracy = total.accuracy.zip(p.accuracy).map(|(a, b)| a + b);
        }
        if total.grads.is_empty() {
            total.grads = like.iter().map(|t| t.zeros_like()).collect();
        }
        total
    }
}

/// Everything the inner loop needs, usable from any thread (the parameter set is the
/// thread's own handle on θ's storage).
struct Inner<'a> {
    net: &'a FastNet,
    variant: MamlVariant,
    inner_lr: f64,
    inner_steps: usize,
    /// Weights of the query losses after updates `1..=inner_steps` (see [`msl_weights`]).
    msl: Vec<f64>,
    per_step_bn: bool,
    params: &'a ParamSet,
}

impl Inner<'_> {
    /// The network's parameters (without learned rates or per-step batch-norm copies),
    /// sharing storage with θ.
    fn model(&self) -> ParamSet {
        let mut m = ParamSet::new();
        for (n, t) in self.params.iter() {
            if !n.starts_with(LR_PREFIX) && !n.starts_with(STEP_PREFIX) {
                m.push(n, t.shallow_clone());
            }
        }
        m
    }

    fn adapts(&self, name: &str) -> bool {
        match self.variant {
            MamlVariant::Anil => FastNet::is_head(name),
            _ => !(self.per_step_bn && is_bn(name)),
        }
    }

    /// `fast` with the batch-norm copy for "after `updates` inner updates" (per-step
    /// batch norm only; otherwise `fast` itself).
    fn at_step(&self, fast: ParamSet, updates: usize) -> ParamSet {
        if !self.per_step_bn {
            return fast;
        }
        let j = updates.min(self.inner_steps);
        fast.map(|n, t| match (is_bn(n), j) {
            (false, _) => t.shallow_clone(),
            (true, 0) => self.params.get(n).shallow_clone(),
            (true, j) => self
                .params
                .get(&format!("{STEP_PREFIX}{j}.{n}"))
                .shallow_clone(),
        })
    }

    /// One inner update of `fast` from the gradients `grads` of its adapted tensors.
    fn update(&self, fast: &ParamSet, grads: &[Tensor]) -> ParamSet {
        sgd_step(fast, grads, |n| {
            self.adapts(n).then(|| match self.variant {
                MamlVariant::Metasgd => Rate::Learned(self.params.get(&format!("{LR_PREFIX}{n}"))),
                _ => Rate::Scalar(self.inner_lr),
            })
        })
    }

    /// One inner step: the gradient of `loss` with respect to `fast`'s adapted tensors
    /// (with `create_graph`, differentiable again), then [`Inner::update`].
    fn step(
        &self,
        fast: &ParamSet,
        loss: &Tensor,
        keep_graph: bool,
        create_graph: bool,
    ) -> ParamSet {
        let grads = Tensor::run_backward(
            &[loss],
            &self.adapted_tensors(fast),
            keep_graph,
            create_graph,
        );
        self.update(fast, &grads)
    }

    fn adapted_tensors<'p>(&self, fast: &'p ParamSet) -> Vec<&'p Tensor> {
        fast.iter()
            .filter(|(n, _)| self.adapts(n))
            .map(|(_, t)| t)
            .collect()
    }

    /// Inner loop on one task: `steps` gradient steps from θ on the support set.
    /// With `create_graph` the result is differentiable to second order in θ.
    /// Returns the fast weights after the last step and, given `query_x`, the query
    /// outputs with their loss weights: after every earlier update whose multi-step
    /// weight is positive, then after the last update. (ANIL's body is not adapted: its
    /// features are computed once, with θ.)
    fn inner_loop(
        &self,
        support: &Batch,
        steps: usize,
        create_graph: bool,
        query_x: Option<&Tensor>,
    ) -> (ParamSet, Vec<(f64, Tensor)>) {
        let mut fast = self.at_step(self.model(), 0);
        let anil = self.variant == MamlVariant::Anil;
        let fs = anil.then(|| self.net.features(&fast, &support.x));
        let fq = if anil {
            query_x.map(|x| self.net.features(&fast, x))
        } else {
            None
        };
        let query = |fast: &ParamSet, x: &Tensor| match &fq {
            Some(f) => self.net.head(fast, f),
            None => self.net.forward(fast, x),
        };
        let mut outs = Vec::new();
        for j in 0..steps {
            let out = match &fs {
                Some(f) => self.net.head(&fast, f),
                None => self.net.forward(&fast, &support.x),
            };
            let loss = self.net.loss(&out, &support.y);
            // ANIL's body features are reused by every step: keep their graph.
            fast = self.step(&fast, &loss, create_graph || anil, create_graph);
            fast = self.at_step(fast, j + 1);
            let w = self.msl.get(j).copied().unwrap_or(0.0);
            if let Some(x) = query_x.filter(|_| j + 1 < steps && w > 0.0) {
                outs.push((w, query(&fast, x)));
            }
        }
        if let Some(x) = query_x {
            let w = steps
                .checked_sub(1)
                .and_then(|k| self.msl.get(k))
                .copied()
                .unwrap_or(1.0);
            outs.push((w, query(&fast, x)));
        }
        (fast, outs)
    }

    /// One task's meta-loss (the weighted query losses, differentiable in θ), its query
    /// loss after the last step, and its query outputs after the last step.
    fn task_loss(&self, task: &Task) -> (Tensor, Tensor, Tensor) {
        let (_, outs) = self.inner_loop(
            &task.support,
            self.inner_steps,
            self.variant.second_order(),
            Some(&task.query.x),
        );
        let mut weighted: Option<Tensor> = None;
        let mut last = None;
        for (w, out) in outs {
            let loss = self.net.loss(&out, &task.query.y);
            let term = &loss * w;
            weighted = Some(weighted.map_or_else(|| term.shallow_clone(), |s| s + &term));
            last = Some((loss, out));
        }
        let (loss, out) = last.expect("the last step's query outputs");
        (weighted.expect("at least one term"), loss, out)
    }

    /// Each task's share of the meta-gradient (its gradient, loss and accuracy divided
    /// by `n`), in the tasks' order.
    fn task_partials<'t>(&self, tasks: impl Iterator<Item = &'t Task>, n: f64) -> Vec<Partial> {
        let inputs = self.params.tensors();
        tasks
            .map(|task| {
                let (weighted, loss, out) = self.task_loss(task);
                Partial {
                    grads: Tensor::run_backward(&[&(&weighted / n)], &inputs, false, false),
                    loss: loss.double_value(&[]) / n,
                    accuracy: self.net.accuracy(&out, &task.query.y).map(|a| a / n),
                }
            })
            .collect()
    }
}

/// A network fine-tuned on one task.
///
/// `predict` normalises with the batch it is given (transductive, the evaluation
/// protocol of Finn et al.), unless the model was reloaded from disk
/// ([`MetaLearner::load_adapted`]): then it uses the support set's batch-norm statistics,
/// recorded when adapting, so every input is classified on its own.
pub struct FineTuned<'a> {
    net: &'a FastNet,
    fast: ParamSet,
    stats: ParamSet,
    use_stats: bool,
}

impl<'a> FineTuned<'a> {
    /// A fine-tuned network from its fast weights, recording the support set's
    /// batch-norm statistics.
    pub fn new(net: &'a FastNet, fast: ParamSet, support_x: &Tensor) -> Self {
        let stats = net.batch_statistics(&fast, support_x);
        FineTuned {
            net,
            fast,
            stats,
            use_stats: false,
        }
    }

    /// Rebuilds a saved fine-tuned network (see [`Adapted::state`]); `template` gives
    /// the parameter names and shapes.
    pub fn load(net: &'a FastNet, template: &ParamSet, named: &[(String, Tensor)]) -> Result<Self> {
        let mut fast = template.map(|_, t| t.detach().copy());
        fast.load_named(named, "fast.")?;
        let mut stats = ParamSet::new();
        for (n, t) in named {
            if let Some(rest) = n.strip_prefix("stats.") {
                stats.push(rest, t.to_kind(fast.tensors()[0].kind()));
            }
        }
        Ok(FineTuned {
            net,
            fast,
            stats,
            use_stats: true,
        })
    }

    /// The fast weights.
    pub fn params(&self) -> &ParamSet {
        &self.fast
    }
}

impl Adapted for FineTuned<'_> {
    fn predict(&self, x: &Tensor) -> Tensor {
        tch::no_grad(|| {
            if self.use_stats {
                let stats = self
                    .stats
                    .map(|_, t| t.to_device(x.device()).to_kind(x.kind()));
                self.net
                    .head(&self.fast, &self.net.features_with(&self.fast, &stats, x))
            } else {
                self.net.forward(&self.fast, x)
            }
        })
    }

    fn state(&self) -> Vec<(String, Tensor)> {
        let mut out = self.fast.named("fast.");
        out.extend(self.stats.named("stats."));
        out
    }
}

impl MetaLearner for Maml {
    fn parts(&self) -> Parts<'_> {
        Parts {
            params: &self.params,
            buffers: None,
            adam: Some(&self.adam),
        }
    }

    fn parts_mut(&mut self) -> PartsMut<'_> {
        PartsMut {
            params: &mut self.params,
            buffers: None,
            adam: Some(&mut self.adam),
        }
    }

    fn name(&self) -> &'static str {
        self.config.variant.name()
    }

    fn adapt<'a>(&'a self, support: &Batch) -> Box<dyn Adapted + 'a> {
        Box::new(FineTuned::new(
            &self.net,
            self.adapt_params(support, self.config.eval_steps),
            &support.x,
        ))
    }

    fn load_adapted<'a>(&'a self, named: &[(String, Tensor)]) -> Result<Box<dyn Adapted + 'a>> {
        Ok(Box::new(FineTuned::load(
            &self.net,
            &self.inner().model(),
            named,
        )?))
    }

    fn meta_step(&mut self, tasks: &[Task]) -> StepReport {
        let (grads, report) = self.meta_gradient(tasks);
        self.adam.step_with(&self.params, &grads);
        report
    }
}
