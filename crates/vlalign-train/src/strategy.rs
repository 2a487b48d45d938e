//! Our burn-train training strategy: the single-device loop of burn-train's own strategy,
//! counted in optimizer steps instead of epochs, with gradient accumulation, a checkpoint every
//! N steps (model, optimizer, scheduler and data position), exact resume, a stop on a non-finite
//! loss, and a per-step log (`metrics.csv`). burn-train's event processor still receives every
//! item, so its loss / learning-rate / speed metrics and its renderer work unchanged.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use burn::data::dataloader::Progress;
use burn::optim::GradientsAccumulator;
use burn::tensor::Device;
use burn::train::{
    EventProcessorTraining, Learner, LearnerEvent, SupervisedLearningStrategy,
    SupervisedTrainingEventProcessor, TrainLoader, TrainOutput, TrainStep, TrainingComponents,
    TrainingItem, ValidLoader,
};

use crate::checkpoint::{Manifest, prune};
use crate::step::Trainable;
use crate::{StepRecord, TrainError};

/// What the strategy needs to know beyond burn-train's components.
#[derive(Clone, Debug)]
pub struct StepPlan {
    /// Optimizer steps in the whole run.
    pub total_steps: usize,
    /// Batches per optimizer step.
    pub accumulation: usize,
    /// Items per batch.
    pub batch_size: usize,
    /// Checkpoint every this many optimizer steps (and at the last); 0 = only at the last.
    pub checkpoint_every: usize,
    /// Checkpoints kept.
    pub keep: usize,
    /// Checkpoint directory.
    pub checkpoint_dir: PathBuf,
    /// The per-step CSV log.
    pub csv: PathBuf,
    /// Resume from this committed checkpoint.
    pub resume: Option<Manifest>,
    /// Stop (as if killed) after this many optimizer steps; tests of resume use it.
    pub stop_after: Option<usize>,
}

/// What the loop leaves for the caller.
pub struct RunLog<T> {
    /// One record per optimizer step run in this process.
    pub steps: Vec<StepRecord>,
    /// Mean validation loss at the end.
    pub valid_loss: Option<f64>,
    /// Why the run stopped early, if it did.
    pub failure: Option<TrainError>,
    /// The last committed checkpoint step.
    pub last_checkpoint: Option<usize>,
    /// The trained model, still on the autodiff device (to train further).
    pub model: Option<T>,
}

impl<T> Default for RunLog<T> {
    fn default() -> Self {
        Self {
            steps: Vec::new(),
            valid_loss: None,
            failure: None,
            last_checkpoint: None,
            model: None,
        }
    }
}

/// The strategy (see the module docs).
pub struct StepStrategy<T: Trainable> {
    device: Device,
    plan: StepPlan,
    log: Arc<Mutex<RunLog<T>>>,
    shares: Vec<(Device, TrainLoader<T>)>,
}

impl<T: Trainable> StepStrategy<T> {
    /// A strategy on `device` following `plan`, reporting into `log`.
    pub fn new(device: Device, plan: StepPlan, log: Arc<Mutex<RunLog<T>>>) -> Self {
        Self {
            device,
            plan,
            log,
            shares: Vec::new(),
        }
    }

    /// Data-parallel: each device with its share of the batches ([`crate::DeviceShare`]); the
    /// batches of one round run at once, one per device, and their gradients are accumulated on
    /// the strategy's device. `plan.accumulation` counts every device's batches.
    pub fn with_shares(mut self, shares: Vec<(Device, TrainLoader<T>)>) -> Self {
        self.shares = shares;
        self
    }
}

/// A device and its share's batch iterator.
type Share<'a, T> = (
    Device,
    Box<dyn burn::data::dataloader::DataLoaderIterator<<T as TrainStep>::Input> + 'a>,
);

/// The outputs of one data-parallel round, `None` when a share is exhausted.
type Round<T> = Option<Result<Vec<TrainOutput<<T as TrainStep>::Output>>, String>>;

/// One round of data-parallel steps: a batch per device, run at once on a copy of the model
/// forked to each device, gradients moved to `main`.
fn parallel_round<T>(model: &T, main: &Device, iterators: &mut [Share<'_, T>]) -> Round<T>
where
    T: Trainable + Send,
    <T as TrainStep>::Input: Send,
{
    let mut batches = Vec::new();
    for (device, it) in iterators.iter_mut() {
        match it.next()? {
            Ok(b) => batches.push((device.clone(), b)),
            Err(e) => return Some(Err(e.to_string())),
        }
    }
    let outputs = std::thread::scope(|scope| {
        let handles: Vec<_> = batches
            .into_iter()
            .map(|(device, batch)| {
                let model = model.clone();
                scope.spawn(move || {
                    let model = model.fork(&device.autodiff());
                    TrainStep::step(&model, batch)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .map_err(|_| "a device's training step panicked".to_string())
            })
            .collect::<Result<Vec<_>, _>>()
    });
    Some(outputs.map(|outs| {
        outs.into_iter()
            .map(|mut out| {
                out.grads = out.grads.to_device(main, model);
                out
            })
            .collect()
    }))
}

/// The CSV log: created with a header, or on resume cut back to the resumed step.
struct Csv {
    file: File,
    columns: Vec<String>,
}

impl Csv {
    fn open(path: &Path, resume_step: usize, diagnostics: &[&str]) -> Result<Self, TrainError> {
        let io = |e| TrainError::io(path, e);
        let mut columns = vec!["step", "loss", "lr", "step_ms"]
            .into_iter()
            .map(String::from)
            .collect::<Vec<_>>();
        columns.extend(diagnostics.iter().map(|s| s.to_string()));
        if resume_step > 0 && path.exists() {
            let reader = BufReader::new(File::open(path).map_err(io)?);
            let mut lines = reader.lines();
            let header = lines.next().transpose().map_err(io)?.unwrap_or_default();
            let mut kept = vec![header.clone()];
            for line in lines {
                let line = line.map_err(io)?;
                let step: usize = line
                    .split(',')
                    .next()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(usize::MAX);
                if step <= resume_step {
                    kept.push(line);
                }
            }
            fs::write(path, kept.join("\n") + "\n").map_err(io)?;
            let file = OpenOptions::new().append(true).open(path).map_err(io)?;
            let columns = header.split(',').map(String::from).collect();
            return Ok(Self { file, columns });
        }
        let mut file = File::create(path).map_err(io)?;
        writeln!(file, "{}", columns.join(",")).map_err(io)?;
        Ok(Self { file, columns })
    }

    fn row(&mut self, r: &StepRecord) {
        let cells: Vec<String> = self
            .columns
            .iter()
            .map(|c| match c.as_str() {
                "step" => r.step.to_string(),
                "loss" => format!("{:.6}", r.loss),
                "lr" => format!("{:.6e}", r.lr),
                "step_ms" => format!("{:.1}", r.step_ms),
                name => r
                    .diagnostics
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, v)| format!("{v:.6}"))
                    .unwrap_or_default(),
            })
            .collect();
        // A failed write of the log must not kill the training: it is reported once.
        if writeln!(self.file, "{}", cells.join(",")).is_err() {
            eprintln!("warning: could not append to metrics.csv");
        }
    }
}

type Processor<T> = SupervisedTrainingEventProcessor<T>;

impl<T: Trainable> SupervisedLearningStrategy<T> for StepStrategy<T> {
    fn fit(
        &self,
        components: TrainingComponents<T>,
        mut learner: Learner<T>,
        train: TrainLoader<T>,
        valid: ValidLoader<T>,
        _starting_epoch: usize,
    ) -> (T, Processor<T>) {
        let plan = &self.plan;
        let mut processor = components.event_processor;
        let mut checkpointer = components.checkpointer;
        let interrupter = components.interrupter.clone();
        learner.fork(&self.device);

        let start_step = plan.resume.as_ref().map_or(0, |m| m.step);
        if let (Some(m), Some(cp)) = (&plan.resume, &checkpointer) {
            learner = cp.load_checkpoint(learner, m.step);
        }
        let per_step = plan.batch_size * plan.accumulation;
        let total_items = train.num_items();
        let start_item = (start_step * per_step).min(total_items);
        let train = train.slice(start_item, total_items).to_device(&self.device);

        let diag_names: Vec<&str> = Vec::new();
        let mut csv: Option<Csv> = None;
        let csv_error = |e: TrainError| {
            self.log.lock().expect("log").failure = Some(e);
        };

        interrupter.fail_on_error(processor.process_train(LearnerEvent::StartSplit {
            epoch_number: 1,
            total_items: plan.total_steps,
        }));

        let mut step = start_step;
        let mut items = start_item;
        let mut accumulator = GradientsAccumulator::new();
        let mut in_step = 0usize;
        let mut step_start = Instant::now();
        let mut step_loss = 0.0f64;
        let mut step_diag: Vec<(&'static str, f64)> = Vec::new();
        let mut last_checkpoint = plan.resume.as_ref().map(|m| m.step);
        // Data-parallel runs read their devices' shares only: the main loader is not started
        // (its workers would load every batch for nothing).
        let mut iterator = self.shares.is_empty().then(|| train.iter());
        let share_loaders: Vec<_> = self
            .shares
            .iter()
            .map(|(d, l)| {
                let total = l.num_items();
                let start = (start_item / self.shares.len()).min(total);
                (d.clone(), l.slice(start, total).to_device(d))
            })
            .collect();
        let mut shares: Vec<_> = share_loaders
            .iter()
            .map(|(d, l)| (d.clone(), l.iter()))
            .collect();

        'steps: while step < plan.total_steps {
            let outputs = if shares.is_empty() {
                let Some(batch) = iterator.as_mut().and_then(|it| it.next()) else {
                    break;
                };
                match batch {
                    Ok(b) => vec![learner.train_step(b)],
                    Err(e) => {
                        self.log.lock().expect("log").failure =
                            Some(TrainError::Data(e.to_string()));
                        break;
                    }
                }
            } else {
                match parallel_round(&learner.model(), &self.device, &mut shares) {
                    None => break,
                    Some(Ok(outs)) => outs,
                    Some(Err(e)) => {
                        self.log.lock().expect("log").failure = Some(TrainError::Data(e));
                        break;
                    }
                }
            };
            for out in outputs {
                items += out.item.ids.len();
                let loss = out.item.loss_value;
                if !loss.is_finite() {
                    self.log.lock().expect("log").failure = Some(TrainError::NonFinite {
                        step: step + 1,
                        loss,
                        ids: out.item.ids.clone(),
                        last_checkpoint,
                        checkpoint_dir: plan.checkpoint_dir.clone(),
                    });
                    interrupter.stop(Some("non-finite loss"));
                    break 'steps;
                }
                step_loss += loss / plan.accumulation as f64;
                for (k, v) in &out.item.diagnostics {
                    match step_diag.iter_mut().find(|(n, _)| n == k) {
                        Some((_, acc)) => *acc += v / plan.accumulation as f64,
                        None => step_diag.push((k, v / plan.accumulation as f64)),
                    }
                }
                in_step += 1;
                let grads = if plan.accumulation > 1 {
                    accumulator.accumulate(&learner.model(), out.grads);
                    if in_step < plan.accumulation {
                        continue;
                    }
                    accumulator.grads()
                } else {
                    out.grads
                };
                learner.lr_step();
                learner.optimizer_step(grads);
                step += 1;
                in_step = 0;

                let lr = learner.lr_current();
                let record = StepRecord {
                    step,
                    loss: step_loss,
                    lr: lr.base(),
                    step_ms: step_start.elapsed().as_secs_f64() * 1e3,
                    diagnostics: step_diag.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
                };
                if csv.is_none() {
                    let mut names = diag_names.clone();
                    names.extend(step_diag.iter().map(|(k, _)| *k));
                    match Csv::open(&plan.csv, start_step, &names) {
                        Ok(c) => csv = Some(c),
                        Err(e) => {
                            csv_error(e);
                            break 'steps;
                        }
                    }
                }
                if let Some(c) = csv.as_mut() {
                    c.row(&record);
                }
                let progress = Progress::new(step, plan.total_steps, Some("steps".into()));
                let mut item = out.item;
                item.loss_value = step_loss;
                interrupter.fail_on_error(processor.process_train(LearnerEvent::ProcessedItem(
                    TrainingItem::new(item, progress, Some(step), Some(lr)),
                )));
                self.log.lock().expect("log").steps.push(record);
                step_loss = 0.0;
                step_diag.clear();

                let due = plan.checkpoint_every > 0 && step.is_multiple_of(plan.checkpoint_every);
                if (due || step == plan.total_steps)
                    && let Some(cp) = checkpointer.as_mut()
                {
                    // Hand the records over; the strategy's no-op delete returns once they are
                    // written, then the manifest commits them.
                    cp.checkpoint(&learner, step, &components.event_store);
                    match Manifest::describe(&plan.checkpoint_dir, step, items)
                        .and_then(|m| m.commit(&plan.checkpoint_dir))
                    {
                        Ok(()) => {
                            last_checkpoint = Some(step);
                            prune(&plan.checkpoint_dir, plan.keep);
                        }
                        Err(e) => {
                            self.log.lock().expect("log").failure = Some(e);
                            break 'steps;
                        }
                    }
                }
                if interrupter.should_stop() || plan.stop_after.is_some_and(|s| step >= s) {
                    break 'steps;
                }
                step_start = Instant::now();
            }
        }
        self.log.lock().expect("log").last_checkpoint = last_checkpoint;
        interrupter.fail_on_error(processor.process_train(LearnerEvent::EndSplit(1)));

        let failed = self.log.lock().expect("log").failure.is_some();
        if !failed && plan.stop_after.is_none_or(|s| s >= plan.total_steps) {
            let valid = valid.to_device(&self.device.clone().inner());
            let valid_loss = validate(&learner, &valid, &mut processor, &interrupter);
            self.log.lock().expect("log").valid_loss = valid_loss;
        }
        interrupter.fail_on_error(processor.process_train(LearnerEvent::EndEpoch(1)));
        self.log.lock().expect("log").model = Some(learner.model());
        (learner.model(), processor)
    }
}

fn validate<T: Trainable>(
    learner: &Learner<T>,
    valid: &ValidLoader<T>,
    processor: &mut Processor<T>,
    interrupter: &burn::train::Interrupter,
) -> Option<f64> {
    use burn::train::InferenceStep;
    let model = learner.model().valid();
    interrupter.fail_on_error(processor.process_valid(LearnerEvent::StartSplit {
        epoch_number: 1,
        total_items: valid.num_items(),
    }));
    let mut iterator = valid.iter();
    let (mut sum, mut n) = (0.0, 0usize);
    let mut iteration = 0;
    while let Some(batch) = iterator.next() {
        let Ok(batch) = batch else { break };
        iteration += 1;
        let out = InferenceStep::step(&model, batch);
        let size = out.ids.len();
        if out.loss_value.is_finite() {
            sum += out.loss_value * size as f64;
            n += size;
        }
        let progress = iterator.progress();
        interrupter.fail_on_error(processor.process_valid(LearnerEvent::ProcessedItem(
            TrainingItem::new(out, progress, Some(iteration), None),
        )));
    }
    interrupter.fail_on_error(processor.process_valid(LearnerEvent::EndSplit(1)));
    (n > 0).then(|| sum / n as f64)
}
