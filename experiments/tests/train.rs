//! The trainer on the synthetic world: the loss falls, a run stopped mid-way resumes to the same
//! losses as an uninterrupted one, a damaged checkpoint is skipped with a clear note, a
//! non-finite loss stops the run naming the step, the batch and the last good checkpoint.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use burn::data::dataset::Dataset;
use burn::tensor::Device;
use experiments::setup::{Encoders, ModelSize, load};
use vlalign_align::{AlignModel, MleObjective, Objective, ObjectiveOutput};
use vlalign_data::world::{WorldConfig, generate, tokenizer_corpus};
use vlalign_data::{ImageProcessor, Item, Template, TextTokenizer, VlmBatch, VlmBatcher};
use vlalign_models::Llava;
use vlalign_train::{Stage, TrainConfig, TrainError, Trainee, fit, quiet_renderer};

struct Setup {
    train: Arc<dyn Dataset<Item>>,
    valid: Arc<dyn Dataset<Item>>,
    batcher: VlmBatcher,
    size: ModelSize,
    vocab: usize,
    image_id: usize,
    chat: vlalign_data::Encoder,
    pad: u32,
}

fn setup(dir: &Path) -> Setup {
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

fn config(steps: usize) -> TrainConfig {
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
fn model(s: &Setup) -> Llava {
    use burn::module::Module;
    static INIT: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = INIT.lock().unwrap_or_else(|e| e.into_inner());
    let device = Device::flex();
    device.seed(5);
    let model = s.size.llava(s.vocab, s.image_id).init(&device.autodiff());
    let _ = model.clone().into_record();
    model
}

fn run(
    s: &Setup,
    dir: &Path,
    objective: Arc<dyn Objective<Llava>>,
    resume: bool,
    stop_after: Option<usize>,
    steps: usize,
) -> Result<vlalign_train::TrainReport, TrainError> {
    let trainee = Trainee::new(model(s), objective);
    fit(
        trainee,
        s.train.clone(),
        s.valid.clone(),
        s.batcher.clone(),
        &Device::flex(),
        &config(steps),
        Stage {
            dir,
            label: "test",
            resume,
            stop_after,
            show: &[],
            renderer: Some(quiet_renderer()),
        },
    )
    .map(|(_, report)| report)
}

fn csv_losses(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("metrics.csv"))
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split(',').take(2).collect::<Vec<_>>().join(","))
        .collect()
}

#[test]
fn trains_resumes_exactly_and_detects_damage() {
    let tmp = tempfile::tempdir().unwrap();
    let s = setup(&tmp.path().join("world"));

    // Uninterrupted.
    let full = tmp.path().join("full");
    let report = run(&s, &full, Arc::new(MleObjective), false, None, 12).unwrap();
    assert_eq!(report.steps.len(), 12);
    let first = report.steps[0].loss;
    let last = report.steps[11].loss;
    assert!(last < first, "loss should fall: {first} -> {last}");
    assert!(report.valid_loss.is_some_and(f64::is_finite));
    // Warmup then cosine: the learning rate rises for 2 steps and then falls.
    let lrs: Vec<f64> = report.steps.iter().map(|r| r.lr).collect();
    assert!(lrs[0] < lrs[1] && lrs[2] > lrs[11], "{lrs:?}");

    // Stopped after step 6 (the last checkpoint is step 4), then resumed.
    let cut = tmp.path().join("cut");
    run(&s, &cut, Arc::new(MleObjective), false, Some(6), 12).unwrap();
    let again = run(&s, &cut, Arc::new(MleObjective), false, None, 12);
    assert!(matches!(again, Err(TrainError::Exists(_))), "{again:?}");
    let resumed = run(&s, &cut, Arc::new(MleObjective), true, None, 12).unwrap();
    assert_eq!(resumed.resumed_from, Some(4));
    assert_eq!(
        resumed.steps.len(),
        12,
        "the report holds the steps before the resume too"
    );
    assert_eq!(csv_losses(&full), csv_losses(&cut), "resumed losses differ");

    // Damage the newest checkpoint: resume falls back to the previous one and says why.
    let ck = full.join("checkpoints");
    let model12 = ck.join("model-12.bpk");
    let len = std::fs::metadata(&model12).unwrap().len();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&model12)
        .unwrap();
    f.set_len(len / 2).unwrap();
    let (found, problems) = vlalign_train::latest_valid(&ck).unwrap();
    assert_eq!(found.map(|m| m.step), Some(8));
    assert!(
        problems[0].contains("step 12") && problems[0].contains("truncated"),
        "{problems:?}"
    );
    // With every checkpoint damaged, resume is a clear error.
    let model8 = ck.join("model-8.bpk");
    std::fs::write(&model8, b"oops").unwrap();
    let err = run(&s, &full, Arc::new(MleObjective), true, None, 16).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("no intact checkpoint") && msg.contains("model-8.bpk"),
        "{msg}"
    );
}

/// MLE whose loss becomes NaN from the `after`-th call on.
struct NanAfter {
    after: usize,
    calls: AtomicUsize,
}

impl<M: AlignModel> Objective<M> for NanAfter {
    fn loss(&self, model: &M, batch: &VlmBatch) -> ObjectiveOutput {
        let mut out = MleObjective.loss(model, batch);
        if self.calls.fetch_add(1, Ordering::SeqCst) >= self.after {
            out.loss = out.loss * f32::NAN;
        }
        out
    }

    fn name(&self) -> &'static str {
        "nan"
    }
}

#[test]
fn non_finite_loss_stops_with_step_batch_and_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let s = setup(&tmp.path().join("world"));
    // 2 batches per step: the 11th call is in step 6, after the checkpoint at step 4.
    let objective = Arc::new(NanAfter {
        after: 10,
        calls: AtomicUsize::new(0),
    });
    let err = run(&s, &tmp.path().join("run"), objective, false, None, 12).unwrap_err();
    match &err {
        TrainError::NonFinite {
            step,
            ids,
            last_checkpoint,
            ..
        } => {
            assert_eq!(*step, 6);
            assert_eq!(ids.len(), 4);
            assert_eq!(*last_checkpoint, Some(4));
        }
        other => panic!("expected NonFinite, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(msg.contains("step 6") && msg.contains("step 4 in"), "{msg}");
}

/// The same trainer trains another model family on another batch type: a CLIP pair of towers
/// on image–caption pairs, with its own diagnostics, checkpoints and an exact resume.
#[test]
fn a_clip_pair_trains_and_resumes_exactly_through_the_same_trainer() {
    use burn::module::Module;
    use experiments::clip_pretrain::ClipPretrainConfig;
    use vlalign_data::{PairBatcher, PairDataset, read_records};
    use vlalign_train::ClipTrainee;

    let tmp = tempfile::tempdir().unwrap();
    let world = tmp.path().join("world");
    generate(&WorldConfig::new(60, 3), &world, &|_| {}).unwrap();
    let tk = TextTokenizer::train_bpe(tokenizer_corpus(&world).unwrap().iter(), 300).unwrap();
    let mut cfg = ClipPretrainConfig::default();
    cfg.model.image_size = 16;
    cfg.model.vision_width = 32;
    cfg.model.vision_layers = 2;
    cfg.text.width = 32;
    let pairs = |split: &str| {
        let records = read_records(&world.join(format!("{split}_captions.json"))).unwrap();
        let (set, bad) = PairDataset::from_records(
            records.into_iter().map(Result::unwrap),
            &world.join("images"),
            &tk,
            64,
            ImageProcessor::clip(16),
        )
        .unwrap();
        assert!(bad.is_empty(), "{bad:?}");
        Arc::new(set)
    };
    let (train, valid) = (pairs("train"), pairs("val"));
    let batcher = PairBatcher {
        pad_id: tk.token_id("<pad>").unwrap(),
        image_size: 16,
    };
    let run = |dir: &Path, resume: bool, stop_after: Option<usize>| {
        static INIT: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let model = {
            let _guard = INIT.lock().unwrap_or_else(|e| e.into_inner());
            let device = Device::flex();
            device.seed(5);
            let m = cfg.clip(tk.vocab_size()).init(&device.autodiff());
            let _ = m.clone().into_record();
            m
        };
        fit(
            ClipTrainee::new(model),
            train.clone(),
            valid.clone(),
            batcher.clone(),
            &Device::flex(),
            &config(8),
            Stage {
                dir,
                label: "clip",
                resume,
                stop_after,
                show: &[],
                renderer: Some(quiet_renderer()),
            },
        )
        .map(|(_, report)| report)
    };
    let full = tmp.path().join("full");
    let report = run(&full, false, None).unwrap();
    assert_eq!(report.steps.len(), 8);
    let (first, last) = (report.steps[0].loss, report.steps[7].loss);
    assert!(last < first, "InfoNCE should fall: {first} -> {last}");
    // A batch of 4 pairs: chance InfoNCE is ln 4 at the start.
    assert!((first - 4f64.ln()).abs() < 0.3, "{first}");
    for key in ["i2t_accuracy", "t2i_accuracy", "logit_scale"] {
        assert!(
            report.steps[0].diagnostics.iter().any(|(k, _)| k == key),
            "{key} not logged: {:?}",
            report.steps[0].diagnostics
        );
    }
    assert!(report.valid_loss.is_some_and(f64::is_finite));

    let cut = tmp.path().join("cut");
    run(&cut, false, Some(6)).unwrap();
    let resumed = run(&cut, true, None).unwrap();
    assert_eq!(resumed.resumed_from, Some(4));
    assert_eq!(csv_losses(&full), csv_losses(&cut), "resumed losses differ");
}

/// Preference training through the same trainer: pairs from the world's QA records (chosen =
/// the record's answer, rejected = another record's with a constant tail, a preference the
/// model can learn within a few steps), the reference's log-probs precomputed
/// with the starting weights, DPO from those weights. At step 1 policy = reference, so the
/// loss is exactly ln 2; it falls, and a stopped run resumes to the same losses.
#[test]
fn dpo_trains_from_a_precomputed_or_a_live_reference_alike_and_resumes_exactly() {
    use burn::data::dataloader::batcher::Batcher;
    use burn::module::Module;
    use vlalign_align::DpoConfig;
    use vlalign_train::DpoTrainee;

    let tmp = tempfile::tempdir().unwrap();
    let world = tmp.path().join("world");
    let s = setup(&world);
    let Prefs {
        train,
        valid,
        batcher,
        reference,
    } = preference_setup(&s, &world);
    let mut cfg = config(8);
    cfg.accumulation = 1;
    let dpo = DpoConfig {
        beta: 0.5,
        ..DpoConfig::default()
    };
    let run = |dir: &Path, resume: bool, stop_after: Option<usize>| {
        let trainee = DpoTrainee::new(model(&s), dpo.clone());
        fit(
            trainee,
            train.clone(),
            valid.clone(),
            batcher.clone(),
            &Device::flex(),
            &cfg,
            Stage {
                dir,
                label: "dpo",
                resume,
                stop_after,
                show: &[],
                renderer: Some(quiet_renderer()),
            },
        )
    };
    let full = tmp.path().join("full");
    let (trained, report) = run(&full, false, None).unwrap();
    let first = report.steps[0].loss;
    assert!(
        (first - 2f64.ln()).abs() < 1e-4,
        "step 1: {first} (policy = reference: ln 2)"
    );
    // On the pairs it trained on, the trained policy prefers the chosen answers.
    let items: Vec<_> = (0..train.len()).map(|i| train.get(i).unwrap()).collect();
    let all = batcher.batch(items, &Device::flex());
    let out = vlalign_align::dpo_loss(&dpo, &trained.model.valid(), &all);
    let loss = out
        .loss
        .into_data()
        .convert::<f64>()
        .try_into_vec::<f64>()
        .unwrap()[0];
    let get = |k: &str| out.diagnostics.iter().find(|(n, _)| *n == k).unwrap().1;
    assert!(
        loss < 2f64.ln() - 0.01,
        "DPO loss on the training pairs: {loss}"
    );
    assert!(
        get("reward_accuracy") > 0.5 && get("reward_margin") > 0.0,
        "{:?}",
        out.diagnostics
    );
    // The precomputed reference and a live one (the frozen starting weights, no autodiff) give
    // the same loss on the same batch, and the same training run.
    let live = vlalign_align::dpo_loss_with(&dpo, &trained.model, Some(&reference), &all);
    let precomputed = vlalign_align::dpo_loss(&dpo, &trained.model, &all);
    let value = |t: burn::tensor::Tensor<1>| {
        t.into_data()
            .convert::<f64>()
            .try_into_vec::<f64>()
            .unwrap()[0]
    };
    let (live, precomputed) = (value(live.loss), value(precomputed.loss));
    assert!((live - precomputed).abs() < 1e-4, "{live} vs {precomputed}");
    let live_run = tmp.path().join("live");
    let trainee = DpoTrainee::with_live_reference(model(&s), model(&s).valid(), dpo.clone());
    let stage = Stage {
        dir: &live_run,
        label: "dpo-live",
        resume: false,
        stop_after: None,
        show: &[],
        renderer: Some(quiet_renderer()),
    };
    let (_, live_report) = fit(
        trainee,
        train.clone(),
        valid.clone(),
        batcher.clone(),
        &Device::flex(),
        &cfg,
        stage,
    )
    .unwrap();
    for (a, b) in report.steps.iter().zip(&live_report.steps) {
        assert!(
            (a.loss - b.loss).abs() < 1e-4,
            "step {}: {} vs {}",
            a.step,
            a.loss,
            b.loss
        );
    }
    let cut = tmp.path().join("cut");
    run(&cut, false, Some(6)).unwrap();
    let (_, resumed) = run(&cut, true, None).unwrap();
    assert_eq!(resumed.resumed_from, Some(4));
    assert_eq!(csv_losses(&full), csv_losses(&cut), "resumed losses differ");
}

/// Preference pairs for DPO tests and what trains on them.
struct Prefs {
    train: Arc<dyn Dataset<vlalign_data::PreferenceItem>>,
    valid: Arc<dyn Dataset<vlalign_data::PreferenceItem>>,
    batcher: vlalign_data::PreferenceBatcher,
    /// The starting weights, without autodiff (the reference).
    reference: Llava,
}

/// Pairs from the world's QA records (chosen = the record's answer, rejected = another
/// record's with a constant tail, a preference the model can learn within a few steps), the
/// reference's log-probs precomputed with the starting weights; the last 4 pairs held out.
fn preference_setup(s: &Setup, world: &Path) -> Prefs {
    use burn::data::dataloader::batcher::Batcher;
    use burn::module::Module;
    use vlalign_align::pair_logps;
    use vlalign_data::{PreferenceBatcher, PreferenceDataset, PreferencePair, Role, read_records};
    let records: Vec<_> = read_records(&world.join("train_qa.json"))
        .unwrap()
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let first_answer = |r: &vlalign_data::Record| {
        r.turns
            .iter()
            .find(|t| t.role == Role::Gpt)
            .unwrap()
            .value
            .clone()
    };
    let mut pairs: Vec<PreferencePair> = records
        .iter()
        .enumerate()
        .map(|(i, r)| PreferencePair {
            id: r.id.clone(),
            image: r.images[0].clone(),
            question: r.turns[0].value.replace("<image>\n", ""),
            chosen: first_answer(r),
            rejected: format!(
                "{} {}",
                first_answer(&records[(i + 1) % records.len()]),
                "It is blue."
            ),
            augmentation: "other_record".into(),
            ref_logp_chosen: None,
            ref_logp_rejected: None,
        })
        .filter(|p| p.chosen != p.rejected)
        .collect();
    let images = world.join("images");
    let processor = ImageProcessor::clip(s.size.image_size);
    let batcher = PreferenceBatcher(VlmBatcher::new(s.pad, s.size.image_size));
    // The reference pass: the starting weights, no gradient.
    let reference = model(s).valid();
    let scoring =
        PreferenceDataset::new(pairs.clone(), &s.chat, &images, processor.clone()).unwrap();
    for (i, pair) in pairs.iter_mut().enumerate() {
        let batch = batcher.batch(vec![scoring.get(i).unwrap()], &Device::flex());
        let lp = pair_logps(&reference, &batch, true);
        let host = |t: burn::tensor::Tensor<1>| {
            t.into_data()
                .convert::<f64>()
                .try_into_vec::<f64>()
                .unwrap()[0]
        };
        pair.ref_logp_chosen = Some(host(lp.chosen.sum));
        pair.ref_logp_rejected = Some(host(lp.rejected.sum));
    }
    let (train_pairs, valid_pairs) = pairs.split_at(pairs.len() - 4);
    let data = |p: &[PreferencePair]| -> Arc<dyn Dataset<vlalign_data::PreferenceItem>> {
        Arc::new(PreferenceDataset::new(p.to_vec(), &s.chat, &images, processor.clone()).unwrap())
    };
    let (train, valid) = (data(train_pairs), data(valid_pairs));
    Prefs {
        train,
        valid,
        batcher,
        reference,
    }
}

/// LoRA on the LLM's attention projections (burn's `apply_lora`): the adapters start at zero, so
/// step 1 is at the reference (loss ln 2); they train the preference in, everything else (here:
/// the vision tower) stays as it was, and the reference set-ups agree.
#[test]
fn dpo_with_lora_adapters_starts_at_the_reference_and_trains_only_the_adapters() {
    use burn::data::dataloader::batcher::Batcher;
    use burn::module::Module;
    use vlalign_align::DpoConfig;
    use vlalign_train::{DpoTrainee, LoraConfig};

    let tmp = tempfile::tempdir().unwrap();
    let world = tmp.path().join("world");
    let s = setup(&world);
    let p = preference_setup(&s, &world);
    let lora = LoraConfig {
        rank: 4,
        alpha: 8.0,
        ..LoraConfig::default()
    };
    let policy = lora.apply(model(&s)).unwrap();
    let host = |t: burn::tensor::Tensor<4>| {
        t.into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .unwrap()
    };
    let tower_before = host(policy.vision_tower.patch_embedding.weight.val());
    let dpo = DpoConfig {
        beta: 0.5,
        ..DpoConfig::default()
    };
    let mut cfg = config(8);
    cfg.accumulation = 1;
    cfg.optim.lr = 1e-2;
    let dir = tmp.path().join("lora");
    let stage = Stage {
        dir: &dir,
        label: "dpo-lora",
        resume: false,
        stop_after: None,
        show: &[],
        renderer: Some(quiet_renderer()),
    };
    let trainee = DpoTrainee::new(policy, dpo.clone());
    let (trained, report) = fit(
        trainee,
        p.train.clone(),
        p.valid.clone(),
        p.batcher.clone(),
        &Device::flex(),
        &cfg,
        stage,
    )
    .unwrap();
    let first = report.steps[0].loss;
    assert!((first - 2f64.ln()).abs() < 1e-4, "step 1: {first}");
    let items: Vec<_> = (0..p.train.len())
        .map(|i| p.train.get(i).unwrap())
        .collect();
    let all = p.batcher.batch(items, &Device::flex());
    let out = vlalign_align::dpo_loss(&dpo, &trained.model.valid(), &all);
    let loss = out
        .loss
        .into_data()
        .convert::<f64>()
        .try_into_vec::<f64>()
        .unwrap()[0];
    assert!(
        loss < 2f64.ln() - 0.01,
        "DPO loss on the training pairs: {loss}"
    );
    let tower_after = host(trained.model.vision_tower.patch_embedding.weight.val());
    assert_eq!(tower_before, tower_after, "a frozen weight moved");
    // LoRA's reference is the base weights, i.e. the starting weights: the precomputed and the
    // live reference give the same loss with the trained LoRA policy.
    let value = |t: burn::tensor::Tensor<1>| {
        t.into_data()
            .convert::<f64>()
            .try_into_vec::<f64>()
            .unwrap()[0]
    };
    let live = vlalign_align::dpo_loss_with(&dpo, &trained.model, Some(&p.reference), &all);
    let precomputed = vlalign_align::dpo_loss(&dpo, &trained.model, &all);
    let (live, precomputed) = (value(live.loss), value(precomputed.loss));
    assert!((live - precomputed).abs() < 1e-4, "{live} vs {precomputed}");
}
