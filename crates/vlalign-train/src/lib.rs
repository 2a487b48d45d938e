//! Training on burn-train: anything [`Trainable`] (a model with its objective, e.g. the LLaVA
//! [`Trainee`]) is run by burn-train's `SupervisedTraining` through our [`StepStrategy`] (step-level
//! checkpoints, exact resume, gradient accumulation, a stop on a non-finite loss). AdamW with
//! warmup + cosine, gradient clipping and per-module learning-rate multipliers come from
//! [`OptimConfig`]; freezing is `Module::no_grad` on the part to freeze, before [`fit`].
//!
//! A stage's directory holds `metrics.csv` (one row per optimizer step), `checkpoints/`
//! (`model-N.bpk`, `optim-N.bpk`, `scheduler-N.bpk` and the manifest `step-N.json`) and
//! burn-train's own logs.

pub mod blip2;
pub mod checkpoint;
pub mod clip;
pub mod dpo;
pub mod lavit;
pub mod lora;
pub mod metrics;
pub mod optim;
pub mod pixel_head;
pub mod plora;
pub mod render;
pub mod step;
pub mod strategy;
pub mod stream;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use burn::data::dataloader::DataLoaderBuilder;
use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::Dataset;
use burn::tensor::Device;
use burn::train::metric::{IterationSpeedMetric, LearningRateMetric, LossMetric};
use burn::train::renderer::MetricsRenderer;
use burn::train::{Learner, SupervisedTraining, TrainStep, TrainingStrategy};
use serde::{Deserialize, Serialize};

pub use blip2::Blip2Trainee;
pub use checkpoint::{Manifest, latest_valid};
pub use clip::ClipTrainee;
pub use dpo::DpoTrainee;
pub use lavit::{LavitLlavaTrainee, LavitTokenizerTrainee};
pub use lora::LoraConfig;
pub use metrics::DiagnosticMetric;
pub use optim::OptimConfig;
pub use pixel_head::PixelTrainee;
pub use plora::PLoraTraining;
pub use step::{StepOutput, Trainable, Trainee};
pub use strategy::{RunLog, StepPlan, StepStrategy};
pub use stream::{DeviceShare, StepStream};

/// Why training could not run or stopped.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A configuration value is out of range.
    #[error("bad configuration: {0}")]
    Config(String),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// `--resume` found checkpoints but none is intact.
    #[error("no intact checkpoint in {dir}:\n  {}", problems.join("\n  "))]
    NoValidCheckpoint {
        /// The checkpoint directory.
        dir: PathBuf,
        /// What is wrong with each.
        problems: Vec<String>,
    },
    /// The directory already holds a run and `resume` was not asked for.
    #[error(
        "{0} already holds checkpoints of a run; resume it (--resume) or choose a new output directory"
    )]
    Exists(PathBuf),
    /// The loss became NaN or infinite.
    #[error(
        "loss is {loss} at step {step} (batch: {}); last good checkpoint: {}",
        ids.join(", "),
        match last_checkpoint {
            Some(s) => format!("step {s} in {}", checkpoint_dir.display()),
            None => "none".to_string(),
        }
    )]
    NonFinite {
        /// The optimizer step being computed.
        step: usize,
        /// The loss value.
        loss: f64,
        /// Record ids of the batch.
        ids: Vec<String>,
        /// The last committed checkpoint.
        last_checkpoint: Option<usize>,
        /// Where it is.
        checkpoint_dir: PathBuf,
    },
    /// Loading a batch failed.
    #[error("data: {0}")]
    Data(String),
    /// burn-train reported an error.
    #[error("training: {0}")]
    Burn(String),
}

impl TrainError {
    /// An I/O error on `path`.
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// One optimizer step as logged.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// Optimizer step (1-based).
    pub step: usize,
    /// Mean loss over the accumulated batches.
    pub loss: f64,
    /// Base learning rate used.
    pub lr: f64,
    /// Wall time of the step (data wait, forward, backward, optimizer), ms.
    pub step_ms: f64,
    /// The objective's diagnostics, averaged over the accumulated batches.
    pub diagnostics: Vec<(String, f64)>,
}

/// How a stage trains.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Optimizer steps.
    pub steps: usize,
    /// Items per batch.
    pub batch_size: usize,
    /// Batches per optimizer step (gradient accumulation).
    pub accumulation: usize,
    /// The optimizer and its schedule.
    pub optim: OptimConfig,
    /// Checkpoint every N optimizer steps (and at the end); 0 = at the end only.
    pub checkpoint_every: usize,
    /// Checkpoints kept.
    pub keep_checkpoints: usize,
    /// Seed of the data order.
    pub seed: u64,
    /// Data-loading threads (1 keeps the order exact; more may reorder batches).
    pub num_workers: usize,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            steps: 100,
            batch_size: 16,
            accumulation: 1,
            optim: OptimConfig::default(),
            checkpoint_every: 50,
            keep_checkpoints: 2,
            seed: 0,
            num_workers: 1,
        }
    }
}

/// What a stage did.
#[derive(Clone, Debug, Default)]
pub struct TrainReport {
    /// Every step of the stage, from `metrics.csv` (those before a resume included).
    pub steps: Vec<StepRecord>,
    /// Mean validation loss at the end.
    pub valid_loss: Option<f64>,
    /// The checkpoint step resumed from.
    pub resumed_from: Option<usize>,
    /// Damaged checkpoints skipped on resume, and similar notes.
    pub warnings: Vec<String>,
    /// The last committed checkpoint.
    pub last_checkpoint: Option<usize>,
}

impl TrainReport {
    /// Median step time (ms), skipping the first step (warm-up).
    pub fn median_step_ms(&self) -> Option<f64> {
        let mut v: Vec<f64> = self.steps.iter().skip(1).map(|s| s.step_ms).collect();
        if v.is_empty() {
            v = self.steps.iter().map(|s| s.step_ms).collect();
        }
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied()
    }
}

/// Parameters that receive gradients (a frozen or `no_grad` module counts none).
pub fn trainable_params(model: &impl burn::module::Module) -> usize {
    use burn::module::{ModuleVisitor, Param};
    use burn::tensor::Tensor;
    struct Count(usize);
    impl ModuleVisitor for Count {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if param.is_require_grad() {
                self.0 += param.shape().num_elements();
            }
        }
    }
    let mut c = Count(0);
    model.visit(&mut c);
    c.0
}

/// Where and how a stage runs, beyond its [`TrainConfig`].
pub struct Stage<'a> {
    /// The stage directory.
    pub dir: &'a Path,
    /// Label shown by the renderer.
    pub label: &'a str,
    /// Resume from the newest intact checkpoint in `dir` (start fresh when there is none).
    pub resume: bool,
    /// Stop after this many optimizer steps, as if killed (tests of resume).
    pub stop_after: Option<usize>,
    /// Diagnostics to show as metrics: (key, label).
    pub show: &'a [(&'static str, &'static str)],
    /// burn-train's renderer; `None` = its default (TUI on a terminal, else plain lines).
    pub renderer: Option<Box<dyn MetricsRenderer>>,
    /// Data-parallel training on these devices (the first holds the optimizer): each step's
    /// `accumulation` batches run on every device at once, so a step sees
    /// `batch_size · accumulation · devices` items. Empty: `device` alone.
    pub devices: &'a [Device],
}

/// A renderer that prints nothing (tests).
pub fn quiet_renderer() -> Box<dyn MetricsRenderer> {
    Box::new(render::LineRenderer::new(0))
}

/// burn-train's TUI on an interactive terminal, else a line every `every` steps.
pub fn default_renderer(every: usize) -> Option<Box<dyn MetricsRenderer>> {
    use std::io::IsTerminal;
    if std::io::stdout().is_terminal() {
        None
    } else {
        Some(Box::new(render::LineRenderer::new(every.max(1))))
    }
}

/// Train `trainee` on `train` as `config` says; returns the trained trainee (still on
/// `device.autodiff()`: call `valid()` on its model to evaluate, keep it to train further) and
/// what happened. The model must already live on `device.autodiff()`. `batcher` turns the
/// dataset's items into the trainee's batch type.
pub fn fit<T, I, Bt>(
    mut trainee: T,
    train: Arc<dyn Dataset<I>>,
    valid: Arc<dyn Dataset<I>>,
    batcher: Bt,
    device: &Device,
    config: &TrainConfig,
    stage: Stage<'_>,
) -> Result<(T, TrainReport), TrainError>
where
    T: Trainable,
    <T as TrainStep>::Input: Clone + std::fmt::Debug + Send + 'static,
    I: Clone + std::fmt::Debug + Send + Sync + 'static,
    Bt: Batcher<I, <T as TrainStep>::Input> + Clone + 'static,
{
    if config.steps == 0 || config.batch_size == 0 || config.accumulation == 0 {
        return Err(TrainError::Config(
            "steps, batch_size and accumulation must be at least 1".into(),
        ));
    }
    if train.is_empty() {
        return Err(TrainError::Config("the training set is empty".into()));
    }
    let checkpoint_dir = stage.dir.join("checkpoints");
    std::fs::create_dir_all(&checkpoint_dir).map_err(|e| TrainError::io(&checkpoint_dir, e))?;
    let mut report = TrainReport::default();
    let resume = if stage.resume {
        let (found, warnings) = latest_valid(&checkpoint_dir)?;
        report.warnings = warnings;
        found
    } else {
        if !checkpoint::manifests(&checkpoint_dir).0.is_empty() {
            return Err(TrainError::Exists(stage.dir.to_path_buf()));
        }
        None
    };
    report.resumed_from = resume.as_ref().map(|m| m.step);
    if let Some(m) = resume.as_ref().filter(|m| m.step >= config.steps) {
        if m.step > config.steps {
            return Err(TrainError::Config(format!(
                "the checkpoint is at step {} but the run has only {} steps",
                m.step, config.steps
            )));
        }
        // The stage finished before: its final checkpoint is the result.
        use burn::train::checkpoint::Checkpointer;
        let record = checkpoint::AtomicFileCheckpointer::new(&checkpoint_dir, "model")
            .restore(m.step)
            .map_err(|e| TrainError::Burn(format!("restoring step {}: {e}", m.step)))?;
        let trainee = trainee.load_record(record);
        report.steps = read_csv(&stage.dir.join("metrics.csv"))?;
        report.valid_loss = read_result(stage.dir).and_then(|r| r.valid_loss);
        report.last_checkpoint = Some(m.step);
        return Ok((trainee, report));
    }

    let n = stage.devices.len().max(1);
    let accumulation = config.accumulation * n;
    if let Some(m) = &resume {
        // The checkpoint's data position must be where this run's steps put it: another
        // batch size, accumulation or device count would resume on other data.
        let expected = m.step * config.batch_size * accumulation;
        if m.items_consumed != expected {
            return Err(TrainError::Config(format!(
                "the checkpoint at step {} consumed {} training items, but {} steps of this \
                 run consume {expected} ({} per batch × {} accumulation × {n} device(s)): \
                 resume with the batch size, accumulation and devices the run started with",
                m.step, m.items_consumed, m.step, config.batch_size, config.accumulation
            )));
        }
    }
    trainee.set_loss_scale(1.0 / accumulation as f32);
    let (optim, scheduler) = config.optim.init(config.steps)?;
    let items = config.steps * config.batch_size * accumulation;
    let stream: Arc<dyn Dataset<I>> = Arc::new(StepStream::new(train, items, config.seed, true));
    let loader = |data: Arc<dyn Dataset<I>>, on: &Device| {
        DataLoaderBuilder::new(batcher.clone())
            .batch_size(config.batch_size)
            .num_workers(config.num_workers.max(1))
            .set_device(on.clone())
            .build(ArcDataset(data))
    };
    let train_loader = loader(stream.clone(), device);
    let shares = if n > 1 {
        stage
            .devices
            .iter()
            .enumerate()
            .map(|(k, d)| {
                let share = DeviceShare::new(stream.clone(), config.batch_size, n, k);
                (d.clone(), loader(Arc::new(share), d))
            })
            .collect()
    } else {
        Vec::new()
    };
    let valid_loader = DataLoaderBuilder::new(batcher)
        .batch_size(config.batch_size)
        .num_workers(config.num_workers.max(1))
        .set_device(device.clone())
        .build(ArcDataset(valid));

    let log = Arc::new(Mutex::new(RunLog::default()));
    let plan = StepPlan {
        total_steps: config.steps,
        accumulation,
        batch_size: config.batch_size,
        checkpoint_every: config.checkpoint_every,
        keep: config.keep_checkpoints,
        checkpoint_dir: checkpoint_dir.clone(),
        csv: stage.dir.join("metrics.csv"),
        resume,
        stop_after: stage.stop_after,
    };
    let main = stage.devices.first().unwrap_or(device);
    let strategy =
        StepStrategy::new(main.clone().autodiff(), plan, log.clone()).with_shares(shares);
    let mut training = SupervisedTraining::new(stage.dir, train_loader, valid_loader)
        .with_training_strategy(TrainingStrategy::Custom(Arc::new(strategy)))
        .with_custom_checkpointers(
            checkpoint::AtomicFileCheckpointer::new(&checkpoint_dir, "model"),
            checkpoint::AtomicFileCheckpointer::new(&checkpoint_dir, "optim"),
            checkpoint::AtomicFileCheckpointer::new(&checkpoint_dir, "scheduler"),
        )
        .with_checkpointing_strategy(checkpoint::SaveAndSync)
        .with_application_logger(None)
        .metric_train_numeric(LossMetric::new())
        .metric_valid_numeric(LossMetric::new())
        .metric_train_numeric(LearningRateMetric::new())
        .metric_train_numeric(IterationSpeedMetric::new())
        .label(stage.label);
    for (key, label) in stage.show {
        training = training.metric_train_numeric(DiagnosticMetric::new(key, label));
    }
    if let Some(renderer) = stage.renderer {
        training = training.renderer(renderer);
    }
    let result = training.launch(Learner::new(trainee, optim, scheduler));
    let mut log = std::mem::take(&mut *log.lock().expect("log"));
    if let Some(failure) = log.failure.take() {
        return Err(failure);
    }
    if let Some(error) = result.error {
        return Err(TrainError::Burn(error.to_string()));
    }
    report.steps = read_csv(&stage.dir.join("metrics.csv"))?;
    report.valid_loss = log.valid_loss;
    let result_path = stage.dir.join("result.json");
    let result_json = serde_json::to_vec_pretty(&StageResult {
        steps: config.steps,
        valid_loss: log.valid_loss,
    })
    .expect("serializes");
    std::fs::write(&result_path, result_json).map_err(|e| TrainError::io(&result_path, e))?;
    report.last_checkpoint = log.last_checkpoint;
    let trained = log.model.unwrap_or(result.model);
    Ok((trained, report))
}

/// What a finished stage leaves in `result.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StageResult {
    /// Optimizer steps run.
    pub steps: usize,
    /// Mean validation loss at the end.
    pub valid_loss: Option<f64>,
}

fn read_result(dir: &Path) -> Option<StageResult> {
    let bytes = std::fs::read(dir.join("result.json")).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The step log of a stage (`metrics.csv`) as records.
pub fn read_csv(path: &Path) -> Result<Vec<StepRecord>, TrainError> {
    let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split(',').collect();
    let mut out = Vec::new();
    for (n, line) in lines.enumerate() {
        let cells: Vec<&str> = line.split(',').collect();
        let num = |i: usize| -> Result<f64, TrainError> {
            cells.get(i).and_then(|c| c.parse().ok()).ok_or_else(|| {
                TrainError::Data(format!(
                    "{} line {}: column `{}` is not a number",
                    path.display(),
                    n + 2,
                    header.get(i).unwrap_or(&"?")
                ))
            })
        };
        out.push(StepRecord {
            step: num(0)? as usize,
            loss: num(1)?,
            lr: num(2)?,
            step_ms: num(3)?,
            diagnostics: (4..header.len())
                .filter_map(|i| Some((header[i].to_string(), cells.get(i)?.parse().ok()?)))
                .collect(),
        });
    }
    Ok(out)
}

/// A shared dataset as an owned one (the data loader builder takes datasets by value).
struct ArcDataset<I>(Arc<dyn Dataset<I>>);

impl<I: Send + Sync> Dataset<I> for ArcDataset<I> {
    fn get(&self, index: usize) -> Result<I, burn::data::dataset::DatasetError> {
        self.0.get(index)
    }

    fn len(&self) -> usize {
        self.0.len()
    }
}
