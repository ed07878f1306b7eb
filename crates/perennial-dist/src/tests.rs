use super::*;

fn vars<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
    move |k| {
        pairs
            .iter()
            .find(|(n, _)| *n == k)
            .map(|(_, v)| v.to_string())
    }
}

#[test]
fn the_environment_is_read_like_torchrun_sets_it() {
    assert_eq!(Env::from_vars(vars(&[])).unwrap(), None);
    // A world of one is a plain run, even without the rest.
    assert_eq!(Env::from_vars(vars(&[("WORLD_SIZE", "1")])).unwrap(), None);
    let env = Env::from_vars(vars(&[
        ("WORLD_SIZE", "4"),
        ("RANK", "3"),
        ("LOCAL_RANK", "1"),
        ("MASTER_ADDR", "node0"),
        ("MASTER_PORT", "29500"),
        ("GLOO_SOCKET_IFNAME", "eth1,eth0"),
    ]))
    .unwrap()
    .unwrap();
    assert_eq!(
        env,
        Env {
            rank: 3,
            world_size: 4,
            local_rank: 1,
            master_addr: "node0".into(),
            master_port: 29500,
            socket_ifname: Some("eth1".into()),
        }
    );
    assert!(!env.is_loopback());
    let base = [
        ("WORLD_SIZE", "2"),
        ("RANK", "1"),
        ("MASTER_ADDR", "127.0.0.1"),
        ("MASTER_PORT", "1234"),
    ];
    let env = Env::from_vars(vars(&base)).unwrap().unwrap();
    assert_eq!(env.local_rank, 1, "LOCAL_RANK defaults to RANK");
    assert!(env.is_loopback());
    // Each malformed or missing variable is named.
    for (var, bad) in [
        ("WORLD_SIZE", "0"),
        ("WORLD_SIZE", "two"),
        ("RANK", "2"),
        ("RANK", "x"),
        ("RANK", "-1"),
        ("MASTER_PORT", "0"),
        ("MASTER_PORT", "70000"),
        ("MASTER_ADDR", " "),
        ("LOCAL_RANK", "x"),
    ] {
        let mut v: Vec<(&str, &str)> = base.iter().filter(|(n, _)| *n != var).copied().collect();
        v.push((var, bad));
        let e = Env::from_vars(vars(&v)).unwrap_err().to_string();
        assert!(e.starts_with(var), "{var}={bad}: {e}");
    }
    for missing in ["RANK", "MASTER_ADDR", "MASTER_PORT"] {
        let v: Vec<(&str, &str)> = base
            .iter()
            .filter(|(n, _)| *n != missing)
            .copied()
            .collect();
        let e = Env::from_vars(vars(&v)).unwrap_err().to_string();
        assert!(e.contains(missing) && e.contains("not set"), "{e}");
    }
}

/// A free TCP port on the loopback interface.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn loopback(rank: usize, world_size: usize, port: u16) -> Env {
    Env {
        rank,
        world_size,
        local_rank: rank,
        master_addr: "127.0.0.1".into(),
        master_port: port,
        socket_ifname: None,
    }
}

/// Runs `f(rank)` for every rank of a group of `world` on threads of this test, as
/// `world` processes would; returns the results in rank order.
#[cfg(perennial_gloo)]
fn on_ranks<T: Send>(world: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    std::thread::scope(|s| {
        let f = &f;
        let handles: Vec<_> = (0..world).map(|rank| s.spawn(move || f(rank))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

#[cfg(not(perennial_gloo))]
#[test]
fn without_a_backend_joining_says_how_to_get_one() {
    assert!(!backend_available());
    let e = ProcessGroup::init(&loopback(0, 1, free_port()), Duration::from_secs(5))
        .unwrap_err()
        .to_string();
    assert!(e.contains("install-gloo.sh"), "{e}");
}

#[cfg(perennial_gloo)]
#[test]
fn three_ranks_on_loopback_sum_broadcast_and_meet() {
    assert!(backend_available());
    let port = free_port();
    let world = 3;
    let results: Vec<(Vec<f64>, Vec<f64>)> = on_ranks(world, |rank| {
        let g = ProcessGroup::init(&loopback(rank, world, port), Duration::from_secs(60)).unwrap();
        assert_eq!((g.rank(), g.world_size()), (rank, world));
        // rank r holds [r, 10 r, 100 r + 0.5]
        let r = rank as f64;
        let mut t = Tensor::from_slice(&[r, 10.0 * r, 100.0 * r + 0.5]);
        g.all_reduce_sum(&mut t).unwrap();
        let mut b = Tensor::from_slice(&[r, r * r]);
        g.broadcast(&mut b, 2).unwrap();
        g.barrier().unwrap();
        // Wrong inputs are refused before reaching the backend.
        let strided = Tensor::from_slice(&[1.0f64, 2.0, 3.0, 4.0])
            .view([2, 2])
            .tr();
        assert!(g.all_reduce_sum(&mut strided.shallow_clone()).is_err());
        assert!(g.broadcast(&mut b.shallow_clone(), 3).is_err());
        (
            Vec::<f64>::try_from(&t).unwrap(),
            Vec::<f64>::try_from(&b).unwrap(),
        )
    });
    for (sum, bcast) in results {
        assert_eq!(sum, vec![3.0, 30.0, 301.5]);
        assert_eq!(bcast, vec![2.0, 4.0]);
    }
}

#[cfg(perennial_gloo)]
#[test]
fn a_rank_that_never_comes_is_a_timeout_not_a_hang() {
    let port = free_port();
    let t = std::time::Instant::now();
    let e = ProcessGroup::init(&loopback(0, 2, port), Duration::from_secs(2))
        .unwrap_err()
        .to_string();
    assert!(e.contains("joining the group"), "{e}");
    assert!(t.elapsed() < Duration::from_secs(60), "{:?}", t.elapsed());
}

#[cfg(perennial_gloo)]
#[test]
fn a_rank_that_leaves_at_once_does_not_break_the_others_join() {
    // Every rank drops its group as soon as it has joined, as a rank that refuses a
    // setting does. Without the barrier at the end of `init`, a rank could close its
    // sockets while a peer was still connecting ("Connection closed by peer"; a CI run
    // saw it once). Many short rounds make the race likely enough to be seen.
    let world = 3;
    for round in 0..30 {
        let port = free_port();
        let joined = on_ranks(world, |rank| {
            ProcessGroup::init(&loopback(rank, world, port), Duration::from_secs(60))
                .map(drop)
                .map_err(|e| e.to_string())
        });
        for (rank, j) in joined.into_iter().enumerate() {
            assert!(j.is_ok(), "round {round}, rank {rank}: {j:?}");
        }
    }
}
