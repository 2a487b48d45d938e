//! Image–caption pairs for contrastive (CLIP-style) training: one image and one caption per
//! record, the caption tokenized for a text encoder (`<s>` … `</s>` when the tokenizer has them:
//! the encoder pools at the last token) and right-padded in the batch.

use std::path::{Path, PathBuf};

use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::Dataset;
use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::DatasetError;
use crate::error::{Problem, RecordError};
use crate::image::ImageProcessor;
use crate::record::{Record, Role};
use crate::tokenizer::TextTokenizer;

/// One image with its caption.
#[derive(Clone, Debug, PartialEq)]
pub struct Pair {
    /// Record id.
    pub id: String,
    /// The image file.
    pub image: PathBuf,
    /// The caption text.
    pub caption: String,
    /// The caption's tokens (with begin/end of text when the tokenizer has them).
    pub tokens: Vec<u32>,
}

/// Tokens of `caption` for a text encoder that pools at the last token: `<s>` + text + `</s>`
/// where the tokenizer has them, cut to `max_tokens` (the end token kept).
pub fn caption_tokens(
    tokenizer: &TextTokenizer,
    caption: &str,
    max_tokens: usize,
) -> Result<Vec<u32>, DatasetError> {
    let (body, _) = tokenizer.encode(caption)?;
    let mut tokens: Vec<u32> = tokenizer.token_id("<s>").into_iter().collect();
    tokens.extend(body);
    let end = tokenizer.token_id("</s>");
    let room = max_tokens.saturating_sub(end.is_some() as usize).max(1);
    tokens.truncate(room);
    tokens.extend(end);
    Ok(tokens)
}

/// Pairs served with decoded images (decoded in `get`, i.e. in the data loader's workers).
#[derive(Clone, Debug)]
pub struct PairDataset {
    pairs: Vec<Pair>,
    processor: ImageProcessor,
}

impl PairDataset {
    /// Pairs from LLaVA records: each record's one image and its first assistant turn as the
    /// caption. Records without exactly one image, without an answer, or whose image file is
    /// missing are left out and returned, each naming the record and the field.
    pub fn from_records(
        records: impl IntoIterator<Item = Record>,
        image_folder: &Path,
        tokenizer: &TextTokenizer,
        max_tokens: usize,
        processor: ImageProcessor,
    ) -> Result<(Self, Vec<RecordError>), DatasetError> {
        let (mut pairs, mut bad) = (Vec::new(), Vec::new());
        for record in records {
            if record.images.len() != 1 {
                bad.push(RecordError::new(
                    &record.id,
                    "image",
                    Problem::ImageCount {
                        placeholders: 1,
                        images: record.images.len(),
                    },
                ));
                continue;
            }
            let Some(caption) = record.turns.iter().find(|t| t.role == Role::Gpt) else {
                bad.push(RecordError::new(
                    &record.id,
                    "conversations",
                    Problem::NoAnswer,
                ));
                continue;
            };
            let image = image_folder.join(&record.images[0]);
            if !image.is_file() {
                bad.push(RecordError::new(
                    &record.id,
                    "image",
                    Problem::ImageMissing {
                        path: image,
                        message: "not a file".into(),
                    },
                ));
                continue;
            }
            let caption = caption.value.trim().to_string();
            pairs.push(Pair {
                id: record.id,
                image,
                tokens: caption_tokens(tokenizer, &caption, max_tokens)?,
                caption,
            });
        }
        Ok((Self { pairs, processor }, bad))
    }

    /// The pairs, in order.
    pub fn pairs(&self) -> &[Pair] {
        &self.pairs
    }

    /// The image preprocessing.
    pub fn processor(&self) -> &ImageProcessor {
        &self.processor
    }
}

/// One pair as the batcher takes it.
#[derive(Clone, Debug)]
pub struct PairItem {
    /// Record id.
    pub id: String,
    /// Caption tokens.
    pub tokens: Vec<u32>,
    /// Normalized CHW pixels.
    pub pixels: Vec<f32>,
}

impl Dataset<PairItem> for PairDataset {
    fn get(&self, index: usize) -> Result<PairItem, burn::data::dataset::DatasetError> {
        let p = &self.pairs[index];
        let pixels = self.processor.load(&p.image).map_err(|problem| {
            burn::data::dataset::DatasetError::new(RecordError::new(&p.id, "image", problem))
        })?;
        Ok(PairItem {
            id: p.id.clone(),
            tokens: p.tokens.clone(),
            pixels,
        })
    }

    fn len(&self) -> usize {
        self.pairs.len()
    }
}

/// A batch of pairs: row `i` of the images goes with row `i` of the captions.
#[derive(Clone, Debug)]
pub struct PairBatch {
    /// `[batch, 3, size, size]`.
    pub images: Tensor<4>,
    /// `[batch, longest]`, right-padded.
    pub input_ids: Tensor<2, Int>,
    /// Real tokens per row.
    pub lengths: Vec<usize>,
    /// Record ids.
    pub ids: Vec<String>,
}

/// Stacks [`PairItem`]s.
#[derive(Clone, Debug)]
pub struct PairBatcher {
    /// Token id used for padding.
    pub pad_id: u32,
    /// Image side (pixels).
    pub image_size: usize,
}

impl Batcher<PairItem, PairBatch> for PairBatcher {
    fn batch(&self, items: Vec<PairItem>, device: &Device) -> PairBatch {
        let n = items.len();
        let width = items.iter().map(|i| i.tokens.len()).max().unwrap_or(1);
        let mut ids = Vec::with_capacity(n * width);
        let mut pixels = Vec::with_capacity(n * 3 * self.image_size * self.image_size);
        for item in &items {
            ids.extend(item.tokens.iter().map(|&t| t as i64));
            ids.extend(std::iter::repeat_n(
                self.pad_id as i64,
                width - item.tokens.len(),
            ));
            assert_eq!(
                item.pixels.len(),
                3 * self.image_size * self.image_size,
                "image of {} is not {}×{}",
                item.id,
                self.image_size,
                self.image_size
            );
            pixels.extend_from_slice(&item.pixels);
        }
        let s = self.image_size;
        PairBatch {
            images: Tensor::from_data(TensorData::new(pixels, [n, 3, s, s]), device),
            input_ids: Tensor::from_data(TensorData::new(ids, [n, width]), device),
            lengths: items.iter().map(|i| i.tokens.len()).collect(),
            ids: items.into_iter().map(|i| i.id).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Turn;

    fn tokenizer() -> TextTokenizer {
        let texts = ["a small red circle at the top left", "two objects: a star"];
        TextTokenizer::train_bpe(texts.iter(), 300).expect("trains")
    }

    #[test]
    fn captions_are_framed_and_cut_keeping_the_end_token() {
        let tk = tokenizer();
        let full = caption_tokens(&tk, "a small red circle", 64).unwrap();
        assert_eq!(full.first().copied(), tk.token_id("<s>"));
        assert_eq!(full.last().copied(), tk.token_id("</s>"));
        let cut = caption_tokens(&tk, "a small red circle", 4).unwrap();
        assert_eq!(cut.len(), 4);
        assert_eq!(cut[..3], full[..3]);
        assert_eq!(cut.last().copied(), tk.token_id("</s>"));
    }

    #[test]
    fn records_without_one_image_or_an_answer_are_named_and_left_out() {
        let dir = std::env::temp_dir().join(format!("vlalign-pairs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        image::RgbImage::new(4, 4).save(dir.join("a.png")).unwrap();
        let record = |id: &str, images: &[&str], answer: bool| Record {
            id: id.into(),
            images: images.iter().map(|s| s.to_string()).collect(),
            turns: std::iter::once(Turn {
                role: Role::Human,
                value: "<image>".into(),
            })
            .chain(answer.then(|| Turn {
                role: Role::Gpt,
                value: " a star ".into(),
            }))
            .collect(),
            truth: Vec::new(),
        };
        let records = vec![
            record("ok", &["a.png"], true),
            record("two", &["a.png", "a.png"], true),
            record("mute", &["a.png"], false),
            record("gone", &["b.png"], true),
        ];
        let (set, bad) =
            PairDataset::from_records(records, &dir, &tokenizer(), 16, ImageProcessor::clip(4))
                .unwrap();
        assert_eq!(set.pairs().len(), 1);
        assert_eq!(set.pairs()[0].caption, "a star");
        let named: Vec<(&str, &str)> = bad
            .iter()
            .map(|e| (e.id.as_str(), e.problem.reason()))
            .collect();
        assert_eq!(
            named,
            [
                ("two", "image_count_mismatch"),
                ("mute", "no_answer"),
                ("gone", "missing_image")
            ]
        );
        assert_eq!(set.get(0).unwrap().pixels.len(), 3 * 4 * 4);
        std::fs::remove_dir_all(&dir).ok();
    }
}
