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
use vlalign_data::dataset::Weighted;
use vlalign_data::{Item, Record, VlmDataset, WordKind};
use vlalign_eval::grounding::auroc;
use vlalign_models::Llava;

use crate::cal_eval::RunResult;
use crate::cal_eval::{EvalContext, evaluate_model};
use crate::cal_llava::{CalLlavaConfig, loss_curve};
use crate::inputs::{Inputs, RealData, inputs_for, read_valid};
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
    /// Weight of the supervised tokens a selection drops inside a kept sample (0 = the paper's
    /// rule: those tokens are context only). On this testbed's from-scratch decoder the answer
    /// templates are such tokens, and without loss the model drifts off them; the default 0.2
    /// keeps them supervised at CAL's floor-to-ceiling ratio (α/β = 1/5).
    pub floor: f32,
}

impl Default for VigSection {
    fn default() -> Self {
        Self {
            sigma: 8.0,
            percents: vec![30.0, 50.0, 70.0, 100.0],
            with_cal: Some(70.0),
            floor: 0.2,
        }
    }
}

/// The whole experiment: the shared parts of `cal_llava` plus [`VigSection`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VigSelectConfig {
    /// World, model, stages, CAL and evaluation, as in `cal_llava` (its `noise` is unused).
    pub common: CalLlavaConfig,
    /// VIG.
    pub vig: VigSection,
    /// Seeds (model init and data order `common.seed + k`, as `cal_llava --seeds`): the whole
    /// experiment per seed, then every run's mean ± 95 % interval and its paired difference to
    /// plain MLE.
    pub seeds: usize,
}

impl Default for VigSelectConfig {
    fn default() -> Self {
        Self {
            common: CalLlavaConfig::default(),
            vig: VigSection::default(),
            seeds: 1,
        }
    }
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

/// Train and evaluate; see the module docs. With `real`, the loaded model plays the stage-1
/// model (no stage 1 runs), the user's records are scored (scores next to them) and split 95/5,
/// and only what needs no world truth is reported.
pub fn run(
    config: &VigSelectConfig,
    real: Option<&RealData>,
    opts: &RunOptions,
) -> Result<VigOutcome, String> {
    let common = &config.common;
    let inputs = inputs_for(common.spec(), real, opts)?;
    let mut curves = Vec::new();
    // Stage 1 (the world), or the loaded model.
    let stage1 = match real {
        Some(_) => inputs.init.clone(),
        None => world_stage1(common, &inputs, opts, &mut curves)?,
    };
    // The records scored and selected, the held-out ones, and where the scores go.
    let world = &common.world.dir;
    let (train_records, held_out, scores_file) = match real {
        Some(r) => {
            let mut records = read_valid(&r.data)?;
            let held = ((records.len() as f64) * r.held_out).ceil() as usize;
            let held = held.clamp(1, records.len().saturating_sub(1).max(1));
            let val = records.split_off(records.len() - held);
            (records, val, r.data.with_extension("vig.jsonl"))
        }
        None => (
            read_valid(&world.join("train_qa.json"))?,
            read_valid(&world.join(format!("{}_qa.json", common.eval.split)))?,
            world.join("train_qa.vig.jsonl"),
        ),
    };
    // VIG of every training sample, written next to the data and into the run.
    let train = inputs.dataset(vec![(train_records, &inputs.enc.chat)]);
    let (samples, detail, rate) = score_training_set(config, &stage1, &train, &inputs, opts)?;
    let ids: Vec<String> = train.samples().iter().map(|s| s.id.clone()).collect();
    for path in [scores_file, opts.out.join("train_qa.vig.jsonl")] {
        write_scores(&path, &ids, &samples, &detail, &inputs)?;
    }
    // VIG against the truth on the held-out split, with the stage-1 model.
    let val_records: Vec<Record> = held_out.into_iter().take(common.eval.records).collect();
    let val_ds = inputs.dataset(vec![(val_records.clone(), &inputs.enc.chat)]);
    let truth = held_out_vig(config, &stage1, &val_ds, &inputs, opts)?;
    // Stage 2 on each selection.
    let mut plan: Vec<(f64, &str)> = config
        .vig
        .percents
        .iter()
        .map(|&p| (p, if p >= 100.0 { "mle" } else { "vig" }))
        .collect();
    if let Some(p) = config.vig.with_cal {
        plan.push((p, "vig+cal"));
    }
    let stage2 = Stage2 {
        stage1: &stage1,
        train: &train,
        scores: &samples,
        val_records: &val_records,
        val: Arc::new(val_ds),
        inputs: &inputs,
        world: real.is_none(),
        floor: config.vig.floor,
    };
    let mut runs = Vec::new();
    for (p, objective) in plan {
        runs.push(stage2.train_selection(common, p, objective, opts, &mut curves)?);
    }
    Ok(VigOutcome {
        scoring_samples_per_s: rate,
        vig_token_auroc: truth.auroc,
        vig_by_kind: truth.by_kind,
        prior: truth.prior,
        runs,
        tokens: truth.tokens,
        curves,
        tokenizer: inputs.tokenizer.clone(),
    })
}

/// Stage 1 on the world: the same data as `cal_llava` (captions, and the QA records with them
/// when `pretrain_qa` says so), MLE.
fn world_stage1(
    common: &CalLlavaConfig,
    inputs: &Inputs,
    opts: &RunOptions,
    curves: &mut Vec<(String, Vec<(usize, f64)>)>,
) -> Result<Llava, String> {
    let (world, enc) = (&common.world.dir, &inputs.enc);
    let mut parts = vec![(read_valid(&world.join("train_captions.json"))?, &enc.plain)];
    if common.pretrain_qa {
        parts.push((read_valid(&world.join("train_qa.json"))?, &enc.chat));
    }
    let captions: Arc<dyn Dataset<Item>> = Arc::new(inputs.dataset(parts));
    let val = vec![(read_valid(&world.join("val_captions.json"))?, &enc.plain)];
    let captions_val: Arc<dyn Dataset<Item>> = Arc::new(inputs.dataset(val));
    eprintln!(
        "stage 1 (pretrain): {} steps on captions{}",
        common.pretrain.steps,
        if common.pretrain_qa { " and QA" } else { "" }
    );
    let (stage1, report) = opts.train_stage(
        &inputs.batcher,
        inputs.init.clone(),
        Arc::new(MleObjective),
        (captions, captions_val),
        &common.pretrain,
        "pretrain",
    )?;
    curves.push(("pretrain".to_string(), loss_curve(&report)));
    Ok(stage1)
}

/// Per-sample and per-token VIG of the training set (`blurred.png` shows the contrast), and
/// the scoring rate.
fn score_training_set(
    config: &VigSelectConfig,
    stage1: &Llava,
    train: &VlmDataset,
    inputs: &Inputs,
    opts: &RunOptions,
) -> Result<(Vec<SampleVig>, Vec<TokenVig>, f64), String> {
    let sigma = config.vig.sigma;
    blurred_example(train, inputs, sigma, &opts.out.join("blurred.png"))?;
    eprintln!("scoring {} training samples (σ = {sigma} px)", train.len());
    let batch_size = config.common.eval.batch_size;
    let (samples, detail, rate) = score(
        stage1,
        train,
        inputs,
        sigma,
        batch_size,
        &opts.device,
        opts.verbose,
    )?;
    eprintln!("VIG scoring: {rate:.1} samples/s");
    Ok((samples, detail, rate))
}

/// VIG on held-out records against the world's truth.
struct HeldOutVig {
    auroc: Option<f64>,
    by_kind: BTreeMap<&'static str, f64>,
    prior: (Option<f64>, Option<f64>),
    tokens: Vec<(String, u32, f32, WordKind)>,
}

/// Per-token VIG of the held-out records with the stage-1 model: its AUROC for grounded vs
/// template tokens, the mean per word kind, and the prior-predictable words vs the others.
fn held_out_vig(
    config: &VigSelectConfig,
    stage1: &Llava,
    val: &VlmDataset,
    inputs: &Inputs,
    opts: &RunOptions,
) -> Result<HeldOutVig, String> {
    let batch_size = config.common.eval.batch_size;
    let sigma = config.vig.sigma;
    let (_, detail, _) = score(stage1, val, inputs, sigma, batch_size, &opts.device, false)?;
    let mut tokens = Vec::new();
    for (sample, d) in val.samples().iter().zip(&detail) {
        for (tok, v, truth) in d {
            let kind = truth.map_or(WordKind::Template, |t| t.kind);
            tokens.push((sample.id.clone(), *tok, *v, kind));
        }
    }
    let (s, l): (Vec<f64>, Vec<bool>) = tokens
        .iter()
        .filter(|t| t.3 != WordKind::Other)
        .map(|t| (t.2 as f64, t.3 != WordKind::Template))
        .unzip();
    let mut by_kind: BTreeMap<&'static str, (f64, usize)> = BTreeMap::new();
    for t in &tokens {
        let e = by_kind.entry(t.3.name()).or_default();
        e.0 += t.2 as f64;
        e.1 += 1;
    }
    let mean_of = |prior: bool| {
        let v: Vec<f64> = detail
            .iter()
            .flatten()
            .filter(|(_, _, t)| t.is_some_and(|t| t.kind != WordKind::Template && t.prior == prior))
            .map(|(_, v, _)| *v as f64)
            .collect();
        (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
    };
    Ok(HeldOutVig {
        auroc: auroc(&s, &l),
        by_kind: by_kind
            .into_iter()
            .map(|(k, (s, n))| (k, s / n.max(1) as f64))
            .collect(),
        prior: (mean_of(true), mean_of(false)),
        tokens,
    })
}

/// What every stage-2 run on a selection shares.
struct Stage2<'a> {
    stage1: &'a Llava,
    train: &'a VlmDataset,
    scores: &'a [SampleVig],
    val_records: &'a [Record],
    val: Arc<dyn Dataset<Item>>,
    inputs: &'a Inputs,
    world: bool,
    /// Weight of the dropped tokens in kept samples ([`VigSection::floor`]).
    floor: f32,
}

impl Stage2<'_> {
    /// Stage 2 from the stage-1 model on the selection at `p` (`mle` at p = 100, `vig`, or
    /// `vig+cal`: the selection's token weights times CAL's), evaluated as `cal_llava` does.
    fn train_selection(
        &self,
        common: &CalLlavaConfig,
        p: f64,
        objective: &str,
        opts: &RunOptions,
        curves: &mut Vec<(String, Vec<(usize, f64)>)>,
    ) -> Result<SelectRun, String> {
        let sel: Selection = select(self.scores, p);
        let (index, weights): (Vec<usize>, Vec<Option<Vec<f32>>>) = sel
            .keep
            .iter()
            .enumerate()
            .filter_map(|(i, k)| {
                k.as_ref().map(|mask| {
                    let labels = &self.train.samples()[i].encoded.labels;
                    (i, Some(token_weights(labels, mask, self.floor)))
                })
            })
            .unzip();
        let data: Arc<dyn Dataset<Item>> =
            Arc::new(Weighted::new(self.train.clone(), index, weights));
        let obj: Arc<dyn Objective<Llava>> = if objective == "vig+cal" {
            Arc::new(CalObjective {
                config: common.cal.clone(),
            })
        } else {
            Arc::new(MleObjective)
        };
        let name = format!("finetune-{}-p{p}", objective.replace('+', "_"));
        let (kept_samples, kept_tokens) = (sel.kept_samples(), sel.kept_tokens(self.scores));
        eprintln!(
            "{name}: {} steps on {:.1} % of the samples, {:.1} % of the supervised tokens (τ = {:?})",
            common.finetune.steps,
            100.0 * kept_samples,
            100.0 * kept_tokens,
            sel.tau
        );
        let mut model = self.stage1.clone();
        if !common.finetune_vision {
            model.vision_tower = model.vision_tower.no_grad();
        }
        let batcher = &self.inputs.batcher;
        let stage_data = (data, self.val.clone());
        let (model, report) =
            opts.train_stage(batcher, model, obj, stage_data, &common.finetune, &name)?;
        curves.push((name.clone(), loss_curve(&report)));
        let ctx = EvalContext {
            eval: &common.eval,
            cal: &common.cal,
            world_dir: &common.world.dir,
            inputs: self.inputs,
            device: &opts.device,
            verbose: opts.verbose,
            world: self.world,
            val_records: self.val_records,
            val: self.val.clone(),
        };
        let (mut result, _) = evaluate_model(&model, &ctx, &opts.out.join(&name))?;
        result.objective = objective.into();
        result.step_ms = report.median_step_ms().unwrap_or(0.0);
        result.valid_loss = report.valid_loss;
        Ok(SelectRun {
            p,
            objective: objective.into(),
            kept_samples_pct: 100.0 * kept_samples,
            kept_tokens_pct: 100.0 * kept_tokens,
            result,
        })
    }
}
