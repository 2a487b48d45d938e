//! The data pipeline: label masks per template, word truth through offsets, the world's round
//! trip through the loader, bad input, batching.

use std::path::Path;

use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::Dataset;
use burn::tensor::Device;
use vlalign::data::dataset::prepare;
use vlalign::data::record::{GroundedSpan, parse_records};
use vlalign::data::world::{WorldConfig, generate, tokenizer_corpus};
use vlalign::data::{
    BadRecordPolicy, Encoder, IGNORE, ImageCheck, ImageProcessor, Padding, Record, Role, Template,
    TextTokenizer, Turn, VlmBatcher, WordKind, load_dataset,
};

fn tokenizer() -> TextTokenizer {
    let corpus = [
        "A chat between a curious human and an artificial intelligence assistant.",
        "USER: What color is the circle? ASSISTANT: The circle is red.",
        "How many objects are there? There are two objects. It is at the top left.",
        "system You are a helpful assistant. user assistant",
    ];
    TextTokenizer::train_bpe(corpus.iter().cycle().take(200), 400).unwrap()
}

fn turn(role: Role, value: &str) -> Turn {
    Turn {
        role,
        value: value.into(),
    }
}

fn two_turn_record() -> Record {
    Record {
        id: "r".into(),
        images: vec!["a.png".into()],
        turns: vec![
            turn(Role::Human, "<image>\nWhat color is the circle?"),
            turn(Role::Gpt, "The circle is red."),
            turn(Role::Human, "How many objects are there?"),
            turn(Role::Gpt, "There are two objects."),
        ],
        truth: vec![
            GroundedSpan {
                turn: 1,
                start: 14,
                end: 17,
                kind: "color".into(),
                bbox: None,
                prior: false,
            },
            GroundedSpan {
                turn: 3,
                start: 10,
                end: 13,
                kind: "count".into(),
                bbox: None,
                prior: false,
            },
        ],
    }
}

fn enc(tk: &TextTokenizer, s: &str) -> Vec<u32> {
    tk.encode(s).unwrap().0
}

/// The supervised runs of a sequence, as id lists.
fn supervised_runs(labels: &[i64]) -> Vec<Vec<u32>> {
    let mut runs = Vec::new();
    let mut cur = Vec::new();
    for &l in labels {
        if l == IGNORE {
            if !cur.is_empty() {
                runs.push(std::mem::take(&mut cur));
            }
        } else {
            cur.push(l as u32);
        }
    }
    if !cur.is_empty() {
        runs.push(cur);
    }
    runs
}

#[test]
fn vicuna_v1_masks_all_but_answers_and_their_eos() {
    let tk = tokenizer();
    let id = |t: &str| tk.token_id(t).unwrap();
    let e = Encoder::new(tk.clone(), Template::VicunaV1, 3, 512, None).unwrap();
    let out = e.encode(&two_turn_record()).unwrap();
    let img = id("<image>");
    // Hand-written layout: <s> SYSTEM USER: [img×3] \nQ ASSISTANT: | A1 </s> | USER: Q2 ASSISTANT: | A2 </s>
    let mut expected = vec![id("<s>")];
    expected.extend(enc(
        &tk,
        &format!("{} USER: ", vlalign::data::template::VICUNA_SYSTEM),
    ));
    expected.extend([img; 3]);
    expected.extend(enc(&tk, "\nWhat color is the circle? ASSISTANT:"));
    let a1: Vec<u32> = enc(&tk, " The circle is red.")
        .into_iter()
        .chain([id("</s>")])
        .collect();
    expected.extend(&a1);
    expected.extend(enc(&tk, "USER: How many objects are there? ASSISTANT:"));
    let a2: Vec<u32> = enc(&tk, " There are two objects.")
        .into_iter()
        .chain([id("</s>")])
        .collect();
    expected.extend(&a2);
    assert_eq!(out.ids, expected);
    assert_eq!(supervised_runs(&out.labels), vec![a1, a2]);
    assert_eq!(
        out.image_spans,
        vec![(
            1 + enc(
                &tk,
                &format!("{} USER: ", vlalign::data::template::VICUNA_SYSTEM)
            )
            .len(),
            3
        )]
    );
}

#[test]
fn a_system_prompt_replaces_the_templates_default_in_the_first_turn_only() {
    let tk = tokenizer();
    let e = Encoder::new(tk.clone(), Template::VicunaV1, 3, 512, None)
        .unwrap()
        .with_system("A chat between a human and an assistant.");
    let out = e.encode(&two_turn_record()).unwrap();
    let mut expected = vec![tk.token_id("<s>").unwrap()];
    expected.extend(enc(&tk, "A chat between a human and an assistant. USER: "));
    assert_eq!(out.ids[..expected.len()], expected[..]);
    let default = Encoder::new(tk.clone(), Template::VicunaV1, 3, 512, None).unwrap();
    assert!(out.ids.len() < default.encode(&two_turn_record()).unwrap().ids.len());
    // Empty: no system text at all, the conversation opens with `USER:`.
    let bare = e.clone().with_system("");
    let mut expected = vec![tk.token_id("<s>").unwrap()];
    expected.extend(enc(&tk, "USER: "));
    assert_eq!(
        bare.encode(&two_turn_record()).unwrap().ids[..expected.len()],
        expected[..]
    );
    assert_eq!(bare.system(), "");
}

#[test]
fn chatml_and_plain_masks() {
    let tk = tokenizer();
    let id = |t: &str| tk.token_id(t).unwrap();
    let e = Encoder::new(tk.clone(), Template::Chatml, 2, 512, None).unwrap();
    let out = e.encode(&two_turn_record()).unwrap();
    let a1: Vec<u32> = enc(&tk, "The circle is red.")
        .into_iter()
        .chain([id("<|im_end|>")])
        .collect();
    let a2: Vec<u32> = enc(&tk, "There are two objects.")
        .into_iter()
        .chain([id("<|im_end|>")])
        .collect();
    assert_eq!(supervised_runs(&out.labels), vec![a1, a2]);
    assert_eq!(out.ids[0], id("<|im_start|>"), "no BOS in chatml");
    assert_eq!(out.ids.iter().filter(|&&t| t == id("<image>")).count(), 2);

    let caption = Record {
        id: "c".into(),
        images: vec!["a.png".into()],
        turns: vec![
            turn(Role::Human, "<image>"),
            turn(Role::Gpt, "The circle is red."),
        ],
        truth: vec![],
    };
    let e = Encoder::new(tk.clone(), Template::Plain, 4, 512, None).unwrap();
    let out = e.encode(&caption).unwrap();
    let newline = enc(&tk, "\n");
    let mut expected = vec![id("<s>")];
    expected.extend([id("<image>"); 4]);
    let answer: Vec<u32> = enc(&tk, "The circle is red.")
        .into_iter()
        .chain(newline)
        .collect();
    expected.extend(&answer);
    assert_eq!(out.ids, expected);
    assert_eq!(supervised_runs(&out.labels), vec![answer]);
}

#[test]
fn word_truth_reaches_tokens_through_offsets() {
    let tk = tokenizer();
    let e = Encoder::new(tk.clone(), Template::VicunaV1, 1, 512, None).unwrap();
    let out = e.encode(&two_turn_record()).unwrap();
    let mut grounded = Vec::new();
    for (t, truth) in out.truth.iter().enumerate() {
        if let Some(truth) = truth {
            assert_ne!(out.labels[t], IGNORE, "truth only on supervised tokens");
            if truth.grounded() {
                grounded.push((
                    truth.kind,
                    tk.decode(&[out.ids[t]]).unwrap().trim().to_string(),
                ));
            }
        } else {
            assert_eq!(out.labels[t], IGNORE);
        }
    }
    let words: Vec<String> = grounded.iter().map(|(_, w)| w.clone()).collect();
    assert_eq!(
        words.concat(),
        "redtwo",
        "grounded tokens spell the grounded words: {grounded:?}"
    );
    assert!(
        grounded
            .iter()
            .all(|(k, w)| (*k == WordKind::Color) == "red".contains(w.as_str()))
    );
}

#[test]
fn object_words_carry_their_objects_box() {
    let tk = tokenizer();
    let e = Encoder::new(tk.clone(), Template::VicunaV1, 1, 512, None).unwrap();
    let mut record = two_turn_record();
    let bbox = [0.1, 0.2, 0.5, 0.6];
    record.truth[0].bbox = Some(bbox);
    let out = e.encode(&record).unwrap();
    assert_eq!(out.boxes.len(), out.ids.len());
    let mut boxed = String::new();
    for (t, b) in out.boxes.iter().enumerate() {
        match b {
            Some(b) => {
                assert_eq!(*b, bbox);
                assert_eq!(out.truth[t].unwrap().kind, WordKind::Color);
                boxed.push_str(tk.decode(&[out.ids[t]]).unwrap().trim());
            }
            // The count word names no object: it has truth but no box.
            None => assert!(out.truth[t].is_none_or(|x| x.kind != WordKind::Color)),
        }
    }
    assert_eq!(boxed, "red", "the box sits on the color word's tokens only");
    // Truncation keeps the boxes aligned with the tokens.
    let cut = Encoder::new(tk, Template::VicunaV1, 1, out.ids.len() - 3, None).unwrap();
    let short = cut.encode(&record).unwrap();
    assert_eq!(short.boxes.len(), short.ids.len());
    assert_eq!(short.boxes[..], out.boxes[..short.ids.len()]);
}

#[test]
fn truncation_never_cuts_inside_image_slots() {
    let tk = tokenizer();
    let record = two_turn_record();
    let full = Encoder::new(tk.clone(), Template::VicunaV1, 8, 4096, None)
        .unwrap()
        .encode(&record)
        .unwrap();
    let (start, len) = full.image_spans[0];
    // A cut inside the image drops the whole image: nothing is left to learn from → error.
    let e = Encoder::new(tk.clone(), Template::VicunaV1, 8, start + len / 2, None).unwrap();
    assert_eq!(e.encode(&record).unwrap_err().reason(), "too_long");
    // A cut inside the second answer keeps the first answer, reports truncation.
    let e = Encoder::new(tk.clone(), Template::VicunaV1, 8, full.ids.len() - 2, None).unwrap();
    let cut = e.encode(&record).unwrap();
    assert!(cut.truncated && cut.ids.len() == full.ids.len() - 2 && cut.image_spans.len() == 1);
    // A cut before any answer token: the record is reported, not trained on silently.
    let first_answer = full.labels.iter().position(|&l| l != IGNORE).unwrap();
    let e = Encoder::new(tk, Template::VicunaV1, 8, first_answer, None).unwrap();
    assert_eq!(e.encode(&record).unwrap_err().reason(), "answer_truncated");
}

fn small_world(dir: &Path, seed: u64) {
    let mut config = WorldConfig::new(30, seed);
    config.image_size = 64;
    generate(&config, dir, &|_| {}).unwrap();
    let corpus = tokenizer_corpus(dir).unwrap();
    TextTokenizer::train_bpe(corpus.iter(), 300)
        .unwrap()
        .save(&dir.join("tokenizer.json"))
        .unwrap();
}

#[test]
fn world_round_trips_through_the_loader_deterministically() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    small_world(a.path(), 3);
    small_world(b.path(), 3);
    for f in [
        "train_qa.json",
        "scenes.json",
        "images/000007.png",
        "pope_adversarial_test.jsonl",
    ] {
        assert_eq!(
            std::fs::read(a.path().join(f)).unwrap(),
            std::fs::read(b.path().join(f)).unwrap(),
            "{f} differs between two runs with the same seed"
        );
    }
    let tk = TextTokenizer::from_file(&a.path().join("tokenizer.json")).unwrap();
    let images = a.path().join("images");
    let mut grounded = 0;
    for (file, template) in [
        ("train_captions.json", Template::Plain),
        ("train_qa.json", Template::VicunaV1),
        ("train_groups.json", Template::VicunaV1),
        ("test_qa.json", Template::Chatml),
    ] {
        let e = Encoder::new(tk.clone(), template, 16, 1024, None).unwrap();
        let (ds, report) = load_dataset(
            &a.path().join(file),
            &e,
            ImageProcessor::clip(32),
            &images,
            ImageCheck::Decode,
        )
        .unwrap();
        assert!(report.errors.is_empty(), "{file}: {}", report.summary());
        assert!(
            report.loaded > 0 && report.loaded == report.records && report.supervised_tokens > 0
        );
        let item = ds.get(0).unwrap();
        assert_eq!(item.pixels.len(), item.encoded.image_spans.len());
        assert_eq!(item.pixels[0].len(), 3 * 32 * 32);
        grounded += ds
            .samples()
            .iter()
            .flat_map(|s| s.encoded.truth.iter().flatten())
            .filter(|t| t.grounded())
            .count();
    }
    assert!(grounded > 0);
}

#[test]
fn world_images_show_what_the_captions_say() {
    let dir = tempfile::tempdir().unwrap();
    small_world(dir.path(), 5);
    let scenes: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("scenes.json")).unwrap()).unwrap();
    let mut checked = 0;
    for (name, objects) in scenes.as_object().unwrap() {
        let img = image::open(dir.path().join("images").join(name))
            .unwrap()
            .to_rgb8();
        for o in objects.as_array().unwrap() {
            let (cx, cy) = (o["cx"].as_f64().unwrap(), o["cy"].as_f64().unwrap());
            let px = img.get_pixel((cx * 64.0) as u32, (cy * 64.0) as u32);
            let color = o["color"].as_str().unwrap();
            let rgb = vlalign::data::world::scene::Color::ALL
                .into_iter()
                .find(|c| c.name() == color)
                .unwrap()
                .rgb();
            assert_eq!(
                px.0, rgb,
                "{name}: the center of the {color} object has its color"
            );
            checked += 1;
        }
    }
    assert!(checked > 30);
}

#[test]
fn bad_records_are_counted_by_reason_and_fail_under_fail() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path();
    image::RgbImage::new(8, 8)
        .save(folder.join("ok.png"))
        .unwrap();
    std::fs::write(folder.join("corrupt.png"), b"not a png").unwrap();
    let mut text = String::from("[");
    let rec = |id: &str, image: &str, from: &str, value: &str| {
        format!(
            r#"{{"id": "{id}", {image} "conversations": [{{"from": "human", "value": "{value}"}}, {{"from": "{from}", "value": "Fine."}}]}},"#
        )
    };
    text += &rec("good", r#""image": "ok.png","#, "gpt", "<image> hi");
    text += &rec("corrupt", r#""image": "corrupt.png","#, "gpt", "<image> hi");
    text += &rec("missing", r#""image": "nope.png","#, "gpt", "<image> hi");
    text += &rec("role", "", "robot", "hi");
    text += &rec("count", r#""image": "ok.png","#, "gpt", "no placeholder");
    text += r#"{"id": "empty", "conversations": []},"#;
    text += &rec(
        "long",
        r#""image": ["ok.png", "ok.png", "ok.png"],"#,
        "gpt",
        "<image><image><image> hi",
    );
    let mut bytes = text.into_bytes();
    bytes.extend_from_slice(br#"{"id": "bytes", "conversations": [{"from": "gpt", "value": "caf"#);
    bytes.push(0xFF);
    bytes.extend_from_slice(br#""}]}]"#);
    let parsed = parse_records(&bytes, Path::new("bad.json")).unwrap();
    let e = Encoder::new(tokenizer(), Template::Plain, 40, 100, None).unwrap();
    let (samples, report) = prepare(parsed, &e, folder, ImageCheck::Decode);
    assert_eq!(samples.len(), 1, "{}", report.summary());
    assert_eq!((report.records, report.loaded), (8, 1));
    let reasons = report.by_reason();
    for (reason, id) in [
        ("corrupt_image", "corrupt"),
        ("missing_image", "missing"),
        ("unknown_role", "role"),
        ("image_count_mismatch", "count"),
        ("empty_conversation", "empty"),
        ("answer_truncated", "long"),
        ("non_utf8", "bytes"),
    ] {
        assert_eq!(
            reasons.get(reason).map(|r| r.1.clone()),
            Some(vec![id.to_string()]),
            "{reason}"
        );
    }
    assert!(report.enforce(BadRecordPolicy::Skip).is_ok());
    let err = report
        .enforce(BadRecordPolicy::Fail)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("record corrupt") && err.contains("image[0]"),
        "{err}"
    );
}

#[test]
fn batches_pad_right_for_training_and_left_for_generation() {
    let tk = tokenizer();
    let dir = tempfile::tempdir().unwrap();
    image::RgbImage::new(8, 8)
        .save(dir.path().join("a.png"))
        .unwrap();
    let e = Encoder::new(tk.clone(), Template::VicunaV1, 2, 512, None).unwrap();
    let mut boxed = two_turn_record();
    boxed.truth[0].bbox = Some([0.1, 0.2, 0.3, 0.4]);
    let mut short = boxed.clone();
    short.turns.truncate(2);
    let text_only = Record {
        id: "t".into(),
        images: vec![],
        turns: vec![
            turn(Role::Human, "Hi"),
            turn(Role::Gpt, "There are two objects."),
        ],
        truth: vec![],
    };
    let (samples, report) = prepare(
        vec![Ok(boxed), Ok(text_only), Ok(short)],
        &e,
        dir.path(),
        ImageCheck::Decode,
    );
    assert!(report.errors.is_empty());
    let ds = vlalign::data::VlmDataset::new(samples, ImageProcessor::clip(4));
    let items: Vec<_> = (0..3).map(|i| ds.get(i).unwrap()).collect();
    let device = Device::flex();
    let pad = tk.token_id("<pad>").unwrap();
    for padding in [Padding::Right, Padding::Left] {
        let mut batcher = VlmBatcher::new(pad, 4);
        batcher.padding = padding;
        let b = batcher.batch(items.clone(), &device);
        let width = b.lengths.iter().copied().max().unwrap();
        assert_eq!(b.input_ids.dims(), [3, width]);
        assert_eq!(b.images.as_ref().unwrap().dims(), [2, 3, 4, 4]);
        assert_eq!(b.image_sample, vec![0, 2]);
        let boxed_tokens = |row: usize| b.boxes[row].iter().flatten().count();
        assert!(boxed_tokens(0) > 0 && boxed_tokens(0) == boxed_tokens(2));
        assert_eq!(boxed_tokens(1), 0);
        let mask: Vec<bool> = b.attention_mask.to_data().try_into_vec().unwrap();
        let labels: Vec<i64> = b.labels.to_data().convert::<i64>().try_into_vec().unwrap();
        for row in 0..3 {
            let len = b.lengths[row];
            let real: Vec<bool> = (0..width)
                .map(|t| match padding {
                    Padding::Right => t < len,
                    Padding::Left => t >= width - len,
                })
                .collect();
            assert_eq!(&mask[row * width..(row + 1) * width], real.as_slice());
            for t in 0..width {
                if !real[t] {
                    assert_eq!(labels[row * width + t], IGNORE);
                    assert!(b.truth[row][t].is_none());
                    assert!(b.boxes[row][t].is_none());
                }
                // A box sits on a token that names an object, wherever padding moved it.
                if b.boxes[row][t].is_some() {
                    assert_eq!(b.truth[row][t].unwrap().kind, WordKind::Color);
                }
            }
        }
    }
}

#[test]
fn prompts_end_where_the_answer_starts() {
    let tk = tokenizer();
    for template in [Template::Plain, Template::VicunaV1, Template::Chatml] {
        let e = Encoder::new(tk.clone(), template, 3, 512, None).unwrap();
        let record = two_turn_record();
        let full = e.encode(&record).unwrap();
        let (prompt, images, reference) = e.encode_prompt(&record).unwrap();
        let first_answer = full.labels.iter().position(|&l| l != IGNORE).unwrap();
        assert_eq!(prompt, full.ids[..first_answer].to_vec(), "{template}");
        assert_eq!((images, reference.as_str()), (1, "The circle is red."));
    }
}

#[test]
fn generation_driver_writes_one_prediction_per_record() {
    use vlalign::eval::generation::{GenerationRun, generate_split, write_predictions};
    use vlalign::models::{GenerationConfig, LlavaConfig};
    let dir = tempfile::tempdir().unwrap();
    small_world(dir.path(), 9);
    let tk = TextTokenizer::from_file(&dir.path().join("tokenizer.json")).unwrap();
    let image_id = tk.token_id("<image>").unwrap() as usize;
    let config = LlavaConfig::tiny(tk.vocab_size(), image_id);
    let device = Device::flex();
    let model = config.init(&device);
    let e = Encoder::new(tk, Template::VicunaV1, config.image_tokens(), 512, None).unwrap();
    let mut records: Vec<Record> = vlalign::data::read_records(&dir.path().join("test_qa.json"))
        .unwrap()
        .into_iter()
        .map(Result::unwrap)
        .collect();
    records[1].images = vec!["missing.png".into()];
    let processor = ImageProcessor::clip(config.vision.image_size);
    let gen_config = GenerationConfig::new()
        .with_max_new_tokens(5)
        .with_stop_tokens(vec![e.end_of_turn()]);
    let folder = dir.path().join("images");
    let run = GenerationRun {
        encoder: &e,
        processor: &processor,
        image_folder: &folder,
        batch_size: 2,
        config: &gen_config,
        show_progress: false,
    };
    let (preds, errors) = generate_split(&model, &records, &run);
    assert_eq!(preds.len() + errors.len(), records.len());
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].id, records[1].id);
    assert_eq!(preds[0].id, records[0].id);
    assert_eq!(preds[0].reference, records[0].turns[1].value);
    let path = dir.path().join("preds.jsonl");
    write_predictions(&path, &preds).unwrap();
    let lines = std::fs::read_to_string(&path).unwrap();
    assert_eq!(lines.lines().count(), preds.len());
    let first: serde_json::Value = serde_json::from_str(lines.lines().next().unwrap()).unwrap();
    for key in ["id", "prompt", "output", "reference"] {
        assert!(first.get(key).is_some(), "{key}");
    }
}
