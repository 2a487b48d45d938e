//! What every experiment sets up the same way: model sizes, encoders for a model, datasets.

use std::path::Path;

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};
use vlalign_data::{
    DatasetError, Encoder, ImageCheck, ImageProcessor, LoadReport, Record, Template, TextTokenizer,
    VlmDataset, load_dataset,
};
use vlalign_models::{DecoderConfig, LlavaConfig, VisionConfig};

/// Sizes of a LLaVA trained from scratch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelSize {
    /// Input side of the vision tower, pixels.
    pub image_size: usize,
    /// Patch side, pixels.
    pub patch_size: usize,
    /// Vision width.
    pub vision_width: usize,
    /// Vision layers.
    pub vision_layers: usize,
    /// The vision layer whose patch features feed the projector, HF-style (`-1` = the last).
    /// LLaVA reads the penultimate (`-2`) of a pretrained CLIP tower; a tower trained from
    /// scratch on the LLaVA loss never trains the layers after the one read.
    pub feature_layer: i64,
    /// Decoder width.
    pub width: usize,
    /// Decoder layers.
    pub layers: usize,
    /// Decoder query heads.
    pub heads: usize,
    /// Decoder key/value heads (GQA).
    pub kv_heads: usize,
}

impl Default for ModelSize {
    fn default() -> Self {
        Self {
            image_size: 48,
            patch_size: 8,
            vision_width: 64,
            vision_layers: 3,
            feature_layer: -1,
            width: 128,
            layers: 2,
            heads: 4,
            kv_heads: 2,
        }
    }
}

impl ModelSize {
    /// The LLaVA configuration for a vocabulary of `vocab` with `<image>` = `image_token_id`.
    pub fn llava(&self, vocab: usize, image_token_id: usize) -> LlavaConfig {
        let vision = VisionConfig::new(
            self.vision_width,
            self.vision_width * 2,
            self.vision_layers,
            (self.vision_width / 16).max(1),
            self.image_size,
            self.patch_size,
        );
        let text = DecoderConfig::new(
            vocab,
            self.width,
            self.width * 2,
            self.layers,
            self.heads,
            self.kv_heads,
        )
        .with_max_position_embeddings(1024);
        LlavaConfig::new(vision, text, image_token_id).with_vision_feature_layer(self.feature_layer)
    }
}

/// A tokenizer plus the encoders of the two LLaVA stages.
#[derive(Clone, Debug)]
pub struct Encoders {
    /// Pretraining: image + caption.
    pub plain: Encoder,
    /// Instruction tuning.
    pub chat: Encoder,
}

impl Encoders {
    /// Encoders for `tokenizer` with `image_tokens` slots per image.
    pub fn new(
        tokenizer: &TextTokenizer,
        chat: Template,
        image_tokens: usize,
        max_len: usize,
    ) -> Result<Self, DatasetError> {
        Ok(Self {
            plain: Encoder::new(
                tokenizer.clone(),
                Template::Plain,
                image_tokens,
                max_len,
                None,
            )?,
            chat: Encoder::new(tokenizer.clone(), chat, image_tokens, max_len, None)?,
        })
    }
}

/// Load `path` with `encoder`; bad records are skipped and reported on stderr.
pub fn load(
    path: &Path,
    encoder: &Encoder,
    processor: &ImageProcessor,
    image_folder: &Path,
) -> Result<(VlmDataset, LoadReport), DatasetError> {
    let (dataset, report) = load_dataset(
        path,
        encoder,
        processor.clone(),
        image_folder,
        ImageCheck::Exists,
    )?;
    if !report.errors.is_empty() || !report.truncated.is_empty() {
        eprintln!("{}: {}", path.display(), report.summary());
    }
    Ok((dataset, report))
}

/// Swap the images of a share `r` of `records` among themselves (a derangement of the chosen
/// ones: each keeps its text but gets another record's image), as the CAL paper's noisy-label
/// experiment. Returns the number of records changed.
pub fn add_label_noise(records: &mut [Record], r: f64, seed: u64) -> usize {
    let n = ((records.len() as f64) * r.clamp(0.0, 1.0)).round() as usize;
    if n < 2 {
        return 0;
    }
    let mut idx: Vec<usize> = (0..records.len()).collect();
    idx.shuffle(&mut StdRng::seed_from_u64(seed ^ 0x006e_6f69_7365));
    let chosen = &idx[..n];
    let images: Vec<Vec<String>> = chosen.iter().map(|&i| records[i].images.clone()).collect();
    for (k, &i) in chosen.iter().enumerate() {
        records[i].images = images[(k + 1) % n].clone();
    }
    n
}

/// `module` with every parameter drawn now rather than at first use (burn initialises
/// parameters lazily): weights drawn on one thread in a fixed order stay reproducible when the
/// models then train on several threads at once.
pub fn draw_now<M: burn::module::Module>(module: M) -> M {
    use burn::module::{ModuleVisitor, Param};
    use burn::tensor::Tensor;
    struct Touch;
    impl ModuleVisitor for Touch {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let _ = param.val();
        }
    }
    module.visit(&mut Touch);
    module
}
