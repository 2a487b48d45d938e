//! Augmentations on normalized CHW pixels: Gaussian blur (VIG's contrast) and diffusion noise
//! (SeVa's rejected-answer image).

use rand::Rng;

/// Gaussian blur of each channel of a CHW image, kernel radius ⌈3σ⌉, reflected borders.
pub fn gaussian_blur(pixels: &[f32], channels: usize, size: usize, sigma: f32) -> Vec<f32> {
    if sigma <= 0.0 {
        return pixels.to_vec();
    }
    let radius = (3.0 * sigma).ceil() as i64;
    let kernel: Vec<f32> = (-radius..=radius)
        .map(|i| (-(i * i) as f32 / (2.0 * sigma * sigma)).exp())
        .collect();
    let total: f32 = kernel.iter().sum();
    let kernel: Vec<f32> = kernel.iter().map(|k| k / total).collect();
    let n = size as i64;
    let reflect = |i: i64| -> usize {
        let mut i = i;
        while i < 0 || i >= n {
            i = if i < 0 { -i - 1 } else { 2 * n - i - 1 };
        }
        i as usize
    };
    // Source index of tap k for output coordinate x, computed once for both passes.
    let taps = kernel.len();
    let source: Vec<usize> = (0..size)
        .flat_map(|x| (0..taps).map(move |k| (x, k)))
        .map(|(x, k)| reflect(x as i64 + k as i64 - radius))
        .collect();
    let mut out = pixels.to_vec();
    let mut tmp = vec![0.0f32; size * size];
    for c in 0..channels {
        let plane = &pixels[c * size * size..(c + 1) * size * size];
        for y in 0..size {
            let row = &plane[y * size..(y + 1) * size];
            for x in 0..size {
                let src = &source[x * taps..(x + 1) * taps];
                tmp[y * size + x] = kernel.iter().zip(src).map(|(w, &i)| w * row[i]).sum();
            }
        }
        // Vertical pass row by row: dst[y] = Σ_k w_k · tmp[source(y, k)] (the same sum, in the
        // same order, as per pixel, but over contiguous rows).
        let dst = &mut out[c * size * size..(c + 1) * size * size];
        for y in 0..size {
            let acc = &mut dst[y * size..(y + 1) * size];
            acc.fill(0.0);
            for (w, &r) in kernel.iter().zip(&source[y * taps..(y + 1) * taps]) {
                for (a, &t) in acc.iter_mut().zip(&tmp[r * size..(r + 1) * size]) {
                    *a += w * t;
                }
            }
        }
    }
    out
}

/// SeVa's noise schedule: `β_s = sigmoid(linspace(−6, 6, steps)) · (5e-3 − 1e-5) + 1e-5`;
/// returns `ᾱ_t = Π_{s ≤ t} (1 − β_s)` for every step.
pub fn alpha_bars(steps: usize) -> Vec<f64> {
    let mut acc = 1.0;
    (0..steps)
        .map(|s| {
            let x = -6.0 + 12.0 * s as f64 / (steps - 1).max(1) as f64;
            let beta = 1.0 / (1.0 + (-x).exp()) * (5e-3 - 1e-5) + 1e-5;
            acc *= 1.0 - beta;
            acc
        })
        .collect()
}

/// A per-record seed from a run seed and a record id: 64-bit FNV-1a over the seed's
/// little-endian bytes, then the id's UTF-8 bytes. Fixed by its definition (unlike
/// `std`'s `DefaultHasher`, which may change with the Rust release), so a pairs file's noise and
/// the image-side negatives are the same on every toolchain and platform.
pub fn record_seed(seed: u64, id: &str) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    seed.to_le_bytes()
        .iter()
        .chain(id.as_bytes())
        .fold(OFFSET, |h, &b| (h ^ u64::from(b)).wrapping_mul(PRIME))
}

/// `x_t = sqrt(ᾱ_t) · x_0 + sqrt(1 − ᾱ_t) · ε` at step `t` of a 1000-step schedule.
pub fn diffusion_noise(pixels: &[f32], step: usize, rng: &mut impl Rng) -> Vec<f32> {
    let bars = alpha_bars(1000);
    let a = bars[step.min(999)];
    let (sa, sn) = (a.sqrt() as f32, (1.0 - a).sqrt() as f32);
    pixels
        .iter()
        .map(|&x| sa * x + sn * standard_normal(rng))
        .collect()
}

/// One N(0, 1) draw (Box–Muller).
pub fn standard_normal(rng: &mut impl Rng) -> f32 {
    let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
    let u2: f64 = rng.random();
    ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn record_seeds_are_fnv_1a_of_seed_and_id() {
        // FNV-1a's offset basis for no bytes; a value computed from the definition by hand.
        assert_eq!(
            record_seed(7, "pair-1"),
            0x3a38_cbd8_d07b_b7f4,
            "FNV-1a over 7u64 LE + \"pair-1\""
        );
        assert_ne!(record_seed(7, "pair-1"), record_seed(8, "pair-1"));
        assert_ne!(record_seed(7, "pair-1"), record_seed(7, "pair-2"));
    }

    #[test]
    fn blur_equals_a_direct_2d_convolution_with_reflected_borders() {
        let size = 7;
        let sigma = 2.5f32; // radius 8 > size: indices reflect more than once
        let img: Vec<f32> = (0..size * size)
            .map(|i| ((i * 37) % 11) as f32 - 5.0)
            .collect();
        let got = gaussian_blur(&img, 1, size, sigma);
        let r = (3.0 * sigma).ceil() as i64;
        let w = |d: i64| (-(d * d) as f32 / (2.0 * sigma * sigma)).exp();
        let total: f32 = (-r..=r).map(w).sum();
        let reflect = |mut i: i64| {
            let n = size as i64;
            while i < 0 || i >= n {
                i = if i < 0 { -i - 1 } else { 2 * n - i - 1 };
            }
            i as usize
        };
        for y in 0..size as i64 {
            for x in 0..size as i64 {
                let mut want = 0.0f32;
                for dy in -r..=r {
                    for dx in -r..=r {
                        want += w(dy) * w(dx) / (total * total)
                            * img[reflect(y + dy) * size + reflect(x + dx)];
                    }
                }
                let g = got[y as usize * size + x as usize];
                assert!((g - want).abs() < 1e-4, "({y}, {x}): {g} vs {want}");
            }
        }
    }

    #[test]
    fn blur_preserves_constants_and_spreads_a_point() {
        let flat = vec![0.7; 2 * 9 * 9];
        let b = gaussian_blur(&flat, 2, 9, 1.5);
        assert!(b.iter().all(|v| (v - 0.7).abs() < 1e-5));
        let mut point = vec![0.0; 9 * 9];
        point[4 * 9 + 4] = 1.0;
        let b = gaussian_blur(&point, 1, 9, 1.0);
        let sum: f32 = b.iter().sum();
        assert!((sum - 1.0).abs() < 1e-4, "mass is kept ({sum})");
        assert!(
            b[4 * 9 + 4] < 0.2 && b[4 * 9 + 5] > 0.05 && (b[4 * 9 + 5] - b[5 * 9 + 4]).abs() < 1e-6
        );
    }

    #[test]
    fn seva_schedule_endpoints() {
        let bars = alpha_bars(1000);
        assert!(bars[0] < 1.0 && bars[0] > 0.9999);
        // Reference values computed independently in Python from the same formula.
        assert!((bars[500] - 0.744_798_526).abs() < 1e-6, "{}", bars[500]);
        assert!((bars[800] - 0.218_101_804).abs() < 1e-6, "{}", bars[800]);
        assert!((bars[999] - 0.081_249_194).abs() < 1e-6, "{}", bars[999]);
        let mut rng = rand::rngs::StdRng::seed_from_u64(0);
        let x = vec![1.0; 10_000];
        let y = diffusion_noise(&x, 500, &mut rng);
        let mean = y.iter().sum::<f32>() / y.len() as f32;
        assert!((mean - bars[500].sqrt() as f32).abs() < 0.05);
    }
}
