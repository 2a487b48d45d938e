//! The generation driver: batched greedy (or sampled) generation over a dataset split with a
//! progress bar, writing JSON Lines `{id, prompt, output, reference}` so that results can be
//! re-scored without the model.

use std::io::Write;
use std::path::Path;

use burn::tensor::{Tensor, TensorData};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use vlalign_data::{DatasetError, Encoder, ImageProcessor, Record, RecordError, Role};
use vlalign_models::{GenerationConfig, Generator};

/// One generated answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    /// Record id.
    pub id: String,
    /// The user's first message (the question).
    pub prompt: String,
    /// The generated text (stop token removed).
    pub output: String,
    /// The record's first assistant answer.
    pub reference: String,
}

/// How a split is generated.
#[derive(Clone, Debug)]
pub struct GenerationRun<'a> {
    /// Template and tokenizer (prompts, decoding, the end-of-turn stop token).
    pub encoder: &'a Encoder,
    /// Image preprocessing.
    pub processor: &'a ImageProcessor,
    /// Folder the records' image paths are relative to.
    pub image_folder: &'a Path,
    /// Prompts per batch (left-padded).
    pub batch_size: usize,
    /// Decoding settings.
    pub config: &'a GenerationConfig,
    /// Show a progress bar.
    pub show_progress: bool,
}

/// Generate the first answer of each record. Bad records (missing images, no answer) are
/// returned as errors and skipped. The model runs without autodiff (`valid()`).
pub fn generate_split(
    model: &impl Generator,
    records: &[Record],
    run: &GenerationRun<'_>,
) -> (Vec<Prediction>, Vec<RecordError>) {
    generate_split_with(model, records, run, &|_, pixels| pixels)
}

/// [`generate_split`] with each image's normalized pixels passed through `transform` (record
/// id, pixels) first: answers on augmented images (SeVa's rejected answers).
pub fn generate_split_with(
    model: &impl Generator,
    records: &[Record],
    run: &GenerationRun<'_>,
    transform: &dyn Fn(&str, Vec<f32>) -> Vec<f32>,
) -> (Vec<Prediction>, Vec<RecordError>) {
    let GenerationRun {
        encoder,
        processor,
        image_folder,
        batch_size,
        config,
        show_progress,
    } = *run;
    let device = model.generation_device();
    let bar = if show_progress {
        ProgressBar::new(records.len() as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("generating {bar:40} {pos}/{len} ({per_sec}, eta {eta})")
            .expect("valid template"),
    );
    let stop = encoder.end_of_turn();
    let mut predictions = Vec::with_capacity(records.len());
    let mut errors = Vec::new();
    for chunk in records.chunks(batch_size.max(1)) {
        let mut prompts = Vec::new();
        let mut pixels = Vec::new();
        let mut n_images = 0;
        let mut meta = Vec::new();
        for record in chunk {
            let prepared = encoder
                .encode_prompt(record)
                .map_err(|p| RecordError::new(&record.id, "conversations", p))
                .and_then(|(ids, images, reference)| {
                    let mut px = Vec::new();
                    for (i, path) in record
                        .image_paths(image_folder)
                        .iter()
                        .take(images)
                        .enumerate()
                    {
                        let loaded = processor
                            .load(path)
                            .map_err(|p| RecordError::new(&record.id, format!("image[{i}]"), p))?;
                        px.extend(transform(&record.id, loaded));
                    }
                    Ok((ids, images, reference, px))
                });
            match prepared {
                Ok((ids, images, reference, px)) => {
                    prompts.push(ids);
                    pixels.extend(px);
                    n_images += images;
                    let question = record
                        .turns
                        .iter()
                        .find(|t| t.role == Role::Human)
                        .map(|t| t.value.clone())
                        .unwrap_or_default();
                    meta.push((record.id.clone(), question, reference));
                }
                Err(e) => errors.push(e),
            }
        }
        if !prompts.is_empty() {
            let s = processor.size;
            let images = (n_images > 0).then(|| {
                Tensor::<4>::from_data(TensorData::new(pixels, [n_images, 3, s, s]), &device)
            });
            let outputs = model.generate_no_grad(&prompts, images, config);
            for ((id, prompt, reference), out) in meta.into_iter().zip(outputs) {
                let tokens: Vec<u32> = out.into_iter().take_while(|&t| t != stop).collect();
                let output = encoder
                    .tokenizer()
                    .decode(&tokens)
                    .unwrap_or_default()
                    .trim()
                    .to_string();
                predictions.push(Prediction {
                    id,
                    prompt,
                    output,
                    reference,
                });
            }
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    (predictions, errors)
}

/// Write predictions as JSON Lines.
pub fn write_predictions(path: &Path, predictions: &[Prediction]) -> Result<(), DatasetError> {
    let write = || -> std::io::Result<()> {
        let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
        for p in predictions {
            writeln!(
                f,
                "{}",
                serde_json::to_string(p).expect("prediction serialises")
            )?;
        }
        f.flush()
    };
    write().map_err(|e| DatasetError::Write {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}
