//! The trainer on the synthetic world: the loss falls, a run stopped mid-way resumes to the same
//! losses as an uninterrupted one, a damaged checkpoint is skipped with a clear note, a
//! non-finite loss stops the run naming the step, the batch and the last good checkpoint.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use burn::tensor::Device;
use vlalign_align::{AlignModel, MleObjective, Objective, ObjectiveOutput};
use vlalign_data::world::{WorldConfig, generate, tokenizer_corpus};
use vlalign_data::{ImageProcessor, TextTokenizer, VlmBatch};
use vlalign_models::Llava;
use vlalign_train::{Stage, TrainError, Trainee, fit, quiet_renderer};

mod common;

use common::{Setup, config, csv_losses, model, setup};

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
            devices: &[],
        },
    )
    .map(|(_, report)| report)
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
                devices: &[],
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

/// The losses of `steps` steps and the final weights, on `devices` (empty: one device) with
/// `accumulation` batches per device per step.
fn parallel_run(
    s: &Setup,
    dir: &Path,
    devices: &[Device],
    accumulation: usize,
) -> (Vec<f64>, Vec<f32>) {
    parallel_run_with(s, dir, devices, accumulation, false, None)
}

fn parallel_run_with(
    s: &Setup,
    dir: &Path,
    devices: &[Device],
    accumulation: usize,
    resume: bool,
    stop_after: Option<usize>,
) -> (Vec<f64>, Vec<f32>) {
    use burn::module::Module;
    let (trained, report) =
        parallel_fit(s, dir, devices, accumulation, resume, stop_after).unwrap();
    let weights = trained.model.valid().multi_modal_projector.layers[0]
        .weight
        .val()
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap();
    (report.steps.iter().map(|r| r.loss).collect(), weights)
}

/// 5 steps of the MLE trainee on `devices` (empty: one device), as the trainer returns them.
fn parallel_fit(
    s: &Setup,
    dir: &Path,
    devices: &[Device],
    accumulation: usize,
    resume: bool,
    stop_after: Option<usize>,
) -> Result<(Trainee, vlalign_train::TrainReport), TrainError> {
    let mut tc = config(5);
    tc.accumulation = accumulation;
    fit(
        Trainee::new(model(s), Arc::new(MleObjective)),
        s.train.clone(),
        s.valid.clone(),
        s.batcher.clone(),
        &Device::flex(),
        &tc,
        Stage {
            dir,
            label: "test",
            resume,
            stop_after,
            show: &[],
            renderer: Some(quiet_renderer()),
            devices,
        },
    )
}

#[test]
fn data_parallel_on_two_devices_equals_one_device_accumulating_their_batches() {
    // flex has one device (its id is always 0): two handles to it still run the data-parallel
    // path — a batch per device at once, each on its own fork of the model, gradients gathered
    // and accumulated on the first — which must equal one device accumulating both batches.
    let tmp = tempfile::tempdir().unwrap();
    let s = setup(&tmp.path().join("world"));
    let two = [Device::flex(), Device::flex()];
    let (parallel, w_parallel) = parallel_run(&s, &tmp.path().join("two"), &two, 1);
    let (single, w_single) = parallel_run(&s, &tmp.path().join("one"), &[], 2);
    assert_eq!(parallel.len(), 5);
    for (step, (a, b)) in parallel.iter().zip(&single).enumerate() {
        assert!(
            (a - b).abs() <= 1e-5,
            "step {step}: parallel {a} vs single {b}"
        );
    }
    let d = w_parallel
        .iter()
        .zip(&w_single)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(d <= 1e-5, "weights after 5 steps differ by {d}");
    assert!(parallel[4] < parallel[0], "{parallel:?}");

    // Stopped after step 4 (a checkpoint: `config` saves every 4 steps), then resumed: the
    // devices' shares restart where they were.
    let cut = tmp.path().join("cut");
    parallel_run_with(&s, &cut, &two, 1, false, Some(4));
    let (resumed, w_resumed) = parallel_run_with(&s, &cut, &two, 1, true, None);
    assert_eq!(resumed, parallel, "a resumed data-parallel run differs");
    assert_eq!(w_resumed, w_parallel);

    // Resumed on one device, the checkpoint's data position (2 batches a step) is not where
    // one device's steps would put it: refused, naming both.
    let cut = tmp.path().join("cut-one");
    parallel_run_with(&s, &cut, &two, 1, false, Some(4));
    let refused = parallel_fit(&s, &cut, &[], 1, true, None);
    let e = match refused {
        Ok(_) => panic!("a resume on other devices is refused"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("consumed") && e.contains("1 device(s)"), "{e}");
}
