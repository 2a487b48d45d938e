//! `seed_ideas`, item 2: PixelLLM's localisation head. Stage 2 of the plain (full) run, the
//! same seed, steps and data order, with a head on the LLM's last hidden states trained by
//! `LM loss + weight · L1` on the tokens that name an object (the world gives each such word
//! its object's box; the target is the box's centre). Evaluated on the held-out split by
//! teacher forcing: mean centre error in the world image's pixels per word kind and the share
//! of points inside the object's box — on the record's own image, with the images swapped
//! between records (the language-prior baseline: the text alone), and against the best
//! constant point (the mean centre).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::Dataset;
use burn::module::Module;
use burn::tensor::{Device, Tensor};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use vlalign_align::{LocateModel, PixelObjective, box_centre, mean_pixel_error};
use vlalign_data::{Item, VlmBatch, VlmBatcher, WordKind};
use vlalign_models::PixelLlava;
use vlalign_train::{PixelTrainee, StepRecord, TrainConfig, trainable_params};

use crate::cal_llava::{Stage1Base, loss_curve};
use crate::inputs::{Inputs, read_valid};
use crate::run::RunOptions;

/// The pixel-head comparison's settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PixelSection {
    /// Train and report it.
    pub run: bool,
    /// Weight of the localisation L1 beside the LM loss.
    pub weight: f32,
    /// The head's hidden width.
    pub hidden: usize,
    /// Held-out images drawn in `pixel_head.png`.
    pub pictures: usize,
}

impl Default for PixelSection {
    fn default() -> Self {
        Self {
            run: true,
            weight: 1.0,
            hidden: 128,
            pictures: 6,
        }
    }
}

/// Localisation scores of one word kind (or of all).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Located {
    /// Tokens scored.
    pub tokens: usize,
    /// Mean distance of the predicted and the true centre, in the world image's pixels.
    pub mean_px: f64,
    /// Share of predicted points inside the object's box.
    pub within_box: f64,
}

/// Localisation scores overall and per word kind.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Localisation {
    /// All located tokens.
    pub all: Located,
    /// Per word kind (color, shape, size, position).
    pub by_kind: Vec<(String, Located)>,
}

/// One located token: what the picture draws.
#[derive(Clone, Debug)]
pub struct Placed {
    /// Record id.
    pub id: String,
    /// Word kind.
    pub kind: WordKind,
    /// Predicted point in [0, 1]².
    pub predicted: [f32; 2],
    /// The object's box.
    pub bbox: [f32; 4],
}

/// One seed's pixel-head run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PixelRun {
    /// Stage 2's seed (the plain `full` run with this seed is its baseline).
    pub seed: u64,
    /// Held-out grounded-slot accuracy of the model trained with the head.
    pub slot_accuracy: f64,
    /// On the records' own images.
    pub own: Localisation,
    /// With the images swapped between records.
    pub swapped: Localisation,
    /// Predicting the mean true centre for every token.
    pub constant: Localisation,
    /// Trainable parameters (LLM + projector + head).
    pub trainable_params: usize,
    /// Median optimizer step time, ms.
    pub step_ms: f64,
    /// The localisation L1 of the last training step.
    pub final_l1: f64,
}

/// What a pixel run hands back besides its numbers.
pub struct PixelOutcome {
    /// The numbers.
    pub run: PixelRun,
    /// Its loss curve.
    pub curve: (String, Vec<(usize, f64)>),
    /// The model (its slot accuracy is measured by the caller, as for the PLoRA runs).
    pub model: PixelLlava,
    /// The first held-out tokens, located on their own images.
    pub placed: Vec<Placed>,
}

/// Train stage 2 of `model` with a fresh head (`tc`: the plain run's settings), then locate
/// the held-out tokens.
pub fn pixel_run(
    section: &PixelSection,
    tc: TrainConfig,
    model: PixelLlava,
    base: &Stage1Base,
    inputs: &Inputs,
    opts: &RunOptions,
) -> Result<PixelOutcome, String> {
    let trainable = trainable_params(&model);
    let name = format!("seed-{}/pixel", tc.seed);
    eprintln!(
        "{name}: {} steps, {trainable} trainable parameters",
        tc.steps
    );
    let objective = Arc::new(PixelObjective {
        weight: section.weight,
    });
    let (trained, report) = opts.fit_stage(
        PixelTrainee::new(model, objective),
        base.data.clone(),
        inputs.batcher.clone(),
        &tc,
        &name,
        &[("localisation_l1", "localisation L1")],
    )?;
    let model = trained.model;
    let size = world_image_px(base, &inputs.images)?;
    let val = &base.data.1;
    let own = locate(&model, val, &inputs.batcher, &opts.device, false, opts)?;
    let swapped = locate(&model, val, &inputs.batcher, &opts.device, true, opts)?;
    let run = PixelRun {
        seed: tc.seed,
        slot_accuracy: f64::NAN,
        own: own.scores(size),
        swapped: swapped.scores(size),
        constant: own.constant().scores(size),
        trainable_params: trainable,
        step_ms: report.median_step_ms().unwrap_or(0.0),
        final_l1: last_mean(&report.steps, "localisation_l1", 20),
    };
    let keep = pictured_ids(&own.0, section.pictures);
    Ok(PixelOutcome {
        run,
        curve: ("finetune-pixel".into(), loss_curve(&report)),
        model,
        placed: own.0.into_iter().filter(|p| keep.contains(&p.id)).collect(),
    })
}

/// The mean of diagnostic `name` over the last `n` steps (NaN when none logged it).
fn last_mean(steps: &[StepRecord], name: &str, n: usize) -> f64 {
    let v: Vec<f64> = steps
        .iter()
        .rev()
        .take(n)
        .filter_map(|s| s.diagnostics.iter().find(|(k, _)| k == name).map(|x| x.1))
        .collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.iter().sum::<f64>() / v.len() as f64
}

/// The `n` records of `placed` with the most located words (captions: every object), in
/// their order.
fn pictured_ids(placed: &[Placed], n: usize) -> Vec<String> {
    let mut counts: Vec<(String, usize)> = Vec::new();
    for p in placed {
        match counts.last_mut() {
            Some((id, k)) if *id == p.id => *k += 1,
            _ => counts.push((p.id.clone(), 1)),
        }
    }
    let mut by_count: Vec<usize> = (0..counts.len()).collect();
    by_count.sort_by_key(|&i| std::cmp::Reverse(counts[i].1));
    by_count.truncate(n);
    by_count.sort_unstable();
    by_count.into_iter().map(|i| counts[i].0.clone()).collect()
}

/// Side of the world's PNGs in pixels (read from the first held-out image).
fn world_image_px(base: &Stage1Base, images: &Path) -> Result<f32, String> {
    let record = base
        .val_records
        .iter()
        .find(|r| !r.images.is_empty())
        .ok_or("no held-out record with an image")?;
    let path = images.join(&record.images[0]);
    let (w, _) = image::image_dimensions(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(w as f32)
}

/// Every located held-out token.
#[derive(Default)]
struct Tokens(Vec<Placed>);

impl Tokens {
    /// The same tokens, each predicted at the mean true centre.
    fn constant(&self) -> Tokens {
        let n = self.0.len().max(1) as f32;
        let (sx, sy) = self.0.iter().fold((0.0, 0.0), |(x, y), p| {
            let c = box_centre(p.bbox);
            (x + c[0], y + c[1])
        });
        let mean = [sx / n, sy / n];
        Tokens(
            self.0
                .iter()
                .map(|p| Placed {
                    predicted: mean,
                    ..p.clone()
                })
                .collect(),
        )
    }

    /// Mean error in pixels (`size`-pixel images) and share within the box, overall and per
    /// word kind.
    fn scores(&self, size: f32) -> Localisation {
        let score = |ps: &[&Placed]| {
            let predicted: Vec<[f32; 2]> = ps.iter().map(|p| p.predicted).collect();
            let centres: Vec<[f32; 2]> = ps.iter().map(|p| box_centre(p.bbox)).collect();
            let inside = ps
                .iter()
                .filter(|p| {
                    let ([x0, y0, x1, y1], [x, y]) = (p.bbox, p.predicted);
                    x0 <= x && x <= x1 && y0 <= y && y <= y1
                })
                .count();
            Located {
                tokens: ps.len(),
                mean_px: mean_pixel_error(&predicted, &centres, size, size),
                within_box: inside as f64 / ps.len().max(1) as f64,
            }
        };
        let mut kinds: BTreeMap<&str, Vec<&Placed>> = BTreeMap::new();
        for p in &self.0 {
            kinds.entry(p.kind.name()).or_default().push(p);
        }
        Localisation {
            all: score(&self.0.iter().collect::<Vec<_>>()),
            by_kind: kinds
                .into_iter()
                .map(|(k, ps)| (k.to_string(), score(&ps)))
                .collect(),
        }
    }
}

/// Teacher-forced points of every held-out token that names an object; with `swap`, each
/// image moved to the next record of its batch.
fn locate(
    model: &PixelLlava,
    val: &Arc<dyn Dataset<Item>>,
    batcher: &VlmBatcher,
    device: &Device,
    swap: bool,
    opts: &RunOptions,
) -> Result<Tokens, String> {
    let model = model.valid();
    let n = val.len();
    let bar = if opts.verbose {
        ProgressBar::new(n as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("locating tokens {bar:40} {pos}/{len}")
            .expect("valid template"),
    );
    let mut tokens = Tokens::default();
    for start in (0..n).step_by(16) {
        let end = (start + 16).min(n);
        let items = (start..end)
            .map(|i| val.get(i).map_err(|e| format!("held-out item {i}: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        let mut batch = batcher.batch(items, device);
        if swap {
            batch.images = batch.images.map(roll);
        }
        tokens.0.extend(placed_tokens(&model, &batch)?);
        bar.inc((end - start) as u64);
    }
    bar.finish_and_clear();
    Ok(tokens)
}

/// Images `[n, …]` moved by one: image `i` becomes image `i + 1`.
fn roll(images: Tensor<4>) -> Tensor<4> {
    let n = images.dims()[0];
    if n < 2 {
        return images;
    }
    Tensor::cat(
        vec![images.clone().narrow(0, 1, n - 1), images.narrow(0, 0, 1)],
        0,
    )
}

/// The point written for each token of `batch` that names an object (read at the position
/// before it, which writes it).
fn placed_tokens(model: &PixelLlava, batch: &VlmBatch) -> Result<Vec<Placed>, String> {
    let points = model.points_no_grad(batch);
    let [_, seq, _] = points.dims();
    let host: Vec<f32> = points
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| format!("{e:?}"))?;
    let mut out = Vec::new();
    for (row, boxes) in batch.boxes.iter().enumerate() {
        for (t, bbox) in boxes.iter().enumerate().skip(1) {
            let (Some(bbox), Some(truth)) = (bbox, batch.truth[row][t]) else {
                continue;
            };
            let at = 2 * (row * seq + t - 1);
            out.push(Placed {
                id: batch.ids[row].clone(),
                kind: truth.kind,
                predicted: [host[at], host[at + 1]],
                bbox: *bbox,
            });
        }
    }
    Ok(out)
}

/// Draw the pictured records' images with each located word's true centre and predicted
/// point (`seed_ideas_pixel_plot`), the images found through the world's held-out records.
pub fn picture(
    path: &Path,
    world_dir: &Path,
    images: &Path,
    placed: &[Placed],
) -> Result<(), String> {
    let mut image_of = BTreeMap::new();
    for split in ["val_captions.json", "val_qa.json"] {
        let file = world_dir.join(split);
        if !file.exists() {
            continue;
        }
        for record in read_valid(&file)? {
            if let Some(first) = record.images.first() {
                image_of.insert(record.id.clone(), images.join(first));
            }
        }
    }
    crate::seed_ideas_pixel_plot::draw(path, &image_of, placed)
}
