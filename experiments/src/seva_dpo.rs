//! SeVa-style DPO on the world (DESIGN §5): the stage-2 MLE model of `cal_llava`'s recipe
//! answers training questions on the clean image (chosen) and on the image under diffusion
//! noise (rejected); the pairs are scored once with that model (the reference, precomputed:
//! training holds one model); DPO — full (projector + LLM) or LoRA — trains from it at each
//! noise step and seed; before and after, on held-out data: POPE, CHAIR, grounded-slot
//! accuracy, and the reward accuracy on held-out pairs.

use std::path::PathBuf;
use std::sync::Arc;

use burn::data::dataset::Dataset;
use serde::{Deserialize, Serialize};
use vlalign_align::DpoConfig;
use vlalign_data::{PreferenceBatcher, PreferenceDataset, PreferenceItem, PreferencePair, Record};
use vlalign_models::{Llava, LlavaConfig, hf};
use vlalign_train::{LoraConfig, TrainConfig};

use crate::cal_llava::{CalLlavaConfig, mle_base};
use crate::eval::slots::single_turn;
use crate::inputs::{Inputs, RealData, read_valid, real_inputs, world_inputs};
use crate::run::{EvalSection, RunOptions};
use crate::seva_eval::{Evaluator, ModelScores, held_out_rewards, rewards_only};
use crate::seva_pairs::{Answering, noise_pairs, qa_questions, score_pairs, write_pairs_file};
use crate::seva_train::{rewards, save_hf, train_dpo};

/// How the pairs are made.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PairsSection {
    /// Training questions answered twice (single-turn questions of the world's training QA).
    pub questions: usize,
    /// Held-out questions for the reward accuracy: the training questions after `questions`
    /// (no DPO step sees their pairs; the world's held-out split stays for POPE, CHAIR, slots).
    pub held_out: usize,
    /// Diffusion steps of the rejected images (SeVa: 500 and 800 of 1000).
    pub noise_steps: Vec<usize>,
    /// Generation budget per answer.
    pub max_new_tokens: usize,
}

impl Default for PairsSection {
    fn default() -> Self {
        Self {
            questions: 1500,
            held_out: 200,
            noise_steps: vec![500, 800],
            max_new_tokens: 16,
        }
    }
}

/// What DPO trains.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Variant {
    /// The projector and the LLM (the vision tower stays frozen, as in stage 2).
    Full,
    /// LoRA adapters on the LLM's projections; the reference is the base weights.
    Lora,
    /// `full` plus the image-side negative (mDPO): the chosen answer on the image under the
    /// pair's noise (a fresh sample) as a further rejected answer, weighted
    /// `image_negative_weight`.
    ImageNegative,
    /// `full` with token-weighted DPO (`cal_weighted`; not Calibrated DPO, an unrelated method): each answer token's log-prob weighted by
    /// CAL's weight (`base.cal`) computed with a live reference (the frozen start).
    CalWeighted,
}

impl Variant {
    /// `full` / `lora`.
    pub fn name(&self) -> &'static str {
        match self {
            Variant::Full => "full",
            Variant::Lora => "lora",
            Variant::ImageNegative => "image_negative",
            Variant::CalWeighted => "cal_weighted",
        }
    }
}

/// Everything the experiment does; written to the run directory as `config.toml`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SevaDpoConfig {
    /// The starting model: `cal_llava`'s recipe (its world, sizes and both stages; MLE at
    /// noise 0). Its `seed` seeds the pairs' noise.
    pub base: CalLlavaConfig,
    /// Start from the `finetune-mle-noise0` model of this finished `cal_llava` run instead of
    /// training one (its `config.toml` becomes `base`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base_run: Option<PathBuf>,
    /// Pair generation.
    pub pairs: PairsSection,
    /// The preference loss.
    pub dpo: DpoConfig,
    /// The DPO stage (full variant; LoRA takes `lora_lr`).
    pub train: TrainConfig,
    /// What DPO trains: `full`, `lora`.
    pub variants: Vec<Variant>,
    /// LoRA's rank, scale and target projections.
    pub lora: LoraConfig,
    /// LoRA's learning rate.
    pub lora_lr: f64,
    /// Weight of the image-side negative in the `image_negative` variant.
    pub image_negative_weight: f64,
    /// Evaluation (held-out split, POPE, captions).
    pub eval: EvalSection,
    /// DPO runs per (noise step, variant): data order and LoRA init `train.seed + k`.
    pub seeds: usize,
}

impl Default for SevaDpoConfig {
    fn default() -> Self {
        let mut train = TrainConfig {
            steps: 120,
            batch_size: 16,
            checkpoint_every: 40,
            ..TrainConfig::default()
        };
        train.optim.lr = 1e-5;
        train.optim.warmup_steps = 6;
        Self {
            base: CalLlavaConfig::default(),
            base_run: None,
            pairs: PairsSection::default(),
            dpo: DpoConfig::default(),
            train,
            variants: vec![Variant::Full, Variant::Lora],
            lora: LoraConfig::default(),
            lora_lr: 1e-4,
            image_negative_weight: 1.0,
            eval: EvalSection::default(),
            seeds: 3,
        }
    }
}

impl SevaDpoConfig {
    /// The CI smoke profile: `cal_llava --quick`'s world and model, a few DPO steps.
    pub fn quick() -> Self {
        let mut c = Self {
            base: CalLlavaConfig::quick(),
            ..Self::default()
        };
        // A barely trained base: its answers still depend on the image (a quick base trained
        // longer answers from the language prior alone, so noise changes no answer).
        c.base.pretrain.steps = 3;
        c.base.finetune.steps = 2;
        c.base.pretrain.optim.warmup_steps = 1;
        c.base.finetune.optim.warmup_steps = 1;
        c.pairs.questions = 240;
        c.pairs.held_out = 120;
        c.pairs.max_new_tokens = 8;
        c.train.steps = 6;
        c.train.batch_size = 4;
        c.train.checkpoint_every = 3;
        c.train.optim.warmup_steps = 1;
        c.eval = c.base.eval.clone();
        c.seeds = 2;
        c
    }
}

/// The pairs of one noise step.
#[derive(Clone, Debug, Serialize)]
pub struct PairStats {
    /// Diffusion step of the rejected images.
    pub noise_step: usize,
    /// Training pairs kept.
    pub generated: usize,
    /// Training questions whose two answers were identical.
    pub dropped_identical: usize,
    /// Held-out pairs (reward accuracy).
    pub held_out: usize,
    /// Seconds of generation (rejected answers, training and held-out).
    pub seconds: f64,
}

/// One DPO run.
#[derive(Clone, Debug, Serialize)]
pub struct DpoRun {
    /// What trained.
    pub variant: Variant,
    /// The pairs' noise step.
    pub noise_step: usize,
    /// Data-order seed.
    pub seed: u64,
    /// Scores after DPO.
    pub scores: ModelScores,
    /// Median step time, ms.
    pub step_ms: f64,
    /// (step, reward margin, reward accuracy) of the training batches.
    pub rewards: Vec<(usize, f64, f64)>,
    /// Trainable parameters.
    pub trainable: usize,
}

/// What the experiment produced.
pub struct SevaOutcome {
    /// The starting model's scores (reward accuracy: none, it is the reference).
    pub base: ModelScores,
    /// The starting model's stage-1 caption accuracy, own images and swapped (when trained
    /// here).
    pub stage1: Vec<(String, crate::eval::captions::CaptionAccuracy)>,
    /// Pairs per noise step.
    pub pairs: Vec<PairStats>,
    /// The DPO runs.
    pub runs: Vec<DpoRun>,
}

/// Pairs of one noise step, scored by the reference, as datasets.
struct PairSet {
    stats: PairStats,
    train: Arc<dyn Dataset<PreferenceItem>>,
    /// The same pairs with image-side negatives (the `image_negative` variant).
    train_negative: Option<Arc<dyn Dataset<PreferenceItem>>>,
    held: Arc<PreferenceDataset>,
}

/// What the DPO runs start from.
struct Start {
    inputs: Inputs,
    model: Llava,
    /// Its architecture (to save merged LoRA models).
    llava: LlavaConfig,
    stage1: Vec<(String, crate::eval::captions::CaptionAccuracy)>,
    /// Single-turn questions: training pairs are made from the first `train_questions`,
    /// held-out pairs from the rest.
    questions: Vec<Record>,
    train_questions: usize,
}

impl Start {
    /// The world's stage-2 MLE model (trained here or `base_run`'s), or the user's model and
    /// records.
    fn new(
        config: &SevaDpoConfig,
        real: Option<&RealData>,
        opts: &RunOptions,
    ) -> Result<Self, String> {
        let n = config.pairs.questions + config.pairs.held_out;
        if let Some(r) = real {
            let inputs = real_inputs(config.base.spec(), r, opts)?;
            inputs.keep_tokenizer(&opts.out)?;
            let dir = r
                .model
                .as_ref()
                .ok_or("--data needs --model (a LLaVA directory)")?;
            let value = hf::read_config_json(dir).map_err(|e| e.to_string())?;
            let llava = hf::llava_config(&value).map_err(|e| e.to_string())?;
            let mut questions = qa_questions(&read_valid(&r.data)?);
            questions.truncate(n);
            // Held out: `pairs.held_out` questions, at most a fifth of a small file.
            let held = config.pairs.held_out.min(questions.len() / 5);
            return Ok(Self {
                model: inputs.init.clone(),
                inputs,
                llava,
                stage1: Vec::new(),
                train_questions: questions.len() - held,
                questions,
            });
        }
        let inputs = world_inputs(config.base.spec(), opts)?;
        let (model, stage1) = start_model(config, &inputs, opts)?;
        let llava = config.base.model.llava(
            inputs.tokenizer.vocab_size(),
            inputs.enc.chat.image_token_id() as usize,
        );
        save_hf(&model, &llava, &inputs, &opts.out.join("start-model"))?;
        let train = read_valid(&config.base.world.dir.join("train_qa.json"))?;
        let questions: Vec<Record> = single_turn(&train).into_iter().take(n).collect();
        Ok(Self {
            inputs,
            model,
            llava,
            stage1,
            train_questions: config.pairs.questions.min(questions.len()),
            questions,
        })
    }
}

/// Run the experiment (module docs) on the world, or with `real` on the user's model and
/// records (then only the held-out reward accuracy is measured: POPE, CHAIR and slots need the
/// world's truth).
pub fn run(
    config: &SevaDpoConfig,
    real: Option<&RealData>,
    opts: &RunOptions,
) -> Result<SevaOutcome, String> {
    let start = Start::new(config, real, opts)?;
    let (base, inputs) = (&start.model, &start.inputs);
    let evaluator = match real {
        None => Some(Evaluator::new(
            &config.eval,
            &config.base.world.dir,
            inputs,
            opts,
        )?),
        Some(_) => None,
    };
    let score =
        |model: &Llava, dir: &std::path::Path, held: Option<&PreferenceDataset>| match &evaluator {
            Some(e) => e.scores(model, dir, held, &config.dpo),
            None => {
                let rewards = match held.filter(|h| !h.is_empty()) {
                    Some(h) => Some(held_out_rewards(
                        model,
                        h,
                        &config.dpo,
                        &inputs.batcher,
                        &opts.device,
                        config.eval.batch_size,
                    )?),
                    None => None,
                };
                Ok(rewards_only(rewards))
            }
        };
    eprintln!("evaluating the starting model");
    let before = score(base, &opts.out.join("base-eval"), None)?;
    let sets = pair_sets(config, &start, opts)?;
    let mut runs = Vec::new();
    for set in &sets {
        for &variant in &config.variants {
            for k in 0..config.seeds {
                let (model, run) = dpo_run(config, &start, set, variant, k, opts)?;
                let dir = opts.out.join(&run.1);
                let scores = score(&model, &dir, Some(&set.held))?;
                runs.push(DpoRun { scores, ..run.0 });
            }
        }
    }
    Ok(SevaOutcome {
        base: before,
        stage1: start.stage1,
        pairs: sets.into_iter().map(|s| s.stats).collect(),
        runs,
    })
}

/// One DPO run from the start (its LoRA merged and saved), and its stage name; the scores are
/// left for the caller.
fn dpo_run(
    config: &SevaDpoConfig,
    start: &Start,
    set: &PairSet,
    variant: Variant,
    k: usize,
    opts: &RunOptions,
) -> Result<(Llava, (DpoRun, String)), String> {
    let noise_step = set.stats.noise_step;
    let seed = config.train.seed + k as u64;
    let name = format!("dpo-{}-noise{noise_step}-seed{seed}", variant.name());
    let train = match (variant, &set.train_negative) {
        (Variant::ImageNegative, Some(t)) => t.clone(),
        _ => set.train.clone(),
    };
    let data = (train, set.held.clone() as Arc<dyn Dataset<_>>);
    let batcher = PreferenceBatcher(start.inputs.batcher.clone());
    let (model, report, trainable) = train_dpo(
        config,
        variant,
        k,
        &start.model,
        data,
        &batcher,
        opts,
        &name,
    )?;
    if variant == Variant::Lora {
        let dir = opts.out.join(&name).join("merged");
        save_hf(&model, &start.llava, &start.inputs, &dir)?;
    }
    let run = DpoRun {
        variant,
        noise_step,
        seed,
        scores: ModelScores::default(),
        step_ms: report.median_step_ms().unwrap_or(0.0),
        rewards: rewards(&report),
        trainable,
    };
    Ok((model, (run, name)))
}

/// The starting model: `base_run`'s stage-2 MLE model, or trained here (`pretrain`,
/// `finetune-mle-noise0`).
fn start_model(
    config: &SevaDpoConfig,
    inputs: &Inputs,
    opts: &RunOptions,
) -> Result<(Llava, Vec<(String, crate::eval::captions::CaptionAccuracy)>), String> {
    match &config.base_run {
        Some(dir) => {
            let stage = dir.join("finetune-mle-noise0");
            let (model, step) = crate::cal_rescore::load_stage(&stage, "base", inputs)?
                .ok_or_else(|| format!("{}: no intact checkpoint", stage.display()))?;
            eprintln!("starting model: {} at step {step}", stage.display());
            Ok((model, Vec::new()))
        }
        None => {
            let base = mle_base(&config.base, inputs, opts)?;
            Ok((base.model, base.stage1))
        }
    }
}

/// For each noise step: pairs from the training questions and held-out pairs, both scored by
/// the starting model (the reference) and written to `pairs-noise<t>.jsonl` /
/// `held-out-noise<t>.jsonl`.
fn pair_sets(
    config: &SevaDpoConfig,
    start: &Start,
    opts: &RunOptions,
) -> Result<Vec<PairSet>, String> {
    let (base, inputs) = (&start.model, &start.inputs);
    let mut train_q = start.questions.clone();
    let held_q = train_q.split_off(start.train_questions);
    eprintln!(
        "pairs: {} training and {} held-out questions, noise steps {:?}",
        train_q.len(),
        held_q.len(),
        config.pairs.noise_steps
    );
    let seed = config.base.seed;
    let answering = Answering {
        max_new_tokens: config.pairs.max_new_tokens,
        batch_size: config.eval.batch_size,
        verbose: opts.verbose,
    };
    let steps = &config.pairs.noise_steps;
    let train_sets = noise_pairs(base, &train_q, inputs, steps, answering, seed);
    let held_sets = noise_pairs(base, &held_q, inputs, steps, answering, seed);
    let with_negatives = config.variants.contains(&Variant::ImageNegative);
    let mut out = Vec::new();
    for (t, h) in train_sets.into_iter().zip(held_sets) {
        let step = config.pairs.noise_steps[out.len()];
        let negatives = with_negatives.then_some((step, seed));
        let mut scored = Vec::new();
        for (mut pairs, file) in [(t.pairs, "pairs"), (h.pairs, "held-out")] {
            let b = config.eval.batch_size;
            score_pairs(base, &mut pairs, inputs, b, negatives, opts)?;
            write_pairs_file(&opts.out.join(format!("{file}-noise{step}.jsonl")), &pairs)?;
            scored.push(dataset(pairs, inputs)?);
        }
        let held = Arc::new(scored.pop().expect("two sets"));
        let train_plain = scored.pop().expect("two sets");
        let train_negative = negatives.map(|(step, seed)| {
            Arc::new(train_plain.clone().with_image_negatives(step, seed))
                as Arc<dyn Dataset<PreferenceItem>>
        });
        let train = Arc::new(train_plain);
        if train.is_empty() {
            return Err(format!(
                "noise step {step}: the starting model answered all {} training questions the \
                 same on the clean and the noised image, so there is no pair: it does not read \
                 the image (train it longer) or the noise is too weak",
                train_q.len()
            ));
        }
        out.push(PairSet {
            stats: PairStats {
                noise_step: step,
                generated: train.len(),
                dropped_identical: t.dropped_identical,
                held_out: held.len(),
                seconds: t.seconds + h.seconds,
            },
            train,
            train_negative,
            held,
        });
    }
    Ok(out)
}

/// Pairs as a dataset of the chat template.
fn dataset(pairs: Vec<PreferencePair>, inputs: &Inputs) -> Result<PreferenceDataset, String> {
    PreferenceDataset::new(
        pairs,
        &inputs.enc.chat,
        &inputs.images,
        inputs.processor.clone(),
    )
    .map_err(|e| e.to_string())
}
