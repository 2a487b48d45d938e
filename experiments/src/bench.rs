//! The benchmark: fixed model sizes and fixed work, timed the way `tools/bench_torch.py` times
//! the same architecture in PyTorch. The presets live in `tools/bench_presets.json`, read by both
//! sides, so the two can only disagree about the code, never about the shapes.
//!
//! Measured per preset: a training step (forward, loss, backward, AdamW with per-tensor
//! clipping, exactly the step `vlalign-train` runs) with MLE and with CAL; a no-grad forward;
//! the two contrast passes CAL can use (our text-only pass and the reference's full pass with
//! the image keys masked); VIG scoring (real and blurred images in one batched forward); and
//! KV-cache greedy generation at each batch size of the preset; and a DPO step with each of
//! the three reference set-ups (`bench_dpo`). Each row is the median of the
//! timed iterations after warm-up, with tokens (or samples) per second and the peak resident
//! memory of the process during that row.

use std::sync::Arc;
use std::time::Instant;

use burn::module::Module;
use burn::tensor::{Bool, Device, Distribution, Int, Tensor, TensorData};
use burn::train::Learner;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use vlalign_align::vig::vig_scores;
use vlalign_align::{CalObjective, MleObjective, Objective};
use vlalign_data::{IGNORE, Padding, VlmBatch};
use vlalign_models::{
    DecoderConfig, GenerationConfig, Llava, LlavaConfig, LlavaInput, VisionConfig,
};
use vlalign_train::{OptimConfig, Trainee};

/// The presets file, shared with `tools/bench_torch.py`.
pub const PRESETS_JSON: &str = include_str!("../../tools/bench_presets.json");

/// One benchmark configuration: the architecture and the work.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preset {
    /// Name (`tiny`, `small`).
    pub name: String,
    /// Image side, pixels.
    pub image_size: usize,
    /// Patch side, pixels.
    pub patch_size: usize,
    /// ViT width.
    pub vision_width: usize,
    /// ViT MLP width.
    pub vision_intermediate: usize,
    /// ViT layers.
    pub vision_layers: usize,
    /// ViT heads.
    pub vision_heads: usize,
    /// Vocabulary (the image token is `vocab − 1`).
    pub vocab: usize,
    /// Decoder width.
    pub width: usize,
    /// Decoder SwiGLU width.
    pub intermediate: usize,
    /// Decoder layers.
    pub layers: usize,
    /// Decoder query heads.
    pub heads: usize,
    /// Decoder key/value heads.
    pub kv_heads: usize,
    /// Training / scoring batch.
    pub batch: usize,
    /// Sequence length, image slots included.
    pub seq: usize,
    /// Supervised tokens at the end of each row.
    pub answer_tokens: usize,
    /// Untimed iterations first.
    pub warmup: usize,
    /// Timed iterations (the median is reported).
    pub iters: usize,
    /// VIG blur σ, pixels.
    pub vig_sigma: f32,
    /// Text tokens after the image in a generation prompt.
    pub gen_prompt_text: usize,
    /// Tokens generated per prompt.
    pub gen_new_tokens: usize,
    /// Generation batch sizes.
    pub gen_batches: Vec<usize>,
}

#[derive(Deserialize)]
struct PresetsFile {
    presets: Vec<Preset>,
}

/// Every preset of [`PRESETS_JSON`].
pub fn presets() -> Vec<Preset> {
    serde_json::from_str::<PresetsFile>(PRESETS_JSON)
        .expect("tools/bench_presets.json is valid")
        .presets
}

impl Preset {
    /// Image slots per image.
    pub fn image_tokens(&self) -> usize {
        (self.image_size / self.patch_size).pow(2)
    }

    /// The model configuration (LLaVA-1.5 layout: CLIP tower read at layer −2 without the
    /// class token, `mlp2x_gelu` projector, LLaMA decoder with untied head).
    pub fn llava(&self) -> LlavaConfig {
        let vision = VisionConfig::new(
            self.vision_width,
            self.vision_intermediate,
            self.vision_layers,
            self.vision_heads,
            self.image_size,
            self.patch_size,
        );
        let text = DecoderConfig::new(
            self.vocab,
            self.width,
            self.intermediate,
            self.layers,
            self.heads,
            self.kv_heads,
        )
        .with_max_position_embeddings(4096);
        LlavaConfig::new(vision, text, self.vocab - 1)
    }

    fn check(&self) -> Result<(), String> {
        let fixed = 5 + self.image_tokens() + self.answer_tokens;
        if self.seq < fixed + 1 {
            return Err(format!(
                "preset {}: seq {} is too short for {} image slots and {} answer tokens",
                self.name,
                self.seq,
                self.image_tokens(),
                self.answer_tokens
            ));
        }
        if self.iters == 0 {
            return Err(format!("preset {}: iters must be at least 1", self.name));
        }
        Ok(())
    }
}

/// Parameter counts, as the PyTorch side prints them.
#[derive(Clone, Debug, Serialize)]
pub struct ParamCounts {
    /// Vision tower (all layers, `post_layernorm` included, as HF holds them).
    pub vision: usize,
    /// Projector.
    pub projector: usize,
    /// Decoder with embeddings and head.
    pub language: usize,
    /// Everything.
    pub total: usize,
}

/// One measured row.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    /// What was measured (`train_mle`, `gen_b8`, …).
    pub name: String,
    /// Median wall time of one iteration, ms.
    pub median_ms: f64,
    /// Fastest iteration, ms.
    pub min_ms: f64,
    /// Throughput: tokens/s (training, forward, generation) or samples/s (VIG).
    pub per_s: f64,
    /// Unit of `per_s`.
    pub unit: &'static str,
    /// Peak resident memory of the process during the row, MiB (`None` where the OS does not
    /// report it).
    pub peak_rss_mib: Option<f64>,
}

/// The rows of one preset on one device.
#[derive(Clone, Debug, Serialize)]
pub struct PresetResult {
    /// The preset.
    pub preset: Preset,
    /// Parameter counts.
    pub params: ParamCounts,
    /// Measurements.
    pub rows: Vec<Row>,
    /// CAL step time over MLE step time.
    pub cal_over_mle: f64,
}

/// Resets the kernel's peak-RSS counter (`VmHWM`) of this process, after handing the memory
/// malloc keeps free back (see [`crate::alloc`]), so each row's peak is its own; false where not
/// allowed.
fn reset_peak_rss() -> bool {
    crate::alloc::release_freed_memory();
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// The peak resident memory since the last reset, MiB.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// One thing to time: its name, work units per iteration and their unit, and the work.
pub(crate) struct Job<'a> {
    name: String,
    work: f64,
    unit: &'static str,
    run: Box<dyn FnMut() + 'a>,
}

impl<'a> Job<'a> {
    pub(crate) fn new(name: &str, work: f64, unit: &'static str, run: impl FnMut() + 'a) -> Self {
        Self {
            name: name.to_string(),
            work,
            unit,
            run: Box::new(run),
        }
    }
}

/// Time the jobs `warmup + iters` times each, interleaved (one iteration of each per round), so
/// that a machine whose speed drifts during the measurement affects them alike and their ratio
/// stays meaningful. The peak memory is the group's.
pub(crate) fn measure_interleaved(
    preset: &Preset,
    device: &Device,
    mut jobs: Vec<Job<'_>>,
) -> Vec<Row> {
    let can_reset = reset_peak_rss();
    for _ in 0..preset.warmup {
        for job in &mut jobs {
            (job.run)();
        }
    }
    let _ = device.sync();
    let mut times = vec![Vec::with_capacity(preset.iters); jobs.len()];
    for _ in 0..preset.iters {
        for (job, t) in jobs.iter_mut().zip(&mut times) {
            let start = Instant::now();
            (job.run)();
            let _ = device.sync();
            t.push(start.elapsed().as_secs_f64() * 1e3);
        }
    }
    let peak = if can_reset { peak_rss_mib() } else { None };
    jobs.iter()
        .zip(times)
        .map(|(job, mut t)| {
            t.sort_by(f64::total_cmp);
            let median = if t.len() % 2 == 1 {
                t[t.len() / 2]
            } else {
                (t[t.len() / 2 - 1] + t[t.len() / 2]) / 2.0
            };
            Row {
                name: job.name.clone(),
                median_ms: median,
                min_ms: t[0],
                per_s: job.work / (median / 1e3),
                unit: job.unit,
                peak_rss_mib: peak,
            }
        })
        .collect()
}

/// A training batch of random tokens and images: every row is
/// `[bos, 4 prompt tokens, image slots, question, answer]`, the answer supervised.
pub fn training_batch(preset: &Preset, seed: u64, device: &Device) -> VlmBatch {
    let mut rng = StdRng::seed_from_u64(seed);
    let image_token = (preset.vocab - 1) as i64;
    let slots = preset.image_tokens();
    let (b, t) = (preset.batch, preset.seq);
    let mut ids = Vec::with_capacity(b * t);
    let mut labels = Vec::with_capacity(b * t);
    for _ in 0..b {
        for pos in 0..t {
            let id = if pos == 0 {
                1
            } else if (5..5 + slots).contains(&pos) {
                image_token
            } else {
                rng.random_range(3..image_token)
            };
            ids.push(id);
            labels.push(if pos >= t - preset.answer_tokens {
                id
            } else {
                IGNORE
            });
        }
    }
    let images = Tensor::<4>::random(
        [b, 3, preset.image_size, preset.image_size],
        Distribution::Normal(0.0, 1.0),
        device,
    );
    VlmBatch {
        image_index: None,
        ids: (0..b).map(|i| format!("bench-{i}")).collect(),
        images: Some(images),
        image_sample: (0..b).collect(),
        input_ids: Tensor::<2, Int>::from_data(TensorData::new(ids, [b, t]), device),
        labels: Tensor::<2, Int>::from_data(TensorData::new(labels, [b, t]), device),
        attention_mask: Tensor::<2, Bool>::from_data(
            TensorData::new(vec![true; b * t], [b, t]),
            device,
        ),
        token_weights: None,
        truth: vec![vec![None; t]; b],
        boxes: Vec::new(),
        lengths: vec![t; b],
        padding: Padding::Right,
    }
}

fn param_counts(model: &Llava) -> ParamCounts {
    let vision = model.vision_tower.num_params();
    let projector = model.multi_modal_projector.num_params();
    let language = model.language_model.num_params();
    ParamCounts {
        vision,
        projector,
        language,
        total: vision + projector + language,
    }
}

/// Run the measurements of `preset` that `wanted` accepts (by row name) on `device` (without
/// autodiff; training runs on its autodiff twin). `progress` is told each row's name before it
/// runs.
pub fn run_preset(
    preset: &Preset,
    device: &Device,
    wanted: &dyn Fn(&str) -> bool,
    mut progress: impl FnMut(&str),
) -> Result<PresetResult, String> {
    preset.check()?;
    let model = preset.llava().init(&device.clone().autodiff());
    let params = param_counts(&model);
    let mut rows = train_rows(preset, &model, device, wanted, &mut progress)?;
    let step_ms = |rows: &[Row], name: &str| {
        rows.iter()
            .find(|r| r.name == name)
            .map_or(f64::NAN, |r| r.median_ms)
    };
    let cal_over_mle = step_ms(&rows, "train_cal") / step_ms(&rows, "train_mle");
    rows.extend(crate::bench_dpo::dpo_rows(
        preset,
        &model,
        device,
        wanted,
        &mut progress,
    )?);
    let inner = model.valid();
    rows.extend(no_grad_rows(preset, &inner, device, wanted, &mut progress));
    rows.extend(generation_rows(
        preset,
        &inner,
        device,
        wanted,
        &mut progress,
    ));
    Ok(PresetResult {
        preset: preset.clone(),
        params,
        rows,
        cal_over_mle,
    })
}

/// Training steps with MLE and with CAL, from the same initial weights, interleaved.
fn train_rows(
    preset: &Preset,
    model: &Llava,
    device: &Device,
    wanted: &dyn Fn(&str) -> bool,
    progress: &mut impl FnMut(&str),
) -> Result<Vec<Row>, String> {
    let train_device = device.clone().autodiff();
    let tokens = (preset.batch * preset.seq) as f64;
    let optim = OptimConfig {
        lr: 1e-4,
        warmup_steps: 0,
        ..OptimConfig::default()
    };
    let batch = training_batch(preset, 0, &train_device);
    let objectives: [(&str, Arc<dyn Objective<Llava>>); 2] = [
        ("train_mle", Arc::new(MleObjective)),
        ("train_cal", Arc::new(CalObjective::default())),
    ];
    let mut learners = Vec::new();
    for (name, objective) in objectives {
        if !wanted(name) {
            continue;
        }
        progress(name);
        let (optimizer, scheduler) = optim
            .init(preset.warmup + preset.iters + 1)
            .map_err(|e| e.to_string())?;
        learners.push((
            name,
            Learner::new(Trainee::new(model.clone(), objective), optimizer, scheduler),
        ));
    }
    let jobs: Vec<Job<'_>> = learners
        .iter_mut()
        .map(|(name, learner)| {
            let batch = &batch;
            Job::new(name, tokens, "tok/s", move || {
                let out = learner.train_step(batch.clone());
                learner.lr_step();
                learner.optimizer_step(out.grads);
            })
        })
        .collect();
    Ok(measure_interleaved(preset, device, jobs))
}

/// The no-grad passes: forward, CAL's two contrasts, VIG scoring.
fn no_grad_rows(
    preset: &Preset,
    inner: &Llava,
    device: &Device,
    wanted: &dyn Fn(&str) -> bool,
    progress: &mut impl FnMut(&str),
) -> Vec<Row> {
    let tokens = (preset.batch * preset.seq) as f64;
    let batch = training_batch(preset, 0, device);
    let input = || LlavaInput {
        image_index: None,
        input_ids: batch.input_ids.clone(),
        attention_mask: batch.attention_mask.clone(),
        images: batch.images.clone(),
    };
    let text_tokens = (preset.batch * (preset.seq - preset.image_tokens())) as f64;
    let jobs = [
        Job::new("forward", tokens, "tok/s", || {
            drop(inner.forward(input()).logits)
        }),
        Job::new("contrast_text_only", text_tokens, "tok/s", || {
            drop(inner.forward_text_only(input()).logits)
        }),
        Job::new("contrast_masked_full", tokens, "tok/s", || {
            drop(inner.forward_image_keys_masked(input()).logits)
        }),
        Job::new("vig_score", preset.batch as f64, "samples/s", || {
            drop(vig_scores(inner, &batch, preset.vig_sigma))
        }),
    ];
    let mut rows = Vec::new();
    for j in jobs {
        if wanted(&j.name) {
            progress(&j.name);
            rows.extend(measure_interleaved(preset, device, vec![j]));
        }
    }
    rows
}

/// Batched greedy generation with the KV cache, at each of the preset's batch sizes.
fn generation_rows(
    preset: &Preset,
    inner: &Llava,
    device: &Device,
    wanted: &dyn Fn(&str) -> bool,
    progress: &mut impl FnMut(&str),
) -> Vec<Row> {
    let mut rng = StdRng::seed_from_u64(1);
    let image_token = (preset.vocab - 1) as u32;
    let mut rows = Vec::new();
    for &gb in &preset.gen_batches {
        let name = format!("gen_b{gb}");
        if !wanted(&name) {
            continue;
        }
        let prompts: Vec<Vec<u32>> = (0..gb)
            .map(|_| {
                let mut p = vec![1u32];
                p.extend(std::iter::repeat_n(image_token, preset.image_tokens()));
                p.extend((0..preset.gen_prompt_text).map(|_| rng.random_range(3..image_token)));
                p
            })
            .collect();
        let images = Tensor::<4>::random(
            [gb, 3, preset.image_size, preset.image_size],
            Distribution::Normal(0.0, 1.0),
            device,
        );
        let config = GenerationConfig::new().with_max_new_tokens(preset.gen_new_tokens);
        progress(&name);
        let generate = Job::new(&name, (gb * preset.gen_new_tokens) as f64, "tok/s", || {
            let out = inner.generate(&prompts, Some(images.clone()), &config);
            debug_assert!(out.iter().all(|o| o.len() == preset.gen_new_tokens));
        });
        rows.extend(measure_interleaved(preset, device, vec![generate]));
    }
    rows
}

/// The table the binary prints (and `tools/bench_torch.py` prints in the same layout).
pub fn table(backend: &str, result: &PresetResult) -> String {
    let p = &result.params;
    let mut s = format!(
        "{} on {backend}: params vision {} projector {} language {} total {}; batch {} × seq {}\n",
        result.preset.name,
        p.vision,
        p.projector,
        p.language,
        p.total,
        result.preset.batch,
        result.preset.seq
    );
    s.push_str(&format!(
        "{:<22} {:>11} {:>11} {:>14} {:>10}\n",
        "measurement", "median ms", "min ms", "throughput", "peak MiB"
    ));
    for r in &result.rows {
        s.push_str(&format!(
            "{:<22} {:>11.2} {:>11.2} {:>14} {:>10}\n",
            r.name,
            r.median_ms,
            r.min_ms,
            format!("{:.1} {}", r.per_s, r.unit),
            r.peak_rss_mib.map_or("-".into(), |m| format!("{m:.0}")),
        ));
    }
    s.push_str(&format!("CAL / MLE step: {:.3}\n", result.cal_over_mle));
    s
}
