//! `sam_group_caption`: does SAM's W-Former help a Q-Former model on multi-image tasks?
//!
//! Per seed: one BLIP-2-style model (BLIP ViT, Q-Former, decoder) trained from scratch on the
//! world's captions, group records ("which object appears in every image?") and change pairs
//! ("what changed?") — the base, whose held-out caption accuracy against the images-swapped
//! baseline shows that it reads the image. From the base, the same continued training twice
//! (same steps, data order, seed): the plain Q-Former, and SAM (the W-Former added with zero
//! bridges, so it starts as the base exactly). Both are scored on held-out groups and pairs:
//! CIDEr-D, BLEU-4, ROUGE-L (SAM's metrics), exact shared-object accuracy per group size, and
//! change accuracy.

use std::path::PathBuf;
use std::sync::Arc;

use burn::data::dataset::Dataset;
use burn::module::Module;
use serde::{Deserialize, Serialize};
use vlalign_align::{MleObjective, Objective};
use vlalign_data::{Encoder, ImageProcessor, Item, Record, Template, VlmBatcher};
use vlalign_models::{
    Blip2, Blip2Config, BlipVisionConfig, DecoderConfig, Pooling, QFormerConfig, WFormer,
    WFormerConfig,
};
use vlalign_train::{Blip2Trainee, TrainConfig, TrainReport};

use crate::cal_llava::stage1_captions;
use crate::eval::captions::{CaptionAccuracy, CaptionRun};
use crate::inputs::{ensure_world, read_valid};
use crate::run::{RunOptions, WorldSection};
use crate::sam_eval::{GroupEval, GroupScores, score_groups};
use crate::setup::{Encoders, draw_now};

/// The model's sizes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SamModelSize {
    /// Input side, pixels.
    pub image_size: usize,
    /// Patch side, pixels.
    pub patch_size: usize,
    /// Vision width.
    pub vision_width: usize,
    /// Vision layers.
    pub vision_layers: usize,
    /// Q-Former width.
    pub qformer_width: usize,
    /// Q-Former layers (cross-attention in each).
    pub qformer_layers: usize,
    /// Learned queries = `<image>` slots per image.
    pub queries: usize,
    /// Decoder width.
    pub width: usize,
    /// Decoder layers.
    pub layers: usize,
}

impl Default for SamModelSize {
    fn default() -> Self {
        Self {
            image_size: 48,
            patch_size: 8,
            vision_width: 64,
            vision_layers: 3,
            qformer_width: 64,
            qformer_layers: 2,
            queries: 8,
            width: 128,
            layers: 2,
        }
    }
}

impl SamModelSize {
    /// The plain Q-Former model for a vocabulary of `vocab` with `<image>` = `image_token`.
    pub fn blip2(&self, vocab: usize, image_token: usize) -> Blip2Config {
        let heads = |w: usize| (w / 16).max(1);
        let vision = BlipVisionConfig::new(
            self.vision_width,
            self.vision_width * 2,
            self.vision_layers,
            heads(self.vision_width),
            self.image_size,
            self.patch_size,
        );
        let qformer = QFormerConfig::new(
            self.qformer_width,
            self.qformer_layers,
            heads(self.qformer_width),
            self.qformer_width * 2,
            self.vision_width,
        )
        .with_cross_attention_frequency(1);
        let text = DecoderConfig::new(vocab, self.width, self.width * 2, self.layers, 4, 2)
            .with_max_position_embeddings(1024);
        Blip2Config::new(vision, qformer, text, image_token).with_num_query_tokens(self.queries)
    }
}

/// SAM's W-Former settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SamSection {
    /// What the group context pools: `all` (the public code) or `others` (the paper).
    pub pooling: Pooling,
    /// Layer after which the main stream enters the second (default: the last).
    pub inject_layer: Option<usize>,
    /// Layer after which the second stream returns into the main (default: the last).
    pub return_layer: Option<usize>,
    /// Train only the W-Former (the public code's default) instead of the whole model.
    pub wformer_only: bool,
}

impl Default for SamSection {
    fn default() -> Self {
        Self {
            pooling: Pooling::All,
            inject_layer: None,
            return_layer: None,
            wformer_only: false,
        }
    }
}

/// Evaluation settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SamEvalSection {
    /// Held-out group records scored.
    pub groups: usize,
    /// Held-out change pairs scored.
    pub changes: usize,
    /// Held-out captions for the grounding check.
    pub captions: usize,
    /// Generation batch.
    pub batch_size: usize,
    /// Generation budget.
    pub max_new_tokens: usize,
    /// Held-out split: `val` or `test`.
    pub split: String,
}

impl Default for SamEvalSection {
    fn default() -> Self {
        Self {
            groups: 200,
            changes: 150,
            captions: 100,
            batch_size: 32,
            max_new_tokens: 16,
            split: "val".into(),
        }
    }
}

/// Everything the experiment does; written to the run directory as `config.toml`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SamGroupCaptionConfig {
    /// Model seed.
    pub seed: u64,
    /// Seeds compared (`seed`, `seed + 1`, …), each in `seed-<s>/`.
    pub seeds: usize,
    /// Longest sequence.
    pub max_len: usize,
    /// The world (with many groups and change pairs).
    pub world: WorldSection,
    /// Model sizes.
    pub model: SamModelSize,
    /// The base: captions, groups and change pairs from scratch.
    pub base: TrainConfig,
    /// The compared continuation on groups and change pairs.
    pub compare: TrainConfig,
    /// The base also trains on the single-image QA records (questions about one object teach
    /// a decoder from scratch to look things up by content, as in `cal_llava`'s stage 1).
    pub base_qa: bool,
    /// The W-Former.
    pub sam: SamSection,
    /// Evaluation.
    pub eval: SamEvalSection,
}

impl Default for SamGroupCaptionConfig {
    fn default() -> Self {
        let stage = |steps: usize, lr: f64| {
            let mut c = TrainConfig {
                steps,
                batch_size: 16,
                checkpoint_every: 200,
                ..TrainConfig::default()
            };
            c.optim.lr = lr;
            c.optim.warmup_steps = steps / 20;
            c
        };
        let world = WorldSection {
            dir: PathBuf::from("data/world-groups"),
            images: 2000,
            groups: Some(2500),
            changes: 1500,
            ..WorldSection::default()
        };
        Self {
            seed: 0,
            seeds: 3,
            max_len: 160,
            world,
            model: SamModelSize::default(),
            base: stage(3000, 1e-3),
            compare: stage(300, 5e-4),
            base_qa: true,
            sam: SamSection::default(),
            eval: SamEvalSection::default(),
        }
    }
}

impl SamGroupCaptionConfig {
    /// The CI smoke profile: a small world and model, a few steps, one seed.
    pub fn quick() -> Self {
        let mut c = Self {
            seeds: 1,
            // The quick world's small vocabulary spells words in more tokens.
            max_len: 256,
            world: WorldSection {
                dir: PathBuf::from("data/world-groups-quick"),
                images: 100,
                groups: Some(60),
                changes: 40,
                vocab: 300,
                ..WorldSection::default()
            },
            ..Self::default()
        };
        c.model.image_size = 32;
        c.model.width = 64;
        for (stage, steps) in [(&mut c.base, 10), (&mut c.compare, 6)] {
            stage.steps = steps;
            stage.batch_size = 4;
            stage.checkpoint_every = 5;
            stage.optim.warmup_steps = 1;
        }
        c.eval.groups = 8;
        c.eval.changes = 6;
        c.eval.captions = 6;
        c
    }

    /// The configuration of the `k`-th seed: model init and data order move, the world stays.
    pub fn seeded(&self, k: usize) -> Self {
        let mut c = self.clone();
        c.seed = self.seed + k as u64;
        c.base.seed = self.base.seed + k as u64;
        c.compare.seed = self.compare.seed + k as u64;
        c.seeds = 1;
        c
    }
}

/// One compared model's scores.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SamRun {
    /// `qformer` or `sam`.
    pub model: String,
    /// Held-out group and change scores.
    pub scores: GroupScores,
    /// Trainable parameters of the continuation.
    pub trainable_params: usize,
    /// Median step time of the continuation, ms.
    pub step_ms: f64,
    /// SAM: Frobenius norms of the trained bridges (main → second, second → main); both start
    /// at zero, so they say how far training moved the model away from the plain Q-Former.
    pub bridge_norms: Option<[f64; 2]>,
}

/// One seed's results.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SamOutcome {
    /// The seed.
    pub seed: u64,
    /// The base's caption accuracy (own images and swapped).
    pub grounding: CaptionAccuracy,
    /// The base itself on the group tasks.
    pub base: GroupScores,
    /// The compared models.
    pub runs: Vec<SamRun>,
    /// Loss curves.
    pub curves: Vec<(String, Vec<(usize, f64)>)>,
}

/// What every stage of one seed shares.
struct Setup {
    enc: Encoders,
    processor: ImageProcessor,
    images: PathBuf,
    batcher: VlmBatcher,
}

impl Setup {
    /// How the group tasks are answered and scored.
    fn group_eval(&self, config: &SamGroupCaptionConfig, opts: &RunOptions) -> GroupEval<'_> {
        GroupEval {
            encoder: &self.enc.chat,
            processor: &self.processor,
            image_folder: &self.images,
            batch_size: config.eval.batch_size,
            max_new_tokens: config.eval.max_new_tokens,
            verbose: opts.verbose,
        }
    }
}

/// One seed's starting point, made on the calling thread so that seeds can then train in
/// parallel: the inputs, the freshly initialised base and W-Former (materialised, so that
/// the device's seeded random stream is not shared between threads).
pub struct Start {
    setup: Setup,
    init: Blip2,
    wformer: WFormer,
}

/// The inputs and initial weights of `config`'s seed (the world must exist: [`ensure_world`]).
pub fn start(config: &SamGroupCaptionConfig, opts: &RunOptions) -> Result<Start, String> {
    let err = |e: &dyn std::fmt::Display| e.to_string();
    let tokenizer = ensure_world(&config.world, false)?;
    let mut enc = Encoders::new(
        &tokenizer,
        Template::VicunaV1,
        config.model.queries,
        config.max_len,
    )
    .map_err(|e| err(&e))?;
    enc.chat = enc.chat.with_system(config.world.system.clone());
    let model = config
        .model
        .blip2(tokenizer.vocab_size(), enc.chat.image_token_id() as usize);
    let device = opts.device.clone().autodiff();
    opts.device.seed(config.seed);
    let init = draw_now(model.init(&device));
    let s = &config.sam;
    let wformer = WFormerConfig::new(model.vision.hidden_size, model.qformer.hidden_size)
        .with_pooling(s.pooling)
        .with_inject_layer(s.inject_layer)
        .with_return_layer(s.return_layer);
    let wformer = draw_now(wformer.init(&device));
    let setup = Setup {
        processor: ImageProcessor::clip(config.model.image_size),
        images: config.world.dir.join("images"),
        batcher: VlmBatcher::new(
            tokenizer.token_id("<pad>").unwrap_or(0),
            config.model.image_size,
        ),
        enc,
    };
    Ok(Start {
        setup,
        init,
        wformer,
    })
}

type Split = (Arc<dyn Dataset<Item>>, Arc<dyn Dataset<Item>>);

fn dataset(setup: &Setup, parts: Vec<(Vec<Record>, &Encoder)>) -> Arc<dyn Dataset<Item>> {
    Arc::new(crate::inputs::dataset_of(
        &setup.images,
        &setup.processor,
        parts,
    ))
}

/// The base's data (captions, groups, changes, and QA with `base_qa`) and the compared
/// continuation's (groups and changes), each with the held-out groups and changes.
fn datasets(config: &SamGroupCaptionConfig, setup: &Setup) -> Result<(Split, Split), String> {
    let read = |name: &str| read_valid(&config.world.dir.join(name));
    let (chat, plain) = (&setup.enc.chat, &setup.enc.plain);
    let multi = |split: &str| -> Result<Vec<(Vec<Record>, &Encoder)>, String> {
        Ok(vec![
            (read(&format!("{split}_groups.json"))?, chat),
            (read(&format!("{split}_changes.json"))?, chat),
        ])
    };
    let mut base_parts = multi("train")?;
    base_parts.push((read("train_captions.json")?, plain));
    if config.base_qa {
        base_parts.push((read("train_qa.json")?, chat));
    }
    let val = dataset(setup, multi("val")?);
    Ok((
        (dataset(setup, base_parts), val.clone()),
        (dataset(setup, multi("train")?), val),
    ))
}

/// Train and evaluate one seed (`config.seeded(k)`) from `start`, into `opts.out`.
pub fn run(
    config: &SamGroupCaptionConfig,
    start: Start,
    opts: &RunOptions,
) -> Result<SamOutcome, String> {
    let Start {
        setup,
        init,
        wformer,
    } = start;
    let (base_data, compare_data) = datasets(config, &setup)?;
    let held_out = |kind: &str, n: usize| -> Result<Vec<Record>, String> {
        let path = config
            .world
            .dir
            .join(format!("{}_{kind}.json", config.eval.split));
        Ok(read_valid(&path)?.into_iter().take(n).collect())
    };
    let mut curves = Vec::new();
    // The base, from scratch; does it read the image?
    eprintln!("seed {}: base, {} steps", config.seed, config.base.steps);
    let (base, report) = train(opts, &setup.batcher, init, base_data, &config.base, "base")?;
    curves.push(("base".to_string(), curve(&report)));
    let captions = held_out("captions", config.eval.captions)?;
    let grounding = grounding(&base, &captions, config, &setup, opts)?;
    let (groups, changes) = (
        held_out("groups", config.eval.groups)?,
        held_out("changes", config.eval.changes)?,
    );
    let eval = setup.group_eval(config, opts);
    let score = |model: &Blip2, name: &str| {
        score_groups(model, &groups, &changes, &eval, &opts.out.join(name))
    };
    let base_scores = score(&base, "base")?;
    // The same continuation with and without the W-Former.
    let mut runs = Vec::new();
    for name in ["qformer", "sam"] {
        let mut start = base.clone();
        if name == "sam" {
            start.wformer = Some(wformer.clone());
            if config.sam.wformer_only {
                start = freeze_all_but_wformer(start);
            }
        }
        let trainable = vlalign_train::trainable_params(&start);
        eprintln!(
            "seed {}: {name}, {} steps",
            config.seed, config.compare.steps
        );
        let (model, report) = train(
            opts,
            &setup.batcher,
            start,
            compare_data.clone(),
            &config.compare,
            name,
        )?;
        curves.push((name.to_string(), curve(&report)));
        runs.push(SamRun {
            model: name.into(),
            scores: score(&model, name)?,
            trainable_params: trainable,
            step_ms: report.median_step_ms().unwrap_or(0.0),
            bridge_norms: bridge_norms(&model),
        });
    }
    Ok(SamOutcome {
        seed: config.seed,
        grounding,
        base: base_scores,
        runs,
        curves,
    })
}

/// The base's held-out caption accuracy, own images and swapped (captions written to `base/`).
fn grounding(
    base: &Blip2,
    captions: &[Record],
    config: &SamGroupCaptionConfig,
    setup: &Setup,
    opts: &RunOptions,
) -> Result<CaptionAccuracy, String> {
    let run = CaptionRun {
        encoder: &setup.enc.plain,
        processor: &setup.processor,
        image_folder: &setup.images,
        batch_size: config.eval.batch_size,
        verbose: opts.verbose,
    };
    let label = format!("seed {}: base", config.seed);
    stage1_captions(base, captions, &run, &opts.out.join("base"), &label)
}

/// SAM's trained bridges' Frobenius norms (main → second, second → main).
fn bridge_norms(model: &Blip2) -> Option<[f64; 2]> {
    let norm = |l: &burn::nn::Linear| {
        l.weight
            .val()
            .powf_scalar(2.0)
            .sum()
            .into_scalar::<f64>()
            .sqrt()
    };
    let w = model.wformer.as_ref()?;
    Some([norm(&w.bridge_in), norm(&w.bridge_out)])
}

/// The model with everything but the W-Former frozen (SAM's public default).
fn freeze_all_but_wformer(model: Blip2) -> Blip2 {
    let wformer = model.wformer.clone();
    Blip2 {
        wformer,
        ..model.no_grad()
    }
}

fn train(
    opts: &RunOptions,
    batcher: &VlmBatcher,
    model: Blip2,
    data: (Arc<dyn Dataset<Item>>, Arc<dyn Dataset<Item>>),
    tc: &TrainConfig,
    name: &str,
) -> Result<(Blip2, TrainReport), String> {
    let objective: Arc<dyn Objective<Blip2>> = Arc::new(MleObjective);
    let trainee = Blip2Trainee::new(model, objective);
    let started = std::time::Instant::now();
    let (trained, report) = opts.fit_stage(trainee, data, batcher.clone(), tc, name, &[])?;
    // With seeds in parallel the per-step renderer is off: say when each stage ends.
    let tail: Vec<f64> = report.steps.iter().rev().take(50).map(|s| s.loss).collect();
    eprintln!(
        "{}: {name} done, {} steps in {:.1} min, loss (last 50 steps) {:.3}, held-out {}",
        opts.out.display(),
        report.steps.len(),
        started.elapsed().as_secs_f64() / 60.0,
        tail.iter().sum::<f64>() / tail.len().max(1) as f64,
        report
            .valid_loss
            .map_or("–".to_string(), |v| format!("{v:.3}"))
    );
    Ok((trained.model, report))
}

fn curve(report: &TrainReport) -> Vec<(usize, f64)> {
    report.steps.iter().map(|s| (s.step, s.loss)).collect()
}
