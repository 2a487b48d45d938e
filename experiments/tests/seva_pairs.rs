//! SeVa pair generation on a small world with a small model: every record is either a pair
//! (two different answers) or counted as dropped, and the pairs are reproducible.

use experiments::eval::slots::single_turn;
use experiments::seva_pairs::{Augmentation, make_pairs};
use vlalign_data::{ImageProcessor, read_records};
use vlalign_eval::generation::GenerationRun;
use vlalign_models::GenerationConfig;

mod common;

use common::setup;

#[test]
fn every_record_is_a_pair_or_counted_and_pairs_are_reproducible() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let s = setup(dir);
    let model = common::model(&s);
    let records: Vec<_> = read_records(&dir.join("val_qa.json"))
        .unwrap()
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let questions = single_turn(&records);
    let processor = ImageProcessor::clip(s.size.image_size);
    let images = dir.join("images");
    let config = GenerationConfig::new().with_max_new_tokens(6);
    let run = GenerationRun {
        encoder: &s.chat,
        processor: &processor,
        image_folder: &images,
        batch_size: 8,
        config: &config,
        show_progress: false,
    };
    let sets = make_pairs(
        &model,
        &questions,
        &run,
        &[Augmentation::Noise(800), Augmentation::Flip],
        1,
    );
    assert_eq!(sets.len(), 2);
    assert_eq!(sets[1].augmentation, Augmentation::Flip);
    let out = &sets[0];
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
    let again = make_pairs(&model, &questions, &run, &[Augmentation::Noise(800)], 1);
    assert_eq!(again[0].pairs, out.pairs);
}
