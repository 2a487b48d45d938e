//! Backend-agnostic vision–language models for vlalign.
//!
//! Every model is a plain Burn module: the [`Device`](burn::tensor::Device) its tensors live on
//! picks the backend at run time, so the same code trains on CUDA, WGPU or the CPU.
//!
//! - [`vit`]: the CLIP-style vision tower.
//! - [`clip`]: CLIP (the tower, a causal text encoder, projections, a learned temperature).
//! - [`projector`]: vision → LLM projection (`linear`, `mlp{N}x_gelu`).
//! - [`llm`]: the LLaMA / Qwen2 decoder (RMSNorm, rotate-half RoPE, GQA, SwiGLU, KV cache).
//! - [`llava`]: the LLaVA composition (images spliced at `<image>`), its text-only pass and
//!   batched generation ([`generate`]).
//! - [`blip_vision`], [`qformer`], [`blip2`]: BLIP-2 / InstructBLIP (a BLIP ViT, the Q-Former's
//!   learned queries, a decoder LM); with [`wformer`], SAM's multi-image alignment.
//! - [`lavit`]: LaVIT's dynamic visual tokenizer (keep/drop selector, merger, codebook).
//! - [`pixel_head`]: PixelLLM's per-token localisation head (a point in the image per token).
//! - [`plora`]: PLoRA, LoRA on the decoder's linear layers at image-token positions only.
//! - [`hf`]: building these models from Hugging Face `config.json` files.

pub mod attention;
pub mod blip2;
pub mod blip_vision;
pub mod clip;
pub mod generate;
pub mod hf;
pub mod lavit;
pub mod llava;
pub mod llm;
pub mod mask;
pub mod pixel_head;
pub mod plora;
pub mod projector;
pub mod qformer;
pub mod rope;
pub mod vit;
pub mod wformer;

pub use blip_vision::{BlipVisionConfig, BlipVisionModel};
pub use blip2::{Blip2, Blip2Config, Blip2Input};
pub use clip::{Clip, ClipConfig, ClipTextConfig, ClipTextTransformer};
pub use generate::{GenerationConfig, Generator, Sampling};
pub use lavit::{GumbelSample, Lavit, LavitConfig, LavitLlava, LavitOutput};
pub use llava::{Llava, LlavaConfig, LlavaInput, ModelOutput, TextOnlyOutput};
pub use llm::{DecoderConfig, DecoderLm, KvCache};
pub use pixel_head::{PixelHead, PixelHeadConfig, PixelLlava};
pub use plora::{PLoraConfig, PLoraError};
pub use projector::{Projector, ProjectorConfig, ProjectorKind};
pub use qformer::{QFormer, QFormerConfig, QFormerText};
pub use vit::{VisionActivation, VisionConfig, VisionTransformer};
pub use wformer::{Pooling, WFormer, WFormerConfig};
