//! A labelled image collection organised by class, the input of the episode sampler.

use std::sync::Arc;

/// One class of a [`ClassSet`]: which stored images belong to it, and the rotation
/// applied to them when sampled (rotated copies of a character are distinct classes in
/// the usual Omniglot protocol).
#[derive(Debug, Clone, PartialEq)]
pub struct ClassEntry {
    /// A human-readable name, e.g. `Greek/character03/rot90`.
    pub name: String,
    /// Indices into [`ClassSet::images`], one per example.
    pub examples: Vec<u32>,
    /// Counter-clockwise quarter turns (0..4) applied when an example is sampled.
    pub rotation: u8,
}

/// Images of one split, grouped by class. Pixels are `f32` in row-major order, one
/// channel; all images have the same `height x width`.
#[derive(Debug, Clone)]
pub struct ClassSet {
    /// The split's name, used in error messages (`train`, `test`, ...).
    pub split: String,
    /// Image height in pixels.
    pub height: usize,
    /// Image width in pixels.
    pub width: usize,
    /// Pixel storage shared between splits: image `i` is
    /// `images[i * height * width..(i + 1) * height * width]`.
    pub images: Arc<Vec<f32>>,
    /// The classes.
    pub classes: Vec<ClassEntry>,
}

impl ClassSet {
    /// The number of pixels of one image.
    pub fn image_len(&self) -> usize {
        self.height * self.width
    }

    /// The stored pixels of image `i` (before any rotation).
    pub fn image(&self, i: u32) -> &[f32] {
        let n = self.image_len();
        &self.images[i as usize * n..(i as usize + 1) * n]
    }

    /// The same set without the rotated copies that a protocol adds as classes: only the
    /// classes drawn as stored (`rotation == 0`). Pixels are shared, not copied.
    pub fn unrotated(&self) -> ClassSet {
        ClassSet {
            split: self.split.clone(),
            height: self.height,
            width: self.width,
            images: Arc::clone(&self.images),
            classes: self
                .classes
                .iter()
                .filter(|c| c.rotation == 0)
                .cloned()
                .collect(),
        }
    }

    /// The smallest number of examples of any class.
    pub fn min_examples(&self) -> usize {
        self.classes
            .iter()
            .map(|c| c.examples.len())
            .min()
            .unwrap_or(0)
    }

    /// Builds a set whose classes are the given labelled images, one class per distinct
    /// label in `0..n_classes`, named by `names`.
    pub fn from_labelled(
        split: impl Into<String>,
        height: usize,
        width: usize,
        images: Vec<f32>,
        labels: &[usize],
        names: Vec<String>,
    ) -> Self {
        let mut classes: Vec<ClassEntry> = names
            .into_iter()
            .map(|name| ClassEntry {
                name,
                examples: Vec::new(),
                rotation: 0,
            })
            .collect();
        for (i, &l) in labels.iter().enumerate() {
            classes[l].examples.push(i as u32);
        }
        ClassSet {
            split: split.into(),
            height,
            width,
            images: Arc::new(images),
            classes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unrotated_keeps_only_the_classes_drawn_as_stored() {
        let mut set = ClassSet::from_labelled(
            "test",
            1,
            1,
            vec![0.0, 1.0, 2.0],
            &[0, 1, 2],
            vec!["a/rot0".into(), "a/rot90".into(), "b/rot0".into()],
        );
        set.classes[1].rotation = 1;
        let u = set.unrotated();
        let names: Vec<&str> = u.classes.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["a/rot0", "b/rot0"]);
        assert_eq!(u.classes[1].examples, [2]);
        assert!(Arc::ptr_eq(&u.images, &set.images));
        assert_eq!(set.classes.len(), 3, "the original set is left as it was");
    }
}
