//! The VIG experiment: stage 1 on captions, VIG scoring of the instruction data with the stage-1
//! model (real and blurred images in one batched forward), then stage 2 on the selection at
//! each p (100 = plain MLE on everything) and at one p combined with CAL; each model evaluated
//! as in `cal_llava` (slots, POPE, CHAIR), plus the AUROC of per-token VIG against the world's
//! grounding truth and VIG by word category.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::Dataset;
use burn::module::Module;
use burn::tensor::Device;
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use vlalign_align::vig::{SampleVig, Selection, select, token_weights, vig_scores};
use vlalign_align::{CalObjective, MleObjective, Objective};
use vlalign_data::dataset::{Weighted, prepare};
use vlalign_data::{ImageCheck, Item, Record, VlmDataset, WordKind, read_records};
use vlalign_eval::grounding::auroc;
use vlalign_models::Llava;

use crate::cal_eval::RunResult;
use crate::cal_eval::{EvalContext, evaluate_model};
use crate::cal_llava::{CalLlavaConfig, loss_curve};
use crate::inputs::{Inputs, RealData, real_inputs, world_inputs};
use crate::run::RunOptions;

/// VIG's own settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VigSection {
    /// Gaussian blur σ in pixels of the model's input (48 px by default): large enough that the
    /// world's shapes and colors are no longer recognisable (see `blurred.png`).
    pub sigma: f32,
    /// Selection levels p (percent of image samples kept; 100 = all, plain MLE).
    pub percents: Vec<f64>,
    /// The level also trained with CAL on the selection (`vig+cal`).
    pub with_cal: Option<f64>,
}

impl Default for VigSection {
    fn default() -> Self {
        Self {
            sigma: 8.0,
            percents: vec![30.0, 50.0, 70.0, 100.0],
            with_cal: Some(70.0),
        }
    }
}

/// The whole experiment: the shared parts of `cal_llava` plus [`VigSection`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VigSelectConfig {
    /// World, model, stages, CAL and evaluation, as in `cal_llava` (its `noise` is unused).
    pub common: CalLlavaConfig,
    /// VIG.
    pub vig: VigSection,
}

impl VigSelectConfig {
    /// The CI smoke profile.
    pub fn quick() -> Self {
        let mut c = Self {
            common: CalLlavaConfig::quick(),
            ..Self::default()
        };
        c.vig.percents = vec![50.0, 100.0];
        c.vig.with_cal = Some(50.0);
        c
    }
}

/// One stage-2 run on a selection.
#[derive(Clone, Debug, Serialize)]
pub struct SelectRun {
    /// p.
    pub p: f64,
    /// `vig`, `vig+cal` or `mle` (p = 100).
    pub objective: String,
    /// Kept samples, %.
    pub kept_samples_pct: f64,
    /// Kept supervised tokens, %.
    pub kept_tokens_pct: f64,
    /// Evaluation (slots, POPE, CHAIR, …).
    #[serde(skip)]
    pub result: RunResult,
}

/// What the experiment produced.
pub struct VigOutcome {
    /// Scoring throughput.
    pub scoring_samples_per_s: f64,
    /// AUROC of per-token VIG (stage-1 model, held-out split) for grounded vs template tokens.
    pub vig_token_auroc: Option<f64>,
    /// Mean VIG by word kind (held-out split).
    pub vig_by_kind: BTreeMap<&'static str, f64>,
    /// Mean VIG of grounded words predictable from the language prior vs not.
    pub prior: (Option<f64>, Option<f64>),
    /// The runs.
    pub runs: Vec<SelectRun>,
    /// Held-out token scores for the HTML view: (record id, token id, vig, kind).
    pub tokens: Vec<(String, u32, f32, WordKind)>,
    /// Loss curves.
    pub curves: Vec<(String, Vec<(usize, f64)>)>,
    /// The tokenizer (to draw tokens).
    pub tokenizer: vlalign_data::TextTokenizer,
}

/// Per token of a sample: (token id, VIG, truth).
pub type TokenVig = Vec<(u32, f32, Option<vlalign_data::TokenTruth>)>;

/// Per-sample and per-token VIG of every item of `data`, with a progress bar.
pub fn score(
    model: &Llava,
    data: &dyn Dataset<Item>,
    inputs: &Inputs,
    sigma: f32,
    batch_size: usize,
    device: &Device,
    verbose: bool,
) -> Result<(Vec<SampleVig>, Vec<TokenVig>, f64), String> {
    let model = model.valid();
    let n = data.len();
    let bar = if verbose {
        ProgressBar::new(n as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("VIG scoring {bar:40} {pos}/{len} ({per_sec}, eta {eta})")
            .expect("valid template"),
    );
    let start = Instant::now();
    let mut samples = Vec::with_capacity(n);
    let mut detail = Vec::with_capacity(n);
    let mut at = 0;
    while at < n {
        let end = (at + batch_size).min(n);
        let items = (at..end)
            .map(|i| data.get(i).map_err(|e| e.to_string()))
            .collect::<Result<Vec<_>, _>>()?;
        let has_image: Vec<bool> = items.iter().map(|i| !i.pixels.is_empty()).collect();
        let batch = inputs.batcher.batch(items, device);
        let vig = vig_scores(&model, &batch, sigma);
        let ids: Vec<i64> = batch
            .input_ids
            .to_data()
            .convert::<i64>()
            .try_into_vec::<i64>()
            .map_err(|e| format!("{e:?}"))?;
        let width = batch.input_ids.dims()[1];
        for (row, v) in vig.iter().enumerate() {
            let mut tokens = Vec::new();
            let mut d = Vec::new();
            for (t, x) in v.iter().enumerate() {
                if let Some(x) = x {
                    tokens.push(*x);
                    let truth = batch.truth[row].get(t + 1).copied().flatten();
                    d.push((ids[row * width + t + 1] as u32, *x, truth));
                }
            }
            samples.push(SampleVig {
                has_image: has_image[row],
                tokens,
            });
            detail.push(d);
        }
        bar.inc((end - at) as u64);
        at = end;
    }
    bar.finish_and_clear();
    let rate = n as f64 / start.elapsed().as_secs_f64().max(1e-9);
    Ok((samples, detail, rate))
}

/// Write scores as JSON Lines `{id, vig, tokens: [{text, vig}]}`.
pub fn write_scores(
    path: &Path,
    ids: &[String],
    samples: &[SampleVig],
    detail: &[TokenVig],
    inputs: &Inputs,
) -> Result<(), String> {
    let mut f = std::io::BufWriter::new(
        std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?,
    );
    for ((id, s), d) in ids.iter().zip(samples).zip(detail) {
        let tokens: Vec<serde_json::Value> = d
            .iter()
            .map(|(tok, v, _)| {
                serde_json::json!({
                    "text": inputs.tokenizer.decode(&[*tok]).unwrap_or_default(),
                    "vig": v,
                })
            })
            .collect();
        let line = serde_json::json!({"id": id, "vig": s.mean(), "tokens": tokens});
        writeln!(f, "{line}").map_err(|e| format!("{}: {e}", path.display()))?;
    }
    f.flush().map_err(|e| format!("{}: {e}", path.display()))
}

/// Save the first image of `data` and its blurred copy side by side (de-normalised).
fn blurred_example(
    data: &dyn Dataset<Item>,
    inputs: &Inputs,
    sigma: f32,
    path: &Path,
) -> Result<(), String> {
    let Some(item) =
        (0..data.len()).find_map(|i| data.get(i).ok().filter(|x| !x.pixels.is_empty()))
    else {
        return Ok(());
    };
    let s = inputs.processor.size;
    let px = &item.pixels[0];
    let blurred = vlalign_data::augment::gaussian_blur(px, 3, s, sigma);
    let (mean, std) = (inputs.processor.mean, inputs.processor.std);
    let mut img = image::RgbImage::new(2 * s as u32, s as u32);
    for (k, src) in [px, &blurred].into_iter().enumerate() {
        for y in 0..s {
            for x in 0..s {
                let c = |ch: usize| {
                    let v = src[ch * s * s + y * s + x] * std[ch] + mean[ch];
                    (v.clamp(0.0, 1.0) * 255.0) as u8
                };
                img.put_pixel((k * s + x) as u32, y as u32, image::Rgb([c(0), c(1), c(2)]));
            }
        }
    }
    let big = image::imageops::resize(
        &img,
        8 * s as u32,
        4 * s as u32,
        image::imageops::FilterType::Nearest,
    );
    big.save(path)
        .map_err(|e| format!("{}: {e}", path.display()))
}

fn read(path: &Path) -> Result<Vec<Record>, String> {
    Ok(read_records(path)
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter_map(Result::ok)
        .collect())
}

/// Train and evaluate; see the module docs. With `real`, the loaded model plays the stage-1
/// model (no stage 1 runs), the user's records are scored (scores next to them) and split 95/5,
/// and only what needs no world truth is reported.
pub fn run(
    config: &VigSelectConfig,
    real: Option<&RealData>,
    opts: &RunOptions,
) -> Result<VigOutcome, String> {
    let common = &config.common;
    let inputs = match real {
        Some(r) => real_inputs(common.spec(), r, opts)?,
        None => world_inputs(common.spec(), opts)?,
    };
    let world = common.world.dir.clone();
    let make = |records: Vec<Record>, enc| -> VlmDataset {
        let (samples, report) = prepare(
            records.into_iter().map(Ok).collect(),
            enc,
            &inputs.images,
            ImageCheck::Exists,
        );
        if !report.errors.is_empty() || !report.truncated.is_empty() {
            eprintln!("{}", report.summary());
        }
        VlmDataset::new(samples, inputs.processor.clone())
    };
    let mut curves = Vec::new();

    // Stage 1 (the world), or the loaded model.
    let stage1 = match real {
        Some(_) => inputs.init.clone(),
        None => {
            // The same stage-1 data as `cal_llava`: captions, and the QA records with them
            // when `pretrain_qa` (the default) says so.
            let mut samples = make(read(&world.join("train_captions.json"))?, &inputs.enc.plain)
                .samples()
                .to_vec();
            if common.pretrain_qa {
                let qa = make(read(&world.join("train_qa.json"))?, &inputs.enc.chat);
                samples.extend_from_slice(qa.samples());
            }
            let captions: Arc<dyn Dataset<Item>> =
                Arc::new(VlmDataset::new(samples, inputs.processor.clone()));
            let captions_val: Arc<dyn Dataset<Item>> = Arc::new(make(
                read(&world.join("val_captions.json"))?,
                &inputs.enc.plain,
            ));
            eprintln!(
                "stage 1 (pretrain): {} steps on captions{}",
                common.pretrain.steps,
                if common.pretrain_qa { " and QA" } else { "" }
            );
            let (stage1, r1) = opts.train_stage(
                &inputs.batcher,
                inputs.init.clone(),
                Arc::new(MleObjective),
                (captions, captions_val),
                &common.pretrain,
                "pretrain",
            )?;
            curves.push(("pretrain".to_string(), loss_curve(&r1)));
            stage1
        }
    };

    // Scoring.
    let (train_records, held_out, scores_file) = match real {
        Some(r) => {
            let mut records = read(&r.data)?;
            let held = ((records.len() as f64) * r.held_out).ceil() as usize;
            let held = held.clamp(1, records.len().saturating_sub(1).max(1));
            let val = records.split_off(records.len() - held);
            let stem = r.data.with_extension("vig.jsonl");
            (records, Some(val), stem)
        }
        None => (
            read(&world.join("train_qa.json"))?,
            None,
            world.join("train_qa.vig.jsonl"),
        ),
    };
    let train = make(train_records, &inputs.enc.chat);
    let ids: Vec<String> = train.samples().iter().map(|s| s.id.clone()).collect();
    blurred_example(
        &train,
        &inputs,
        config.vig.sigma,
        &opts.out.join("blurred.png"),
    )?;
    eprintln!(
        "scoring {} training samples (σ = {} px)",
        train.len(),
        config.vig.sigma
    );
    let (samples, detail, rate) = score(
        &stage1,
        &train,
        &inputs,
        config.vig.sigma,
        common.eval.batch_size,
        &opts.device,
        opts.verbose,
    )?;
    eprintln!("VIG scoring: {rate:.1} samples/s");
    write_scores(&scores_file, &ids, &samples, &detail, &inputs)?;
    write_scores(
        &opts.out.join("train_qa.vig.jsonl"),
        &ids,
        &samples,
        &detail,
        &inputs,
    )?;

    // VIG against the truth on the held-out split, with the stage-1 model.
    let val_records: Vec<Record> = match held_out {
        Some(v) => v,
        None => read(&world.join(format!("{}_qa.json", common.eval.split)))?,
    }
    .into_iter()
    .take(common.eval.records)
    .collect();
    let val_ds = make(val_records.clone(), &inputs.enc.chat);
    let val_ids: Vec<String> = val_ds.samples().iter().map(|s| s.id.clone()).collect();
    let (_, val_detail, _) = score(
        &stage1,
        &val_ds,
        &inputs,
        config.vig.sigma,
        common.eval.batch_size,
        &opts.device,
        false,
    )?;
    let mut tokens = Vec::new();
    for (id, d) in val_ids.iter().zip(&val_detail) {
        for (tok, v, truth) in d {
            tokens.push((
                id.clone(),
                *tok,
                *v,
                truth.map_or(WordKind::Template, |t| t.kind),
            ));
        }
    }
    let (s, l): (Vec<f64>, Vec<bool>) = tokens
        .iter()
        .filter(|t| t.3 != WordKind::Other)
        .map(|t| (t.2 as f64, t.3 != WordKind::Template))
        .unzip();
    let vig_token_auroc = auroc(&s, &l);
    let mut by_kind: BTreeMap<&'static str, (f64, usize)> = BTreeMap::new();
    for t in &tokens {
        let e = by_kind.entry(t.3.name()).or_default();
        e.0 += t.2 as f64;
        e.1 += 1;
    }
    let vig_by_kind = by_kind
        .into_iter()
        .map(|(k, (s, n))| (k, s / n.max(1) as f64))
        .collect();
    let mean_of = |prior: bool| {
        let v: Vec<f64> = val_detail
            .iter()
            .flatten()
            .filter(|(_, _, t)| t.is_some_and(|t| t.kind != WordKind::Template && t.prior == prior))
            .map(|(_, v, _)| *v as f64)
            .collect();
        (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
    };
    let prior = (mean_of(true), mean_of(false));

    // Stage 2 on each selection.
    let val: Arc<dyn Dataset<Item>> = Arc::new(val_ds);
    let mut plan: Vec<(f64, &str)> = config
        .vig
        .percents
        .iter()
        .map(|&p| (p, if p >= 100.0 { "mle" } else { "vig" }))
        .collect();
    if let Some(p) = config.vig.with_cal {
        plan.push((p, "vig+cal"));
    }
    let train = Arc::new(train);
    let mut runs = Vec::new();
    for (p, objective) in plan {
        let sel: Selection = select(&samples, p);
        let (index, weights): (Vec<usize>, Vec<Option<Vec<f32>>>) = sel
            .keep
            .iter()
            .enumerate()
            .filter_map(|(i, k)| {
                k.as_ref().map(|mask| {
                    let labels = &train.samples()[i].encoded.labels;
                    (i, Some(token_weights(labels, mask)))
                })
            })
            .unzip();
        let data: Arc<dyn Dataset<Item>> =
            Arc::new(Weighted::new(train.as_ref().clone(), index, weights));
        let obj: Arc<dyn Objective<Llava>> = if objective == "vig+cal" {
            Arc::new(CalObjective {
                config: common.cal.clone(),
            })
        } else {
            Arc::new(MleObjective)
        };
        let name = format!("finetune-{}-p{p}", objective.replace('+', "_"));
        eprintln!(
            "{name}: {} steps on {:.1} % of the samples, {:.1} % of the supervised tokens (τ = {:?})",
            common.finetune.steps,
            100.0 * sel.kept_samples(),
            100.0 * sel.kept_tokens(&samples),
            sel.tau
        );
        let mut model = stage1.clone();
        if !common.finetune_vision {
            model.vision_tower = model.vision_tower.no_grad();
        }
        let (model, report) = opts.train_stage(
            &inputs.batcher,
            model,
            obj,
            (data, val.clone()),
            &common.finetune,
            &name,
        )?;
        curves.push((name.clone(), loss_curve(&report)));
        let ctx = EvalContext {
            eval: &common.eval,
            cal: &common.cal,
            world_dir: &common.world.dir,
            enc: &inputs.enc,
            processor: &inputs.processor,
            images: &inputs.images,
            batcher: &inputs.batcher,
            device: &opts.device,
            verbose: opts.verbose,
            world: real.is_none(),
            val_records: &val_records,
            val: val.clone(),
        };
        let (mut result, _) = evaluate_model(&model, &ctx, &opts.out.join(&name))?;
        result.objective = objective.into();
        result.step_ms = report.median_step_ms().unwrap_or(0.0);
        result.valid_loss = report.valid_loss;
        runs.push(SelectRun {
            p,
            objective: objective.into(),
            kept_samples_pct: 100.0 * sel.kept_samples(),
            kept_tokens_pct: 100.0 * sel.kept_tokens(&samples),
            result,
        });
    }
    Ok(VigOutcome {
        scoring_samples_per_s: rate,
        vig_token_auroc,
        vig_by_kind,
        prior,
        runs,
        tokens,
        curves,
        tokenizer: inputs.tokenizer.clone(),
    })
}
