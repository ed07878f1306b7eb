//! A small, stable pseudo-random generator.
//!
//! Episodes must be a pure function of `(seed, index)` and must stay the same across
//! crate upgrades, so the generator is written here rather than taken from a crate whose
//! streams may change between versions. It is SplitMix64 (Steele, Lea & Flood 2014):
//! fast, 64-bit state, passes BigCrush, and trivially seekable by hashing the key.

/// The registry of generator streams: every `stream` argument of [`Rng::for_item`] in
/// the workspace is one of these, so no two uses of a seed draw the same numbers. The
/// values are part of every result's reproducibility: never change one.
pub mod streams {
    /// Training episodes of meta-learning (`(seed, TRAIN_EPISODES, index)`).
    pub const TRAIN_EPISODES: u64 = 0;
    /// Validation episodes.
    pub const VAL_EPISODES: u64 = 1;
    /// Test episodes of `eval`.
    pub const TEST_EPISODES: u64 = 2;
    /// The class order of the Omniglot class stream.
    pub const CLASS_ORDER: u64 = 0x0C1A_55E5;
    /// The transforms (permutations, rotations) of MNIST streams.
    pub const STREAM_TRANSFORMS: u64 = 0x5452_414e;
    /// The training examples drawn for each task of an MNIST stream.
    pub const STREAM_TRAIN: u64 = 0x5452_4149;
    /// The test examples drawn for each task of an MNIST stream.
    pub const STREAM_TEST: u64 = 0x5445_5354;
    /// Joint training's i.i.d. order over a stream.
    pub const JOINT_ORDER: u64 = 0x004A_4F49_4E54;
    /// La-MAML's replay buffer.
    pub const LAMAML_BUFFER: u64 = 0x004C_414D;
    /// MER's replay buffer.
    pub const MER_BUFFER: u64 = 0x004D_4552;
    /// The lifelong learner's consolidation episodes.
    pub const CONSOLIDATION: u64 = 0x0043_4F4E;
    /// The random head initialisation of the MAML family's network.
    pub const HEAD_INIT: u64 = u64::MAX;
    /// The rotations and shifts of a jittered episode sampler: `JITTER + s` for the
    /// sampler on stream `s` (0, 1 or 2 above), so each sampler stream has its own.
    pub const JITTER: u64 = 0x4A49_5454_0000_0000;

    /// Every stream, for the check that they are distinct.
    pub const ALL: [u64; 13] = [
        TRAIN_EPISODES,
        VAL_EPISODES,
        TEST_EPISODES,
        CLASS_ORDER,
        STREAM_TRANSFORMS,
        STREAM_TRAIN,
        STREAM_TEST,
        JOINT_ORDER,
        LAMAML_BUFFER,
        MER_BUFFER,
        CONSOLIDATION,
        HEAD_INIT,
        JITTER,
    ];
}

/// SplitMix64 pseudo-random generator. It serialises as its 64-bit state, so a
/// checkpoint that stores it resumes the exact same draws.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Rng {
    state: u64,
}

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Rng { state: mix(seed) }
    }

    /// A generator for the `index`-th item of stream `stream` under `seed`: independent
    /// streams for every `(seed, stream, index)` triple without any shared state.
    pub fn for_item(seed: u64, stream: u64, index: u64) -> Self {
        let a = mix(seed ^ GOLDEN);
        let b = mix(a ^ stream.wrapping_mul(GOLDEN));
        Rng::new(b ^ mix(index.wrapping_add(GOLDEN)))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GOLDEN);
        mix(self.state)
    }

    /// A uniform integer in `0..n` (unbiased; Lemire's method). `n` must be positive.
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "Rng::below(0)");
        let threshold = n.wrapping_neg() % n;
        loop {
            let m = (self.next_u64() as u128) * (n as u128);
            if (m as u64) >= threshold {
                return (m >> 64) as u64;
            }
        }
    }

    /// A uniform float in `[0, 1)` with 53 random bits.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// `k` distinct indices from `0..n`, in random order (a partial Fisher–Yates
    /// shuffle). `k` must not exceed `n`.
    pub fn choose_distinct(&mut self, n: usize, k: usize) -> Vec<usize> {
        assert!(k <= n, "choose_distinct: k={k} > n={n}");
        if k * 4 < n {
            // Sparse case: rejection against what was drawn (k is small).
            let mut out = Vec::with_capacity(k);
            while out.len() < k {
                let c = self.below(n as u64) as usize;
                if !out.contains(&c) {
                    out.push(c);
                }
            }
            return out;
        }
        let mut all: Vec<usize> = (0..n).collect();
        for i in 0..k {
            let j = i + self.below((n - i) as u64) as usize;
            all.swap(i, j);
        }
        all.truncate(k);
        all
    }

    /// Shuffles `items` in place (Fisher–Yates).
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below((i + 1) as u64) as usize;
            items.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generator_streams_are_distinct() {
        let mut all = streams::ALL.to_vec();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), streams::ALL.len());
    }

    #[test]
    fn same_key_same_stream() {
        let a: Vec<u64> = (0..5).map(|_| Rng::for_item(7, 1, 3).next_u64()).collect();
        assert!(a.windows(2).all(|w| w[0] == w[1]));
        assert_ne!(
            Rng::for_item(7, 1, 3).next_u64(),
            Rng::for_item(7, 1, 4).next_u64()
        );
        assert_ne!(
            Rng::for_item(7, 1, 3).next_u64(),
            Rng::for_item(8, 1, 3).next_u64()
        );
    }

    #[test]
    fn below_is_roughly_uniform() {
        let mut r = Rng::new(1);
        let mut counts = [0usize; 7];
        for _ in 0..70_000 {
            counts[r.below(7) as usize] += 1;
        }
        // Chi-square with 6 degrees of freedom; 22.46 is the 0.999 quantile.
        let chi2: f64 = counts
            .iter()
            .map(|&c| (c as f64 - 10_000.0).powi(2) / 10_000.0)
            .sum();
        assert!(chi2 < 22.46, "chi2 = {chi2}, counts = {counts:?}");
    }

    #[test]
    fn choose_distinct_is_distinct() {
        let mut r = Rng::new(2);
        for &(n, k) in &[(10, 10), (100, 3), (5, 0), (4112, 60)] {
            let mut v = r.choose_distinct(n, k);
            assert_eq!(v.len(), k);
            v.sort();
            v.dedup();
            assert_eq!(v.len(), k);
            assert!(v.iter().all(|&x| x < n));
        }
    }
}
