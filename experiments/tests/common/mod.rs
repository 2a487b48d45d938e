//! Helpers shared by the trainer tests: a small world, a small model, a stage configuration.
#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;

use burn::data::dataset::Dataset;
use burn::tensor::Device;
use experiments::setup::{Encoders, ModelSize, load};
use vlalign_data::world::{WorldConfig, generate, tokenizer_corpus};
use vlalign_data::{ImageProcessor, Item, Template, TextTokenizer, VlmBatcher};
use vlalign_models::Llava;
use vlalign_train::TrainConfig;

pub struct Setup {
    pub train: Arc<dyn Dataset<Item>>,
    pub valid: Arc<dyn Dataset<Item>>,
    pub batcher: VlmBatcher,
    pub size: ModelSize,
    pub vocab: usize,
    pub image_id: usize,
    pub chat: vlalign_data::Encoder,
    pub pad: u32,
}

pub fn setup(dir: &Path) -> Setup {
    generate(&WorldConfig::new(60, 3), dir, &|_| {}).unwrap();
    let tk = TextTokenizer::train_bpe(tokenizer_corpus(dir).unwrap().iter(), 300).unwrap();
    let size = ModelSize {
        image_size: 16,
        vision_layers: 2,
        width: 32,
        vision_width: 32,
        ..ModelSize::default()
    };
    let image_tokens = (size.image_size / size.patch_size).pow(2);
    let enc = Encoders::new(&tk, Template::VicunaV1, image_tokens, 256).unwrap();
    let processor = ImageProcessor::clip(size.image_size);
    let images = dir.join("images");
    let (train, _) = load(&dir.join("train_qa.json"), &enc.chat, &processor, &images).unwrap();
    let (valid, _) = load(&dir.join("val_qa.json"), &enc.chat, &processor, &images).unwrap();
    Setup {
        train: Arc::new(train),
        valid: Arc::new(valid),
        batcher: VlmBatcher::new(tk.token_id("<pad>").unwrap(), size.image_size),
        vocab: tk.vocab_size(),
        image_id: enc.chat.image_token_id() as usize,
        pad: tk.token_id("<pad>").unwrap(),
        chat: enc.chat.clone(),
        size,
    }
}

pub fn config(steps: usize) -> TrainConfig {
    let mut c = TrainConfig {
        steps,
        batch_size: 4,
        accumulation: 2,
        checkpoint_every: 4,
        keep_checkpoints: 2,
        seed: 11,
        ..TrainConfig::default()
    };
    c.optim.warmup_steps = 2;
    c.optim.lr = 3e-3;
    c
}

/// Tests run in parallel threads and share the backend's RNG, and parameters initialise
/// lazily: seed, build and materialise (`into_record` reads every parameter) under one lock so
/// every run starts from the same weights.
pub fn model(s: &Setup) -> Llava {
    use burn::module::Module;
    static INIT: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = INIT.lock().unwrap_or_else(|e| e.into_inner());
    let device = Device::flex();
    device.seed(5);
    let model = s.size.llava(s.vocab, s.image_id).init(&device.autodiff());
    let _ = model.clone().into_record();
    model
}

pub fn csv_losses(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("metrics.csv"))
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split(',').take(2).collect::<Vec<_>>().join(","))
        .collect()
}

/// The first value of a float tensor, on the host.
pub fn scalar<const D: usize>(t: burn::tensor::Tensor<D>) -> f64 {
    t.into_data()
        .convert::<f64>()
        .try_into_vec::<f64>()
        .unwrap()[0]
}
