//! BLIP-2 / InstructBLIP with a decoder LM (HF `Blip2ForConditionalGeneration`,
//! `InstructBlipForConditionalGeneration`), and SAM: the same model with a [`WFormer`].
//!
//! Each image goes through the BLIP vision tower; the learned query tokens read it through the
//! Q-Former; the query outputs, projected to the LLM width, fill the image's
//! `num_query_tokens` `<image>` slots of the text, image after image. With a W-Former the
//! images of one row form a group whose query outputs see each other through SAM's second
//! stream.

use burn::config::Config;
use burn::module::{Module, Param};
use burn::nn::{Linear, LinearConfig};
use burn::tensor::{Bool, Device, Int, Tensor};

use crate::blip_vision::{BlipVisionConfig, BlipVisionModel};
use crate::generate::{GenerationConfig, generate_spliced};
use crate::llava::{
    Layout, ModelOutput, TextOnlyOutput, bool_tensor, decode, int_tensor, select_images,
    splice_visual, text_only,
};
use crate::llm::{DecoderConfig, DecoderLm};
use crate::qformer::{QFormer, QFormerConfig, QFormerText};
use crate::wformer::{WFormer, WFormerConfig};

/// Configuration of a [`Blip2`] model.
#[derive(Config, Debug, PartialEq)]
pub struct Blip2Config {
    /// The vision tower.
    pub vision: BlipVisionConfig,
    /// The Q-Former.
    pub qformer: QFormerConfig,
    /// The language model.
    pub text: DecoderConfig,
    /// Token id of the image slots (`image_token_index`).
    pub image_token_id: usize,
    /// Learned query tokens = image slots per image.
    #[config(default = 32)]
    pub num_query_tokens: usize,
    /// SAM's W-Former (none: plain BLIP-2).
    #[config(default = "None")]
    pub wformer: Option<WFormerConfig>,
}

impl Blip2Config {
    /// A model small enough to train from scratch on two CPU cores: [`BlipVisionConfig::tiny`],
    /// [`QFormerConfig::tiny`] with 8 queries, [`DecoderConfig::tiny`].
    pub fn tiny(vocab_size: usize, image_token_id: usize) -> Self {
        let vision = BlipVisionConfig::tiny();
        let qformer = QFormerConfig::tiny(vision.hidden_size);
        Self::new(
            vision,
            qformer,
            DecoderConfig::tiny(vocab_size),
            image_token_id,
        )
        .with_num_query_tokens(8)
    }

    /// The same model with SAM's W-Former (default exchange: the last layer; pooling: all).
    pub fn with_sam(self) -> Self {
        let w = WFormerConfig::new(self.vision.hidden_size, self.qformer.hidden_size);
        self.with_wformer(Some(w))
    }

    /// Number of `<image>` slots one image fills.
    pub fn image_tokens(&self) -> usize {
        self.num_query_tokens
    }

    /// Initialise the model on `device` (query tokens ~ N(0, 0.02)).
    pub fn init(&self, device: &Device) -> Blip2 {
        assert!(
            self.image_token_id < self.text.vocab_size,
            "image_token_id {} is outside the vocabulary ({})",
            self.image_token_id,
            self.text.vocab_size
        );
        assert_eq!(
            self.qformer.encoder_hidden_size, self.vision.hidden_size,
            "the Q-Former reads features of width encoder_hidden_size = the tower's hidden_size"
        );
        let d = self.qformer.hidden_size;
        Blip2 {
            vision_model: self.vision.init(device),
            query_tokens: Param::from_tensor(Tensor::random(
                [1, self.num_query_tokens, d],
                burn::tensor::Distribution::Normal(0.0, 0.02),
                device,
            )),
            qformer: self.qformer.init(device),
            language_projection: LinearConfig::new(d, self.text.hidden_size).init(device),
            language_model: self.text.init(device),
            wformer: self.wformer.as_ref().map(|w| w.init(device)),
            image_token_id: self.image_token_id as i64,
        }
    }
}

/// One batch of BLIP-2 / SAM input.
#[derive(Clone, Debug)]
pub struct Blip2Input {
    /// Token ids `[batch, seq]`, each image expanded to `num_query_tokens` slots.
    pub input_ids: Tensor<2, Int>,
    /// `[batch, seq]`, `true` for real tokens.
    pub attention_mask: Tensor<2, Bool>,
    /// Pixel values `[images, 3, H, W]`, in slot order.
    pub images: Option<Tensor<4>>,
    /// Shared images (as [`crate::LlavaInput::image_index`]).
    pub image_index: Option<Vec<usize>>,
    /// InstructBLIP: the instruction tokens for each image's Q-Former, `[images, t]`.
    pub qformer_text: Option<QFormerText>,
}

/// BLIP-2 / InstructBLIP, or SAM when `wformer` is present.
#[derive(Module, Debug)]
pub struct Blip2 {
    /// BLIP vision tower.
    pub vision_model: BlipVisionModel,
    /// Learned queries `[1, q, d_qformer]`.
    pub query_tokens: Param<Tensor<3>>,
    /// The Q-Former.
    pub qformer: QFormer,
    /// Query outputs → LLM width.
    pub language_projection: Linear,
    /// The decoder LM.
    pub language_model: DecoderLm,
    /// SAM's W-Former.
    pub wformer: Option<WFormer>,
    /// Token id of the image slots.
    #[module(skip)]
    pub image_token_id: i64,
}

impl Blip2 {
    /// Image slots per image.
    pub fn image_tokens(&self) -> usize {
        self.query_tokens.dims()[1]
    }

    /// Projected query outputs `[n, q, d_llm]` of the `n` images in slot order; `groups` are
    /// the consecutive group sizes (the images of one row) that SAM's W-Former pools over.
    pub fn encode_images(
        &self,
        images: Tensor<4>,
        image_index: Option<&[usize]>,
        groups: &[usize],
        text: Option<QFormerText>,
    ) -> Tensor<3> {
        let mut features = self.vision_model.forward(images);
        if let Some(index) = image_index {
            features = select_images(features, index);
        }
        let n = features.dims()[0];
        let [_, q, d] = self.query_tokens.dims();
        let queries = self.query_tokens.val().expand([n, q, d]);
        let out = match &self.wformer {
            Some(w) => w.forward(&self.qformer, queries, features, groups, text),
            None => self.qformer.forward(queries, features, text),
        };
        self.language_projection.forward(out)
    }

    /// Images per row: the row's image slots over the slots per image.
    fn groups(&self, layout: &Layout) -> Vec<usize> {
        let per = self.image_tokens();
        layout
            .slots_per_row()
            .into_iter()
            .map(|s| {
                assert!(
                    s.is_multiple_of(per),
                    "a row has {s} image slots, not a multiple of the {per} per image"
                );
                s / per
            })
            .filter(|&n| n > 0)
            .collect()
    }

    fn embeds(&self, input: Blip2Input, layout: &Layout) -> Tensor<3> {
        let text = self.language_model.embed(input.input_ids);
        let groups = self.groups(layout);
        let visual = input.images.map(|images| {
            self.encode_images(
                images,
                input.image_index.as_deref(),
                &groups,
                input.qformer_text,
            )
        });
        splice_visual(text, visual, layout)
    }

    /// Final hidden states `[batch, seq, d]` of the full multimodal sequence.
    pub fn forward_hidden(&self, input: Blip2Input) -> Tensor<3> {
        let layout =
            Layout::from_tensors(&input.input_ids, &input.attention_mask, self.image_token_id);
        let device = input.input_ids.device();
        let embeds = self.embeds(input, &layout);
        decode(&self.language_model, embeds, &layout, &device)
    }

    /// Next-token logits `[batch, seq, vocab]`.
    pub fn forward(&self, input: Blip2Input) -> ModelOutput {
        ModelOutput {
            logits: self.language_model.logits(self.forward_hidden(input)),
        }
    }

    /// The text tokens alone, each at its position id in the full sequence (CAL's contrast).
    pub fn forward_text_only(&self, input: &Blip2Input) -> TextOnlyOutput {
        let layout =
            Layout::from_tensors(&input.input_ids, &input.attention_mask, self.image_token_id);
        text_only(&self.language_model, &layout, &input.input_ids.device())
    }

    /// Continue each prompt (image slots expanded; `images` in slot order). Call on a model
    /// without autodiff.
    pub fn generate(
        &self,
        prompts: &[Vec<u32>],
        images: Option<Tensor<4>>,
        config: &GenerationConfig,
    ) -> Vec<Vec<u32>> {
        generate_spliced(
            &self.language_model,
            self.image_token_id,
            prompts,
            |ids, layout| {
                let device = self.language_model.embed_tokens.weight.device();
                let input = Blip2Input {
                    input_ids: int_tensor(ids, &device),
                    attention_mask: bool_tensor(&layout.valid, &device),
                    images,
                    image_index: None,
                    qformer_text: None,
                };
                (self.embeds(input, layout), None)
            },
            config,
        )
    }
}

/// HF → vlalign key map of a `Blip2ForConditionalGeneration` /
/// `InstructBlipForConditionalGeneration` checkpoint with a LLaMA-family LM.
pub fn hf_key_map() -> Vec<(String, String)> {
    let mut map = crate::qformer::hf_key_map("qformer.");
    map.extend(crate::llm::hf_key_map("language_model."));
    map
}
