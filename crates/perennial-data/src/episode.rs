//! N-way K-shot episodes: sampling as a pure function of `(seed, index)`, and a
//! prefetcher that prepares them on a worker thread.

use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::dataset::ClassSet;
use crate::error::{Error, Result};
use crate::imageops::{affine_into, rot90_into};
use crate::rng::{streams, Rng};

/// The shape of an episode: `ways` classes, `shots` support and `queries` query
/// examples per class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EpisodeSpec {
    /// N: classes per episode.
    pub ways: usize,
    /// K: support examples per class.
    pub shots: usize,
    /// Q: query examples per class.
    pub queries: usize,
}

impl EpisodeSpec {
    /// A spec; checked against a data set by [`EpisodeSampler::new`].
    pub fn new(ways: usize, shots: usize, queries: usize) -> Self {
        EpisodeSpec {
            ways,
            shots,
            queries,
        }
    }

    /// Checks the spec against `set`: enough classes, enough examples in every class.
    pub fn validate(&self, set: &ClassSet) -> Result<()> {
        if self.ways < 2 {
            return Err(Error::invalid(
                "--ways",
                self.ways,
                "an episode needs at least 2 classes",
            ));
        }
        if self.shots < 1 {
            return Err(Error::invalid(
                "--shots",
                self.shots,
                "an episode needs at least 1 support example per class",
            ));
        }
        if self.queries < 1 {
            return Err(Error::invalid(
                "--queries",
                self.queries,
                "an episode needs at least 1 query example per class",
            ));
        }
        if self.ways > set.classes.len() {
            return Err(Error::NotEnoughClasses {
                ways: self.ways,
                split: set.split.clone(),
                available: set.classes.len(),
            });
        }
        let needed = self.shots + self.queries;
        if let Some(c) = set.classes.iter().find(|c| c.examples.len() < needed) {
            return Err(Error::NotEnoughExamples {
                class: c.name.clone(),
                needed,
                found: c.examples.len(),
            });
        }
        Ok(())
    }
}

/// Random rotation and translation of every image of an episode (Santoro et al. 2016's
/// "randomly translating and rotating character images"): each image is turned by an
/// angle drawn uniformly from `±max_degrees` and shifted by a vector whose two
/// components are drawn uniformly from `±max_shift` pixels, in one bilinear resampling
/// (zeros, i.e. no ink, where the source is left). The draws come from their own
/// generator stream, so an episode's classes and examples are the same with and
/// without it.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Jitter {
    /// The largest rotation, in degrees either way.
    pub max_degrees: f64,
    /// The largest shift along each axis, in pixels either way.
    pub max_shift: f64,
}

impl Jitter {
    /// Refuses negative or non-finite bounds and bounds that turn an image into
    /// something else (more than 180 degrees, a shift of the whole image).
    pub fn validate(&self, height: usize, width: usize) -> Result<()> {
        if !self.max_degrees.is_finite() || !(0.0..=180.0).contains(&self.max_degrees) {
            return Err(Error::invalid(
                "--augment-rotate",
                self.max_degrees,
                "a rotation bound in degrees, from 0 to 180",
            ));
        }
        let side = height.min(width) as f64;
        if !self.max_shift.is_finite() || self.max_shift < 0.0 || self.max_shift >= side {
            return Err(Error::invalid(
                "--augment-shift",
                self.max_shift,
                format!("a shift bound in pixels, from 0 to below the image side ({side})"),
            ));
        }
        Ok(())
    }

    /// Whether it changes nothing (both bounds 0).
    pub fn is_identity(&self) -> bool {
        self.max_degrees == 0.0 && self.max_shift == 0.0
    }
}

/// One episode. Labels are remapped to `0..ways` in the order of [`Episode::classes`];
/// support and query are class-major (all examples of class 0, then class 1, ...).
#[derive(Debug, Clone, PartialEq)]
pub struct Episode {
    /// The episode's index in its sampler's sequence.
    pub index: u64,
    /// Indices into the data set's classes; label `i` is `classes[i]`.
    pub classes: Vec<usize>,
    /// The spec it was drawn with.
    pub spec: EpisodeSpec,
    /// Image height.
    pub height: usize,
    /// Image width.
    pub width: usize,
    /// Support pixels, `ways * shots` images.
    pub support: Vec<f32>,
    /// Support labels in `0..ways`.
    pub support_labels: Vec<i64>,
    /// Query pixels, `ways * queries` images.
    pub query: Vec<f32>,
    /// Query labels in `0..ways`.
    pub query_labels: Vec<i64>,
}

/// Draws episodes from a [`ClassSet`]. `sample(i)` depends only on the data set, the
/// spec, the seed, the stream, the jitter and `i`, so runs reproduce, resume at any index, and can
/// be sampled in parallel.
#[derive(Debug, Clone)]
pub struct EpisodeSampler {
    set: Arc<ClassSet>,
    spec: EpisodeSpec,
    seed: u64,
    stream: u64,
    jitter: Option<Jitter>,
}

impl EpisodeSampler {
    /// A sampler over `set`; fails if the spec cannot be met.
    pub fn new(set: Arc<ClassSet>, spec: EpisodeSpec, seed: u64) -> Result<Self> {
        spec.validate(&set)?;
        Ok(EpisodeSampler {
            set,
            spec,
            seed,
            stream: 0,
            jitter: None,
        })
    }

    /// The same sampler with every image randomly rotated and shifted (`None` or an
    /// identity jitter: unchanged). Fails on bounds [`Jitter::validate`] refuses.
    pub fn with_jitter(mut self, jitter: Option<Jitter>) -> Result<Self> {
        if let Some(j) = &jitter {
            j.validate(self.set.height, self.set.width)?;
            if j.max_degrees >= 45.0 && self.set.classes.iter().any(|c| c.rotation != 0) {
                return Err(Error::invalid(
                    "--augment-rotate",
                    j.max_degrees,
                    "below 45 degrees: this data set's quarter turns are classes of their \
                     own, which a wider turn would blur into each other",
                ));
            }
        }
        self.jitter = jitter.filter(|j| !j.is_identity());
        Ok(self)
    }

    /// The same sampler on another independent stream (e.g. one for training, one for
    /// validation), so two uses of one seed never share episodes by accident.
    pub fn with_stream(mut self, stream: u64) -> Self {
        self.stream = stream;
        self
    }

    /// The spec.
    pub fn spec(&self) -> EpisodeSpec {
        self.spec
    }

    /// The data set.
    pub fn set(&self) -> &ClassSet {
        &self.set
    }

    /// The episode at `index`.
    pub fn sample(&self, index: u64) -> Episode {
        let mut rng = Rng::for_item(self.seed, self.stream, index);
        let EpisodeSpec {
            ways,
            shots,
            queries,
        } = self.spec;
        let set = &*self.set;
        let n = set.image_len();
        let classes = rng.choose_distinct(set.classes.len(), ways);
        let mut ep = Episode {
            index,
            classes: classes.clone(),
            spec: self.spec,
            height: set.height,
            width: set.width,
            support: vec![0f32; ways * shots * n],
            support_labels: Vec::with_capacity(ways * shots),
            query: vec![0f32; ways * queries * n],
            query_labels: Vec::with_capacity(ways * queries),
        };
        let square = set.height == set.width;
        // Jitter draws come from a stream of their own (one per sampler stream), so the
        // choices above and below are the same with and without it.
        let mut jitter = self.jitter.map(|bounds| {
            let stream = streams::JITTER.wrapping_add(self.stream);
            (bounds, Rng::for_item(self.seed, stream, index))
        });
        let mut plain = vec![0f32; if self.jitter.is_some() { n } else { 0 }];
        for (label, &c) in classes.iter().enumerate() {
            let class = &set.classes[c];
            let picks = rng.choose_distinct(class.examples.len(), shots + queries);
            for (j, &p) in picks.iter().enumerate() {
                let src = set.image(class.examples[p]);
                let (buf, slot) = if j < shots {
                    (&mut ep.support, label * shots + j)
                } else {
                    (&mut ep.query, label * queries + (j - shots))
                };
                let dst = &mut buf[slot * n..(slot + 1) * n];
                if class.rotation == 0 || !square {
                    dst.copy_from_slice(src);
                } else {
                    rot90_into(src, set.height, class.rotation, dst);
                }
                if let Some((bounds, jitter_rng)) = jitter.as_mut() {
                    let mut draw = |bound: f64| (2.0 * jitter_rng.uniform() - 1.0) * bound;
                    let deg = draw(bounds.max_degrees);
                    let (dy, dx) = (draw(bounds.max_shift), draw(bounds.max_shift));
                    plain.copy_from_slice(dst);
                    affine_into(&plain, set.height, set.width, deg, dy, dx, dst);
                }
            }
            ep.support_labels
                .extend(std::iter::repeat_n(label as i64, shots));
            ep.query_labels
                .extend(std::iter::repeat_n(label as i64, queries));
        }
        ep
    }

    /// Episodes `start, start + 1, ...` prepared ahead on a worker thread.
    pub fn prefetch(&self, start: u64, end: Option<u64>, depth: usize) -> Prefetcher {
        Prefetcher::new(self.clone(), start, end, depth)
    }
}

/// An iterator over episodes sampled ahead on a worker thread, `depth` at most in
/// flight, so the model never waits for data. Dropping it stops the worker.
#[derive(Debug)]
pub struct Prefetcher {
    rx: Option<Receiver<Episode>>,
    worker: Option<JoinHandle<()>>,
}

impl Prefetcher {
    fn new(sampler: EpisodeSampler, start: u64, end: Option<u64>, depth: usize) -> Self {
        let (tx, rx) = sync_channel(depth.max(1));
        let worker = std::thread::Builder::new()
            .name("episode-prefetch".into())
            .spawn(move || {
                let mut i = start;
                while end.is_none_or(|e| i < e) {
                    if tx.send(sampler.sample(i)).is_err() {
                        return;
                    }
                    i += 1;
                }
            })
            .expect("spawning the prefetch thread");
        Prefetcher {
            rx: Some(rx),
            worker: Some(worker),
        }
    }
}

impl Iterator for Prefetcher {
    type Item = Episode;
    fn next(&mut self) -> Option<Episode> {
        self.rx.as_ref()?.recv().ok()
    }
}

impl Drop for Prefetcher {
    fn drop(&mut self) {
        self.rx.take();
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::ClassEntry;
    use proptest::prelude::*;

    /// A set of `classes` classes with `per_class` 2x2 images whose pixels encode
    /// (class, example), so tests can tell where every sampled image came from.
    fn toy(classes: usize, per_class: usize) -> Arc<ClassSet> {
        let mut images = Vec::new();
        let mut entries = Vec::new();
        for c in 0..classes {
            let mut ex = Vec::new();
            for e in 0..per_class {
                ex.push((images.len() / 4) as u32);
                let v = (c * 1000 + e) as f32;
                images.extend([v, v + 0.25, v + 0.5, v + 0.75]);
            }
            entries.push(ClassEntry {
                name: format!("c{c}"),
                examples: ex,
                rotation: 0,
            });
        }
        Arc::new(ClassSet {
            split: "toy".into(),
            height: 2,
            width: 2,
            images: Arc::new(images),
            classes: entries,
        })
    }

    proptest! {
        #[test]
        fn episodes_are_well_formed(
            classes in 2usize..40, extra in 0usize..5, ways in 2usize..10,
            shots in 1usize..4, queries in 1usize..4, seed in any::<u64>(), index in any::<u64>(),
        ) {
            let ways = ways.min(classes);
            let set = toy(classes, shots + queries + extra);
            let s = EpisodeSampler::new(set, EpisodeSpec::new(ways, shots, queries), seed).unwrap();
            let ep = s.sample(index);
            // Same (seed, index) -> same episode.
            prop_assert_eq!(&ep, &s.sample(index));
            prop_assert_eq!(ep.classes.len(), ways);
            let mut cls = ep.classes.clone();
            cls.sort();
            cls.dedup();
            prop_assert_eq!(cls.len(), ways, "classes are distinct");
            prop_assert_eq!(ep.support.len(), ways * shots * 4);
            prop_assert_eq!(ep.query.len(), ways * queries * 4);
            // Labels are 0..ways, class-major, and every image comes from its class.
            let mut seen = std::collections::HashSet::new();
            for (buf, labels, k) in [(&ep.support, &ep.support_labels, shots), (&ep.query, &ep.query_labels, queries)] {
                for (i, &l) in labels.iter().enumerate() {
                    prop_assert_eq!(l as usize, i / k);
                    let v = buf[i * 4];
                    let class = (v as usize) / 1000;
                    prop_assert_eq!(class, ep.classes[l as usize]);
                    // No example appears twice in an episode (support and query disjoint).
                    prop_assert!(seen.insert(v as usize));
                }
            }
        }
    }

    #[test]
    fn different_indices_differ_and_cover_classes() {
        let s = EpisodeSampler::new(toy(20, 5), EpisodeSpec::new(5, 1, 1), 3).unwrap();
        let mut hits = [0usize; 20];
        for i in 0..2000 {
            for &c in &s.sample(i).classes {
                hits[c] += 1;
            }
        }
        // Each class expected 500 times; allow generous noise but catch bias.
        assert!(hits.iter().all(|&h| (400..600).contains(&h)), "{hits:?}");
        assert_ne!(s.sample(0), s.sample(1));
        let other = s.clone().with_stream(1);
        assert_ne!(s.sample(0).classes, other.sample(0).classes);
    }

    #[test]
    fn jitter_keeps_the_episode_and_moves_its_pixels() {
        let set = toy(10, 4);
        let spec = EpisodeSpec::new(3, 1, 2);
        let plain = EpisodeSampler::new(set.clone(), spec, 5).unwrap();
        let j = Jitter {
            max_degrees: 30.0,
            max_shift: 0.8,
        };
        let jittered = plain.clone().with_jitter(Some(j)).unwrap();
        for i in 0..20 {
            let (a, b) = (plain.sample(i), jittered.sample(i));
            // Same classes, labels and examples; other pixels, reproducibly.
            assert_eq!(a.classes, b.classes);
            assert_eq!(a.query_labels, b.query_labels);
            assert_ne!(a.query, b.query);
            assert_eq!(b, jittered.sample(i));
            // Each image is its own example resampled: ink only from that image.
            for (img_a, img_b) in a.query.chunks(4).zip(b.query.chunks(4)) {
                let hi = img_a.iter().cloned().fold(f32::MIN, f32::max);
                assert!(img_b.iter().all(|&v| (0.0..=hi + 1e-3).contains(&v)));
            }
        }
        // Another sampler stream keeps its own episodes and jitters them differently.
        let other = jittered.clone().with_stream(1);
        let plain_other = plain.clone().with_stream(1);
        assert_eq!(other.sample(0).classes, plain_other.sample(0).classes);
        assert_ne!(other.sample(0).query, plain_other.sample(0).query);
        // Turns of 45 degrees or more are refused where quarter turns are classes.
        let mut turned = (*set).clone();
        turned.classes[1].rotation = 1;
        let turned = EpisodeSampler::new(Arc::new(turned), spec, 5).unwrap();
        let wide = Jitter {
            max_degrees: 45.0,
            max_shift: 0.0,
        };
        let e = turned
            .clone()
            .with_jitter(Some(wide))
            .unwrap_err()
            .to_string();
        assert!(e.contains("--augment-rotate") && e.contains("45"), "{e}");
        assert!(plain.clone().with_jitter(Some(wide)).is_ok());
        assert!(turned.with_jitter(Some(j)).is_ok());
        // Zero bounds change nothing; bad bounds are refused.
        let zero = Jitter {
            max_degrees: 0.0,
            max_shift: 0.0,
        };
        assert_eq!(
            plain.clone().with_jitter(Some(zero)).unwrap().sample(3),
            plain.sample(3)
        );
        for bad in [(-1.0, 0.0), (181.0, 0.0), (0.0, 2.0), (f64::NAN, 0.0)] {
            let j = Jitter {
                max_degrees: bad.0,
                max_shift: bad.1,
            };
            assert!(plain.clone().with_jitter(Some(j)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn rejects_impossible_specs() {
        let set = toy(4, 3);
        let e = EpisodeSampler::new(set.clone(), EpisodeSpec::new(5, 1, 1), 0).unwrap_err();
        assert!(
            matches!(
                e,
                Error::NotEnoughClasses {
                    ways: 5,
                    available: 4,
                    ..
                }
            ),
            "{e}"
        );
        let e = EpisodeSampler::new(set.clone(), EpisodeSpec::new(2, 2, 2), 0).unwrap_err();
        assert!(
            matches!(
                e,
                Error::NotEnoughExamples {
                    needed: 4,
                    found: 3,
                    ..
                }
            ),
            "{e}"
        );
        assert!(EpisodeSampler::new(set.clone(), EpisodeSpec::new(1, 1, 1), 0).is_err());
        assert!(EpisodeSampler::new(set, EpisodeSpec::new(2, 0, 1), 0).is_err());
    }

    #[test]
    fn prefetcher_yields_the_same_sequence() {
        let s = EpisodeSampler::new(toy(10, 4), EpisodeSpec::new(3, 1, 2), 9).unwrap();
        let got: Vec<Episode> = s.prefetch(5, Some(12), 2).collect();
        let want: Vec<Episode> = (5..12).map(|i| s.sample(i)).collect();
        assert_eq!(got, want);
        // Dropping an unbounded prefetcher early stops its worker.
        let mut p = s.prefetch(0, None, 4);
        assert_eq!(p.next().unwrap(), s.sample(0));
        drop(p);
    }
}
