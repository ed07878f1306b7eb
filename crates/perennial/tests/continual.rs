//! Continual learning on real MNIST streams (skipped when the shared data is absent).

use std::sync::Arc;

use perennial::continual::{
    run_stream, Agem, Classifier, Ewc, Naive, Replay, RunSettings, Strategy,
};
use perennial::data::mnist::Mnist;
use perennial::data::stream::{Scenario, Stream, StreamName, StreamSpec};

fn split_mnist(scenario: Scenario) -> Option<Stream> {
    // A 784-100-100-10 MLP on batches of 10 is far too small to split over threads.
    tch::set_num_threads(1);
    let data = perennial::data::paths::shared_test_data()?;
    let t0 = std::time::Instant::now();
    let train = Arc::new(Mnist::load(&data, "train").unwrap());
    let test = Arc::new(Mnist::load(&data, "t10k").unwrap());
    let spec = StreamSpec {
        tasks: 5,
        train_per_task: Some(1000),
        test_per_task: Some(1000),
        seed: 3,
    };
    let s = Stream::new(StreamName::SplitMnist, scenario, spec, train, test).unwrap();
    eprintln!("stream built in {:?}", t0.elapsed());
    Some(s)
}

fn run(strategy: &mut dyn Strategy, stream: &Stream) -> perennial::continual::AccuracyMatrix {
    let t0 = std::time::Instant::now();
    let mut model = Classifier::new(&[784, 100, 100, 10], 0.1, 7).unwrap();
    let settings = RunSettings {
        batch: 10,
        test_examples: None,
    };
    let m = run_stream(strategy, &mut model, stream, &settings, &mut |_, _, _| {}).unwrap();
    eprintln!("{} ran in {:?}", strategy.name(), t0.elapsed());
    m
}

/// Class-incremental Split-MNIST is where naive fine-tuning forgets everything but the
/// last task; a replay buffer of 200 examples must keep much of the old tasks.
#[test]
fn replay_beats_naive_fine_tuning_on_class_incremental_split_mnist() {
    let Some(stream) = split_mnist(Scenario::ClassIncremental) else {
        return;
    };
    let naive = run(&mut Naive, &stream);
    let er = run(&mut Replay::new(200, 1).unwrap(), &stream);
    let (n, e) = (naive.metrics(), er.metrics());
    eprintln!("naive {n:?}\ner {e:?}");
    // Naive: the last task is learnt, the others are gone.
    assert!(naive.r[4][4] > 0.9, "{:?}", naive.r[4]);
    assert!(n.acc < 0.35, "{n:?}");
    assert!(n.bwt.unwrap() < -0.6, "{n:?}");
    // Replay keeps the old digits.
    assert!(e.acc > n.acc + 0.25, "naive {n:?} er {e:?}");
    assert!(
        e.bwt.unwrap() > n.bwt.unwrap() + 0.25,
        "naive {n:?} er {e:?}"
    );
    // The baseline (untrained model) is near chance on every task.
    for &b in naive.baseline.as_ref().unwrap() {
        assert!(b < 0.45, "{b}");
    }
    // Same seeds, same matrix.
    assert_eq!(run(&mut Replay::new(200, 1).unwrap(), &stream), er);
}

/// Task-incremental: with the task known, even naive fine-tuning keeps most of each
/// task (two classes to choose from), and the masks keep the answers in the task.
#[test]
fn task_incremental_split_mnist_is_easy_for_naive() {
    let Some(stream) = split_mnist(Scenario::TaskIncremental) else {
        return;
    };
    let m = run(&mut Naive, &stream).metrics();
    assert!(m.acc > 0.8, "{m:?}");
}

fn permuted(tasks: usize) -> Option<Stream> {
    tch::set_num_threads(1);
    let data = perennial::data::paths::shared_test_data()?;
    let train = Arc::new(Mnist::load(&data, "train").unwrap());
    let test = Arc::new(Mnist::load(&data, "t10k").unwrap());
    let spec = StreamSpec {
        tasks,
        train_per_task: Some(1000),
        test_per_task: Some(1000),
        seed: 5,
    };
    Some(
        Stream::new(
            StreamName::PermutedMnist,
            Scenario::DomainIncremental,
            spec,
            train,
            test,
        )
        .unwrap(),
    )
}

/// On five Permuted-MNIST tasks (1000 examples each, one pass), EWC (λ = 100, the best
/// of a sweep on this stream) and A-GEM (250 examples per task) keep old tasks better than naive
/// fine-tuning: higher backward transfer, no lower average accuracy.
#[test]
fn ewc_and_agem_forget_less_than_naive_on_permuted_mnist() {
    let Some(stream) = permuted(5) else { return };
    let n = run(&mut Naive, &stream).metrics();
    let e = run(&mut Ewc::new(100.0, 10).unwrap(), &stream).metrics();
    let a = run(&mut Agem::new(250, 256, 1).unwrap(), &stream).metrics();
    eprintln!("naive {n:?}\newc {e:?}\nagem {a:?}");
    for (name, m) in [("ewc", e), ("agem", a)] {
        assert!(
            m.bwt.unwrap() > n.bwt.unwrap() + 0.02,
            "{name} {m:?} vs naive {n:?}"
        );
        assert!(m.acc > n.acc, "{name} {m:?} vs naive {n:?}");
    }
    // Bad settings are refused.
    assert!(Ewc::new(-1.0, 10).is_err());
    assert!(Agem::new(0, 256, 1).is_err());
}
