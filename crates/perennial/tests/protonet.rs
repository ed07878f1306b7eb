//! ProtoNet end to end: learning on real Omniglot, determinism, resume, adapt purity.

use std::path::PathBuf;
use std::sync::Arc;

use perennial::checkpoint::{AlgorithmConfig, DataConfig, RunConfig, RunDir, ScheduleConfig};
use perennial::data::omniglot::{Omniglot, Split, SplitScheme};
use perennial::data::{paths, ClassEntry, ClassSet, EpisodeSampler, EpisodeSpec, Rng};
use perennial::eval::evaluate;
use perennial::meta::metric::{ProtoNet, ProtoNetConfig};
use perennial::meta::MetaLearner;
use perennial::tensors::Task;
use perennial::train::{build_learner, train, Silent};
use tch::Device;

fn shared_data() -> Option<PathBuf> {
    perennial_data::paths::shared_test_data()
}

/// A small synthetic class set: each class is a fixed random 28x28 pattern plus noise.
fn synthetic(classes: usize, per_class: usize, seed: u64) -> Arc<ClassSet> {
    let mut rng = Rng::new(seed);
    let mut images = Vec::new();
    let mut entries = Vec::new();
    for c in 0..classes {
        let proto: Vec<f32> = (0..784)
            .map(|_| (rng.uniform() < 0.1) as u8 as f32)
            .collect();
        let mut ex = Vec::new();
        for _ in 0..per_class {
            ex.push((images.len() / 784) as u32);
            images.extend(
                proto
                    .iter()
                    .map(|&p| (p + 0.3 * rng.uniform() as f32).min(1.0)),
            );
        }
        entries.push(ClassEntry {
            name: format!("c{c}"),
            examples: ex,
            rotation: 0,
        });
    }
    Arc::new(ClassSet {
        split: "synthetic".into(),
        height: 28,
        width: 28,
        images: Arc::new(images),
        classes: entries,
    })
}

fn config(episodes: u64, checkpoint_every: u64) -> RunConfig {
    RunConfig {
        algorithm: AlgorithmConfig::Protonet {
            protonet: ProtoNetConfig::default(),
        },
        seed: 5,
        data: DataConfig {
            dataset: "synthetic".into(),
            data_dir: PathBuf::new(),
            splits: SplitScheme::Vinyals,
            train_split: Split::Train,
        },
        train_episode: EpisodeSpec::new(5, 1, 3),
        val_episode: EpisodeSpec::new(5, 1, 3),
        schedule: ScheduleConfig {
            episodes,
            val_every: 2,
            val_episodes: 3,
            checkpoint_every,
            log_every: 1,
            meta_batch: 1,
        },
        sinusoid: None,
        augment: None,
    }
}

/// The checkpoint's tensors by name (safetensors files do not keep insertion order).
fn state_of(run: &RunDir) -> std::collections::BTreeMap<String, Vec<f32>> {
    run.load_checkpoint()
        .unwrap()
        .into_iter()
        .map(|(n, t)| {
            (
                n,
                t.to_kind(tch::Kind::Float)
                    .flatten(0, -1)
                    .try_into()
                    .unwrap(),
            )
        })
        .collect()
}

#[test]
fn resume_continues_the_same_run_exactly() {
    let set = synthetic(12, 6, 1);
    let sampler = EpisodeSampler::new(set.clone(), EpisodeSpec::new(5, 1, 3), 5).unwrap();
    let val = EpisodeSampler::new(set, EpisodeSpec::new(5, 1, 3), 5)
        .unwrap()
        .with_stream(1);
    let dir = tempfile::tempdir().unwrap();
    // Uninterrupted: 6 episodes.
    let cfg = config(6, 3);
    let a = RunDir::create(&dir.path().join("a"), &cfg).unwrap();
    let mut la = build_learner(&cfg, Device::Cpu).unwrap();
    train(
        la.as_mut(),
        &a,
        &cfg.schedule,
        &sampler,
        Some(&val),
        Device::Cpu,
        &mut Silent,
    )
    .unwrap();
    // Interrupted after 3 episodes (as if killed after the first checkpoint), then resumed
    // by a fresh process-like learner.
    let cfg3 = config(3, 3);
    let b = RunDir::create(&dir.path().join("b"), &cfg).unwrap();
    let mut lb = build_learner(&cfg, Device::Cpu).unwrap();
    train(
        lb.as_mut(),
        &b,
        &cfg3.schedule,
        &sampler,
        Some(&val),
        Device::Cpu,
        &mut Silent,
    )
    .unwrap();
    // A stray metrics line from after the checkpoint must not survive the resume.
    b.append_metric(&serde_json::json!({"episode": 4, "loss": 99.0}))
        .unwrap();
    let mut lb2 = build_learner(&cfg, Device::Cpu).unwrap();
    let st = train(
        lb2.as_mut(),
        &b,
        &cfg.schedule,
        &sampler,
        Some(&val),
        Device::Cpu,
        &mut Silent,
    )
    .unwrap();
    assert!(st.finished);
    assert_eq!(st.next_episode, 6);
    let (sa, sb) = (state_of(&a), state_of(&b));
    assert_eq!(sa.keys().collect::<Vec<_>>(), sb.keys().collect::<Vec<_>>());
    let differing: Vec<&String> = sa.keys().filter(|k| sa[*k] != sb[*k]).collect();
    assert!(
        differing.is_empty(),
        "resumed run differs from the uninterrupted one in {differing:?}"
    );
    let episodes = |r: &RunDir| -> Vec<u64> {
        r.metrics()
            .unwrap()
            .iter()
            .filter(|m| m.get("loss").is_some())
            .map(|m| m["episode"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(episodes(&a), vec![1, 2, 3, 4, 5, 6]);
    assert_eq!(episodes(&b), vec![1, 2, 3, 4, 5, 6]);
    assert_eq!(a.state().unwrap(), b.state().unwrap());
}

#[test]
fn adapt_leaves_meta_parameters_untouched_and_runs_are_deterministic() {
    let set = synthetic(10, 5, 2);
    let sampler = EpisodeSampler::new(set, EpisodeSpec::new(5, 2, 3), 0).unwrap();
    let snapshot = |l: &ProtoNet| -> Vec<Vec<f32>> {
        l.model_state()
            .iter()
            .map(|(_, t)| t.flatten(0, -1).try_into().unwrap())
            .collect()
    };
    let mut l1 = ProtoNet::new(ProtoNetConfig::default(), 9, Device::Cpu).unwrap();
    let mut l2 = ProtoNet::new(ProtoNetConfig::default(), 9, Device::Cpu).unwrap();
    for i in 0..3 {
        let t = Task::from_episode(&sampler.sample(i), Device::Cpu);
        let r1 = l1.meta_step(std::slice::from_ref(&t));
        let r2 = l2.meta_step(std::slice::from_ref(&t));
        assert_eq!(r1, r2);
    }
    assert_eq!(snapshot(&l1), snapshot(&l2));
    let before = snapshot(&l1);
    let t = Task::from_episode(&sampler.sample(10), Device::Cpu);
    let adapted = l1.adapt(&t.support);
    let _ = adapted.predict(&t.query.x);
    drop(adapted);
    assert_eq!(
        before,
        snapshot(&l1),
        "adapt changed the meta-parameters or buffers"
    );
}

#[test]
fn checkpoint_round_trip_gives_identical_predictions() {
    let set = synthetic(10, 5, 3);
    let sampler = EpisodeSampler::new(set, EpisodeSpec::new(5, 1, 3), 0).unwrap();
    let mut l = ProtoNet::new(ProtoNetConfig::default(), 1, Device::Cpu).unwrap();
    for i in 0..2 {
        l.meta_step(&[Task::from_episode(&sampler.sample(i), Device::Cpu)]);
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(1, 1);
    let run = RunDir::create(dir.path(), &cfg).unwrap();
    run.save_best(&l.model_state()).unwrap();
    let mut back = ProtoNet::new(ProtoNetConfig::default(), 2, Device::Cpu).unwrap();
    back.load_model_state(&run.load_best().unwrap()).unwrap();
    let t = Task::from_episode(&sampler.sample(7), Device::Cpu);
    let p1 = l.adapt(&t.support).predict(&t.query.x);
    let p2 = back.adapt(&t.support).predict(&t.query.x);
    assert!(p1.equal(&p2));
}

/// Two hundred episodes on the Vinyals train split must clearly beat chance (20%)
/// on held-out test characters.
#[test]
fn short_training_beats_chance_on_held_out_omniglot() {
    let Some(data) = shared_data() else { return };
    let o = Omniglot::load(&data).unwrap();
    let splits = paths::splits_dir(&data);
    let tr = Arc::new(
        o.split(SplitScheme::Vinyals, Split::Train, &splits)
            .unwrap(),
    );
    let te = Arc::new(o.split(SplitScheme::Vinyals, Split::Test, &splits).unwrap());
    let spec = EpisodeSpec::new(5, 1, 10);
    let sampler = EpisodeSampler::new(tr, spec, 0).unwrap();
    let mut l = ProtoNet::new(ProtoNetConfig::default(), 0, Device::Cpu).unwrap();
    let untrained = evaluate(
        &l,
        (0..100).map(|i| EpisodeSampler::new(te.clone(), spec, 1).unwrap().sample(i)),
        Device::Cpu,
        |_, _| {},
    );
    for ep in sampler.prefetch(0, Some(200), 4) {
        l.meta_step(&[Task::from_episode(&ep, Device::Cpu)]);
    }
    let test = EpisodeSampler::new(te, spec, 1).unwrap();
    let s = evaluate(&l, (0..100).map(|i| test.sample(i)), Device::Cpu, |_, _| {});
    eprintln!(
        "untrained {:.3}, after 200 episodes {:.3} ± {:.3}",
        untrained.accuracy, s.accuracy, s.ci95
    );
    assert!(
        s.accuracy > 0.8,
        "accuracy {} after 200 episodes",
        s.accuracy
    );
    assert!(
        s.accuracy - s.ci95 > untrained.accuracy + 0.05,
        "training did not help: {untrained:?} -> {s:?}"
    );
}
