//! SeVa's preference pairs (DESIGN §5): for each (image, question), the starting model's greedy
//! answer on the clean image is chosen and its answer on an augmented image rejected; pairs with
//! identical answers are dropped and counted. Augmentations: diffusion noise on the normalized
//! tensor at a step of SeVa's 1000-step schedule, a horizontal flip, a centre crop.

use std::hash::{DefaultHasher, Hash, Hasher};

use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};
use vlalign_data::augment::diffusion_noise;
use vlalign_data::{PreferencePair, Record, Role};
use vlalign_eval::generation::{GenerationRun, generate_split, generate_split_with};
use vlalign_models::Llava;

/// How the rejected answer's image is corrupted.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Augmentation {
    /// Diffusion noise at this step of the 1000-step schedule (SeVa: 500, 800).
    Noise(usize),
    /// Mirror left–right.
    Flip,
    /// Keep the centre `share` of each side, scaled back up (nearest).
    Crop(f32),
}

impl Augmentation {
    /// The name written into the pairs file (`noise500`, `flip`, `crop0.5`).
    pub fn name(&self) -> String {
        match self {
            Augmentation::Noise(step) => format!("noise{step}"),
            Augmentation::Flip => "flip".into(),
            Augmentation::Crop(share) => format!("crop{share}"),
        }
    }

    /// Corrupt normalized CHW `pixels` of a `size`×`size` image; the noise is seeded by
    /// `seed` and the record id, so a pairs file is reproducible.
    pub fn apply(&self, pixels: Vec<f32>, size: usize, seed: u64, id: &str) -> Vec<f32> {
        let at = |c: usize, y: usize, x: usize| pixels[(c * size + y) * size + x];
        match *self {
            Augmentation::Noise(step) => {
                let mut h = DefaultHasher::new();
                (seed, id).hash(&mut h);
                diffusion_noise(&pixels, step, &mut StdRng::seed_from_u64(h.finish()))
            }
            Augmentation::Flip => (0..3 * size * size)
                .map(|i| {
                    let (c, y, x) = (i / (size * size), (i / size) % size, i % size);
                    at(c, y, size - 1 - x)
                })
                .collect(),
            Augmentation::Crop(share) => {
                let keep = ((size as f32 * share.clamp(0.05, 1.0)).round() as usize).max(1);
                let off = (size - keep) / 2;
                (0..3 * size * size)
                    .map(|i| {
                        let (c, y, x) = (i / (size * size), (i / size) % size, i % size);
                        at(c, off + y * keep / size, off + x * keep / size)
                    })
                    .collect()
            }
        }
    }
}

/// Pairs and what was dropped.
#[derive(Clone, Debug, Default)]
pub struct Pairs {
    /// The pairs (chosen ≠ rejected).
    pub pairs: Vec<PreferencePair>,
    /// (image, question)s whose two answers were identical.
    pub dropped_identical: usize,
    /// Records that could not be answered (named on stderr).
    pub failed: usize,
}

/// Answer each single-turn record on its clean image and on the augmented one; keep the
/// records whose answers differ as pairs (chosen = clean).
pub fn make_pairs(
    model: &Llava,
    records: &[Record],
    run: &GenerationRun<'_>,
    augmentation: Augmentation,
    seed: u64,
) -> Pairs {
    let size = run.processor.size;
    let (clean, e1) = generate_split(model, records, run);
    let corrupt = |id: &str, px: Vec<f32>| augmentation.apply(px, size, seed, id);
    let (noisy, e2) = generate_split_with(model, records, run, &corrupt);
    for e in e1.iter().chain(&e2) {
        eprintln!("pairs: {e}");
    }
    let by_id: std::collections::HashMap<&str, &Record> =
        records.iter().map(|r| (r.id.as_str(), r)).collect();
    let mut out = Pairs {
        failed: e1.len(),
        ..Pairs::default()
    };
    for (c, r) in clean.iter().zip(&noisy) {
        debug_assert_eq!(c.id, r.id);
        if c.output == r.output {
            out.dropped_identical += 1;
            continue;
        }
        let record = by_id[c.id.as_str()];
        let question = record
            .turns
            .iter()
            .find(|t| t.role == Role::Human)
            .map(|t| t.value.replace("<image>\n", "").replace("<image>", ""))
            .unwrap_or_default();
        out.pairs.push(PreferencePair {
            id: format!("{}-{}", c.id, augmentation.name()),
            image: record.images.first().cloned().unwrap_or_default(),
            question: question.trim().to_string(),
            chosen: c.output.clone(),
            rejected: r.output.clone(),
            augmentation: augmentation.name(),
            ref_logp_chosen: None,
            ref_logp_rejected: None,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flip_and_crop_move_pixels_as_named() {
        let size = 4;
        let px: Vec<f32> = (0..3 * size * size).map(|i| i as f32).collect();
        let flipped = Augmentation::Flip.apply(px.clone(), size, 0, "a");
        assert_eq!(flipped[..4], [3.0, 2.0, 1.0, 0.0]);
        assert_eq!(Augmentation::Flip.apply(flipped, size, 0, "a"), px);
        // The centre half of a 4×4 channel is rows/cols 1..3, each pixel doubled.
        let crop = Augmentation::Crop(0.5).apply(px.clone(), size, 0, "a");
        assert_eq!(crop[..4], [5.0, 5.0, 6.0, 6.0]);
        assert_eq!(crop[12..16], [9.0, 9.0, 10.0, 10.0]);
    }

    #[test]
    fn noise_follows_the_schedule_and_its_seed() {
        let px = vec![1.0f32; 3 * 8 * 8];
        let a = Augmentation::Noise(500).apply(px.clone(), 8, 7, "r1");
        assert_eq!(a, Augmentation::Noise(500).apply(px.clone(), 8, 7, "r1"));
        assert_ne!(a, Augmentation::Noise(500).apply(px.clone(), 8, 7, "r2"));
        // x_t = sqrt(ᾱ)·x0 + sqrt(1 − ᾱ)·ε: the mean moves to sqrt(ᾱ_t).
        let bar = vlalign_data::augment::alpha_bars(1000)[500];
        let mean = a.iter().sum::<f32>() as f64 / a.len() as f64;
        assert!((mean - bar.sqrt()).abs() < 0.15, "{mean} vs {}", bar.sqrt());
        assert_eq!(Augmentation::Noise(800).name(), "noise800");
    }
}
