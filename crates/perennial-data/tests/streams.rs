//! Continual-learning streams on the real MNIST files (skipped when absent).

use std::sync::Arc;

use perennial_data::mnist::Mnist;
use perennial_data::stream::{Part, Scenario, Stream, StreamName, StreamSpec, Transform, PIXELS};

fn mnist() -> Option<(Arc<Mnist>, Arc<Mnist>)> {
    let data = perennial_data::paths::shared_test_data()?;
    Some((
        Arc::new(Mnist::load(&data, "train").unwrap()),
        Arc::new(Mnist::load(&data, "t10k").unwrap()),
    ))
}

#[test]
fn gem_streams_follow_the_protocol_and_are_deterministic() {
    let Some((train, test)) = mnist() else { return };
    for name in [StreamName::PermutedMnist, StreamName::RotatedMnist] {
        let build = |seed| {
            Stream::new(
                name,
                Scenario::DomainIncremental,
                StreamSpec::gem(seed),
                train.clone(),
                test.clone(),
            )
            .unwrap()
        };
        let (a, b, c) = (build(1), build(1), build(2));
        assert_eq!(a.len(), 20);
        for t in 0..20 {
            assert_eq!(a.examples(t, Part::Train), 1000);
            assert_eq!(a.examples(t, Part::Test), 10_000);
            // Distinct examples, drawn afresh per task.
            let mut seen = a.tasks[t].train.clone();
            seen.sort_unstable();
            seen.dedup();
            assert_eq!(seen.len(), 1000);
            // Same seed, same task; another seed, another task.
            assert_eq!(a.tasks[t].train, b.tasks[t].train);
            assert_eq!(a.tasks[t].transform, b.tasks[t].transform);
            assert_ne!(a.tasks[t].train, c.tasks[t].train);
            assert_eq!(a.batch(t, Part::Train, 0..7), b.batch(t, Part::Train, 0..7));
        }
        assert_ne!(a.tasks[0].train, a.tasks[1].train);
        match name {
            StreamName::PermutedMnist => {
                for t in &a.tasks {
                    let Transform::Permute(p) = &t.transform else {
                        panic!("{}", t.name)
                    };
                    let mut q = p.clone();
                    q.sort_unstable();
                    assert!(q.iter().enumerate().all(|(i, &v)| i == v as usize));
                }
                // A permutation moves pixels but keeps every value.
                let (x, y) = a.batch(3, Part::Test, 0..1);
                let raw = &test.images[a.tasks[3].test[0] as usize * PIXELS..][..PIXELS];
                let (mut s1, mut s2) = (x.clone(), raw.to_vec());
                s1.sort_by(f32::total_cmp);
                s2.sort_by(f32::total_cmp);
                assert_eq!(s1, s2);
                assert_ne!(x, raw);
                assert_eq!(y[0], test.labels[a.tasks[3].test[0] as usize] as i64);
            }
            _ => {
                // Angles rise through 0..180, one per twentieth.
                for (t, task) in a.tasks.iter().enumerate() {
                    let Transform::Rotate { degrees, .. } = task.transform else {
                        panic!("{}", task.name)
                    };
                    assert!(degrees >= 9.0 * t as f64 && degrees < 9.0 * (t + 1) as f64);
                }
            }
        }
    }
}

#[test]
fn split_mnist_has_five_two_digit_tasks() {
    let Some((train, test)) = mnist() else { return };
    // Counts per digit in the training part (README of the data folder).
    let counts = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949];
    for scenario in [Scenario::TaskIncremental, Scenario::ClassIncremental] {
        let s = Stream::new(
            StreamName::SplitMnist,
            scenario,
            StreamSpec::split(0),
            train.clone(),
            test.clone(),
        )
        .unwrap();
        assert_eq!(s.len(), 5);
        assert_eq!(s.classes(), (0..10).collect::<Vec<u8>>());
        for t in 0..5 {
            let want = [2 * t as u8, 2 * t as u8 + 1];
            assert_eq!(s.tasks[t].classes, want);
            assert_eq!(
                s.examples(t, Part::Train),
                counts[2 * t] + counts[2 * t + 1]
            );
            let (_, y) = s.batch(t, Part::Test, 0..s.examples(t, Part::Test));
            assert!(y.iter().all(|&l| want.contains(&(l as u8))));
            match scenario {
                Scenario::TaskIncremental => assert_eq!(s.mask(t), Some(&want[..])),
                _ => assert_eq!(s.mask(t), None),
            }
        }
        let total: usize = (0..5).map(|t| s.examples(t, Part::Test)).sum();
        assert_eq!(total, 10_000);
    }
}
