//! SeVa's preference pairs (DESIGN §5): for each (image, question), the starting model's greedy
//! answer on the clean image is chosen and its answer on an augmented image rejected; pairs with
//! identical answers are dropped and counted. Augmentations: diffusion noise on the normalized
//! tensor at a step of SeVa's 1000-step schedule, a horizontal flip, a centre crop.

use std::collections::HashMap;
use std::time::Instant;

use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};
use std::path::Path;
use vlalign_data::augment::{diffusion_noise, record_seed};

use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::Dataset;
use burn::module::Module;
use indicatif::{ProgressBar, ProgressStyle};
use vlalign_align::pair_logps;
use vlalign_data::{
    PreferenceBatcher, PreferenceDataset, PreferencePair, Record, Role, write_pairs,
};
use vlalign_eval::generation::{GenerationRun, generate_split, generate_split_with};
use vlalign_models::{GenerationConfig, Llava};

use crate::inputs::Inputs;
use crate::run::RunOptions;

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
                let seed = record_seed(seed, id);
                diffusion_noise(&pixels, step, &mut StdRng::seed_from_u64(seed))
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

/// The pairs of one augmentation and what was dropped.
#[derive(Clone, Debug)]
pub struct Pairs {
    /// The augmentation of the rejected answers.
    pub augmentation: Augmentation,
    /// The pairs (chosen ≠ rejected).
    pub pairs: Vec<PreferencePair>,
    /// (image, question)s whose two answers were identical.
    pub dropped_identical: usize,
    /// Records that could not be answered (named on stderr).
    pub failed: usize,
    /// Seconds spent generating the rejected answers (the clean ones are shared).
    pub seconds: f64,
}

/// Answer each single-turn record on its clean image once, then on the image under each of
/// `augmentations`; keep the records whose two answers differ as pairs (chosen = clean), one
/// set per augmentation. Logs pairs and questions per second.
pub fn make_pairs(
    model: &Llava,
    records: &[Record],
    run: &GenerationRun<'_>,
    augmentations: &[Augmentation],
    seed: u64,
) -> Vec<Pairs> {
    let size = run.processor.size;
    let started = Instant::now();
    let (clean, e1) = generate_split(model, records, run);
    let clean_s = started.elapsed().as_secs_f64();
    for e in &e1 {
        eprintln!("pairs: {e}");
    }
    let by_id: HashMap<&str, &Record> = records.iter().map(|r| (r.id.as_str(), r)).collect();
    let mut out = Vec::new();
    for &augmentation in augmentations {
        let started = Instant::now();
        let corrupt = |id: &str, px: Vec<f32>| augmentation.apply(px, size, seed, id);
        let (noisy, _) = generate_split_with(model, records, run, &corrupt);
        let mut set = Pairs {
            augmentation,
            pairs: Vec::new(),
            dropped_identical: 0,
            failed: e1.len(),
            seconds: started.elapsed().as_secs_f64(),
        };
        for (c, r) in clean.iter().zip(&noisy) {
            debug_assert_eq!(c.id, r.id);
            if c.output == r.output {
                set.dropped_identical += 1;
            } else {
                set.pairs.push(pair(
                    by_id[c.id.as_str()],
                    &c.output,
                    &r.output,
                    augmentation,
                ));
            }
        }
        let total = clean_s + set.seconds;
        eprintln!(
            "pairs {}: {} of {} questions differ ({} identical dropped), {:.1} s, {:.1} pairs/s, \
             {:.1} questions/s",
            augmentation.name(),
            set.pairs.len(),
            clean.len(),
            set.dropped_identical,
            total,
            set.pairs.len() as f64 / total.max(1e-9),
            clean.len() as f64 / total.max(1e-9)
        );
        out.push(set);
    }
    out
}

/// How the answers of a pairs pass are generated: greedy, `max_new_tokens`, `batch_size`
/// prompts per batch, with a progress bar when `verbose`.
#[derive(Clone, Copy, Debug)]
pub struct Answering {
    /// Generation budget per answer.
    pub max_new_tokens: usize,
    /// Prompts per batch.
    pub batch_size: usize,
    /// Progress bar.
    pub verbose: bool,
}

/// [`make_pairs`] with the rejected images under diffusion noise at each of `noise_steps`,
/// answered with the chat template of `inputs` (stopping at its end of turn).
pub fn noise_pairs(
    model: &Llava,
    questions: &[Record],
    inputs: &Inputs,
    noise_steps: &[usize],
    answering: Answering,
    seed: u64,
) -> Vec<Pairs> {
    let generation = GenerationConfig::new()
        .with_max_new_tokens(answering.max_new_tokens)
        .with_stop_tokens(vec![inputs.enc.chat.end_of_turn()])
        .with_pad_token_id(inputs.tokenizer.token_id("<pad>").unwrap_or(0));
    let run = GenerationRun {
        encoder: &inputs.enc.chat,
        processor: &inputs.processor,
        image_folder: &inputs.images,
        batch_size: answering.batch_size,
        config: &generation,
        show_progress: answering.verbose,
    };
    let augmentations: Vec<Augmentation> = noise_steps
        .iter()
        .map(|&t| Augmentation::Noise(t))
        .collect();
    make_pairs(model, questions, &run, &augmentations, seed)
}

/// The pair of `record`'s question: `chosen` on the clean image, `rejected` on the augmented.
fn pair(
    record: &Record,
    chosen: &str,
    rejected: &str,
    augmentation: Augmentation,
) -> PreferencePair {
    let question = record
        .turns
        .iter()
        .find(|t| t.role == Role::Human)
        .map(|t| t.value.replace("<image>\n", "").replace("<image>", ""))
        .unwrap_or_default();
    PreferencePair {
        id: format!("{}-{}", record.id, augmentation.name()),
        image: record.images.first().cloned().unwrap_or_default(),
        question: question.trim().to_string(),
        chosen: chosen.to_string(),
        rejected: rejected.to_string(),
        augmentation: augmentation.name(),
        ref_logp_chosen: None,
        ref_logp_rejected: None,
        ref_logp_image_negative: None,
    }
}

/// The single-turn questions of the user's records: each (question, answer) turn pair of a
/// one-image record becomes a record `{id}#{turn}` holding `<image>` and that question (the
/// answers are not used: the model answers).
pub fn qa_questions(records: &[Record]) -> Vec<Record> {
    let mut out = Vec::new();
    for r in records.iter().filter(|r| r.images.len() == 1) {
        for (i, pair) in r.turns.windows(2).enumerate() {
            if pair[0].role != Role::Human || pair[1].role != Role::Gpt {
                continue;
            }
            let question = pair[0]
                .value
                .replace("<image>\n", "")
                .replace("<image>", "");
            out.push(Record::question_answer(
                format!("{}#{}", r.id, i + 1),
                &r.images[0],
                question.trim(),
                &pair[1].value,
            ));
        }
    }
    out
}

/// Write `pairs` (the reference's log-probs included once scored) as JSON Lines.
pub fn write_pairs_file(path: &Path, pairs: &[PreferencePair]) -> Result<(), String> {
    write_pairs(path, pairs).map_err(|e| e.to_string())
}

/// Score each pair's chosen and rejected answer with `model` (no gradient): the summed
/// log-probs of the answer's supervised tokens, written into `ref_logp_chosen` /
/// `ref_logp_rejected` (the precomputed reference of DPO), and with `image_negatives`
/// (diffusion step, seed) the chosen answer on the corrupted image into
/// `ref_logp_image_negative`. A pair that cannot be encoded (its image missing, its answer cut
/// by the length limit) is an error naming it.
pub fn score_pairs(
    model: &Llava,
    pairs: &mut [PreferencePair],
    inputs: &Inputs,
    batch_size: usize,
    image_negatives: Option<(usize, u64)>,
    opts: &RunOptions,
) -> Result<(), String> {
    let mut data = PreferenceDataset::new(
        pairs.to_vec(),
        &inputs.enc.chat,
        &inputs.images,
        inputs.processor.clone(),
    )
    .map_err(|e| e.to_string())?;
    if let Some((step, seed)) = image_negatives {
        data = data.with_image_negatives(step, seed);
    }
    let model = model.valid();
    let batcher = PreferenceBatcher(inputs.batcher.clone());
    let bar = if opts.verbose {
        ProgressBar::new(pairs.len() as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("scoring pairs {bar:40} {pos}/{len} ({per_sec}, eta {eta})")
            .expect("valid template"),
    );
    let size = batch_size.max(1);
    for start in (0..pairs.len()).step_by(size) {
        let end = (start + size).min(pairs.len());
        let items = (start..end)
            .map(|i| data.get(i).map_err(|e| e.to_string()))
            .collect::<Result<Vec<_>, _>>()?;
        let batch = batcher.batch(items, &opts.device);
        let lp = pair_logps(&model, &batch, true);
        let host = |t: burn::tensor::Tensor<1>| {
            t.into_data()
                .convert::<f64>()
                .try_into_vec::<f64>()
                .expect("floats")
        };
        let (c, r) = (host(lp.chosen.sum), host(lp.rejected.sum));
        let negative = lp.image_negative.map(|n| host(n.sum));
        for (k, pair) in pairs[start..end].iter_mut().enumerate() {
            pair.ref_logp_chosen = Some(c[k]);
            pair.ref_logp_rejected = Some(r[k]);
            pair.ref_logp_image_negative = negative.as_ref().map(|n| n[k]);
        }
        bar.inc((end - start) as u64);
    }
    bar.finish_and_clear();
    Ok(())
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
