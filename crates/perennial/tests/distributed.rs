//! Data-parallel training ([`perennial::dist`]) against the single process: two ranks
//! on loopback (threads of this test, each with its own learner and c10d group, as two
//! processes would have) end 20 updates with the parameters of one process that
//! meta-trained on the whole meta-batch, to rounding, for ProtoNet and second-order
//! MAML on Omniglot; a data-parallel run stopped and resumed ends as an uninterrupted
//! one; the CLI's `launch` is tested in `perennial-cli/tests/cli.rs`.

use std::path::Path;
use std::sync::{Arc, Mutex};

use perennial::checkpoint::{RunConfig, RunDir};
use perennial::data::omniglot::{Omniglot, Split, SplitScheme};
use perennial::data::{EpisodeSampler, EpisodeSpec};
use perennial::dist::{DataParallel, Env, ProcessGroup};
use perennial::meta::{registry, MetaLearner};
use perennial::optim::GradReduce;
use perennial::tensors::Task;
use perennial::train::{train, train_data_parallel, Silent, TaskSource};
use tch::{Device, Tensor};

/// A free TCP port on the loopback interface.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn config(algorithm: &str, meta_batch: u64, episodes: u64) -> RunConfig {
    let mut c = registry::find(algorithm)
        .unwrap()
        .config(EpisodeSpec::new(5, 1, 3), 7);
    c.schedule.meta_batch = meta_batch;
    c.schedule.episodes = episodes;
    c.schedule.checkpoint_every = 5;
    c.schedule.log_every = 5;
    c.schedule.val_every = 0;
    c
}

/// The meta-parameters (`params.*`) of a learner state, by name.
fn params(state: &[(String, Tensor)]) -> Vec<(String, Tensor)> {
    let mut p: Vec<(String, Tensor)> = state
        .iter()
        .filter(|(n, _)| n.starts_with("params."))
        .map(|(n, t)| (n.clone(), t.shallow_clone()))
        .collect();
    p.sort_by(|a, b| a.0.cmp(&b.0));
    p
}

/// The largest difference between two parameter lists, relative to the largest
/// parameter.
fn max_diff(a: &[(String, Tensor)], b: &[(String, Tensor)]) -> f64 {
    assert_eq!(a.len(), b.len());
    let (mut diff, mut scale) = (0.0f64, 0.0f64);
    for ((na, ta), (nb, tb)) in a.iter().zip(b) {
        assert_eq!(na, nb);
        diff = diff.max((ta - tb).abs().max().double_value(&[]));
        scale = scale.max(ta.abs().max().double_value(&[]));
    }
    diff / scale
}

/// Trains `c` in `dir` on `world` ranks (threads), each with its own learner; returns
/// rank 0's and rank 1's final states.
fn data_parallel(
    c: &RunConfig,
    sampler: &EpisodeSampler,
    dir: &Path,
    world: usize,
) -> Vec<Vec<(String, Tensor)>> {
    let port = free_port();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..world)
            .map(|rank| {
                s.spawn(move || {
                    let env = Env {
                        rank,
                        world_size: world,
                        local_rank: rank,
                        master_addr: "127.0.0.1".into(),
                        master_port: port,
                        socket_ifname: None,
                    };
                    let group =
                        ProcessGroup::init(&env, std::time::Duration::from_secs(120)).unwrap();
                    let dp = DataParallel::new(group, c.schedule.meta_batch).unwrap();
                    let run = (rank == 0).then(|| match RunDir::open(dir) {
                        Ok(r) => r,
                        Err(_) => RunDir::create(dir, c).unwrap(),
                    });
                    let mut learner = registry::build(c, Device::Cpu).unwrap();
                    let state = train_data_parallel(
                        learner.as_mut(),
                        run.as_ref(),
                        &c.schedule,
                        sampler,
                        None,
                        Device::Cpu,
                        &mut Silent,
                        &dp,
                    )
                    .unwrap();
                    assert_eq!(state.next_episode, c.schedule.episodes);
                    learner.training_state()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

struct Reversed<'a> {
    inner: &'a EpisodeSampler,
    mb: u64,
}

impl TaskSource for Reversed<'_> {
    fn tasks(&self, start: u64, end: u64, device: Device) -> Box<dyn Iterator<Item = Task> + '_> {
        let mut v: Vec<_> = self.inner.tasks(start, end, device).collect();
        for c in v.chunks_mut(self.mb as usize) {
            c.reverse();
        }
        Box::new(v.into_iter())
    }
}

#[test]
fn two_ranks_train_as_one_process_on_the_whole_meta_batch() {
    if !perennial::dist::backend_available() {
        eprintln!("skipped: this build has no distributed backend");
        return;
    }
    let Some(data) = perennial::data::paths::shared_test_data() else {
        return;
    };
    tch::set_num_threads(1);
    let omni = Omniglot::load(&data).unwrap();
    let background = Arc::new(
        omni.split(SplitScheme::Lake, Split::Train, &data.join("splits"))
            .unwrap(),
    );
    // ProtoNet: 4 episodes an update, 2 a rank; MAML (second order): 2, 1 a rank.
    for (algorithm, meta_batch) in [("protonet", 4), ("maml", 2)] {
        let c = config(algorithm, meta_batch, 20);
        let sampler = EpisodeSampler::new(background.clone(), c.train_episode, c.seed).unwrap();
        let dir = tempfile::tempdir().unwrap();

        let mut single = registry::build(&c, Device::Cpu).unwrap();
        let one = RunDir::create(&dir.path().join("one"), &c).unwrap();
        train(
            single.as_mut(),
            &one,
            &c.schedule,
            &sampler,
            None,
            Device::Cpu,
            &mut Silent,
        )
        .unwrap();
        let single = params(&single.training_state());

        // The same single process with each meta-batch's tasks in the reverse order: the
        // same sum, added in another order. Its distance from the first is what
        // rounding alone does to 20 Adam updates (Adam divides by the gradient's scale,
        // so the conv biases before batch norm, whose gradient is rounding noise, take
        // steps of the learning rate in whatever direction the noise says).
        let mut rev = registry::build(&c, Device::Cpu).unwrap();
        let rev_dir = RunDir::create(&dir.path().join("rev"), &c).unwrap();
        let reversed = Reversed {
            inner: &sampler,
            mb: meta_batch,
        };
        train(
            rev.as_mut(),
            &rev_dir,
            &c.schedule,
            &reversed,
            None,
            Device::Cpu,
            &mut Silent,
        )
        .unwrap();
        let rounding = max_diff(&params(&rev.training_state()), &single);

        let ranks = data_parallel(&c, &sampler, &dir.path().join("two"), 2);
        // Every rank holds the same parameters, bit for bit ...
        let (r0, r1) = (params(&ranks[0]), params(&ranks[1]));
        assert_eq!(max_diff(&r0, &r1), 0.0, "{algorithm}: the ranks differ");
        // ... as far from the single process's as rounding takes it.
        let d = max_diff(&r0, &single);
        eprintln!(
            "{algorithm}: data-parallel vs single {d:e}; reversed order vs single {rounding:e}"
        );
        assert!(
            d <= 2.0 * rounding + 1e-6,
            "{algorithm}: data-parallel vs single process {d:e}, rounding {rounding:e}"
        );
        // Rank 0 wrote the run directory, as a single process does.
        let saved = RunDir::open(&dir.path().join("two")).unwrap();
        assert!(saved.state().unwrap().finished);
        let checkpoint = params(&saved.load_checkpoint().unwrap());
        assert_eq!(max_diff(&checkpoint, &r0), 0.0);
        // Four training lines (one per 5 updates) and the hand-off's cost.
        let metrics = saved.metrics().unwrap();
        assert_eq!(metrics.len(), 5, "{metrics:?}");
        let traffic = &metrics[4];
        assert_eq!(traffic["ranks"], 2);
        assert_eq!(traffic["allreduce_calls"], 20);
        // Every parameter's gradient and one flag per tensor, in f32, each update.
        let numel: i64 = r0.iter().map(|(_, t)| t.numel() as i64).sum();
        assert_eq!(
            traffic["allreduce_bytes"].as_i64().unwrap(),
            20 * 4 * (numel + r0.len() as i64)
        );

        // Stopped after 10 updates and resumed: the uninterrupted run's parameters.
        let halves = dir.path().join("halves");
        data_parallel(&config(algorithm, meta_batch, 10), &sampler, &halves, 2);
        let resumed = data_parallel(&c, &sampler, &halves, 2);
        assert_eq!(
            max_diff(&params(&resumed[0]), &r0),
            0.0,
            "{algorithm}: the resumed run differs"
        );
    }
}

#[test]
fn a_meta_batch_smaller_than_the_world_is_refused() {
    if !perennial::dist::backend_available() {
        return;
    }
    let port = free_port();
    let errors: Vec<String> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..2)
            .map(|rank| {
                s.spawn(move || {
                    let env = Env {
                        rank,
                        world_size: 2,
                        local_rank: rank,
                        master_addr: "127.0.0.1".into(),
                        master_port: port,
                        socket_ifname: None,
                    };
                    let g = ProcessGroup::init(&env, std::time::Duration::from_secs(60)).unwrap();
                    DataParallel::new(g, 1).unwrap_err().to_string()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for e in errors {
        assert!(
            e.contains("--meta-batch") && e.contains("at least 2"),
            "{e}"
        );
    }
}

/// A hand-off that records what it hands on (after `inner`, when there is one).
struct Recorder {
    inner: Option<Arc<dyn GradReduce>>,
    seen: Mutex<Vec<Tensor>>,
}

impl GradReduce for Recorder {
    fn reduce(&self, params: &[&Tensor], grads: &mut [Option<Tensor>]) -> bool {
        if let Some(inner) = &self.inner {
            if !inner.reduce(params, grads) {
                return false;
            }
        }
        let flat: Vec<Tensor> = grads.iter().flatten().map(|g| g.reshape([-1])).collect();
        self.seen.lock().unwrap().push(Tensor::cat(&flat, 0));
        true
    }
}

/// What one update hands to the optimiser: the meta-batch's gradient (Reptile: its
/// outer direction), for `world` ranks (1: a single process without a group).
fn first_gradient(c: &RunConfig, sampler: &EpisodeSampler, world: usize) -> Vec<Tensor> {
    let record = |learner: &mut dyn MetaLearner, inner, share: &[Task]| {
        let rec = Arc::new(Recorder {
            inner,
            seen: Mutex::new(Vec::new()),
        });
        learner.set_gradient_reducer(Some(rec.clone())).unwrap();
        learner.meta_step(share);
        let seen = rec.seen.lock().unwrap();
        assert_eq!(seen.len(), 1);
        seen[0].shallow_clone()
    };
    if world == 1 {
        let mut l = registry::build(c, Device::Cpu).unwrap();
        let tasks: Vec<Task> = sampler
            .tasks(0, c.schedule.meta_batch, Device::Cpu)
            .collect();
        return vec![record(l.as_mut(), None, &tasks)];
    }
    let port = free_port();
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..world)
            .map(|rank| {
                s.spawn(move || {
                    let env = Env {
                        rank,
                        world_size: world,
                        local_rank: rank,
                        master_addr: "127.0.0.1".into(),
                        master_port: port,
                        socket_ifname: None,
                    };
                    let g = ProcessGroup::init(&env, std::time::Duration::from_secs(60)).unwrap();
                    let dp = DataParallel::new(g, c.schedule.meta_batch).unwrap();
                    let (lo, hi) = dp.share();
                    let mut l = registry::build(c, Device::Cpu).unwrap();
                    let share: Vec<Task> = sampler.tasks(lo, hi, Device::Cpu).collect();
                    record(l.as_mut(), Some(dp.reducer()), &share)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

#[test]
fn the_hand_off_gives_every_rank_the_whole_meta_batch_gradient() {
    if !perennial::dist::backend_available() {
        return;
    }
    let Some(data) = perennial::data::paths::shared_test_data() else {
        return;
    };
    tch::set_num_threads(1);
    let omni = Omniglot::load(&data).unwrap();
    let background = Arc::new(
        omni.split(SplitScheme::Lake, Split::Train, &data.join("splits"))
            .unwrap(),
    );
    // Shares of 2 and 1 (ProtoNet, MAML), and of 2 and 3 (Reptile: 5 over 2 ranks,
    // weighted by their sizes).
    for (algorithm, meta_batch) in [("protonet", 4), ("maml", 2), ("reptile", 5)] {
        let c = config(algorithm, meta_batch, 1);
        let sampler = EpisodeSampler::new(background.clone(), c.train_episode, c.seed).unwrap();
        let single = first_gradient(&c, &sampler, 1).remove(0);
        for g in first_gradient(&c, &sampler, 2) {
            let rel = (&g - &single).norm().double_value(&[]) / single.norm().double_value(&[]);
            eprintln!("{algorithm}: hand-off vs single-process gradient {rel:e}");
            assert!(rel < 1e-5, "{algorithm}: {rel:e}");
        }
    }
}
