//! SeVa pair generation on a small world with a small model: every record is either a pair
//! (two different answers) or counted as dropped, and the pairs are reproducible.

use burn::tensor::Device;
use experiments::eval::slots::single_turn;
use experiments::setup::{Encoders, ModelSize};
use experiments::seva_pairs::{Augmentation, make_pairs};
use vlalign_data::world::{WorldConfig, generate, tokenizer_corpus};
use vlalign_data::{ImageProcessor, Template, TextTokenizer, read_records};
use vlalign_eval::generation::GenerationRun;
use vlalign_models::GenerationConfig;

#[test]
fn every_record_is_a_pair_or_counted_and_pairs_are_reproducible() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    generate(&WorldConfig::new(40, 5), dir, &|_| {}).unwrap();
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
    let device = Device::flex();
    device.seed(3);
    let model = size
        .llava(tk.vocab_size(), enc.chat.image_token_id() as usize)
        .init(&device);
    let records: Vec<_> = read_records(&dir.join("val_qa.json"))
        .unwrap()
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let questions = single_turn(&records);
    let processor = ImageProcessor::clip(size.image_size);
    let images = dir.join("images");
    let config = GenerationConfig::new().with_max_new_tokens(6);
    let run = GenerationRun {
        encoder: &enc.chat,
        processor: &processor,
        image_folder: &images,
        batch_size: 8,
        config: &config,
        show_progress: false,
    };
    let out = make_pairs(&model, &questions, &run, Augmentation::Noise(800), 1);
    assert_eq!(
        out.pairs.len() + out.dropped_identical + out.failed,
        questions.len()
    );
    assert!(!out.pairs.is_empty(), "noise at step 800 changed no answer");
    for p in &out.pairs {
        assert_ne!(p.chosen, p.rejected);
        assert_eq!(p.augmentation, "noise800");
        assert!(p.id.ends_with("-noise800") && !p.question.contains("<image>"));
    }
    let again = make_pairs(&model, &questions, &run, Augmentation::Noise(800), 1);
    assert_eq!(again.pairs, out.pairs);
}
