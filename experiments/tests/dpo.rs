//! Preference training (DPO) through the trainer: the three reference set-ups (precomputed,
//! live, LoRA's base weights) agree, training starts at ln 2 and learns the preference, and a
//! stopped run resumes exactly.

use std::path::Path;
use std::sync::Arc;

use burn::data::dataset::Dataset;
use burn::tensor::Device;
use vlalign_data::{ImageProcessor, VlmBatcher};
use vlalign_models::Llava;
use vlalign_train::{Stage, fit, quiet_renderer};

mod common;

use common::{Setup, config, csv_losses, model, scalar, setup};

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
                devices: &[],
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
    let loss = scalar(out.loss);
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
    let (live, precomputed) = (scalar(live.loss), scalar(precomputed.loss));
    assert!((live - precomputed).abs() < 1e-4, "{live} vs {precomputed}");
    let live_run = tmp.path().join("live");
    let trainee = DpoTrainee::with_live_reference(model(&s), model(&s).valid(), dpo.clone());
    let (_, live_report) = fit_quietly(
        trainee,
        (train.clone(), valid.clone()),
        &batcher,
        &cfg,
        (&live_run, "dpo-live"),
    );
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

/// Train `trainee` on `(train, valid)` pairs in `dir`, quietly, from scratch.
fn fit_quietly(
    trainee: vlalign_train::DpoTrainee,
    (train, valid): (
        Arc<dyn Dataset<vlalign_data::PreferenceItem>>,
        Arc<dyn Dataset<vlalign_data::PreferenceItem>>,
    ),
    batcher: &vlalign_data::PreferenceBatcher,
    cfg: &vlalign_train::TrainConfig,
    (dir, label): (&Path, &str),
) -> (vlalign_train::DpoTrainee, vlalign_train::TrainReport) {
    let stage = Stage {
        dir,
        label,
        resume: false,
        stop_after: None,
        show: &[],
        renderer: Some(quiet_renderer()),
        devices: &[],
    };
    fit(
        trainee,
        train,
        valid,
        batcher.clone(),
        &Device::flex(),
        cfg,
        stage,
    )
    .unwrap()
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
            ref_logp_image_negative: None,
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
        pair.ref_logp_chosen = Some(scalar(lp.chosen.sum));
        pair.ref_logp_rejected = Some(scalar(lp.rejected.sum));
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
    let trainee = DpoTrainee::new(policy, dpo.clone());
    let (trained, report) = fit_quietly(
        trainee,
        (p.train.clone(), p.valid.clone()),
        &p.batcher,
        &cfg,
        (&dir, "dpo-lora"),
    );
    let first = report.steps[0].loss;
    assert!((first - 2f64.ln()).abs() < 1e-4, "step 1: {first}");
    let items: Vec<_> = (0..p.train.len())
        .map(|i| p.train.get(i).unwrap())
        .collect();
    let all = p.batcher.batch(items, &Device::flex());
    let out = vlalign_align::dpo_loss(&dpo, &trained.model.valid(), &all);
    let loss = scalar(out.loss);
    assert!(
        loss < 2f64.ln() - 0.01,
        "DPO loss on the training pairs: {loss}"
    );
    let tower_after = host(trained.model.vision_tower.patch_embedding.weight.val());
    assert_eq!(tower_before, tower_after, "a frozen weight moved");
    // LoRA's reference is the base weights, i.e. the starting weights: the precomputed and the
    // live reference give the same loss with the trained LoRA policy.
    let live = vlalign_align::dpo_loss_with(&dpo, &trained.model, Some(&p.reference), &all);
    let precomputed = vlalign_align::dpo_loss(&dpo, &trained.model, &all);
    let (live, precomputed) = (scalar(live.loss), scalar(precomputed.loss));
    assert!((live - precomputed).abs() < 1e-4, "{live} vs {precomputed}");
}

/// A preference batch encodes each pair's image once for its chosen and rejected rows: the
/// log-probs equal those of the same batch with the image given twice (one per row), with and
/// without autodiff.
#[test]
fn a_pair_encodes_its_image_once_and_scores_as_with_two_copies() {
    use burn::data::dataloader::batcher::Batcher;
    use burn::module::Module;
    use burn::tensor::Tensor;
    use vlalign_align::pair_logps;

    let tmp = tempfile::tempdir().unwrap();
    let world = tmp.path().join("world");
    let s = setup(&world);
    let p = preference_setup(&s, &world);
    let items: Vec<_> = (0..5).map(|i| p.train.get(i).unwrap()).collect();
    let device = Device::flex().autodiff();
    let shared = p.batcher.batch(items, &device);
    let n = shared.ids.len();
    assert_eq!(shared.sequences.images.as_ref().unwrap().dims()[0], n);
    let index: Vec<usize> = (0..n).chain(0..n).collect();
    assert_eq!(shared.sequences.image_index.as_ref(), Some(&index));
    let mut copies = shared.clone();
    let images = shared.sequences.images.clone().unwrap();
    copies.sequences.images = Some(Tensor::cat(vec![images.clone(), images], 0));
    copies.sequences.image_index = None;
    let host = |t: Tensor<1>| {
        t.into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .unwrap()
    };
    let policy = model(&s);
    for no_grad in [false, true] {
        let (a, b) = (
            pair_logps(&policy, &shared, no_grad),
            pair_logps(&policy, &copies, no_grad),
        );
        for (x, y) in [
            (a.chosen.sum, b.chosen.sum),
            (a.rejected.sum, b.rejected.sum),
        ] {
            for (x, y) in host(x).iter().zip(host(y)) {
                assert!((x - y).abs() < 1e-4, "{x} vs {y} (no_grad {no_grad})");
            }
        }
    }
    // The pair's image changes its log-probs (the index is not ignored).
    let mut rolled = shared.clone();
    rolled.sequences.image_index = Some((1..=n).map(|i| i % n).chain(0..n).collect());
    let moved = host(pair_logps(&policy.valid(), &rolled, true).chosen.sum);
    let base = host(pair_logps(&policy.valid(), &shared, true).chosen.sum);
    assert!(moved.iter().zip(&base).any(|(a, b)| (a - b).abs() > 1e-4));
}

/// The image-side negative (mDPO): the chosen answer on a corrupted copy of the image is a
/// third row of each pair; at the reference both margins are 0, so the loss is (1 + w)·ln 2;
/// a precomputed and a live reference agree; the corrupted image moves the log-probs.
#[test]
fn the_image_side_negative_adds_its_margin_and_references_agree() {
    use burn::data::dataloader::batcher::Batcher;
    use burn::module::Module;
    use vlalign_align::{DpoConfig, dpo_loss, dpo_loss_with, pair_logps};

    let tmp = tempfile::tempdir().unwrap();
    let world = tmp.path().join("world");
    let s = setup(&world);
    let p = preference_setup(&s, &world);
    let plain: Vec<_> = (0..4).map(|i| p.train.get(i).unwrap()).collect();
    // The same pairs with negatives: corrupt each item's image as the dataset would.
    let with_neg: Vec<_> = plain
        .iter()
        .map(|i| {
            let mut i = i.clone();
            let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(3);
            i.negative_pixels = Some(vlalign_data::augment::diffusion_noise(
                &i.pixels, 800, &mut rng,
            ));
            i
        })
        .collect();
    let reference = model(&s).valid();
    let batch = p.batcher.batch(with_neg.clone(), &Device::flex());
    assert!(batch.image_negatives);
    assert_eq!(batch.sequences.ids.len(), 12);
    assert_eq!(batch.sequences.images.as_ref().unwrap().dims()[0], 8);
    let lp = pair_logps(&reference, &batch, true);
    let neg = lp.image_negative.expect("negative rows");
    let host = |t: burn::tensor::Tensor<1>| {
        t.into_data()
            .convert::<f64>()
            .try_into_vec::<f64>()
            .unwrap()
    };
    let (c, n) = (host(lp.chosen.sum), host(neg.sum));
    assert!(
        c.iter().zip(&n).any(|(a, b)| (a - b).abs() > 1e-4),
        "{c:?} {n:?}"
    );
    let items: Vec<_> = with_neg
        .into_iter()
        .zip(&n)
        .map(|(mut i, &r)| {
            i.reference_negative = Some(r);
            i
        })
        .collect();
    let batch = p.batcher.batch(items, &Device::flex().autodiff());
    let dpo = DpoConfig {
        image_negative_weight: 0.5,
        ..DpoConfig::default()
    };
    let policy = model(&s);
    let precomputed = scalar(dpo_loss(&dpo, &policy, &batch).loss);
    assert!(
        (precomputed - 1.5 * 2f64.ln()).abs() < 1e-4,
        "at the reference: {precomputed}"
    );
    let live = scalar(dpo_loss_with(&dpo, &policy, Some(&reference), &batch).loss);
    assert!((live - precomputed).abs() < 1e-4, "{live} vs {precomputed}");
}

/// Token-weighted DPO (`cal_weighted`): CAL's weights, computed with the live reference, lie in
/// [α, β] on the answer tokens and change the log-probs; at the reference the loss is ln 2;
/// trained through the trainer with a live reference, it learns the preference.
#[test]
fn cal_token_weighted_dpo_weights_answer_tokens_and_trains() {
    use burn::data::dataloader::batcher::Batcher;
    use burn::module::Module;
    use vlalign_align::{CalConfig, DpoConfig, cal_token_weights, dpo_loss_with};
    use vlalign_align::{pair_logps, pair_logps_weighted};
    use vlalign_train::DpoTrainee;

    let tmp = tempfile::tempdir().unwrap();
    let world = tmp.path().join("world");
    let s = setup(&world);
    let p = preference_setup(&s, &world);
    let items: Vec<_> = (0..6).map(|i| p.train.get(i).unwrap()).collect();
    let batch = p.batcher.batch(items, &Device::flex().autodiff());
    // α = 0.5: the untrained model's Δ is mostly below CAL's default α = 1, where every weight
    // would be 1.
    let cal = CalConfig {
        alpha: 0.5,
        ..CalConfig::default()
    };
    let reference = model(&s).valid();
    let w = cal_token_weights(&cal, &reference, &batch);
    assert_eq!(w.dims()[0], 12);
    let labels = batch.sequences.labels.clone().into_data().convert::<i64>();
    let labels = labels.try_into_vec::<i64>().unwrap();
    let host = |t: burn::tensor::Tensor<1>| {
        t.into_data()
            .convert::<f64>()
            .try_into_vec::<f64>()
            .unwrap()
    };
    let wv = host(w.clone().reshape([-1]));
    let cols = w.dims()[1];
    let mut supervised = 0;
    for (k, &x) in wv.iter().enumerate() {
        let (row, t) = (k / cols, k % cols);
        if labels[row * (cols + 1) + t + 1] != vlalign_data::IGNORE {
            supervised += 1;
            assert!(
                (0.5 - 1e-5..=5.0 + 1e-5).contains(&x),
                "weight {x} outside [α, β]"
            );
        }
    }
    assert!(supervised > 0);
    let plain = host(pair_logps(&reference, &batch, true).chosen.sum);
    let weighted = host(
        pair_logps_weighted(&reference, &batch, true, Some(w))
            .chosen
            .sum,
    );
    assert!(
        plain
            .iter()
            .zip(&weighted)
            .any(|(a, b)| (a - b).abs() > 1e-3)
    );
    let dpo = DpoConfig {
        beta: 0.5,
        cal_token_weights: Some(cal),
        ..DpoConfig::default()
    };
    let at_start = scalar(dpo_loss_with(&dpo, &model(&s), Some(&reference), &batch).loss);
    assert!((at_start - 2f64.ln()).abs() < 1e-4, "{at_start}");

    let mut cfg = config(8);
    cfg.accumulation = 1;
    let dir = tmp.path().join("cal-dpo");
    let trainee = DpoTrainee::with_live_reference(model(&s), reference.clone(), dpo.clone());
    let (trained, report) = fit_quietly(
        trainee,
        (p.train.clone(), p.valid.clone()),
        &p.batcher,
        &cfg,
        (&dir, "cal-dpo"),
    );
    assert!((report.steps[0].loss - 2f64.ln()).abs() < 1e-4);
    let items: Vec<_> = (0..p.train.len())
        .map(|i| p.train.get(i).unwrap())
        .collect();
    let all = p.batcher.batch(items, &Device::flex());
    let after = scalar(dpo_loss_with(&dpo, &trained.model.valid(), Some(&reference), &all).loss);
    assert!(
        after < 2f64.ln() - 0.01,
        "cal_weighted loss after training: {after}"
    );
}
