//! Shared code of the vlalign experiment binaries. This crate is the only place a backend is
//! chosen: see [`device`].
//!
//! Layers, each using only those above it: `run` (world/eval sections, run options, a stage's
//! training), `setup` and `inputs` (model sizes, encoders, the world or the user's data and
//! model), `eval` (evaluating a model on the world), then the experiments (`cal_llava` with
//! `cal_eval`, `cal_report`, `cal_rescore`, `seeds`; `vig_select` with `vig_report`;
//! `clip_pretrain`; `seva_dpo` with `seva_pairs`, `seva_train`, `seva_eval`, `seva_score`, `seva_report`), and helpers (`plot`, `world`, `device`, `alloc`, `bench`).

pub mod alloc;
pub mod bench;
pub mod bench_dpo;
pub mod cal_eval;
pub mod cal_llava;
pub mod cal_report;
pub mod cal_rescore;
pub mod clip_pretrain;
pub mod comparison;
pub mod device;
pub mod eval;
pub mod inputs;
pub mod plot;
pub mod run;
pub mod sam_eval;
pub mod sam_group_caption;
pub mod sam_report;
pub mod seed_ideas;
pub mod seed_ideas_jobs;
pub mod seed_ideas_lavit;
pub mod seed_ideas_pixel;
pub mod seed_ideas_pixel_plot;
pub mod seed_ideas_report;
pub mod seeds;
pub mod setup;
pub mod seva_dpo;
pub mod seva_eval;
pub mod seva_pairs;
pub mod seva_report;
pub mod seva_score;
pub mod seva_train;
pub mod table;
pub mod vig_report;
pub mod vig_seeds;
pub mod vig_select;
pub mod world;
