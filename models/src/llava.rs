//! LLaVA: a vision tower, a projector and a decoder; the projected patch features of each image
//! replace the `<image>` token slots of the text.

use burn::config::Config;
use burn::module::Module;
use burn::tensor::{Bool, Device, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::llm::{DecoderConfig, DecoderLm, KvCache};
use crate::mask::position_ids_from_mask;
use crate::projector::{Projector, ProjectorConfig, ProjectorKind};
use crate::vit::{VisionConfig, VisionTransformer};

/// Which vision tokens feed the LLM (`vision_feature_select_strategy`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FeatureSelect {
    /// Patch tokens only (the class token is dropped) — LLaVA-1.5.
    Default,
    /// Class token and patches.
    Full,
}

/// Configuration of a [`Llava`] model.
#[derive(Config, Debug, PartialEq)]
pub struct LlavaConfig {
    /// The vision tower.
    pub vision: VisionConfig,
    /// The language model.
    pub text: DecoderConfig,
    /// Token id whose slots receive image features (`image_token_index`).
    pub image_token_id: usize,
    /// Projector architecture.
    #[config(default = "ProjectorKind::MlpGelu { depth: 2 }")]
    pub projector: ProjectorKind,
    /// Bias on the projector's linear layers.
    #[config(default = true)]
    pub projector_bias: bool,
    /// Vision layer whose hidden states are used, HF-style index (`-2`: second to last).
    #[config(default = -2)]
    pub vision_feature_layer: i64,
    /// Whether the class token is kept.
    #[config(default = "FeatureSelect::Default")]
    pub vision_feature_select_strategy: FeatureSelect,
}

impl LlavaConfig {
    /// The `tiny` preset: [`VisionConfig::tiny`] (16 visual tokens per image) and
    /// [`DecoderConfig::tiny`] with the given vocabulary.
    pub fn tiny(vocab_size: usize, image_token_id: usize) -> Self {
        Self::new(
            VisionConfig::tiny(),
            DecoderConfig::tiny(vocab_size),
            image_token_id,
        )
    }

    /// Number of `<image>` slots one image fills.
    pub fn image_tokens(&self) -> usize {
        self.vision.num_patches()
            + usize::from(self.vision_feature_select_strategy == FeatureSelect::Full)
    }

    /// Initialise the model on `device`.
    pub fn init(&self, device: &Device) -> Llava {
        assert!(
            self.image_token_id < self.text.vocab_size,
            "image_token_id {} is outside the vocabulary ({})",
            self.image_token_id,
            self.text.vocab_size
        );
        Llava {
            vision_tower: self.vision.init(device),
            multi_modal_projector: ProjectorConfig::new(
                self.vision.hidden_size,
                self.text.hidden_size,
            )
            .with_kind(self.projector)
            .with_bias(self.projector_bias)
            .init(device),
            language_model: self.text.init(device),
            image_token_id: self.image_token_id as i64,
            vision_feature_layer: self.vision_feature_layer,
            drop_cls: self.vision_feature_select_strategy == FeatureSelect::Default,
        }
    }
}

/// One batch of LLaVA input.
#[derive(Clone, Debug)]
pub struct LlavaInput {
    /// Token ids `[batch, seq]` with every `<image>` already expanded to
    /// [`LlavaConfig::image_tokens`] slots of `image_token_id`.
    pub input_ids: Tensor<2, Int>,
    /// `[batch, seq]`, `true` for real tokens, `false` for padding (left or right).
    pub attention_mask: Tensor<2, Bool>,
    /// Pixel values `[images, 3, H, W]`, in the order their slots appear (row by row).
    pub images: Option<Tensor<4>>,
    /// Shared images: for each image in slot order, its index in `images`, so that one image
    /// used by several rows (DPO's chosen and rejected answers) is encoded once. `None`: one
    /// entry of `images` per image, in slot order.
    pub image_index: Option<Vec<usize>>,
}

/// Logits `[batch, seq, vocab]` of a forward pass.
#[derive(Clone, Debug)]
pub struct ModelOutput {
    /// Next-token logits at every position.
    pub logits: Tensor<3>,
}

/// Output of [`Llava::forward_text_only`].
#[derive(Clone, Debug)]
pub struct TextOnlyOutput {
    /// Logits `[batch, kept, vocab]` of the text tokens, packed to the left; rows with fewer
    /// text tokens are right-padded.
    pub logits: Tensor<3>,
    /// For each row, the index in the original sequence of each kept token, in order.
    pub positions: Vec<Vec<usize>>,
}

/// Host-side view of a batch: which slots are images, which are padding, and positions.
#[derive(Clone, Debug)]
pub(crate) struct Layout {
    pub ids: Vec<Vec<i64>>,
    pub valid: Vec<Vec<bool>>,
    pub positions: Vec<Vec<i64>>,
    pub image: Vec<Vec<bool>>,
}

impl Layout {
    pub(crate) fn new(ids: Vec<Vec<i64>>, valid: Vec<Vec<bool>>, image_token: i64) -> Self {
        let positions = position_ids_from_mask(&valid);
        let image = ids
            .iter()
            .zip(&valid)
            .map(|(row, v)| {
                row.iter()
                    .zip(v)
                    .map(|(&t, &v)| v && t == image_token)
                    .collect()
            })
            .collect();
        Self {
            ids,
            valid,
            positions,
            image,
        }
    }

    pub(crate) fn read(input: &LlavaInput, image_token: i64) -> Self {
        Self::from_tensors(&input.input_ids, &input.attention_mask, image_token)
    }

    pub(crate) fn from_tensors(
        input_ids: &Tensor<2, Int>,
        attention_mask: &Tensor<2, Bool>,
        image_token: i64,
    ) -> Self {
        let [batch, seq] = input_ids.dims();
        let ids = input_ids
            .to_data()
            .convert::<i64>()
            .try_into_vec::<i64>()
            .expect("int tensor data");
        let valid = host_bools(&attention_mask.to_data());
        assert_eq!(attention_mask.dims(), [batch, seq], "attention_mask shape");
        Self::new(
            ids.chunks(seq).map(<[i64]>::to_vec).collect(),
            valid.chunks(seq).map(<[bool]>::to_vec).collect(),
            image_token,
        )
    }

    /// Image slots per row.
    pub(crate) fn slots_per_row(&self) -> Vec<usize> {
        self.image
            .iter()
            .map(|row| row.iter().filter(|&&i| i).count())
            .collect()
    }

    pub(crate) fn has_padding(&self) -> bool {
        self.valid.iter().flatten().any(|v| !v)
    }

    pub(crate) fn image_slots(&self) -> usize {
        self.image.iter().flatten().filter(|&&i| i).count()
    }
}

pub(crate) fn int_tensor(rows: &[Vec<i64>], device: &Device) -> Tensor<2, Int> {
    let seq = rows.first().map_or(0, Vec::len);
    let flat: Vec<i64> = rows.iter().flatten().copied().collect();
    Tensor::from_data(TensorData::new(flat, [rows.len(), seq]), device)
}

/// A bool tensor's values read on the host, whatever the backend stores bools as (flex: native
/// bytes; wgpu and cuda: `u32`), so no host read-back assumes a native dtype.
pub fn host_bools(data: &TensorData) -> Vec<bool> {
    data.iter::<u8>().map(|v| v != 0).collect()
}

pub(crate) fn bool_tensor(rows: &[Vec<bool>], device: &Device) -> Tensor<2, Bool> {
    let seq = rows.first().map_or(0, Vec::len);
    let flat: Vec<bool> = rows.iter().flatten().copied().collect();
    Tensor::from_data(TensorData::new(flat, [rows.len(), seq]), device)
}

/// The LLaVA model (HF `LlavaForConditionalGeneration`).
#[derive(Module, Debug)]
pub struct Llava {
    /// CLIP vision tower.
    pub vision_tower: VisionTransformer,
    /// Vision → LLM projector.
    pub multi_modal_projector: Projector,
    /// The decoder LM.
    pub language_model: DecoderLm,
    /// Token id of the image slots.
    #[module(skip)]
    pub image_token_id: i64,
    /// HF-style index of the vision layer used.
    #[module(skip)]
    pub vision_feature_layer: i64,
    /// Whether the class token is dropped.
    #[module(skip)]
    pub drop_cls: bool,
}

impl Llava {
    /// The vision features the projector reads `[images, tokens, d_vision]`.
    pub fn vision_features(&self, images: Tensor<4>) -> Tensor<3> {
        self.vision_tower
            .forward_features(images, self.vision_feature_layer, self.drop_cls)
    }

    /// Projected visual tokens `[images, tokens, d_llm]`.
    pub fn encode_images(&self, images: Tensor<4>) -> Tensor<3> {
        self.multi_modal_projector
            .forward(self.vision_features(images))
    }

    /// Token embeddings with the image slots replaced by projected image features, in order.
    pub(crate) fn splice(
        &self,
        input_ids: Tensor<2, Int>,
        images: Option<Tensor<4>>,
        image_index: Option<&[usize]>,
        layout: &Layout,
    ) -> Tensor<3> {
        let text = self.language_model.embed(input_ids);
        let visual = images.map(|images| {
            let visual = self.encode_images(images);
            match image_index {
                Some(index) => select_images(visual, index),
                None => visual,
            }
        });
        splice_visual(text, visual, layout)
    }

    /// Final hidden states `[batch, seq, d]` of the full multimodal sequence.
    pub fn forward_hidden(&self, input: LlavaInput) -> Tensor<3> {
        let layout = Layout::read(&input, self.image_token_id);
        let device = input.input_ids.device();
        let embeds = self.splice(
            input.input_ids,
            input.images,
            input.image_index.as_deref(),
            &layout,
        );
        decode(&self.language_model, embeds, &layout, &device)
    }

    /// Next-token logits `[batch, seq, vocab]` of the full multimodal sequence.
    pub fn forward(&self, input: LlavaInput) -> ModelOutput {
        ModelOutput {
            logits: self.language_model.logits(self.forward_hidden(input)),
        }
    }

    /// CAL's contrast pass: the same text with the image slots removed, each text token keeping
    /// the position id it has in the full sequence. Only the text tokens run, so this equals
    /// [`forward_image_keys_masked`](Self::forward_image_keys_masked) at the text positions at
    /// a fraction of its cost. Run it on `model.valid()` when no gradient is wanted.
    pub fn forward_text_only(&self, input: LlavaInput) -> TextOnlyOutput {
        let layout = Layout::read(&input, self.image_token_id);
        text_only(&self.language_model, &layout, &input.input_ids.device())
    }

    /// The reference implementation of CAL's contrast (the official code's way): the full
    /// sequence with the images spliced in, but every image slot hidden from attention.
    /// Logits `[batch, seq, vocab]`; only the text positions are meaningful.
    pub fn forward_image_keys_masked(&self, input: LlavaInput) -> ModelOutput {
        let layout = Layout::read(&input, self.image_token_id);
        let device = input.input_ids.device();
        let embeds = self.splice(
            input.input_ids,
            input.images,
            input.image_index.as_deref(),
            &layout,
        );
        let key_valid: Vec<Vec<bool>> = layout
            .valid
            .iter()
            .zip(&layout.image)
            .map(|(v, i)| v.iter().zip(i).map(|(&v, &i)| v && !i).collect())
            .collect();
        let hidden = self.language_model.forward_spliced(
            embeds,
            int_tensor(&layout.positions, &device),
            Some(bool_tensor(&key_valid, &device)),
            image_positions(&self.language_model, &layout, &device),
            None,
        );
        ModelOutput {
            logits: self.language_model.logits(hidden),
        }
    }
}

/// The decoder on the text tokens of `layout` alone (image slots removed), each keeping its
/// position id in the full sequence: CAL's contrast pass for every model that splices images.
pub(crate) fn text_only(lm: &DecoderLm, layout: &Layout, device: &Device) -> TextOnlyOutput {
    let positions: Vec<Vec<usize>> = layout
        .valid
        .iter()
        .zip(&layout.image)
        .map(|(valid, image)| {
            (0..valid.len())
                .filter(|&t| valid[t] && !image[t])
                .collect()
        })
        .collect();
    let kept = positions.iter().map(Vec::len).max().unwrap_or(0).max(1);
    let pad = |row: Vec<i64>, fill: i64| {
        let mut row = row;
        row.resize(kept, fill);
        row
    };
    let ids: Vec<Vec<i64>> = positions
        .iter()
        .zip(&layout.ids)
        .map(|(p, ids)| pad(p.iter().map(|&t| ids[t]).collect(), 0))
        .collect();
    let pos: Vec<Vec<i64>> = positions
        .iter()
        .zip(&layout.positions)
        .map(|(p, orig)| pad(p.iter().map(|&t| orig[t]).collect(), 1))
        .collect();
    let valid: Vec<Vec<bool>> = positions
        .iter()
        .map(|p| (0..kept).map(|j| j < p.len()).collect())
        .collect();
    let key_valid = valid
        .iter()
        .flatten()
        .any(|v| !v)
        .then(|| bool_tensor(&valid, device));
    let logits = lm.forward(
        int_tensor(&ids, device),
        int_tensor(&pos, device),
        key_valid,
        None,
    );
    TextOnlyOutput { logits, positions }
}

/// Images `[n, tokens, d]` picked by `index` (shared images: one entry per image slot group).
pub(crate) fn select_images(visual: Tensor<3>, index: &[usize]) -> Tensor<3> {
    let index: Vec<i64> = index.iter().map(|&i| i as i64).collect();
    let n = index.len();
    let index = Tensor::<1, Int>::from_data(TensorData::new(index, [n]), &visual.device());
    visual.select(0, index)
}

/// Token embeddings `text` `[batch, seq, d]` with the image slots of `layout` replaced, in
/// order, by the visual tokens `[images, per_image, d]` (LLaVA's projected patches, BLIP-2's
/// projected query outputs).
pub(crate) fn splice_visual(
    text: Tensor<3>,
    visual: Option<Tensor<3>>,
    layout: &Layout,
) -> Tensor<3> {
    let slots = layout.image_slots();
    let Some(visual) = visual else {
        assert_eq!(
            slots, 0,
            "{slots} image slots in the text but no images given"
        );
        return text;
    };
    let [n_images, per_image, d] = visual.dims();
    assert_eq!(
        slots,
        n_images * per_image,
        "the text has {slots} image slots but {n_images} images give {} visual tokens \
         ({per_image} each)",
        n_images * per_image
    );
    let [batch, seq, _] = text.dims();
    let mut next_visual = (batch * seq) as i64;
    let index: Vec<i64> = layout
        .image
        .iter()
        .flatten()
        .enumerate()
        .map(|(k, &is_image)| {
            if is_image {
                next_visual += 1;
                next_visual - 1
            } else {
                k as i64
            }
        })
        .collect();
    let device = text.device();
    let index = Tensor::<1, Int>::from_data(TensorData::new(index, [batch * seq]), &device);
    let pool = Tensor::cat(
        vec![
            text.reshape([batch * seq, d]),
            visual.reshape([n_images * per_image, d]),
        ],
        0,
    );
    pool.select(0, index).reshape([batch, seq, d])
}

/// The decoder's final hidden states `[batch, seq, d]` on spliced embeddings, positions and
/// padding as `layout` says (every model that splices images into a decoder).
pub(crate) fn decode(
    lm: &DecoderLm,
    embeds: Tensor<3>,
    layout: &Layout,
    device: &Device,
) -> Tensor<3> {
    let key_valid = layout
        .has_padding()
        .then(|| bool_tensor(&layout.valid, device));
    lm.forward_spliced(
        embeds,
        int_tensor(&layout.positions, device),
        key_valid,
        image_positions(lm, layout, device),
        None,
    )
}

/// The image slots of `layout` as a device mask, for a decoder with PLoRA adapters (`None`
/// for one without: they would change nothing).
pub(crate) fn image_positions(
    lm: &DecoderLm,
    layout: &Layout,
    device: &Device,
) -> Option<Tensor<2, Bool>> {
    lm.has_plora().then(|| bool_tensor(&layout.image, device))
}

/// Run the decoder on spliced embeddings with a cache and return the last position's logits
/// (one generation step).
pub(crate) fn lm_step(
    lm: &DecoderLm,
    embeds: Tensor<3>,
    positions: &[Vec<i64>],
    key_valid: Option<&[Vec<bool>]>,
    image: Option<Tensor<2, Bool>>,
    cache: &mut KvCache,
) -> Tensor<2> {
    let device = embeds.device();
    let hidden = lm.forward_spliced(
        embeds,
        int_tensor(positions, &device),
        key_valid.map(|v| bool_tensor(v, &device)),
        image,
        Some(cache),
    );
    let [batch, seq, d] = hidden.dims();
    let last = hidden.narrow(1, seq - 1, 1).reshape([batch, d]);
    lm.logits(last)
}

/// HF → vlalign key map of a LLaVA checkpoint, accepting the hub layout
/// (`language_model.model.*`, `vision_tower.vision_model.*`), what transformers 5 writes
/// (`vision_tower.*`), transformers 4.52's (`model.language_model.*`, `lm_head.*`,
/// `model.vision_tower.*`) and the original LLaVA projector (`model.mm_projector.{0,2}`).
pub fn hf_key_map() -> Vec<(String, String)> {
    let mut map: Vec<(String, String)> = [
        (r"^model\.language_model\.", "language_model.model."),
        (r"^lm_head\.", "language_model.lm_head."),
        (r"^model\.multi_modal_projector\.", "multi_modal_projector."),
        (r"^model\.vision_tower\.", "vision_tower."),
        (
            r"^multi_modal_projector\.linear_1\.",
            "multi_modal_projector.layers.0.",
        ),
        (
            r"^multi_modal_projector\.linear_2\.",
            "multi_modal_projector.layers.1.",
        ),
        (
            r"^model\.mm_projector\.(weight|bias)$",
            "multi_modal_projector.layers.0.${1}",
        ),
        (
            r"^model\.mm_projector\.0\.",
            "multi_modal_projector.layers.0.",
        ),
        (
            r"^model\.mm_projector\.2\.",
            "multi_modal_projector.layers.1.",
        ),
        (
            r"^model\.mm_projector\.4\.",
            "multi_modal_projector.layers.2.",
        ),
        (
            r"^model\.mm_projector\.6\.",
            "multi_modal_projector.layers.3.",
        ),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    map.extend(crate::vit::hf_key_map("vision_tower."));
    map.extend(crate::llm::hf_key_map("language_model."));
    map
}

/// vlalign → HF key map: the layout transformers 5 writes for `LlavaForConditionalGeneration`.
pub fn hf_save_map() -> Vec<(String, String)> {
    let mut map = crate::llm::hf_save_map("language_model.");
    map.push((
        r"^multi_modal_projector\.layers\.0\.".into(),
        "multi_modal_projector.linear_1.".into(),
    ));
    map.push((
        r"^multi_modal_projector\.layers\.1\.".into(),
        "multi_modal_projector.linear_2.".into(),
    ));
    map.extend(crate::vit::hf_save_map("vision_tower.", false));
    map
}
