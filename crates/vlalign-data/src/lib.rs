//! Data for vlalign: LLaVA-format records, tokenizers and chat templates, image preprocessing,
//! batching, and the grounded synthetic world. Builds batches, never modules: this crate does
//! not depend on the models.

pub mod augment;
pub mod batch;
pub mod contrastive;
pub mod dataset;
pub mod error;
pub mod image;
pub mod preference;
pub mod record;
pub mod template;
pub mod tokenizer;
pub mod truth;
pub mod world;

pub use batch::{Padding, VlmBatch, VlmBatcher};
pub use contrastive::{Pair, PairBatch, PairBatcher, PairDataset, PairItem};
pub use dataset::{
    BadRecordPolicy, ImageCheck, Item, LoadReport, Sample, VlmDataset, load_dataset,
};
pub use error::{DatasetError, Problem, RecordError};
pub use image::{AspectMode, ImageProcessor};
pub use preference::{
    PreferenceBatch, PreferenceBatcher, PreferenceDataset, PreferenceItem, PreferencePair,
    read_pairs, write_pairs,
};
pub use record::{Record, Role, Turn, read_records};
pub use template::{Encoded, Encoder, IGNORE, Template};
pub use tokenizer::TextTokenizer;
pub use truth::{TokenTruth, WordKind};
