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
//! Batch norm uses batch statistics everywhere (see [`crate::meta::fastnet`]). When the
//! body can run many tasks at once ([`crate::nn::Backbone::forward_tasks`], e.g. the
//! sinusoid MLP) and the tasks of a meta-batch have equal sizes, the whole meta-batch is
//! one batched computation: each task's copy of θ is a broadcast view, and one
//! `autograd.grad` of the summed task losses gives every task its own inner gradient.
//! The result is the same meta-gradient as the loop over tasks (a test checks it).

use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};
use crate::meta::fastnet::{FastNet, FastNetConfig};
use crate::meta::{Adapted, MetaLearner, StepReport};
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
        Ok(())
    }
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
            params: &self.params,
        }
    }

    /// Whether `tasks` can run as one batched computation.
    fn batchable(&self, tasks: &[Task]) -> bool {
        tasks.len() > 1
            && self.config.variant != MamlVariant::Anil
            && tasks.windows(2).all(|w| {
                w[0].support.x.size() == w[1].support.x.size()
                    && w[0].query.x.size() == w[1].query.x.size()
                    && w[0].support.y.size() == w[1].support.y.size()
            })
            && self.net.has_forward_tasks()
    }

    /// The batched meta-loss of equal-sized tasks (see the module docs), with its
    /// per-task query outputs.
    fn batched_meta_loss(&self, tasks: &[Task]) -> (Tensor, Tensor) {
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
        for _ in 0..self.config.inner_steps {
            let out = self
                .net
                .forward_tasks(&fast, &xs)
                .expect("checked by batchable");
            let loss = self.net.task_losses(&out, &ys).sum(out.kind());
            fast = inner.step(&fast, &loss, create_graph, create_graph);
        }
        let out = self
            .net
            .forward_tasks(&fast, &xq)
            .expect("checked by batchable");
        let losses = self.net.task_losses(&out, &yq);
        (losses.mean(out.kind()), out)
    }

    /// The meta-gradient of the mean query loss over `tasks`, one tensor per
    /// meta-parameter (in [`Maml::params`] order), and the step's report. Nothing is
    /// updated and no `.grad` is touched.
    ///
    /// Equal-sized tasks on a body with a batched path run as one computation. Otherwise
    /// the tasks are split over as many worker threads as libtorch has intra-op threads,
    /// each running its share one task at a time with a single intra-op thread (small
    /// convolutions use two cores better this way than by splitting each kernel). Each
    /// worker keeps one task's graph alive at a time. The result is deterministic for a
    /// given thread count; the summation order, and so the last bits, depend on it.
    pub fn meta_gradient(&self, tasks: &[Task]) -> (Vec<Tensor>, StepReport) {
        let n = tasks.len().max(1) as f64;
        if self.batchable(tasks) {
            let (loss, out) = self.batched_meta_loss(tasks);
            let grads = Tensor::run_backward(&[&loss], &self.params.tensors(), false, false);
            let report = StepReport {
                loss: loss.double_value(&[]),
                accuracy: self.net.accuracy(
                    &out.flatten(0, 1),
                    &Tensor::cat(&tasks.iter().map(|k| &k.query.y).collect::<Vec<_>>(), 0),
                ),
            };
            return (grads, report);
        }
        let threads = tch::get_num_threads().max(1) as usize;
        let workers = threads.min(tasks.len()).max(1);
        let parts: Vec<Partial> = if workers == 1 {
            vec![self.inner().tasks_gradient(tasks.iter(), n)]
        } else {
            let chunks: Vec<Vec<Task>> = (0..workers)
                .map(|w| {
                    tasks
                        .iter()
                        .skip(w)
                        .step_by(workers)
                        .map(Task::shallow_clone)
                        .collect()
                })
                .collect();
            let (net, variant) = (&self.net, self.config.variant);
            let (inner_lr, inner_steps) = (self.config.inner_lr, self.config.inner_steps);
            let parts = std::thread::scope(|scope| {
                let handles: Vec<_> = chunks
                    .into_iter()
                    .map(|chunk| {
                        let params = self.params.map(|_, t| t.shallow_clone());
                        scope.spawn(move || {
                            tch::set_num_threads(1);
                            let inner = Inner {
                                net,
                                variant,
                                inner_lr,
                                inner_steps,
                                params: &params,
                            };
                            inner.tasks_gradient(chunk.iter(), n)
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().expect("a meta-gradient worker panicked"))
                    .collect::<Vec<_>>()
            });
            // Workers changed the (process-wide) BLAS thread count; restore it.
            tch::set_num_threads(threads as i32);
            parts
        };
        let mut parts = parts.into_iter();
        let mut total = parts.next().expect("at least one worker");
        for p in parts {
            for (a, b) in total.grads.iter_mut().zip(&p.grads) {
                *a = &*a + b;
            }
            total.loss += p.loss;
            total.accuracy = total.accuracy.zip(p.accuracy).map(|(a, b)| a + b);
        }
        (
            total.grads,
            StepReport {
                loss: total.loss,
                accuracy: total.accuracy,
            },
        )
    }

    /// The meta-loss of `tasks` at the current θ (no gradient kept), for checks.
    pub fn meta_loss(&self, tasks: &[Task]) -> f64 {
        let n = tasks.len().max(1) as f64;
        tasks
            .iter()
            .map(|t| {
                let out = self.inner().task_outputs(t);
                self.net.loss(&out, &t.query.y).double_value(&[]) / n
            })
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

/// Everything the inner loop needs, usable from any thread (the parameter set is the
/// thread's own handle on θ's storage).
struct Inner<'a> {
    net: &'a FastNet,
    variant: MamlVariant,
    inner_lr: f64,
    inner_steps: usize,
    params: &'a ParamSet,
}

impl Inner<'_> {
    /// The network's parameters (without learned rates), sharing storage with θ.
    fn model(&self) -> ParamSet {
        let mut m = ParamSet::new();
        for (n, t) in self.params.iter() {
            if !n.starts_with(LR_PREFIX) {
                m.push(n, t.shallow_clone());
            }
        }
        m
    }

    fn adapts(&self, name: &str) -> bool {
        self.variant != MamlVariant::Anil || FastNet::is_head(name)
    }

    /// One inner update of `fast` from the gradients `grads` of its adapted tensors.
    fn update(&self, fast: &ParamSet, grads: &[Tensor]) -> ParamSet {
        let mut g = grads.iter();
        fast.map(|n, t| {
            if !self.adapts(n) {
                return t.shallow_clone();
            }
            let grad = g.next().expect("one gradient per adapted tensor");
            match self.variant {
                MamlVariant::Metasgd => t - self.params.get(&format!("{LR_PREFIX}{n}")) * grad,
                _ => t - grad * self.inner_lr,
            }
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
    /// Returns the fast weights and, for ANIL, the body features of `query_x`
    /// computed with θ (ANIL's body is not adapted).
    fn inner_loop(
        &self,
        support: &Batch,
        steps: usize,
        create_graph: bool,
        query_x: Option<&Tensor>,
    ) -> (ParamSet, Option<Tensor>) {
        let mut fast = self.model();
        if self.variant == MamlVariant::Anil {
            let fs = self.net.features(&fast, &support.x);
            for _ in 0..steps {
                let loss = self.net.loss(&self.net.head(&fast, &fs), &support.y);
                // The body's features are reused by every step: keep their graph.
                fast = self.step(&fast, &loss, true, create_graph);
            }
            let fq = query_x.map(|x| self.net.features(&fast, x));
            return (fast, fq);
        }
        for _ in 0..steps {
            let loss = self
                .net
                .loss(&self.net.forward(&fast, &support.x), &support.y);
            fast = self.step(&fast, &loss, create_graph, create_graph);
        }
        (fast, None)
    }

    /// Query outputs of the adapted network for one task, differentiable in θ.
    fn task_outputs(&self, task: &Task) -> Tensor {
        let (fast, fq) = self.inner_loop(
            &task.support,
            self.inner_steps,
            self.variant.second_order(),
            Some(&task.query.x),
        );
        match fq {
            Some(f) => self.net.head(&fast, &f),
            None => self.net.forward(&fast, &task.query.x),
        }
    }

    /// Gradient of `Σ_tasks loss / n` with respect to every parameter, one task's graph
    /// at a time.
    fn tasks_gradient<'t>(&self, tasks: impl Iterator<Item = &'t Task>, n: f64) -> Partial {
        let inputs = self.params.tensors();
        let mut grads: Option<Vec<Tensor>> = None;
        let (mut loss_sum, mut acc) = (0.0, Some(0.0));
        for task in tasks {
            let out = self.task_outputs(task);
            let loss = self.net.loss(&out, &task.query.y);
            let g = Tensor::run_backward(&[&(&loss / n)], &inputs, false, false);
            grads = Some(match grads {
                None => g,
                Some(sum) => sum.iter().zip(&g).map(|(a, b)| a + b).collect(),
            });
            loss_sum += loss.double_value(&[]) / n;
            acc = acc
                .zip(self.net.accuracy(&out, &task.query.y))
                .map(|(a, b)| a + b / n);
        }
        Partial {
            grads: grads.unwrap_or_else(|| inputs.iter().map(|t| t.zeros_like()).collect()),
            loss: loss_sum,
            accuracy: acc,
        }
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

    fn training_state(&self) -> Vec<(String, Tensor)> {
        let mut out = self.model_state();
        out.extend(self.adam.state("adam."));
        out
    }

    fn load_training_state(&mut self, named: &[(String, Tensor)]) -> Result<()> {
        self.load_model_state(named)?;
        self.adam.load_state(named, "adam.")
    }

    fn model_state(&self) -> Vec<(String, Tensor)> {
        self.params.named("params.")
    }

    fn load_model_state(&mut self, named: &[(String, Tensor)]) -> Result<()> {
        self.params.load_named(named, "params.")
    }
}
