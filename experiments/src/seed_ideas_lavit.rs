//! `seed_ideas`, item 3: LaVIT's dynamic visual tokenizer. Per seed, from the stage-1 model:
//! (1) the tokenizer alone learns to reconstruct the frozen ViT features from the patches it
//! keeps (`seed-<s>/lavit-tokenizer`); (2) stage 2 of the plain (full) run — same seed, steps,
//! data order — with the LLM reading the kept, merged tokens instead of all patches, the
//! tokenizer frozen (`seed-<s>/lavit`). Reported on the held-out images: tokens kept per image
//! against the number of objects, codebook perplexity, reconstruction error; and the held-out
//! slot accuracy of (2) against the plain run.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use burn::module::Module;
use burn::tensor::{Device, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};
use vlalign_align::{LavitLossConfig, MleObjective, codebook_perplexity};
use vlalign_data::world::scene::Object;
use vlalign_models::{LavitConfig, LavitLlava, Llava};
use vlalign_train::{LavitLlavaTrainee, LavitTokenizerTrainee, TrainConfig, trainable_params};

use crate::cal_llava::{Stage1Base, loss_curve};
use crate::inputs::{Inputs, read_valid};
use crate::run::RunOptions;

/// The LaVIT comparison's settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LavitSection {
    /// Train and report it.
    pub run: bool,
    /// Tokenizer training steps (stage 2 then takes `base.finetune`'s).
    pub tokenizer_steps: usize,
    /// Tokenizer learning rate.
    pub tokenizer_lr: f64,
    /// Codebook entries.
    pub codebook_size: usize,
    /// Code width.
    pub d_code: usize,
    /// Selector hidden width.
    pub hidden: usize,
    /// Loss weights, target keep ratio, Gumbel temperature.
    pub loss: LavitLossConfig,
}

impl Default for LavitSection {
    fn default() -> Self {
        Self {
            run: true,
            tokenizer_steps: 1000,
            tokenizer_lr: 2e-3,
            codebook_size: 128,
            d_code: 32,
            hidden: 64,
            loss: LavitLossConfig::default(),
        }
    }
}

/// Tokens kept per held-out image, by the image's number of objects.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct KeptByObjects {
    /// Objects in the image.
    pub objects: usize,
    /// Images with that many objects.
    pub images: usize,
    /// Mean tokens kept.
    pub kept: f64,
}

/// One seed's LaVIT run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LavitRun {
    /// Stage 2's seed (the plain `full` run with this seed is its baseline).
    pub seed: u64,
    /// Patches per image (what the plain model reads).
    pub patches: usize,
    /// Mean tokens kept per held-out image.
    pub kept_per_image: f64,
    /// The same by object count.
    pub kept_by_objects: Vec<KeptByObjects>,
    /// Pearson correlation of tokens kept and objects over held-out images.
    pub kept_objects_correlation: f64,
    /// `exp(H)` of the codes of the kept held-out tokens.
    pub codebook_perplexity: f64,
    /// Codes used at least once on the held-out images.
    pub codes_used: usize,
    /// `‖x̂ − x‖² / ‖x − x̄‖²` of every held-out patch's ViT feature (1: the mean feature).
    pub reconstruction_error: f64,
    /// Held-out slot accuracy of the LLM reading LaVIT tokens.
    pub slot_accuracy: f64,
    /// Trainable parameters: tokenizer (step 1) and projector + LLM (step 2).
    pub trainable_params: [usize; 2],
    /// Median optimizer step time of stage 2, ms.
    pub step_ms: f64,
}

/// What a LaVIT run hands back besides its numbers.
pub struct LavitOutcome {
    /// The numbers (slot accuracy filled by the caller).
    pub run: LavitRun,
    /// Loss curves of both steps.
    pub curves: Vec<(String, Vec<(usize, f64)>)>,
    /// The stage-2 model.
    pub model: LavitLlava,
}

/// A fresh tokenizer beside `stage1`, sized to its ViT features.
pub fn lavit_start(section: &LavitSection, stage1: &Llava, image_size: usize) -> LavitLlava {
    let device = stage1.multi_modal_projector.devices()[0].clone();
    let probe = Tensor::<4>::zeros([1, 3, image_size, image_size], &device);
    let [_, tokens, d] = stage1.valid().vision_features(probe.inner()).dims();
    let tokenizer = LavitConfig::new(d, tokens)
        .with_hidden(section.hidden)
        .with_d_code(section.d_code)
        .with_codebook_size(section.codebook_size)
        .init(&device);
    LavitLlava {
        llava: stage1.clone(),
        tokenizer,
    }
}

/// Train the tokenizer of `model`, then stage 2 (`tc`: the plain run's settings) with the LLM
/// reading its tokens, and measure the tokenizer on the held-out images.
pub fn lavit_run(
    section: &LavitSection,
    tc: TrainConfig,
    model: LavitLlava,
    base: &Stage1Base,
    inputs: &Inputs,
    world_dir: &Path,
    opts: &RunOptions,
) -> Result<LavitOutcome, String> {
    let mut tok_tc = tc.clone();
    tok_tc.steps = section.tokenizer_steps;
    tok_tc.optim.lr = section.tokenizer_lr;
    let trainee = LavitTokenizerTrainee::new(model, section.loss.clone(), tc.seed);
    let tok_params = trainable_params(&trainee);
    let name = format!("seed-{}/lavit-tokenizer", tc.seed);
    eprintln!(
        "{name}: {} steps, {tok_params} trainable parameters",
        tok_tc.steps
    );
    let (trained, tok_report) = opts.fit_stage(
        trainee,
        base.data.clone(),
        inputs.batcher.clone(),
        &tok_tc,
        &name,
        &[
            ("reconstruction", "reconstruction"),
            ("keep_ratio", "keep ratio"),
        ],
    )?;
    // Stage 2: the stage-1 LLaVA's trainable parts as in the plain run, the tokenizer frozen.
    let model = LavitLlava {
        llava: base.model.clone(),
        tokenizer: trained.model.tokenizer.no_grad(),
    };
    let llm_params = trainable_params(&model);
    let name = format!("seed-{}/lavit", tc.seed);
    eprintln!(
        "{name}: {} steps, {llm_params} trainable parameters",
        tc.steps
    );
    let (trained, report) = opts.fit_stage(
        LavitLlavaTrainee::new(model, Arc::new(MleObjective)),
        base.data.clone(),
        inputs.batcher.clone(),
        &tc,
        &name,
        &[],
    )?;
    let model = trained.model;
    let held_out = measure(&model, inputs, world_dir, &opts.device)?;
    Ok(LavitOutcome {
        run: LavitRun {
            seed: tc.seed,
            slot_accuracy: f64::NAN,
            trainable_params: [tok_params, llm_params],
            step_ms: report.median_step_ms().unwrap_or(0.0),
            ..held_out
        },
        curves: vec![
            ("tokenizer-lavit".into(), loss_curve(&tok_report)),
            ("finetune-lavit".into(), loss_curve(&report)),
        ],
        model,
    })
}

/// The held-out images of the world's captions with their object counts.
fn held_out_images(world_dir: &Path) -> Result<Vec<(String, usize)>, String> {
    let path = world_dir.join("scenes.json");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let scenes: BTreeMap<String, Vec<Object>> =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out = Vec::new();
    for record in read_valid(&world_dir.join("val_captions.json"))? {
        let Some(image) = record.images.first() else {
            continue;
        };
        let objects = scenes
            .get(image)
            .ok_or_else(|| format!("{}: no scene for {image}", path.display()))?;
        out.push((image.clone(), objects.len()));
    }
    Ok(out)
}

/// What the tokenizer did to the held-out images, image by image.
#[derive(Default)]
struct HeldOut {
    /// Tokens kept per image.
    kept: Vec<usize>,
    /// Codes of the kept tokens.
    codes: Vec<i64>,
    /// Patches per image.
    patches: usize,
    /// Σ (x̂ − x)², Σ x per channel, Σ x², patches seen: the relative error over all images.
    err: f64,
    sum: Vec<f64>,
    sq: f64,
    count: usize,
}

impl HeldOut {
    /// Tokenize `images` `[n, 3, H, W]` deterministically and add what happened.
    fn add(&mut self, model: &LavitLlava, images: Tensor<4>) -> Result<(), String> {
        let features = model.features(images);
        let out = model.tokenizer.forward(features.clone(), None);
        let [n, t, d] = features.dims();
        self.patches = t;
        let keep: Vec<f32> = host(out.keep)?;
        let code: Vec<i64> = host_int(out.codes)?;
        for i in 0..n {
            let row = &keep[i * t..(i + 1) * t];
            self.kept.push(row.iter().filter(|&&k| k > 0.5).count());
            let kept_codes = (0..t).filter(|&j| row[j] > 0.5).map(|j| code[i * t + j]);
            self.codes.extend(kept_codes);
        }
        self.err += (out.reconstruction - features.clone())
            .powi_scalar(2)
            .sum()
            .into_scalar::<f64>();
        let channel: Vec<f32> = host(features.clone().sum_dim(1).sum_dim(0).reshape([1, d]))?;
        self.sum.resize(d, 0.0);
        (self.sum.iter_mut().zip(channel)).for_each(|(s, c)| *s += f64::from(c));
        self.sq += features.powi_scalar(2).sum().into_scalar::<f64>();
        self.count += n * t;
        Ok(())
    }

    /// `‖x̂ − x‖² / ‖x − x̄‖²` over every image and patch seen.
    fn reconstruction_error(&self) -> f64 {
        let mean_sq = self.sum.iter().map(|s| s * s).sum::<f64>() / self.count.max(1) as f64;
        self.err / (self.sq - mean_sq).max(1e-12)
    }
}

/// Tokens kept, codes and reconstruction of the deterministic tokenizer on the held-out images.
fn measure(
    model: &LavitLlava,
    inputs: &Inputs,
    world_dir: &Path,
    device: &Device,
) -> Result<LavitRun, String> {
    let model = model.valid();
    let images = held_out_images(world_dir)?;
    let size = inputs.batcher.image_size;
    let mut seen = HeldOut::default();
    for chunk in images.chunks(32) {
        let mut pixels = Vec::new();
        for (name, _) in chunk {
            let path = inputs.images.join(name);
            let image = inputs.processor.load(&path);
            pixels.extend(image.map_err(|e| format!("{}: {e}", path.display()))?);
        }
        let shape = [chunk.len(), 3, size, size];
        seen.add(
            &model,
            Tensor::from_data(TensorData::new(pixels, shape), device),
        )?;
    }
    let objects: Vec<usize> = images.iter().map(|(_, o)| *o).collect();
    let mut by: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (&k, &o) in seen.kept.iter().zip(&objects) {
        by.entry(o).or_default().push(k);
    }
    let mean = |v: &[usize]| v.iter().sum::<usize>() as f64 / v.len().max(1) as f64;
    let mut used = seen.codes.clone();
    used.sort_unstable();
    used.dedup();
    let codebook_size = model.tokenizer.codebook.dims()[0];
    Ok(LavitRun {
        seed: 0,
        patches: seen.patches,
        kept_per_image: mean(&seen.kept),
        kept_by_objects: by
            .into_iter()
            .map(|(objects, ks)| KeptByObjects {
                objects,
                images: ks.len(),
                kept: mean(&ks),
            })
            .collect(),
        kept_objects_correlation: pearson(&seen.kept, &objects),
        codebook_perplexity: codebook_perplexity(&seen.codes, codebook_size),
        codes_used: used.len(),
        reconstruction_error: seen.reconstruction_error(),
        slot_accuracy: f64::NAN,
        trainable_params: [0, 0],
        step_ms: 0.0,
    })
}

fn host(x: Tensor<2>) -> Result<Vec<f32>, String> {
    x.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| format!("{e:?}"))
}

fn host_int(x: Tensor<2, Int>) -> Result<Vec<i64>, String> {
    x.into_data()
        .convert::<i64>()
        .try_into_vec::<i64>()
        .map_err(|e| format!("{e:?}"))
}

/// Pearson correlation of `a` and `b` (0 when either is constant).
fn pearson(a: &[usize], b: &[usize]) -> f64 {
    let n = a.len().min(b.len()) as f64;
    if n < 2.0 {
        return 0.0;
    }
    let (ma, mb) = (
        a.iter().sum::<usize>() as f64 / n,
        b.iter().sum::<usize>() as f64 / n,
    );
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (&x, &y) in a.iter().zip(b) {
        let (dx, dy) = (x as f64 - ma, y as f64 - mb);
        sab += dx * dy;
        saa += dx * dx;
        sbb += dy * dy;
    }
    if saa == 0.0 || sbb == 0.0 {
        return 0.0;
    }
    sab / (saa * sbb).sqrt()
}
