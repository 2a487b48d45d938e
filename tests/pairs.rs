//! Pairs for the pairwise objectives: image–caption pairs (CLIP) and preference pairs (DPO).

use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::Dataset;
use burn::tensor::Device;
use vlalign::data::{Encoder, IGNORE, ImageProcessor, Template, TextTokenizer, VlmBatcher};

fn tokenizer() -> TextTokenizer {
    let corpus = [
        "A chat between a curious human and an artificial intelligence assistant.",
        "USER: What color is the circle? ASSISTANT: The circle is red.",
        "How many objects are there? There are two objects. It is at the top left.",
    ];
    TextTokenizer::train_bpe(corpus.iter().cycle().take(200), 400).unwrap()
}

#[test]
fn pair_batches_right_pad_captions_and_stack_images() {
    use vlalign::data::{PairBatcher, PairItem};
    let item = |id: &str, tokens: Vec<u32>, v: f32| PairItem {
        id: id.into(),
        tokens,
        pixels: vec![v; 3 * 2 * 2],
    };
    let batch = PairBatcher {
        pad_id: 0,
        image_size: 2,
    }
    .batch(
        vec![item("a", vec![4, 5, 6], 1.0), item("b", vec![7], 2.0)],
        &Device::flex(),
    );
    assert_eq!(batch.ids, ["a", "b"]);
    assert_eq!(batch.lengths, [3, 1]);
    let ids = batch
        .input_ids
        .into_data()
        .convert::<i64>()
        .try_into_vec::<i64>()
        .unwrap();
    assert_eq!(ids, [4, 5, 6, 7, 0, 0]);
    assert_eq!(batch.images.dims(), [2, 3, 2, 2]);
    let px = batch
        .images
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap();
    assert!(px[..12].iter().all(|&v| v == 1.0) && px[12..].iter().all(|&v| v == 2.0));
}

fn pair(id: &str, rejected: &str, reference: Option<(f64, f64)>) -> vlalign::data::PreferencePair {
    vlalign::data::PreferencePair {
        id: id.into(),
        image: "a.png".into(),
        question: "What color is the circle?".into(),
        chosen: "The circle is red.".into(),
        rejected: rejected.into(),
        augmentation: "noise500".into(),
        ref_logp_chosen: reference.map(|r| r.0),
        ref_logp_rejected: reference.map(|r| r.1),
        ref_logp_image_negative: None,
    }
}

#[test]
fn preference_pairs_round_trip_and_batch_chosen_rows_then_rejected_rows() {
    use vlalign::data::{PreferenceBatcher, PreferenceDataset, read_pairs, write_pairs};
    let dir = tempfile::tempdir().unwrap();
    image::RgbImage::new(8, 8)
        .save(dir.path().join("a.png"))
        .unwrap();
    let pairs = vec![
        pair("p0", "The circle is blue.", Some((-3.0, -7.5))),
        pair("p1", "It is at the top left.", Some((-4.0, -2.0))),
    ];
    let file = dir.path().join("pairs.jsonl");
    write_pairs(&file, &pairs).unwrap();
    assert_eq!(read_pairs(&file).unwrap(), pairs);
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.lines().all(|l| l.contains("\"ref_logp_chosen\"")));

    let tk = tokenizer();
    let encoder = Encoder::new(tk.clone(), Template::VicunaV1, 4, 256, None).unwrap();
    let processor = ImageProcessor::clip(8);
    let set =
        PreferenceDataset::new(pairs.clone(), &encoder, dir.path(), processor.clone()).unwrap();
    let items: Vec<_> = (0..2).map(|i| set.get(i).unwrap()).collect();
    let batcher = PreferenceBatcher(VlmBatcher::new(tk.token_id("<pad>").unwrap(), 8));
    let batch = batcher.batch(items.clone(), &Device::flex());
    assert_eq!(batch.ids, ["p0", "p1"]);
    assert_eq!(
        batch.sequences.ids,
        ["p0/chosen", "p1/chosen", "p0/rejected", "p1/rejected"]
    );
    // The chosen and rejected rows of a pair share the prompt and differ in the answer.
    let labels = batch
        .sequences
        .labels
        .clone()
        .into_data()
        .convert::<i64>()
        .try_into_vec::<i64>()
        .unwrap();
    let seq = labels.len() / 4;
    let answer = |row: usize| -> Vec<i64> {
        labels[row * seq..(row + 1) * seq]
            .iter()
            .copied()
            .filter(|&l| l != IGNORE)
            .collect()
    };
    // Both pairs chose "The circle is red.": the same supervised tokens.
    assert_eq!(answer(0), answer(1));
    assert_ne!(answer(0), answer(2));
    let ids = batch
        .sequences
        .input_ids
        .clone()
        .into_data()
        .convert::<i64>()
        .try_into_vec::<i64>()
        .unwrap();
    let prompt_len = items[0]
        .chosen
        .labels
        .iter()
        .position(|&l| l != IGNORE)
        .unwrap();
    assert_eq!(ids[..prompt_len], ids[2 * seq..2 * seq + prompt_len]);
    let reference = batch
        .reference
        .unwrap()
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap();
    assert_eq!(reference, [-3.0, -7.5, -4.0, -2.0]);

    // Without references on every pair there is no reference tensor.
    let set = PreferenceDataset::new(
        vec![pair("p2", "The circle is blue.", None), pairs[0].clone()],
        &encoder,
        dir.path(),
        processor.clone(),
    )
    .unwrap();
    let items: Vec<_> = (0..2).map(|i| set.get(i).unwrap()).collect();
    assert!(batcher.batch(items, &Device::flex()).reference.is_none());
}

#[test]
fn bad_preference_pairs_are_refused_naming_the_pair_and_the_field() {
    use vlalign::data::{PreferenceDataset, read_pairs};
    let dir = tempfile::tempdir().unwrap();
    image::RgbImage::new(8, 8)
        .save(dir.path().join("a.png"))
        .unwrap();
    let tk = tokenizer();
    let processor = ImageProcessor::clip(8);
    // A missing image.
    let mut gone = pair("p-gone", "The circle is blue.", None);
    gone.image = "b.png".into();
    let encoder = Encoder::new(tk.clone(), Template::VicunaV1, 4, 256, None).unwrap();
    let err =
        PreferenceDataset::new(vec![gone], &encoder, dir.path(), processor.clone()).unwrap_err();
    assert_eq!(
        (err.id.as_str(), err.field.as_str(), err.problem.reason()),
        ("p-gone", "image", "missing_image")
    );
    // An answer the length limit would cut: the pair would not compare whole answers.
    let long = pair("p-long", &"The circle is red. ".repeat(20), None);
    let fits = encoder.encode(&long.records()[0]).unwrap().ids.len();
    let short = Encoder::new(tk.clone(), Template::VicunaV1, 4, fits + 2, None).unwrap();
    let err = PreferenceDataset::new(vec![long], &short, dir.path(), processor).unwrap_err();
    assert_eq!(
        (err.id.as_str(), err.field.as_str(), err.problem.reason()),
        ("p-long", "rejected", "pair_truncated")
    );
    // A damaged line of a pairs file names the line.
    let file = dir.path().join("bad.jsonl");
    std::fs::write(&file, "{\"id\": \"x\"}\n").unwrap();
    let err = read_pairs(&file).unwrap_err().to_string();
    assert!(err.contains("line 1") && err.contains("pair"), "{err}");
}

/// Image-side negatives: every item gets its image under diffusion noise (reproducible per pair
/// and seed, different between pairs), and the batch stacks a third row per pair — the chosen
/// answer on the corrupted image — with its own image, the clean image shared by the first two.
#[test]
fn image_negatives_add_a_corrupted_image_and_a_third_row_per_pair() {
    use vlalign::data::{PreferenceBatcher, PreferenceDataset};
    let dir = tempfile::tempdir().unwrap();
    let mut img = image::RgbImage::new(8, 8);
    for (x, y, p) in img.enumerate_pixels_mut() {
        *p = image::Rgb([(x * 30) as u8, (y * 30) as u8, 128]);
    }
    img.save(dir.path().join("a.png")).unwrap();
    let mut pairs = vec![
        pair("p0", "The circle is blue.", Some((-3.0, -7.5))),
        pair("p1", "It is at the top left.", Some((-4.0, -2.0))),
    ];
    pairs[0].ref_logp_image_negative = Some(-9.0);
    pairs[1].ref_logp_image_negative = Some(-8.0);
    let tk = tokenizer();
    let encoder = Encoder::new(tk.clone(), Template::VicunaV1, 4, 256, None).unwrap();
    let set = PreferenceDataset::new(pairs, &encoder, dir.path(), ImageProcessor::clip(8))
        .unwrap()
        .with_image_negatives(800, 1);
    assert!(set.has_image_negatives());
    let items: Vec<_> = (0..2).map(|i| set.get(i).unwrap()).collect();
    let (a, b) = (&items[0], &items[1]);
    let na = a.negative_pixels.as_ref().unwrap();
    assert_ne!(na, &a.pixels);
    assert_ne!(
        na,
        b.negative_pixels.as_ref().unwrap(),
        "one noise sample per pair"
    );
    assert_eq!(set.get(0).unwrap().negative_pixels.as_ref(), Some(na));
    let batcher = PreferenceBatcher(VlmBatcher::new(tk.token_id("<pad>").unwrap(), 8));
    let batch = batcher.batch(items, &Device::flex());
    assert!(batch.image_negatives);
    assert_eq!(
        batch.sequences.ids,
        [
            "p0/chosen",
            "p1/chosen",
            "p0/rejected",
            "p1/rejected",
            "p0/image_negative",
            "p1/image_negative"
        ]
    );
    assert_eq!(
        batch.sequences.images.as_ref().unwrap().dims(),
        [4, 3, 8, 8]
    );
    assert_eq!(
        batch.sequences.image_index.as_deref(),
        Some(&[0, 1, 0, 1, 2, 3][..])
    );
    let reference = batch.reference_negative.unwrap().into_data();
    assert_eq!(
        reference.convert::<f32>().try_into_vec::<f32>().unwrap(),
        [-9.0, -8.0]
    );
}
