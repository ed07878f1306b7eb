//! Image transforms on plain `f32` buffers (row-major, one channel).

/// Resizes a `h x w` image to `oh x ow` with an antialiased bilinear (triangle) filter.
///
/// When shrinking, the filter's support widens by the scale factor, so every source
/// pixel contributes: this is PIL's `BILINEAR` and PyTorch's
/// `F.interpolate(mode="bilinear", antialias=True, align_corners=False)`, which the
/// Python peer benchmark uses to make its 28 x 28 Omniglot images.
pub fn resize_bilinear_aa(src: &[f32], h: usize, w: usize, oh: usize, ow: usize) -> Vec<f32> {
    assert_eq!(src.len(), h * w, "resize: buffer does not match {h}x{w}");
    let cols = filter_weights(w, ow);
    let rows = filter_weights(h, oh);
    // Horizontal pass: h x ow.
    let mut tmp = vec![0f32; h * ow];
    for y in 0..h {
        let line = &src[y * w..(y + 1) * w];
        for (x, (start, ws)) in cols.iter().enumerate() {
            let mut acc = 0f64;
            for (k, &wt) in ws.iter().enumerate() {
                acc += wt * line[start + k] as f64;
            }
            tmp[y * ow + x] = acc as f32;
        }
    }
    // Vertical pass: oh x ow.
    let mut out = vec![0f32; oh * ow];
    for (y, (start, ws)) in rows.iter().enumerate() {
        for x in 0..ow {
            let mut acc = 0f64;
            for (k, &wt) in ws.iter().enumerate() {
                acc += wt * tmp[(start + k) * ow + x] as f64;
            }
            out[y * ow + x] = acc as f32;
        }
    }
    out
}

/// For each output coordinate: the first input index and the normalised weights.
fn filter_weights(n_in: usize, n_out: usize) -> Vec<(usize, Vec<f64>)> {
    let scale = n_in as f64 / n_out as f64;
    let support = scale.max(1.0); // the triangle's half-width in input pixels
    (0..n_out)
        .map(|i| {
            let center = (i as f64 + 0.5) * scale;
            let lo = ((center - support + 0.5).floor().max(0.0)) as usize;
            let hi = ((center + support + 0.5).floor() as usize).min(n_in);
            let mut ws: Vec<f64> = (lo..hi)
                .map(|j| {
                    let d = (j as f64 + 0.5 - center) / support;
                    (1.0 - d.abs()).max(0.0)
                })
                .collect();
            let total: f64 = ws.iter().sum();
            if total > 0.0 {
                ws.iter_mut().for_each(|v| *v /= total);
            }
            (lo, ws)
        })
        .collect()
}

/// Rotates a square `s x s` image by `quarter_turns` x 90 degrees counter-clockwise
/// (as `numpy.rot90` / `torch.rot90` on the last two axes), writing into `out`.
pub fn rot90_into(src: &[f32], s: usize, quarter_turns: u8, out: &mut [f32]) {
    debug_assert_eq!(src.len(), s * s);
    debug_assert_eq!(out.len(), s * s);
    match quarter_turns % 4 {
        0 => out.copy_from_slice(src),
        // out[i][j] = src[j][s-1-i]
        1 => {
            for i in 0..s {
                for j in 0..s {
                    out[i * s + j] = src[j * s + (s - 1 - i)];
                }
            }
        }
        // out[i][j] = src[s-1-i][s-1-j]
        2 => {
            for (o, v) in out.iter_mut().zip(src.iter().rev()) {
                *o = *v;
            }
        }
        // out[i][j] = src[s-1-j][i]
        _ => {
            for i in 0..s {
                for j in 0..s {
                    out[i * s + j] = src[(s - 1 - j) * s + i];
                }
            }
        }
    }
}

/// Converts 8-bit grey levels (255 = white paper) to ink intensities in `[0, 1]`
/// (1.0 = full ink), the convention of every Omniglot tensor in Perennial.
pub fn grey_to_ink(grey: &[u8]) -> Vec<f32> {
    grey.iter().map(|&g| 1.0 - g as f32 / 255.0).collect()
}

/// The bilinear taps of a rotation of an `h x w` image by `degrees` counter-clockwise
/// about its centre: for every output pixel, four source pixels and their weights
/// (weight 0, index 0 where a tap falls outside the image). Rotations by multiples of
/// 90 degrees on a square image give one tap of weight 1 per pixel.
pub fn rotation_taps(h: usize, w: usize, degrees: f64) -> Vec<([usize; 4], [f64; 4])> {
    affine_taps(h, w, degrees, 0.0, 0.0)
}

/// The bilinear taps of a rotation by `degrees` counter-clockwise about the image's
/// centre followed by a translation of `shift_y` rows down and `shift_x` columns to the
/// right (fractions allowed), as [`rotation_taps`] describes them.
pub fn affine_taps(
    h: usize,
    w: usize,
    degrees: f64,
    shift_y: f64,
    shift_x: f64,
) -> Vec<([usize; 4], [f64; 4])> {
    let (s, c) = degrees.to_radians().sin_cos();
    // Snap to exact values so quarter turns are pure permutations.
    let snap = |v: f64| if v.abs() < 1e-12 { 0.0 } else { v };
    let (s, c) = (snap(s), snap(c));
    let (cy, cx) = ((h as f64 - 1.0) / 2.0, (w as f64 - 1.0) / 2.0);
    let mut out = Vec::with_capacity(h * w);
    for i in 0..h {
        for j in 0..w {
            // Output pixel (i, j) samples the source at the inverse transform: undo the
            // shift, then the rotation. Image rows grow downwards, so a
            // counter-clockwise turn on screen is clockwise in (row, column) coordinates.
            let (dy, dx) = (i as f64 - shift_y - cy, j as f64 - shift_x - cx);
            let sx = c * dx - s * dy + cx;
            let sy = s * dx + c * dy + cy;
            let (y0, x0) = (sy.floor(), sx.floor());
            let (fy, fx) = (sy - y0, sx - x0);
            let (y0, x0) = (y0 as isize, x0 as isize);
            let corners = [
                (y0, x0, (1.0 - fy) * (1.0 - fx)),
                (y0, x0 + 1, (1.0 - fy) * fx),
                (y0 + 1, x0, fy * (1.0 - fx)),
                (y0 + 1, x0 + 1, fy * fx),
            ];
            let mut taps = ([0usize; 4], [0f64; 4]);
            for (k, &(y, x, wt)) in corners.iter().enumerate() {
                if y >= 0 && x >= 0 && (y as usize) < h && (x as usize) < w {
                    taps.0[k] = y as usize * w + x as usize;
                    taps.1[k] = wt;
                }
            }
            out.push(taps);
        }
    }
    out
}

/// Writes into `dst` the `h x w` image `src` rotated by `degrees` counter-clockwise
/// about its centre and shifted by `(shift_y, shift_x)` pixels, with bilinear
/// interpolation and zeros (no ink) outside the source.
pub fn affine_into(
    src: &[f32],
    h: usize,
    w: usize,
    degrees: f64,
    shift_y: f64,
    shift_x: f64,
    dst: &mut [f32],
) {
    debug_assert_eq!(src.len(), h * w);
    debug_assert_eq!(dst.len(), h * w);
    for (d, (t, wt)) in dst
        .iter_mut()
        .zip(affine_taps(h, w, degrees, shift_y, shift_x))
    {
        *d = (0..4).map(|k| wt[k] * src[t[k]] as f64).sum::<f64>() as f32;
    }
}

/// Rotates an `h x w` image by `degrees` counter-clockwise about its centre (as
/// `torchvision.transforms.functional.rotate` and PIL do), with bilinear interpolation
/// and zeros (no ink) outside the source.
pub fn rotate_bilinear(src: &[f32], h: usize, w: usize, degrees: f64) -> Vec<f32> {
    let mut out = vec![0f32; h * w];
    affine_into(src, h, w, degrees, 0.0, 0.0, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotate_bilinear_agrees_with_rot90_and_keeps_a_centred_blob() {
        let s = 28;
        let src: Vec<f32> = (0..s * s)
            .map(|i| ((i * 37) % 101) as f32 / 100.0)
            .collect();
        assert_eq!(rotate_bilinear(&src, s, s, 0.0), src);
        for q in 1..4u8 {
            let mut want = vec![0f32; s * s];
            rot90_into(&src, s, q, &mut want);
            assert_eq!(rotate_bilinear(&src, s, s, 90.0 * q as f64), want, "{q}");
        }
        // A disc in the middle keeps its mass under any angle (up to interpolation).
        let disc: Vec<f32> = (0..s * s)
            .map(|k| {
                let (y, x) = ((k / s) as f64 - 13.5, (k % s) as f64 - 13.5);
                if y * y + x * x < 64.0 {
                    1.0
                } else {
                    0.0
                }
            })
            .collect();
        let mass = |v: &[f32]| v.iter().map(|&p| p as f64).sum::<f64>();
        for deg in [17.0, 45.0, 133.0] {
            let r = rotate_bilinear(&disc, s, s, deg);
            assert!((mass(&r) - mass(&disc)).abs() < 0.03 * mass(&disc), "{deg}");
        }
    }

    #[test]
    fn affine_shifts_by_whole_pixels_and_composes_with_the_rotation() {
        let (h, w) = (12, 10);
        let src: Vec<f32> = (0..h * w).map(|i| ((i * 13) % 29) as f32 / 28.0).collect();
        let mut out = vec![0f32; h * w];
        // A whole-pixel shift moves every pixel: (i, j) of the output is (i - 2, j + 3)
        // of the source, zero where that falls outside.
        affine_into(&src, h, w, 0.0, 2.0, -3.0, &mut out);
        for i in 0..h {
            for j in 0..w {
                let (si, sj) = (i as isize - 2, j as isize + 3);
                let want = if si >= 0 && sj >= 0 && (si as usize) < h && (sj as usize) < w {
                    src[si as usize * w + sj as usize]
                } else {
                    0.0
                };
                assert_eq!(out[i * w + j], want, "({i}, {j})");
            }
        }
        // No shift: the rotation alone.
        affine_into(&src, h, w, 21.0, 0.0, 0.0, &mut out);
        assert_eq!(out, rotate_bilinear(&src, h, w, 21.0));
        // A half-pixel shift averages neighbours.
        affine_into(&src, h, w, 0.0, 0.0, 0.5, &mut out);
        assert!((out[5 * w + 4] - 0.5 * (src[5 * w + 3] + src[5 * w + 4])).abs() < 1e-6);
    }

    #[test]
    fn resize_preserves_constants_and_mass() {
        let src = vec![0.25f32; 105 * 105];
        let out = resize_bilinear_aa(&src, 105, 105, 28, 28);
        assert!(out.iter().all(|&v| (v - 0.25).abs() < 1e-6));
        // A single bright pixel spreads but keeps its mean intensity (up to edges).
        let mut src = vec![0f32; 100 * 100];
        src[50 * 100 + 50] = 1.0;
        let out = resize_bilinear_aa(&src, 100, 100, 25, 25);
        let mass: f32 = out.iter().sum::<f32>() * 16.0;
        assert!((mass - 1.0).abs() < 1e-4, "mass {mass}");
    }

    #[test]
    fn resize_matches_pytorch_reference() {
        // torch.nn.functional.interpolate(torch.arange(16.).reshape(1,1,4,4), size=(2,2),
        //     mode="bilinear", antialias=True, align_corners=False)
        // -> [[3.5714, 5.1429], [9.8571, 11.4286]]   (torch 2.13.0)
        let src: Vec<f32> = (0..16).map(|v| v as f32).collect();
        let out = resize_bilinear_aa(&src, 4, 4, 2, 2);
        let want = [3.5714f32, 5.1429, 9.8571, 11.4286];
        for (o, w) in out.iter().zip(want) {
            assert!((o - w).abs() < 1e-3, "{out:?}");
        }
        // Non-square, non-integer scale: torch.arange(35.).reshape(1,1,5,7)**1.5 -> (3, 2).
        let src: Vec<f32> = (0..35).map(|v| (v as f32).powf(1.5)).collect();
        let out = resize_bilinear_aa(&src, 5, 7, 3, 2);
        let want = [
            12.238815f32,
            22.058676,
            63.739887,
            81.094604,
            138.02814,
            160.4965,
        ];
        for (o, w) in out.iter().zip(want) {
            assert!((o - w).abs() < 1e-3 * w.max(1.0), "{out:?}");
        }
    }

    #[test]
    fn rot90_matches_numpy() {
        // numpy.rot90([[0,1],[2,3]]) == [[1,3],[0,2]]
        let src = [0f32, 1., 2., 3.];
        let mut out = [0f32; 4];
        rot90_into(&src, 2, 1, &mut out);
        assert_eq!(out, [1., 3., 0., 2.]);
        rot90_into(&src, 2, 2, &mut out);
        assert_eq!(out, [3., 2., 1., 0.]);
        rot90_into(&src, 2, 3, &mut out);
        assert_eq!(out, [2., 0., 3., 1.]);
        // Four quarter turns are the identity on a 3x3.
        let src: Vec<f32> = (0..9).map(|v| v as f32).collect();
        let mut a = vec![0f32; 9];
        let mut b = vec![0f32; 9];
        rot90_into(&src, 3, 1, &mut a);
        rot90_into(&a, 3, 3, &mut b);
        assert_eq!(b, src);
    }
}
