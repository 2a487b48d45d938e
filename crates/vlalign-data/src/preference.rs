//! Preference pairs (SeVa-style DPO, DESIGN §5): one image, one question, a chosen and a
//! rejected answer, optionally the reference model's summed log-probs of both (precomputed once,
//! so training holds one model). The pairs file is JSON Lines:
//! `{"id", "image", "question", "chosen", "rejected", "augmentation", "ref_logp_chosen"?,
//! "ref_logp_rejected"?}`.
//!
//! A pair becomes two LLaVA records sharing the prompt (`<image>\n` + question), encoded with the
//! chat template; the batch stacks every pair's chosen row, then every rejected row, so one
//! forward scores both and the loss reads row `i` against row `B + i`.

use std::io::Write;
use std::path::{Path, PathBuf};

use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::Dataset;
use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::batch::{VlmBatch, VlmBatcher};
use crate::dataset::Item;
use crate::error::{DatasetError, Problem, RecordError};
use crate::image::ImageProcessor;
use crate::record::Record;
use crate::template::{Encoded, Encoder};

/// One preference pair as the pairs file holds it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PreferencePair {
    /// Pair id.
    pub id: String,
    /// Image path, relative to the image folder.
    pub image: String,
    /// The question (without `<image>`).
    pub question: String,
    /// The preferred answer (SeVa: the answer on the clean image).
    pub chosen: String,
    /// The dispreferred answer (SeVa: the answer on the augmented image).
    pub rejected: String,
    /// How the rejected answer was produced (`noise500`, `crop`, …).
    #[serde(default)]
    pub augmentation: String,
    /// The reference's summed log-prob of `chosen`, once computed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ref_logp_chosen: Option<f64>,
    /// The reference's summed log-prob of `rejected`, once computed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ref_logp_rejected: Option<f64>,
    /// The reference's summed log-prob of `chosen` on the corrupted image (the image-side
    /// negative), once computed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ref_logp_image_negative: Option<f64>,
}

impl PreferencePair {
    /// The pair as two single-turn records (`<id>/chosen`, `<id>/rejected`) sharing the prompt.
    pub fn records(&self) -> [Record; 2] {
        let record = |side: &str, answer: &str| {
            let id = format!("{}/{side}", self.id);
            Record::question_answer(id, &self.image, &self.question, answer)
        };
        [
            record("chosen", &self.chosen),
            record("rejected", &self.rejected),
        ]
    }
}

/// Read a pairs file. A line that is not a pair is an error naming the line (a pairs file is
/// made by this program: a bad line means a damaged file, not data to skip).
pub fn read_pairs(path: &Path) -> Result<Vec<PreferencePair>, DatasetError> {
    let text = std::fs::read_to_string(path).map_err(|source| DatasetError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(n, line)| {
            serde_json::from_str(line).map_err(|e| {
                DatasetError::Record(RecordError::new(
                    format!("line {}", n + 1),
                    "pair",
                    Problem::Json(e.to_string()),
                ))
            })
        })
        .collect()
}

/// Write a pairs file (JSON Lines), atomically: a temporary file renamed over `path`.
pub fn write_pairs(path: &Path, pairs: &[PreferencePair]) -> Result<(), DatasetError> {
    let err = |e: std::io::Error| DatasetError::Write {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let tmp = path.with_extension("jsonl.tmp");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp).map_err(err)?);
    for p in pairs {
        let line = serde_json::to_string(p).expect("a pair serializes");
        writeln!(f, "{line}").map_err(err)?;
    }
    f.into_inner()
        .map_err(|e| err(e.into_error()))?
        .sync_all()
        .map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

/// A pair ready to batch.
#[derive(Clone, Debug)]
pub struct PreferenceItem {
    /// Pair id.
    pub id: String,
    /// The chosen answer's sequence.
    pub chosen: Encoded,
    /// The rejected answer's sequence.
    pub rejected: Encoded,
    /// The image, normalized CHW.
    pub pixels: Vec<f32>,
    /// The reference's log-probs (chosen, rejected), when precomputed.
    pub reference: Option<(f64, f64)>,
    /// The image-side negative: the image corrupted (normalized CHW), when asked for.
    pub negative_pixels: Option<Vec<f32>>,
    /// The reference's log-prob of the chosen answer on `negative_pixels`, when precomputed.
    pub reference_negative: Option<f64>,
}

/// Encoded pairs, images decoded in `get`.
#[derive(Clone, Debug)]
pub struct PreferenceDataset {
    pairs: Vec<(PreferencePair, Encoded, Encoded, PathBuf)>,
    processor: ImageProcessor,
    /// Image-side negatives: (diffusion step, seed).
    negatives: Option<(usize, u64)>,
}

impl PreferenceDataset {
    /// Encode `pairs` with `encoder` (the chat template). A pair whose image is missing, or
    /// whose answer truncation cut away (so the two sides would not compare the same answer
    /// tokens), is refused with an error naming the pair and the field.
    pub fn new(
        pairs: Vec<PreferencePair>,
        encoder: &Encoder,
        image_folder: &Path,
        processor: ImageProcessor,
    ) -> Result<Self, RecordError> {
        let mut out = Vec::with_capacity(pairs.len());
        for pair in pairs {
            let image = image_folder.join(&pair.image);
            if !image.is_file() {
                let message = "not a file".to_string();
                let problem = Problem::ImageMissing {
                    path: image,
                    message,
                };
                return Err(RecordError::new(&pair.id, "image", problem));
            }
            let [c, r] = pair.records();
            let encode = |record: &Record, field: &str| {
                let e = encoder
                    .encode(record)
                    .map_err(|p| RecordError::new(&pair.id, field, p))?;
                if e.truncated {
                    // A truncated sequence is exactly `max_len` long.
                    let problem = Problem::PairTruncated {
                        max_len: e.ids.len(),
                    };
                    return Err(RecordError::new(&pair.id, field, problem));
                }
                Ok(e)
            };
            let chosen = encode(&c, "chosen")?;
            let rejected = encode(&r, "rejected")?;
            out.push((pair, chosen, rejected, image));
        }
        Ok(Self {
            pairs: out,
            processor,
            negatives: None,
        })
    }

    /// Give every item an image-side negative (mDPO): its image under diffusion noise at `step`
    /// of SeVa's schedule, a fresh sample per pair seeded by `seed` and the pair id.
    pub fn with_image_negatives(mut self, step: usize, seed: u64) -> Self {
        self.negatives = Some((step, seed));
        self
    }

    /// Whether items carry image-side negatives.
    pub fn has_image_negatives(&self) -> bool {
        self.negatives.is_some()
    }

    /// The pairs, in order.
    pub fn pairs(&self) -> impl Iterator<Item = &PreferencePair> {
        self.pairs.iter().map(|p| &p.0)
    }
}

impl Dataset<PreferenceItem> for PreferenceDataset {
    fn get(&self, index: usize) -> Result<PreferenceItem, burn::data::dataset::DatasetError> {
        let (pair, chosen, rejected, image) = &self.pairs[index];
        let pixels = self.processor.load(image).map_err(|problem| {
            burn::data::dataset::DatasetError::new(RecordError::new(&pair.id, "image", problem))
        })?;
        let negative_pixels = self.negatives.map(|(step, seed)| {
            use rand::SeedableRng;
            let seed = crate::augment::record_seed(seed, &pair.id);
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            crate::augment::diffusion_noise(&pixels, step, &mut rng)
        });
        Ok(PreferenceItem {
            id: pair.id.clone(),
            chosen: chosen.clone(),
            rejected: rejected.clone(),
            pixels,
            reference: pair.ref_logp_chosen.zip(pair.ref_logp_rejected),
            negative_pixels,
            reference_negative: pair.ref_logp_image_negative,
        })
    }

    fn len(&self) -> usize {
        self.pairs.len()
    }
}

/// A batch of `B` pairs.
#[derive(Clone, Debug)]
pub struct PreferenceBatch {
    /// `2B` rows: the chosen sequences, then the rejected ones (pair `i` is rows `i`, `B + i`);
    /// `B` images, each encoded once for both rows of its pair (`image_index`).
    pub sequences: VlmBatch,
    /// The reference's log-probs `[B, 2]` (chosen, rejected), when every pair has them.
    pub reference: Option<Tensor<2>>,
    /// With image-side negatives: `B` more rows (`2B..3B`), the chosen answers on the corrupted
    /// images, and the reference's log-probs of them `[B]` when every pair has one.
    pub image_negatives: bool,
    /// The reference's log-probs of the image-side negatives `[B]`.
    pub reference_negative: Option<Tensor<1>>,
    /// Pair ids.
    pub ids: Vec<String>,
}

/// Stacks [`PreferenceItem`]s with a [`VlmBatcher`] (right padding).
#[derive(Clone, Debug)]
pub struct PreferenceBatcher(pub VlmBatcher);

impl Batcher<PreferenceItem, PreferenceBatch> for PreferenceBatcher {
    fn batch(&self, items: Vec<PreferenceItem>, device: &Device) -> PreferenceBatch {
        let n = items.len();
        let negatives = n > 0 && items.iter().all(|i| i.negative_pixels.is_some());
        // Only the chosen rows (and the negatives) carry pixels: both sides of a pair point at
        // one encoded image.
        let row =
            |i: &PreferenceItem, side: &str, encoded: &Encoded, pixels: Option<&Vec<f32>>| Item {
                id: format!("{}/{side}", i.id),
                encoded: encoded.clone(),
                pixels: pixels.cloned().into_iter().collect(),
                weights: None,
            };
        let mut rows: Vec<Item> = items
            .iter()
            .map(|i| row(i, "chosen", &i.chosen, Some(&i.pixels)))
            .chain(items.iter().map(|i| row(i, "rejected", &i.rejected, None)))
            .collect();
        if negatives {
            rows.extend(
                items
                    .iter()
                    .map(|i| row(i, "image_negative", &i.chosen, i.negative_pixels.as_ref())),
            );
        }
        let reference = items
            .iter()
            .map(|i| i.reference.map(|(c, r)| [c as f32, r as f32]))
            .collect::<Option<Vec<[f32; 2]>>>()
            .map(|v| {
                let flat: Vec<f32> = v.into_iter().flatten().collect();
                Tensor::from_data(TensorData::new(flat, [n, 2]), device)
            });
        let reference_negative = items
            .iter()
            .map(|i| i.reference_negative.map(|x| x as f32))
            .collect::<Option<Vec<f32>>>()
            .filter(|_| negatives)
            .map(|v| Tensor::from_data(TensorData::new(v, [n]), device));
        let mut sequences = self.0.batch(rows, device);
        if sequences.images.is_some() {
            // Pair i's image serves rows i (chosen) and n + i (rejected); its corrupted image
            // (image n + i) serves row 2n + i.
            let mut index: Vec<usize> = (0..n).chain(0..n).collect();
            if negatives {
                index.extend(n..2 * n);
            }
            sequences.image_sample = (0..index.len()).collect();
            sequences.image_index = Some(index);
        }
        PreferenceBatch {
            sequences,
            reference,
            image_negatives: negatives,
            reference_negative,
            ids: items.into_iter().map(|i| i.id).collect(),
        }
    }
}
