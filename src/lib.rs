//! # vlalign
//!
//! Aligning vision and language in multimodal LLMs, on Burn 0.22. This root crate re-exports
//! the workspace crates so that `vlalign::models::Llava` and friends are one import away, and
//! hosts the workspace-level integration tests (`tests/`).
//!
//! - [`models`]: the backend-agnostic model family (CLIP ViT, projector, LLaMA/Qwen2 decoder,
//!   LLaVA) and Hugging Face config import.
//!
//! Backends are chosen by cargo features (`flex` default, `ndarray`, `wgpu`, `cuda`) and, at run
//! time, by the `Device` tensors are created on; the experiment binaries pick it with `--device`.

pub use vlalign_align as align;
pub use vlalign_data as data;
pub use vlalign_eval as eval;
pub use vlalign_models as models;
pub use vlalign_train as train;
