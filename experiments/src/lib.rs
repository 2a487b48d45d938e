//! Shared code of the vlalign experiment binaries. This crate is the only place a backend is
//! chosen: see [`device`].

pub mod alloc;
pub mod bench;
pub mod cal_eval;
pub mod cal_llava;
pub mod cal_report;
pub mod captions;
pub mod clip_pretrain;
pub mod device;
pub mod hallucination;
pub mod inputs;
pub mod plot;
pub mod seeds;
pub mod setup;
pub mod slots;
pub mod token_eval;
pub mod vig_report;
pub mod vig_select;
pub mod world;
