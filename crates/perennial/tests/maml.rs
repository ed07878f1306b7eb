//! The MAML family and Reptile: exact meta-gradients, batched and threaded paths that
//! agree with the plain loop, learning, adapt purity, determinism, checkpoints.

use perennial::data::sinusoid::{SinusoidSampler, SinusoidSpec};
use perennial::data::Rng;
use perennial::meta::optimization::fastnet::{FastNetConfig, Objective};
use perennial::meta::optimization::maml::{msl_weights, Maml, MamlConfig, MamlVariant};
use perennial::meta::optimization::reptile::{Reptile, ReptileConfig};
use perennial::meta::MetaLearner;
use perennial::nn::{BackboneConfig, ConvInit};
use perennial::tensors::{Batch, Task};
use tch::{Device, Kind, Tensor};

/// Random images `[n, 1, side, side]` in f64 and labels `0..ways` (n / ways per class).
fn image_batch(rng: &mut Rng, ways: usize, per_class: usize, side: usize) -> Batch {
    let n = ways * per_class;
    let v: Vec<f64> = (0..n * side * side).map(|_| rng.uniform()).collect();
    let y: Vec<i64> = (0..n).map(|i| (i / per_class) as i64).collect();
    Batch {
        x: Tensor::from_slice(&v).view([n as i64, 1, side as i64, side as i64]),
        y: Tensor::from_slice(&y),
        ways,
    }
}

fn small_conv_config(variant: MamlVariant) -> MamlConfig {
    MamlConfig {
        variant,
        net: FastNetConfig {
            backbone: BackboneConfig::Conv4 {
                in_channels: 1,
                hidden: 3,
                image_size: 16,
                init: ConvInit::Torch,
            },
            outputs: 3,
            objective: Objective::Classification,
        },
        inner_steps: 2,
        eval_steps: 2,
        inner_lr: 0.1,
        ..Default::default()
    }
}

fn conv_tasks(seed: u64) -> Vec<Task> {
    let mut rng = Rng::new(seed);
    (0..2)
        .map(|_| Task {
            support: image_batch(&mut rng, 3, 2, 16),
            query: image_batch(&mut rng, 3, 2, 16),
        })
        .collect()
}

/// Central finite differences of the meta-loss, one coordinate at a time.
fn finite_difference(maml: &Maml, tasks: &[Task], eps: f64) -> Vec<Tensor> {
    maml.params()
        .tensors()
        .iter()
        .map(|p| {
            let flat = p.view([-1]);
            let n = flat.size()[0];
            let mut g = vec![0.0f64; n as usize];
            for (j, gj) in g.iter_mut().enumerate() {
                let mut e = flat.narrow(0, j as i64, 1);
                tch::no_grad(|| {
                    let _ = e.g_add_scalar_(eps);
                });
                let plus = maml.meta_loss(tasks);
                tch::no_grad(|| {
                    let _ = e.g_add_scalar_(-2.0 * eps);
                });
                let minus = maml.meta_loss(tasks);
                tch::no_grad(|| {
                    let _ = e.g_add_scalar_(eps);
                });
                *gj = (plus - minus) / (2.0 * eps);
            }
            Tensor::from_slice(&g).view(p.size().as_slice())
        })
        .collect()
}

fn flat(ts: &[Tensor]) -> Tensor {
    Tensor::cat(
        &ts.iter()
            .map(|t| t.detach().to_kind(Kind::Double).reshape([-1]))
            .collect::<Vec<_>>(),
        0,
    )
}

fn rel_err(a: &[Tensor], b: &[Tensor]) -> f64 {
    let (a, b) = (flat(a), flat(b));
    (&a - &b).norm().double_value(&[]) / b.norm().double_value(&[])
}

fn maml_f64(variant: MamlVariant) -> Maml {
    let mut m = Maml::new(small_conv_config(variant), 3, Device::Cpu).unwrap();
    m.set_kind(Kind::Double);
    m
}

#[test]
fn second_order_meta_gradients_are_exact() {
    // Every coordinate of MAML's meta-gradient (2 inner steps through a Conv4 with batch
    // norm and max-pooling, in f64) against central finite differences.
    let tasks = conv_tasks(11);
    let maml = maml_f64(MamlVariant::Maml);
    let (analytic, _) = maml.meta_gradient(&tasks);
    let numeric = finite_difference(&maml, &tasks, 1e-6);
    let err = rel_err(&analytic, &numeric);
    eprintln!("MAML: relative error {err:.3e}");
    assert!(err < 1e-6, "MAML: relative error {err:e}");
}

#[test]
fn metasgd_and_anil_meta_gradients_are_exact_along_random_directions() {
    // Directional derivatives g·d against (L(θ + εd) − L(θ − εd)) / 2ε.
    let tasks = conv_tasks(12);
    for variant in [MamlVariant::Metasgd, MamlVariant::Anil] {
        let maml = maml_f64(variant);
        let (g, _) = maml.meta_gradient(&tasks);
        let params = maml.params().tensors();
        let mut rng = Rng::new(21);
        let (mut num, mut den) = (0.0f64, 0.0f64);
        for _ in 0..6 {
            let d: Vec<Tensor> = params
                .iter()
                .map(|p| {
                    let v: Vec<f64> = (0..p.numel()).map(|_| rng.uniform() * 2.0 - 1.0).collect();
                    Tensor::from_slice(&v).view(p.size().as_slice())
                })
                .collect();
            let analytic: f64 = g
                .iter()
                .zip(&d)
                .map(|(a, b)| (a * b).sum(Kind::Double).double_value(&[]))
                .sum();
            let eps = 1e-6;
            let shift = |s: f64| {
                tch::no_grad(|| {
                    for (p, dd) in params.iter().zip(&d) {
                        let _ = p.shallow_clone().g_add_(&(dd * s));
                    }
                })
            };
            shift(eps);
            let plus = maml.meta_loss(&tasks);
            shift(-2.0 * eps);
            let minus = maml.meta_loss(&tasks);
            shift(eps);
            let numeric = (plus - minus) / (2.0 * eps);
            num += (analytic - numeric).powi(2);
            den += numeric.powi(2);
        }
        let err = (num / den).sqrt();
        eprintln!("{variant:?}: relative error {err:.3e}");
        assert!(err < 1e-6, "{variant:?}: relative error {err:e}");
    }
}

/// MAML with both MAML++ options: the multi-step loss (at iteration 0 its weights are
/// equal) and per-step batch norm.
fn maml_plus_plus_f64(msl: bool, per_step_bn: bool) -> Maml {
    let config = MamlConfig {
        msl_iterations: if msl { 10 } else { 0 },
        per_step_bn,
        ..small_conv_config(MamlVariant::Maml)
    };
    let mut m = Maml::new(config, 3, Device::Cpu).unwrap();
    m.set_kind(Kind::Double);
    m
}

#[test]
fn msl_weights_start_equal_and_anneal_onto_the_last_step() {
    let close = |a: &[f64], b: &[f64]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-12);
    assert!(close(&msl_weights(5, 0, 100), &[0.2; 5]));
    assert!(close(&msl_weights(5, 50, 100), &[0.1, 0.1, 0.1, 0.1, 0.6]));
    // Near the end the earlier steps sit on the floor 0.03 / 5 and the last takes the rest.
    assert!(close(
        &msl_weights(5, 99, 100),
        &[0.006, 0.006, 0.006, 0.006, 0.976]
    ));
    for it in [0, 1, 37, 99] {
        let sum: f64 = msl_weights(5, it, 100).iter().sum();
        assert!((sum - 1.0).abs() < 1e-12, "iteration {it}: sum {sum}");
    }
    assert_eq!(msl_weights(5, 100, 100), vec![0.0, 0.0, 0.0, 0.0, 1.0]);
    assert_eq!(msl_weights(3, 0, 0), vec![0.0, 0.0, 1.0]);
}

#[test]
fn maml_plus_plus_meta_gradients_are_exact() {
    // Every coordinate against central finite differences, for the multi-step loss,
    // per-step batch norm, and both; each option changes the gradient.
    let tasks = conv_tasks(13);
    let (plain, _) = maml_f64(MamlVariant::Maml).meta_gradient(&tasks);
    for (msl, bn) in [(true, false), (false, true), (true, true)] {
        let maml = maml_plus_plus_f64(msl, bn);
        assert_eq!(
            maml.loss_weights(),
            if msl { vec![0.5, 0.5] } else { vec![0.0, 1.0] }
        );
        let (analytic, _) = maml.meta_gradient(&tasks);
        let numeric = finite_difference(&maml, &tasks, 1e-6);
        let err = rel_err(&analytic, &numeric);
        eprintln!("msl {msl}, per-step bn {bn}: relative error {err:.3e}");
        assert!(
            err < 1e-6,
            "msl {msl}, per-step bn {bn}: relative error {err:e}"
        );
        // The parameters θ has in common with plain MAML come first.
        let diff = rel_err(&analytic[..plain.len()], &plain);
        assert!(
            diff > 1e-3,
            "msl {msl}, per-step bn {bn}: same gradient as MAML"
        );
        if bn {
            // Two inner steps: copies for 1 and 2 updates of the 4 layers' scale and shift.
            assert_eq!(analytic.len(), plain.len() + 2 * 8);
            for ((name, _), g) in maml.params().iter().zip(&analytic) {
                let norm = g.norm().double_value(&[]);
                assert!(norm > 0.0, "{name} gets no meta-gradient");
            }
        }
    }
}

#[test]
fn maml_plus_plus_options_are_checked() {
    let bad = |c: MamlConfig, flag: &str| {
        let err = Maml::new(c, 0, Device::Cpu).unwrap_err().to_string();
        assert!(err.contains(flag), "{err}");
    };
    bad(
        MamlConfig {
            inner_steps: 1,
            msl_iterations: 5,
            ..small_conv_config(MamlVariant::Maml)
        },
        "--msl-iterations",
    );
    bad(
        MamlConfig {
            per_step_bn: true,
            ..small_conv_config(MamlVariant::Anil)
        },
        "--per-step-bn",
    );
    bad(
        MamlConfig {
            per_step_bn: true,
            ..sine_maml(MamlVariant::Maml, 0).config().clone()
        },
        "--per-step-bn",
    );
}

#[test]
fn first_order_differs_from_exact() {
    let tasks = conv_tasks(11);
    let (exact, _) = maml_f64(MamlVariant::Maml).meta_gradient(&tasks);
    let (first, _) = maml_f64(MamlVariant::Fomaml).meta_gradient(&tasks);
    let diff = rel_err(&first, &exact);
    eprintln!("first-order vs exact: relative difference {diff:.3e}");
    assert!(
        diff > 1e-3,
        "first-order gradient equals the exact one ({diff:e})"
    );
    // The first-order gradient is still a gradient of the same shape and scale.
    assert!(diff < 1.0, "{diff}");
}

fn sine_tasks(seed: u64, stream: u64, start: u64, n: u64, shots: usize) -> Vec<Task> {
    let s = SinusoidSampler::new(SinusoidSpec::new(shots, 10), seed)
        .unwrap()
        .with_stream(stream);
    (start..start + n)
        .map(|i| Task::from_sinusoid(&s.sample(i), Device::Cpu))
        .collect()
}

fn sine_maml(variant: MamlVariant, seed: u64) -> Maml {
    Maml::new(
        MamlConfig {
            variant,
            net: FastNetConfig::sinusoid(40),
            inner_steps: 1,
            eval_steps: 5,
            inner_lr: 0.01,
            ..Default::default()
        },
        seed,
        Device::Cpu,
    )
    .unwrap()
}

#[test]
fn batched_tasks_give_the_loop_gradient() {
    // The sinusoid MLP runs a whole meta-batch as one computation; the per-task loop
    // (one task at a time) must give the same meta-gradient.
    let tasks = sine_tasks(1, 0, 0, 6, 10);
    for variant in [MamlVariant::Maml, MamlVariant::Fomaml, MamlVariant::Metasgd] {
        let maml = sine_maml(variant, 2);
        let (batched, _) = maml.meta_gradient(&tasks);
        let mut looped: Option<Vec<Tensor>> = None;
        for t in &tasks {
            let (g, _) = maml.meta_gradient(std::slice::from_ref(t));
            looped = Some(match looped {
                None => g.iter().map(|x| x / tasks.len() as f64).collect(),
                Some(s) => s
                    .iter()
                    .zip(&g)
                    .map(|(a, b)| a + b / tasks.len() as f64)
                    .collect(),
            });
        }
        let err = rel_err(&batched, &looped.unwrap());
        assert!(err < 1e-5, "{variant:?}: batched vs loop {err:e}");
    }
    // The multi-step loss too (two inner steps, equal weights at iteration 0).
    let maml = Maml::new(
        MamlConfig {
            inner_steps: 2,
            msl_iterations: 10,
            ..sine_maml(MamlVariant::Maml, 2).config().clone()
        },
        2,
        Device::Cpu,
    )
    .unwrap();
    let (batched, rb) = maml.meta_gradient(&tasks);
    let (mut looped, mut loss) = (Vec::<Tensor>::new(), 0.0);
    for t in &tasks {
        let (g, r) = maml.meta_gradient(std::slice::from_ref(t));
        loss += r.loss / tasks.len() as f64;
        looped = if looped.is_empty() {
            g.iter().map(|x| x / tasks.len() as f64).collect()
        } else {
            looped
                .iter()
                .zip(&g)
                .map(|(a, b)| a + b / tasks.len() as f64)
                .collect()
        };
    }
    let err = rel_err(&batched, &looped);
    assert!(err < 1e-5, "multi-step loss: batched vs loop {err:e}");
    assert!((rb.loss - loss).abs() < 1e-5, "{} vs {loss}", rb.loss);
}

#[test]
fn worker_threads_give_exactly_the_single_thread_gradient() {
    // Five tasks of unequal query sizes (the per-task path, not the batched one), in
    // f32, where a different summation order shows.
    let mut rng = Rng::new(5);
    let mut f32_batch = |per_class| {
        let b = image_batch(&mut rng, 3, per_class, 16);
        Batch {
            x: b.x.to_kind(Kind::Float),
            ..b
        }
    };
    let tasks: Vec<Task> = (0..5)
        .map(|i| Task {
            support: f32_batch(2),
            query: f32_batch(1 + i % 3),
        })
        .collect();
    let maml = Maml::new(small_conv_config(MamlVariant::Maml), 3, Device::Cpu).unwrap();
    let before = tch::get_num_threads();
    tch::set_num_threads(1);
    let (one, r1) = maml.meta_gradient(&tasks);
    tch::set_num_threads(2);
    let (two, r2) = maml.meta_gradient(&tasks);
    tch::set_num_threads(before);
    // Bit-identical, not merely close: the tasks are summed in their order whatever
    // the number of workers, so a run resumed on another thread count continues exactly.
    assert!(
        two.iter().zip(&one).all(|(a, b)| a.equal(b)),
        "{}",
        rel_err(&two, &one)
    );
    assert_eq!(r1.loss, r2.loss);
    assert_eq!(tch::get_num_threads(), before);
}

/// Mean query MSE after adapting on the support set, over held-out tasks.
fn sine_mse(learner: &dyn MetaLearner, tasks: &[Task]) -> f64 {
    tasks
        .iter()
        .map(|t| perennial::eval::task_mse(learner, t))
        .sum::<f64>()
        / tasks.len() as f64
}

#[test]
fn every_algorithm_learns_sinusoids() {
    let test = sine_tasks(9, 2, 0, 100, 10);
    let mut learners: Vec<Box<dyn MetaLearner>> = vec![
        Box::new(sine_maml(MamlVariant::Maml, 0)),
        Box::new(sine_maml(MamlVariant::Fomaml, 0)),
        Box::new({
            // The head alone needs a larger step to adapt in 5 steps.
            let mut c = sine_maml(MamlVariant::Anil, 0).config().clone();
            c.inner_lr = 0.1;
            Maml::new(c, 0, Device::Cpu).unwrap()
        }),
        Box::new({
            // Learned rates are tuned for the training step count: adapt with it.
            let mut c = sine_maml(MamlVariant::Metasgd, 0).config().clone();
            c.eval_steps = c.inner_steps;
            Maml::new(c, 0, Device::Cpu).unwrap()
        }),
        Box::new(
            Reptile::new(
                ReptileConfig {
                    net: FastNetConfig::sinusoid(40),
                    inner_steps: 5,
                    eval_steps: 5,
                    inner_lr: 0.01,
                    meta_lr: 1.0,
                    anneal_steps: 600,
                },
                0,
                Device::Cpu,
            )
            .unwrap(),
        ),
    ];
    let mut failed = Vec::new();
    for l in learners.iter_mut() {
        let before = sine_mse(l.as_ref(), &test);
        for it in 0..600u64 {
            let tasks = sine_tasks(9, 0, it * 10, 10, 10);
            let r = l.meta_step(&tasks);
            assert!(r.loss.is_finite() && r.accuracy.is_none());
        }
        let after = sine_mse(l.as_ref(), &test);
        eprintln!("{}: MSE {before:.3} -> {after:.3}", l.name());
        if after >= 0.6 * before {
            failed.push(format!("{}: {before} -> {after}", l.name()));
        }
    }
    assert!(failed.is_empty(), "did not learn: {failed:?}");
}

#[test]
fn adapt_is_pure_and_deterministic_and_checkpoints_round_trip() {
    let tasks = conv_tasks(3);
    let mut rng = Rng::new(4);
    let probe = image_batch(&mut rng, 3, 4, 16).x.to_kind(Kind::Float);
    let f32_tasks: Vec<Task> = tasks
        .iter()
        .map(|t| Task {
            support: Batch {
                x: t.support.x.to_kind(Kind::Float),
                y: t.support.y.shallow_clone(),
                ways: 3,
            },
            query: Batch {
                x: t.query.x.to_kind(Kind::Float),
                y: t.query.y.shallow_clone(),
                ways: 3,
            },
        })
        .collect();
    let plus_plus = MamlConfig {
        msl_iterations: 2,
        per_step_bn: true,
        ..small_conv_config(MamlVariant::Maml)
    };
    let configs = [
        MamlVariant::Maml,
        MamlVariant::Fomaml,
        MamlVariant::Anil,
        MamlVariant::Metasgd,
    ]
    .map(small_conv_config)
    .into_iter()
    .chain([plus_plus]);
    for config in configs {
        let variant = (config.variant, config.per_step_bn);
        let new = |seed| Maml::new(config.clone(), seed, Device::Cpu).unwrap();
        let (mut a, mut b) = (new(7), new(7));
        for _ in 0..3 {
            let ra = a.meta_step(&f32_tasks);
            let rb = b.meta_step(&f32_tasks);
            assert_eq!(ra, rb, "{variant:?}: same seed, same steps");
        }
        let theta = flat(
            &a.params()
                .tensors()
                .into_iter()
                .map(|t| t.copy())
                .collect::<Vec<_>>(),
        );
        let p1 = a.adapt(&f32_tasks[0].support).predict(&probe);
        let p2 = a.adapt(&f32_tasks[0].support).predict(&probe);
        assert!(p1.equal(&p2), "{variant:?}: adapt is deterministic");
        let after = flat(
            &a.params()
                .tensors()
                .into_iter()
                .map(|t| t.copy())
                .collect::<Vec<_>>(),
        );
        assert!(theta.equal(&after), "{variant:?}: adapt changed θ");
        assert!(
            a.params().tensors().iter().all(|t| !t.grad().defined()
                || t.grad().abs().sum(Kind::Double).double_value(&[]) == 0.0),
            "{variant:?}: adapt left gradients behind"
        );
        // Adapting changed the prediction (the inner loop does something).
        let mut c = new(7);
        c.load_model_state(&a.model_state()).unwrap();
        assert!(c.adapt(&f32_tasks[0].support).predict(&probe).equal(&p1));
        // A training-state round trip continues identically.
        let mut d = new(99);
        d.load_training_state(&a.training_state()).unwrap();
        assert_eq!(a.meta_step(&f32_tasks), d.meta_step(&f32_tasks));
        // An adapted model saved and reloaded classifies with the support statistics.
        let adapted = a.adapt(&f32_tasks[0].support);
        let reloaded = a.load_adapted(&adapted.state()).unwrap();
        let single = reloaded.predict(&probe.narrow(0, 0, 1));
        assert_eq!(single.size(), [1, 3], "{variant:?}");
    }
}

#[test]
fn maml_learns_omniglot_classes_it_never_saw() {
    use perennial::data::omniglot::{Omniglot, Split, SplitScheme};
    use perennial::data::{paths, EpisodeSampler, EpisodeSpec};
    let Some(data) = paths::shared_test_data() else {
        return;
    };
    let o = Omniglot::load(&data).unwrap();
    let splits = paths::splits_dir(&data);
    let train = std::sync::Arc::new(
        o.split(SplitScheme::Vinyals, Split::Train, &splits)
            .unwrap(),
    );
    let test = std::sync::Arc::new(o.split(SplitScheme::Vinyals, Split::Test, &splits).unwrap());
    let train = EpisodeSampler::new(train, EpisodeSpec::new(5, 1, 5), 1).unwrap();
    let test = EpisodeSampler::new(test, EpisodeSpec::new(5, 1, 15), 1)
        .unwrap()
        .with_stream(2);
    let mut maml = Maml::new(MamlConfig::default(), 1, Device::Cpu).unwrap();
    let episodes = |s: &EpisodeSampler, r: std::ops::Range<u64>| -> Vec<Task> {
        r.map(|i| Task::from_episode(&s.sample(i), Device::Cpu))
            .collect()
    };
    let before = perennial::eval::evaluate(
        &maml,
        (0..40).map(|i| test.sample(i)),
        Device::Cpu,
        |_, _| {},
    );
    for it in 0..100u64 {
        maml.meta_step(&episodes(&train, it * 4..it * 4 + 4));
    }
    let after = perennial::eval::evaluate(
        &maml,
        (0..40).map(|i| test.sample(i)),
        Device::Cpu,
        |_, _| {},
    );
    eprintln!(
        "MAML 5-way 1-shot on test classes: {:.3} -> {:.3}",
        before.accuracy, after.accuracy
    );
    // Chance is 0.2. 100 updates of 4 tasks are a tiny budget; the paper's 98.7% needs
    // 60k updates of 32.
    assert!(
        after.accuracy > 0.45 && after.accuracy > before.accuracy + 0.15,
        "{before:?} -> {after:?}"
    );
}
