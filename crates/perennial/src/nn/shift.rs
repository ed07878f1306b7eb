//! Shift averaging: an image's features as the mean over its small translations.
//!
//! A Conv4's max-pooling makes it only roughly invariant to where a character sits in
//! the frame, so two drawings of one character that are a pixel apart can land
//! further apart in the embedding than they should. Averaging the embedding of every
//! translation of an image by up to `radius` pixels (zero fill, as paper is 0) gives a
//! feature that is a fixed function of that image alone, smoother under translation.

use tch::Tensor;

/// Every translation of images `[n, c, h, w]` by `dy, dx ∈ −radius..=radius` pixels,
/// with zero fill: `[(2·radius + 1)², n, c, h, w]`, the untranslated images first,
/// then the shifts in row-major order of `(dy, dx)`. Content shifted out of the frame
/// is dropped. `radius` 0 gives the images alone.
pub fn translations(x: &Tensor, radius: i64) -> Tensor {
    Tensor::stack(&translated(x, radius).collect::<Vec<_>>(), 0)
}

/// The translations of [`translations`], one `[n, c, h, w]` view of the padded
/// images each, in the same order.
fn translated(x: &Tensor, radius: i64) -> impl Iterator<Item = Tensor> {
    let s = x.size();
    let (h, w) = (s[2], s[3]);
    let r = radius.max(0);
    let padded = x.constant_pad_nd([r, r, r, r]);
    let shifts = (-r..=r)
        .flat_map(move |dy| (-r..=r).map(move |dx| (dy, dx)))
        .filter(|&d| d != (0, 0));
    std::iter::once((0, 0))
        .chain(shifts)
        // The output pixel (i, j) reads the input pixel (i − dy, j − dx).
        .map(move |(dy, dx)| padded.narrow(2, r - dy, h).narrow(3, r - dx, w))
}

/// `embed` (images `[m, c, h, w]` to features `[m, d]`) of images `[n, c, h, w]`,
/// averaged over their [`translations`] by up to `radius` pixels: `[n, d]`. With
/// `radius` 0 it is `embed(x)`. The translations go through `embed` one at a time, a
/// batch of `n` each: on CPU one batch of all `(2·radius + 1)² · n` images ran
/// slower per image (4.5x the time for 2.8x the images at radius 2 against 1).
pub fn shift_averaged(embed: impl Fn(&Tensor) -> Tensor, x: &Tensor, radius: i64) -> Tensor {
    if radius <= 0 {
        return embed(x);
    }
    let k = (2 * radius + 1).pow(2);
    // (Never empty: the untranslated images come first.)
    let sum = translated(x, radius)
        .map(|v| embed(&v))
        .reduce(|a, b| a + b)
        .unwrap_or_else(|| embed(x));
    sum / k as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    #[test]
    fn translations_move_a_pixel_and_drop_what_leaves_the_frame() {
        // One ink pixel at (1, 2) of a 4 x 4 image, and one at the corner (0, 0).
        let mut v = vec![0f32; 2 * 16];
        v[4 + 2] = 1.0;
        v[16] = 1.0;
        let x = Tensor::from_slice(&v).view([2, 1, 4, 4]);
        let t = translations(&x, 1);
        assert_eq!(t.size(), [9, 2, 1, 4, 4]);
        // The first is the images themselves.
        assert_eq!(
            f64::try_from((t.get(0) - &x).abs().sum(Kind::Float)).unwrap(),
            0.0
        );
        let mut shifts = vec![(0, 0)];
        shifts.extend(
            (-1..=1)
                .flat_map(|dy| (-1..=1).map(move |dx| (dy, dx)))
                .filter(|&s| s != (0, 0)),
        );
        assert_eq!(shifts.len(), 9);
        for (k, &(dy, dx)) in shifts.iter().enumerate() {
            let img = t.get(k as i64).get(0).get(0);
            assert_eq!(f64::try_from(img.sum(Kind::Float)).unwrap(), 1.0);
            let at = f64::try_from(img.get(1 + dy).get(2 + dx)).unwrap();
            assert_eq!(at, 1.0, "shift ({dy}, {dx})");
            // The corner pixel survives only shifts towards the inside of the frame.
            let corner = t.get(k as i64).get(1).get(0);
            let kept = f64::try_from(corner.sum(Kind::Float)).unwrap();
            assert_eq!(kept, if dy >= 0 && dx >= 0 { 1.0 } else { 0.0 });
        }
        assert_eq!(translations(&x, 0).size(), [1, 2, 1, 4, 4]);
    }

    #[test]
    fn shift_averaging_is_the_mean_of_the_translations_features() {
        let x = Tensor::from_slice(&(0..2 * 9).map(|i| i as f32).collect::<Vec<_>>())
            .view([2, 1, 3, 3]);
        // A feature that sees position: the image's first row.
        let embed = |x: &Tensor| x.select(1, 0).select(1, 0).shallow_clone();
        let got = shift_averaged(embed, &x, 1);
        let t = translations(&x, 1);
        let want = t.select(2, 0).select(2, 0).mean_dim(0, false, Kind::Float);
        assert_eq!(got.size(), [2, 3]);
        assert!(got.allclose(&want, 0.0, 1e-6, false));
        // Radius 0 is the plain embedding.
        assert!(shift_averaged(embed, &x, 0).equal(&embed(&x)));
    }
}
