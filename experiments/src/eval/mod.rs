//! Evaluating a model on the world, for every experiment: caption attributes of stage-1 models
//! (own vs swapped images), grounded answer slots, captioning and hallucination (CIDEr, CHAIR,
//! POPE), and per-token scores (perplexity, CAL's contrast) with the world's truth.

pub mod captions;
pub mod hallucination;
pub mod slots;
pub mod token_eval;
