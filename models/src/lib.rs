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
//! - [`hf`]: building these models from Hugging Face `config.json` files.

pub mod attention;
pub mod clip;
pub mod generate;
pub mod hf;
pub mod llava;
pub mod llm;
pub mod mask;
pub mod projector;
pub mod rope;
pub mod vit;

pub use clip::{Clip, ClipConfig, ClipTextConfig, ClipTextTransformer};
pub use generate::{GenerationConfig, Sampling};
pub use llava::{Llava, LlavaConfig, LlavaInput, ModelOutput, TextOnlyOutput};
pub use llm::{DecoderConfig, DecoderLm, KvCache};
pub use projector::{Projector, ProjectorConfig, ProjectorKind};
pub use vit::{VisionActivation, VisionConfig, VisionTransformer};
