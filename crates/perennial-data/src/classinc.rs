//! The Omniglot class-incremental stream of OML and ANML (Javed & White 2019, Beaulieu
//! et al. 2020): after meta-training on the background characters, a learner meets the
//! evaluation characters one class at a time, learns each from its first 15 images in a
//! single pass, and is tested on the held-out 5 images of every class seen so far.
//!
//! A [`ClassStream`] is a pure function of its seed: the order of the classes is a
//! seeded shuffle of the class set (e.g. the 659 evaluation characters of the Lake
//! split), cut to the number of classes asked for (OML and ANML go up to 600). Within
//! a class, the training images are the first `train_per_class` examples in the data
//! set's order and the test images the rest, as in the OML code. Stream position `c`
//! is label `c`.

use std::sync::Arc;

use crate::dataset::ClassSet;
use crate::error::{Error, Result};
use crate::imageops::rot90_into;
use crate::rng::Rng;
use crate::stream::Part;

/// Settings of a class-incremental stream.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ClassStreamSpec {
    /// Classes in the stream (OML / ANML: up to 600).
    pub classes: usize,
    /// Training images per class; the class's other images are its test images
    /// (Omniglot: 15 of 20).
    pub train_per_class: usize,
    /// Seed of the class order.
    pub seed: u64,
}

impl ClassStreamSpec {
    /// The OML / ANML protocol: 600 classes, 15 training images each.
    pub fn oml(seed: u64) -> Self {
        ClassStreamSpec {
            classes: 600,
            train_per_class: 15,
            seed,
        }
    }
}

/// A class-incremental stream over a class set.
#[derive(Debug, Clone)]
pub struct ClassStream {
    set: Arc<ClassSet>,
    spec: ClassStreamSpec,
    order: Vec<usize>,
}

impl ClassStream {
    /// The stream of `spec.classes` classes of `set`, in an order drawn from
    /// `spec.seed`. Every class must have more than `spec.train_per_class` examples, so
    /// that it keeps at least one test image.
    pub fn new(set: Arc<ClassSet>, spec: ClassStreamSpec) -> Result<Self> {
        if spec.classes == 0 {
            return Err(Error::invalid(
                "--tasks",
                0,
                "the stream needs at least one class",
            ));
        }
        if spec.classes > set.classes.len() {
            return Err(Error::invalid(
                "--tasks",
                spec.classes,
                format!(
                    "the {} split has only {} classes",
                    set.split,
                    set.classes.len()
                ),
            ));
        }
        if spec.train_per_class == 0 {
            return Err(Error::invalid(
                "--train-per-task",
                0,
                "a class needs at least one training image",
            ));
        }
        if let Some(c) = set
            .classes
            .iter()
            .find(|c| c.examples.len() <= spec.train_per_class)
        {
            return Err(Error::invalid(
                "--train-per-task",
                spec.train_per_class,
                format!(
                    "class {} has {} images, so none would be left to test on",
                    c.name,
                    c.examples.len()
                ),
            ));
        }
        let mut order: Vec<usize> = (0..set.classes.len()).collect();
        Rng::for_item(spec.seed, crate::rng::streams::CLASS_ORDER, 0).shuffle(&mut order);
        order.truncate(spec.classes);
        Ok(ClassStream { set, spec, order })
    }

    /// The settings.
    pub fn spec(&self) -> &ClassStreamSpec {
        &self.spec
    }

    /// Number of classes in the stream.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether the stream is empty (never: [`ClassStream::new`] refuses it).
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// The image side (images are square).
    pub fn side(&self) -> usize {
        self.set.height
    }

    /// The name of the class at stream position `c`.
    pub fn class_name(&self, c: usize) -> &str {
        &self.set.classes[self.order[c]].name
    }

    /// The number of `part` images of the class at position `c`.
    pub fn examples(&self, c: usize, part: Part) -> usize {
        let n = self.set.classes[self.order[c]].examples.len();
        match part {
            Part::Train => self.spec.train_per_class,
            Part::Test => n - self.spec.train_per_class,
        }
    }

    /// The `part` images of the class at position `c`, `[n, side * side]` row-major,
    /// with their rotation applied.
    pub fn images(&self, c: usize, part: Part) -> Vec<f32> {
        let class = &self.set.classes[self.order[c]];
        let k = self.spec.train_per_class;
        let idx = match part {
            Part::Train => &class.examples[..k],
            Part::Test => &class.examples[k..],
        };
        let len = self.set.image_len();
        let mut out = vec![0f32; idx.len() * len];
        for (dst, &i) in out.chunks_mut(len).zip(idx) {
            rot90_into(self.set.image(i), self.set.height, class.rotation, dst);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::ClassSet;

    fn set(classes: usize, per: usize) -> Arc<ClassSet> {
        let side = 2;
        let n = classes * per;
        let images: Vec<f32> = (0..n * side * side).map(|v| v as f32).collect();
        let labels: Vec<usize> = (0..n).map(|i| i / per).collect();
        let names = (0..classes).map(|c| format!("c{c}")).collect();
        Arc::new(ClassSet::from_labelled(
            "test", side, side, images, &labels, names,
        ))
    }

    #[test]
    fn order_is_a_seeded_prefix_of_a_shuffle() {
        let s = set(30, 20);
        let spec = |seed| ClassStreamSpec {
            classes: 10,
            train_per_class: 15,
            seed,
        };
        let a = ClassStream::new(s.clone(), spec(1)).unwrap();
        let b = ClassStream::new(s.clone(), spec(1)).unwrap();
        let c = ClassStream::new(s.clone(), spec(2)).unwrap();
        assert_eq!(a.order, b.order);
        assert_ne!(a.order, c.order);
        let mut sorted = a.order.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 10);
        // The first 15 images train, the last 5 test, with nothing shared.
        assert_eq!(a.examples(0, Part::Train), 15);
        assert_eq!(a.examples(0, Part::Test), 5);
        let tr = a.images(3, Part::Train);
        let te = a.images(3, Part::Test);
        assert_eq!((tr.len(), te.len()), (15 * 4, 5 * 4));
        let class = a.order[3];
        assert_eq!(tr[0], (class * 20 * 4) as f32);
        assert_eq!(te[0], ((class * 20 + 15) * 4) as f32);
        assert_eq!(a.class_name(3), format!("c{class}"));
    }

    #[test]
    fn impossible_streams_are_refused() {
        let s = set(30, 20);
        let bad = |classes, train_per_class| {
            ClassStream::new(
                s.clone(),
                ClassStreamSpec {
                    classes,
                    train_per_class,
                    seed: 0,
                },
            )
            .unwrap_err()
            .to_string()
        };
        assert!(bad(31, 15).contains("only 30 classes"));
        assert!(bad(0, 15).contains("--tasks"));
        assert!(bad(10, 20).contains("none would be left"));
        assert!(bad(10, 0).contains("--train-per-task"));
    }
}
