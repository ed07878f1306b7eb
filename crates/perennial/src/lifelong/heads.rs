//! Baselines of the class stream: linear softmax heads trained online on a frozen
//! meta-learned representation ([`super::encoder::Encoding`]).
//!
//! * [`OnlineHead`]: a linear softmax head trained online by SGD on the features, one
//!   example at a time: OML's meta-test learner. On an OML representation
//!   ([`crate::lifelong::oml`], meta-trained for exactly this head) it is *OML*; on a
//!   ProtoNet representation it is the *naive* baseline of the stream.
//! * [`LaMamlHead`]: La-MAML's look-ahead update with learned per-weight rates and a
//!   replay buffer ([`crate::lifelong::lamaml`]) on the same linear head.

use tch::{Kind, Tensor};

use super::class_stream::ClassLearner;
use super::encoder::Encoding;
use super::lamaml::{LaMamlConfig, LookAhead};
use super::oml::head_step;
use super::prototypes::indexed;
use super::strategy::StrategyState;
use super::Reservoir;
use crate::error::{Error, Result};
use crate::nn::ParamSet;

/// La-MAML ([`crate::lifelong::lamaml`]) on a linear softmax head over the features:
/// each arriving example is the incoming batch (one inner step per glance), its
/// meta-loss adds a draw from a reservoir buffer of earlier examples' features, and the
/// head's learned per-weight rates gate its updates. Cross-entropy is over the classes
/// known so far.
#[derive(Debug)]
pub struct LaMamlHead {
    encoding: Encoding,
    params: ParamSet,
    look: LookAhead,
    config: LaMamlConfig,
    buffer: Reservoir<(usize, Vec<f32>)>,
    known: usize,
}

impl LaMamlHead {
    /// A zero-initialised head for up to `max_classes` classes on the `dim`-dimensional
    /// features of `encoding`, its buffer's draws seeded by `seed`.
    pub fn new(
        encoding: Encoding,
        dim: usize,
        max_classes: usize,
        config: LaMamlConfig,
        seed: u64,
    ) -> Result<Self> {
        config.validate()?;
        let opts = (Kind::Float, tch::Device::Cpu);
        let mut params = ParamSet::new();
        params.push(
            "weight",
            Tensor::zeros([dim as i64, max_classes as i64], opts).set_requires_grad(true),
        );
        params.push(
            "bias",
            Tensor::zeros([max_classes as i64], opts).set_requires_grad(true),
        );
        let look = LookAhead::new(&params, &config);
        Ok(LaMamlHead {
            encoding,
            params,
            look,
            config,
            buffer: Reservoir::new(config.capacity, seed),
            known: 0,
        })
    }
}

/// The classes known once an example of `label` is learnt by a head with `cap`
/// outputs that knows `known`: classes must arrive in order and fit the head.
fn next_known(label: usize, known: usize, cap: usize) -> Result<usize> {
    if label > known || label >= cap {
        return Err(Error::config(
            "class label",
            label,
            format!("classes must arrive in order, at most {cap}; {known} known"),
        ));
    }
    Ok(known.max(label + 1))
}

/// The logits of a linear head `{weight [d, C], bias [C]}` over its first `known` classes.
fn head_logits(params: &ParamSet, x: &Tensor, known: usize) -> Tensor {
    let k = known as i64;
    x.matmul(&params.get("weight").narrow(1, 0, k)) + params.get("bias").narrow(0, 0, k)
}

impl ClassLearner for LaMamlHead {
    fn name(&self) -> &'static str {
        "lamaml"
    }

    fn encode(&self, x: &Tensor) -> Tensor {
        tch::no_grad(|| self.encoding.features(x))
    }

    fn learn(&mut self, label: usize, features: &Tensor, _input: &Tensor) -> Result<()> {
        self.known = next_known(
            label,
            self.known,
            self.params.get("bias").size()[0] as usize,
        )?;
        let x = features.reshape([1, -1]).to_kind(Kind::Float);
        let y = Tensor::from_slice(&[label as i64]);
        let ce = |z: Tensor, y: &Tensor| {
            z.cross_entropy_loss::<Tensor>(y, None, tch::Reduction::Mean, -100, 0.0)
        };
        for _ in 0..self.config.glances {
            let drawn = self.buffer.sample(self.config.replay);
            let mut xs = vec![x.shallow_clone()];
            let mut ys = vec![label as i64];
            for (c, f) in drawn {
                xs.push(Tensor::from_slice(f).view([1, -1]));
                ys.push(*c as i64);
            }
            let mx = Tensor::cat(&xs, 0);
            let my = Tensor::from_slice(&ys);
            let k = self.known;
            self.look.update(
                &self.params,
                1,
                &mut |fast, _| ce(head_logits(fast, &x, k), &y),
                &mut |fast| ce(head_logits(fast, &mx, k), &my),
            )?;
        }
        let v = Vec::<f32>::try_from(x.view([-1]))
            .map_err(|e: tch::TchError| Error::config("features", "tensor", e.to_string()))?;
        self.buffer.offer((label, v));
        Ok(())
    }

    fn state(&self) -> StrategyState {
        let mut tensors = self.params.named("head.");
        tensors.extend(
            self.look
                .alphas()
                .iter()
                .enumerate()
                .map(|(i, a)| (format!("alpha.{i}"), a.detach())),
        );
        StrategyState {
            tensors,
            meta: serde_json::json!({ "known": self.known, "buffer": self.buffer }),
        }
    }

    fn restore(&mut self, state: StrategyState) -> Result<()> {
        self.known = state.field("lamaml", "known")?;
        self.buffer = state.field("lamaml", "buffer")?;
        let mut params = self.params.detached_copy();
        params.load_named(&state.tensors, "head.")?;
        self.params = params.requires_grad();
        let alphas = indexed(&state.tensors, "alpha.", self.params.len())?;
        self.look = LookAhead::from_alphas(&self.params, alphas, &self.config)?;
        Ok(())
    }

    fn scores(&self, features: &Tensor) -> Tensor {
        tch::no_grad(|| head_logits(&self.params, &features.to_kind(Kind::Float), self.known))
    }

    fn known(&self) -> usize {
        self.known
    }
}

/// A linear softmax head over the features, trained online by SGD on each example as it
/// arrives (cross-entropy over the classes known so far).
#[derive(Debug)]
pub struct OnlineHead {
    encoding: Encoding,
    weight: Tensor,
    bias: Tensor,
    known: usize,
    lr: f64,
    name: &'static str,
}

impl OnlineHead {
    /// A zero-initialised head for up to `max_classes` classes on the `dim`-dimensional
    /// features of `encoding`, with SGD learning rate `lr`.
    pub fn new(encoding: Encoding, dim: usize, max_classes: usize, lr: f64) -> Result<Self> {
        if !(lr > 0.0 && lr.is_finite()) {
            return Err(Error::config("--lr", lr, "must be positive"));
        }
        Ok(OnlineHead {
            encoding,
            weight: Tensor::zeros(
                [dim as i64, max_classes as i64],
                (Kind::Float, tch::Device::Cpu),
            ),
            bias: Tensor::zeros([max_classes as i64], (Kind::Float, tch::Device::Cpu)),
            known: 0,
            lr,
            name: "naive",
        })
    }

    /// The same head under another name (`oml`: OML's meta-test learner on an OML
    /// representation).
    pub fn named(mut self, name: &'static str) -> Self {
        self.name = name;
        self
    }
}

impl ClassLearner for OnlineHead {
    fn name(&self) -> &'static str {
        self.name
    }

    fn encode(&self, x: &Tensor) -> Tensor {
        tch::no_grad(|| self.encoding.features(x))
    }

    fn learn(&mut self, label: usize, features: &Tensor, _input: &Tensor) -> Result<()> {
        self.known = next_known(label, self.known, self.bias.size()[0] as usize)?;
        let k = self.known as i64;
        let x = features.reshape([1, -1]).to_kind(Kind::Float);
        let (mut w, mut b) = (self.weight.narrow(1, 0, k), self.bias.narrow(0, 0, k));
        let z = x.matmul(&w) + &b;
        let (w2, b2) = head_step(&w, &b, &x, &z, label as i64, self.lr);
        w.copy_(&w2);
        b.copy_(&b2);
        Ok(())
    }

    fn state(&self) -> StrategyState {
        StrategyState {
            tensors: vec![
                ("weight".into(), self.weight.shallow_clone()),
                ("bias".into(), self.bias.shallow_clone()),
            ],
            meta: serde_json::json!({ "known": self.known }),
        }
    }

    fn restore(&mut self, state: StrategyState) -> Result<()> {
        self.known = state.field(self.name, "known")?;
        for (name, t) in &state.tensors {
            let target = match name.as_str() {
                "weight" => &mut self.weight,
                "bias" => &mut self.bias,
                _ => continue,
            };
            if target.size() != t.size() {
                return Err(Error::config("learner state", name, "has another shape"));
            }
            *target = t.detach().copy();
        }
        Ok(())
    }

    fn scores(&self, features: &Tensor) -> Tensor {
        let k = self.known as i64;
        features
            .to_kind(Kind::Float)
            .matmul(&self.weight.narrow(1, 0, k))
            + self.bias.narrow(0, 0, k)
    }

    fn known(&self) -> usize {
        self.known
    }
}
