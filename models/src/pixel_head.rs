//! PixelLLM's localisation head (Xu et al. 2024, "Pixel Aligned Language Models"): a small MLP
//! on each output token's LLM hidden state that regresses a point `(x, y)` of the image, both
//! in `[0, 1]` (relative to the image's width and height), so that every word the model writes
//! can be placed on the image. The loss (L1 on the tokens that name an object) lives with the
//! objectives (`vlalign_align::pixel_head`).

use burn::config::Config;
use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::{gelu, sigmoid};
use burn::tensor::{Device, Tensor};

use crate::llava::{Llava, LlavaInput};

/// Configuration of a [`PixelHead`].
#[derive(Config, Debug, PartialEq)]
pub struct PixelHeadConfig {
    /// Width of the LLM's hidden states.
    pub d_model: usize,
    /// Width of the MLP's hidden layer.
    #[config(default = 128)]
    pub hidden: usize,
}

/// `sigmoid(W2·gelu(W1·h + b1) + b2)`: a point in `[0, 1]²` per token.
#[derive(Module, Debug)]
pub struct PixelHead {
    /// `d_model → hidden`.
    pub fc1: Linear,
    /// `hidden → 2` (x, y).
    pub fc2: Linear,
}

impl PixelHeadConfig {
    /// Initialise the head on `device`.
    pub fn init(&self, device: &Device) -> PixelHead {
        PixelHead {
            fc1: LinearConfig::new(self.d_model, self.hidden).init(device),
            fc2: LinearConfig::new(self.hidden, 2).init(device),
        }
    }
}

impl PixelHead {
    /// Points `[batch, seq, 2]` (x, y in `[0, 1]`) for hidden states `[batch, seq, d_model]`.
    pub fn forward(&self, hidden: Tensor<3>) -> Tensor<3> {
        sigmoid(self.fc2.forward(gelu(self.fc1.forward(hidden))))
    }
}

/// LLaVA with a PixelLLM head on its LLM's last hidden states: the same logits as the LLaVA
/// alone, and a point per token.
#[derive(Module, Debug)]
pub struct PixelLlava {
    /// The vision–language model.
    pub llava: Llava,
    /// The localisation head.
    pub head: PixelHead,
}

impl PixelLlava {
    /// `llava` with a fresh head sized to its LLM.
    pub fn new(llava: Llava, head: &PixelHeadConfig) -> Self {
        assert_eq!(
            head.d_model,
            llava.language_model.hidden_size(),
            "the head reads the LLM's hidden states"
        );
        let device = llava.multi_modal_projector.devices()[0].clone();
        Self {
            head: head.init(&device),
            llava,
        }
    }

    /// The LLM's last hidden states `[batch, seq, d_model]` (LLaVA's
    /// [`forward_hidden`](Llava::forward_hidden)).
    pub fn forward_hidden(&self, input: LlavaInput) -> Tensor<3> {
        self.llava.forward_hidden(input)
    }

    /// Points `[batch, seq, 2]` of every position: the head on the position's hidden state, the
    /// state that writes the next token (so the point of token `t + 1` sits at `t`).
    pub fn points(&self, input: LlavaInput) -> Tensor<3> {
        self.head.forward(self.forward_hidden(input))
    }
}
