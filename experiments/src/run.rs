//! What every experiment shares: where the world comes from, how evaluation samples it, the
//! stages of LLaVA training, and the options of a run (device, run directory, resume,
//! verbosity) with the one way a stage trains (`train_stage`), and the run directory
//! (`config.toml` written, checked on resume).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::Dataset;
use burn::tensor::Device;
use burn::train::TrainStep;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use vlalign_align::Objective;
use vlalign_data::{Item, VlmBatcher};
use vlalign_models::Llava;
use vlalign_train::{Stage, TrainConfig, TrainReport, Trainable, Trainee, default_renderer, fit};

use crate::device::{SelectedDevice, select_device};

/// Where the world comes from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorldSection {
    /// Folder (generated when it has no `world.json`).
    pub dir: PathBuf,
    /// Scenes.
    pub images: usize,
    /// World seed.
    pub seed: u64,
    /// Language prior: share of stars that are yellow (0.8 default; 0 = none).
    pub prior: f32,
    /// Tokenizer vocabulary trained on the world's texts.
    pub vocab: usize,
    /// Questions per instruction record (one image, several turns: the image's tokens are paid
    /// once for all of them).
    pub qa_turns: usize,
    /// Multi-image groups (default: one per 10 scenes).
    pub groups: Option<usize>,
    /// Two-image "what changed?" pairs.
    pub changes: usize,
    /// System prompt of the chat template (default: the world's short one; LLaVA-1.5's is 83
    /// tokens of every sequence here and teaches a model trained from scratch nothing).
    pub system: String,
}

impl Default for WorldSection {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("data/world"),
            images: 3000,
            seed: 0,
            prior: 0.8,
            vocab: 512,
            qa_turns: 3,
            groups: None,
            changes: 0,
            system: vlalign_data::world::SYSTEM.into(),
        }
    }
}

/// Evaluation settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvalSection {
    /// Held-out QA records scored (each gives up to three questions).
    pub records: usize,
    /// Batch size of generation and scoring.
    pub batch_size: usize,
    /// Generation budget per answer.
    pub max_new_tokens: usize,
    /// Validation samples drawn in `tokens.html`.
    pub html_samples: usize,
    /// Held-out captions generated for CIDEr and CHAIR (world only).
    pub captions: usize,
    /// Questions per POPE split (world only).
    pub pope_questions: usize,
    /// Held-out split of the world: `val` (default) or `test`.
    pub split: String,
}

impl Default for EvalSection {
    fn default() -> Self {
        Self {
            records: 120,
            batch_size: 32,
            max_new_tokens: 16,
            html_samples: 8,
            captions: 100,
            pope_questions: 100,
            split: "val".into(),
        }
    }
}

/// The stages of LLaVA training.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StageKind {
    /// Stage 1: alignment pretraining on captions.
    Pretrain,
    /// Stage 2: instruction tuning.
    Finetune,
}

/// Options that are not part of the experiment's definition.
#[derive(Clone)]
pub struct RunOptions {
    /// The device (without autodiff).
    pub device: Device,
    /// Run directory.
    pub out: PathBuf,
    /// Resume each stage from its newest intact checkpoint.
    pub resume: bool,
    /// Show progress bars and burn-train's renderer.
    pub verbose: bool,
    /// Data-parallel training on these devices (`--devices`; the first is `device`); empty:
    /// `device` alone.
    pub devices: Vec<Device>,
}

/// CAL's diagnostics, shown live for a CAL stage.
const CAL_SHOWN: &[(&str, &str)] = &[
    ("cal_weight_mean", "CAL weight (mean)"),
    ("cal_floor_share", "CAL floor share"),
];

impl RunOptions {
    /// Train one LLaVA stage in `out/<name>` with `objective` (a CAL objective's diagnostics
    /// are shown live); see [`fit_stage`](Self::fit_stage).
    pub fn train_stage(
        &self,
        batcher: &VlmBatcher,
        model: Llava,
        objective: Arc<dyn Objective<Llava>>,
        data: (Arc<dyn Dataset<Item>>, Arc<dyn Dataset<Item>>),
        tc: &TrainConfig,
        name: &str,
    ) -> Result<(Llava, TrainReport), String> {
        let show = if objective.name() == "cal" {
            CAL_SHOWN
        } else {
            &[]
        };
        let trainee = Trainee::new(model, objective);
        let (trained, report) = self.fit_stage(trainee, data, batcher.clone(), tc, name, show)?;
        Ok((trained.model, report))
    }

    /// Train anything [`Trainable`] as one stage of an experiment, in `out/<name>` (resumable
    /// with `resume`; a finished stage returns its final checkpoint), on `(train, valid)`,
    /// rendered as `verbose` says with the diagnostics `show` live.
    pub fn fit_stage<T, I, Bt>(
        &self,
        trainee: T,
        (train, valid): (Arc<dyn Dataset<I>>, Arc<dyn Dataset<I>>),
        batcher: Bt,
        tc: &TrainConfig,
        name: &str,
        show: &[(&'static str, &'static str)],
    ) -> Result<(T, TrainReport), String>
    where
        T: Trainable,
        <T as TrainStep>::Input: Clone + std::fmt::Debug + Send + 'static,
        I: Clone + std::fmt::Debug + Send + Sync + 'static,
        Bt: Batcher<I, <T as TrainStep>::Input> + Clone + 'static,
    {
        let dir = self.out.join(name);
        let stage = Stage {
            dir: &dir,
            label: name,
            resume: self.resume,
            stop_after: None,
            show,
            renderer: if self.verbose {
                default_renderer((tc.steps / 20).max(1))
            } else {
                Some(vlalign_train::quiet_renderer())
            },
            devices: &self.devices,
        };
        let (trained, report) = fit(trainee, train, valid, batcher, &self.device, tc, stage)
            .map_err(|e| format!("{name}: {e}"))?;
        for w in &report.warnings {
            eprintln!("{name}: {w}");
        }
        Ok((trained, report))
    }
}

/// `out`, or `runs/<experiment>/<unix time>` when none is given.
pub fn run_dir(out: Option<&Path>, experiment: &str) -> PathBuf {
    out.map(Path::to_path_buf).unwrap_or_else(|| {
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        PathBuf::from("runs").join(experiment).join(t.to_string())
    })
}

/// Create the run directory `out` and write the resolved configuration to `config.toml`.
/// Without `resume`, a directory that already holds anything (a finished or a started run) is
/// refused, naming it, and left exactly as it was. On `resume`, the configuration the directory
/// was made with must equal `config` once `relax` has copied over what a resume may change
/// (e.g. `cal_llava`'s noise levels: stages are named by them, so a resumed run may add
/// levels); otherwise the checkpoints would silently continue another experiment. Nothing is
/// written before these checks pass.
pub fn prepare_run_dir<C>(
    out: &Path,
    config: &C,
    resume: bool,
    relax: impl Fn(&mut C, &C),
) -> Result<(), String>
where
    C: Serialize + DeserializeOwned + PartialEq,
{
    prepare_run_dir_on(out, config, &[], resume, relax)
}

/// [`prepare_run_dir`] that also records the training devices (`--devices`; empty: one device)
/// in `config.toml`'s `[run]` table and refuses a resume on another device list: a step of a
/// data-parallel run consumes a batch per device, so the data position would differ.
pub fn prepare_run_dir_on<C>(
    out: &Path,
    config: &C,
    devices: &[String],
    resume: bool,
    relax: impl Fn(&mut C, &C),
) -> Result<(), String>
where
    C: Serialize + DeserializeOwned + PartialEq,
{
    if !resume {
        refuse_existing_run(out)?;
    }
    let path = out.join("config.toml");
    let at = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    if resume && path.is_file() {
        let text = std::fs::read_to_string(&path).map_err(|e| at(&e))?;
        let mut table: toml::Table = toml::from_str(&text).map_err(|e| at(&e))?;
        let run = table.remove("run");
        let recorded: Vec<String> = run
            .and_then(|r| r.get("devices").cloned())
            .map(|d| d.try_into().map_err(|e| at(&e)))
            .transpose()?
            .unwrap_or_default();
        let mut before: C = table.try_into().map_err(|e| at(&e))?;
        relax(&mut before, config);
        if before != *config {
            return Err(format!(
                "{} was made with another configuration; resume with `--config {}`",
                out.display(),
                path.display()
            ));
        }
        if recorded != devices {
            let show = |d: &[String]| {
                if d.is_empty() {
                    "one device".to_string()
                } else {
                    format!("--devices {}", d.join(","))
                }
            };
            return Err(format!(
                "{} was trained on {}; resume it on the same ({} would read other data)",
                out.display(),
                show(&recorded),
                show(devices)
            ));
        }
    }
    let mut table = toml::Table::try_from(config).map_err(|e| e.to_string())?;
    if !devices.is_empty() {
        let mut run = toml::Table::new();
        run.insert("devices".into(), devices.to_vec().into());
        table.insert("run".into(), run.into());
    }
    let text = toml::to_string_pretty(&table).map_err(|e| e.to_string())?;
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))
}

/// An error when `out` exists and is not an empty directory.
fn refuse_existing_run(out: &Path) -> Result<(), String> {
    if !out.exists() {
        return Ok(());
    }
    if !out.is_dir() {
        return Err(format!(
            "--out {}: exists and is not a directory",
            out.display()
        ));
    }
    let mut entries: Vec<String> = std::fs::read_dir(out)
        .map_err(|e| format!("{}: {e}", out.display()))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    if entries.is_empty() {
        return Ok(());
    }
    entries.sort();
    let shown = entries
        .iter()
        .take(4)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    let more = if entries.len() > 4 { ", …" } else { "" };
    Err(format!(
        "{} already holds a run ({shown}{more}): continue it with --resume, or choose another \
         --out; nothing was changed",
        out.display()
    ))
}

/// Read a TOML configuration file (a run directory's `config.toml` too: its `[run]` table is
/// left out).
pub fn read_config<C: DeserializeOwned>(path: &Path) -> Result<C, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut table: toml::Table =
        toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    // A run directory's `[run]` table records how it ran (the devices), not what it does.
    table.remove("run");
    table
        .try_into()
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// The flags every experiment binary takes (`#[command(flatten)]` into its own).
#[derive(clap::Args, Clone, Debug)]
pub struct RunArgs {
    /// TOML configuration (every field optional; see `config.toml` in any run directory).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The CI smoke profile (small world, small model, a few steps).
    #[arg(long)]
    pub quick: bool,
    /// Run directory (default `runs/<experiment>/<unix time>`).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue the run in `--out` from each stage's newest intact checkpoint.
    #[arg(long, requires = "out")]
    pub resume: bool,
    /// World folder (generated if absent).
    #[arg(long)]
    pub world: Option<PathBuf>,
    /// Device: flex | ndarray | wgpu | cuda[:N] (default: BURN_DEVICE, else the first compiled).
    #[arg(long, conflicts_with = "devices")]
    pub device: Option<String>,
    /// Data-parallel training on several devices, e.g. `cuda:0,cuda:1` (each step's batches run
    /// on all at once; the first holds the optimizer and evaluates).
    #[arg(long, value_delimiter = ',')]
    pub devices: Option<Vec<String>>,
    /// Quiet: no progress bars or per-step lines.
    #[arg(long)]
    pub quiet: bool,
}

impl RunArgs {
    /// The run directory of `experiment` (`--out`, else `runs/<experiment>/<unix time>`),
    /// prepared for `config` ([`prepare_run_dir`], `--resume` checking `relax`ed equality).
    pub fn run_dir<C>(
        &self,
        experiment: &str,
        config: &C,
        relax: impl Fn(&mut C, &C),
    ) -> Result<PathBuf, String>
    where
        C: Serialize + DeserializeOwned + PartialEq,
    {
        // Every flag is checked before a byte is written.
        self.devices()?;
        let out = run_dir(self.out.as_deref(), experiment);
        let devices = self.devices.clone().unwrap_or_default();
        prepare_run_dir_on(&out, config, &devices, self.resume, relax)?;
        Ok(out)
    }

    /// The options these flags ask for: on `device`, writing into `out`.
    pub fn options(&self, device: &Device, out: &Path) -> Result<RunOptions, String> {
        Ok(RunOptions {
            device: device.clone(),
            out: out.to_path_buf(),
            resume: self.resume,
            verbose: !self.quiet,
            devices: self.devices()?,
        })
    }

    /// The devices `--devices` names (empty without it).
    pub fn devices(&self) -> Result<Vec<Device>, String> {
        let names = self.devices.as_deref().unwrap_or_default();
        if names.len() == 1 {
            return Err("--devices: give two or more (one device is --device)".into());
        }
        check_device_list(names)?;
        names
            .iter()
            .map(|n| {
                select_device(Some(n))
                    .map(|s| s.device)
                    .map_err(|e| format!("--devices: {e}"))
            })
            .collect()
    }

    /// The device `--device` names (the first of `--devices`; else the default), its warning
    /// printed.
    pub fn select_device(&self) -> Result<SelectedDevice, String> {
        let first = self.devices.as_ref().and_then(|d| d.first());
        let name = self.device.as_deref().or(first.map(String::as_str));
        let selected = select_device(name).map_err(|e| e.to_string())?;
        if let Some(w) = &selected.warning {
            eprintln!("warning: {w}");
        }
        Ok(selected)
    }

    /// The configuration: `--config`, else the quick profile with `--quick`, else the default.
    pub fn config<C: DeserializeOwned>(
        &self,
        quick: impl FnOnce() -> C,
        default: impl FnOnce() -> C,
    ) -> Result<C, String> {
        match &self.config {
            Some(path) => read_config(path),
            None if self.quick => Ok(quick()),
            None => Ok(default()),
        }
    }
}

/// A `--devices` list must name distinct devices of one backend (`cuda` and `cuda:0` are one
/// device; a list mixing backends would split a step's batches between unlike devices).
pub fn check_device_list(names: &[String]) -> Result<(), String> {
    let specs = names
        .iter()
        .map(|n| {
            n.parse::<crate::device::DeviceSpec>()
                .map_err(|e| format!("--devices: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    for (i, a) in specs.iter().enumerate() {
        if let Some(b) = specs[..i].iter().find(|b| b.to_string() == a.to_string()) {
            return Err(format!(
                "--devices: {b} is named twice ({})",
                names.join(",")
            ));
        }
        if a.backend != specs[0].backend {
            return Err(format!(
                "--devices: one backend per run, got {} and {} ({})",
                specs[0].backend,
                a.backend,
                names.join(",")
            ));
        }
    }
    Ok(())
}

/// What an experiment binary's `main` returns: success, or the error on stderr and failure.
pub fn exit_code(result: Result<(), String>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(s: &str) -> Vec<String> {
        s.split(',').map(String::from).collect()
    }

    #[test]
    fn device_lists_are_distinct_devices_of_one_backend() {
        assert!(check_device_list(&names("cuda:0,cuda:1")).is_ok());
        let twice = check_device_list(&names("cuda,cuda:0")).unwrap_err();
        assert!(twice.contains("cuda:0 is named twice"), "{twice}");
        let mixed = check_device_list(&names("cuda:0,wgpu")).unwrap_err();
        assert!(mixed.contains("one backend"), "{mixed}");
        assert!(check_device_list(&names("cuda:0,tpu")).is_err());
        assert!(check_device_list(&names("flex,flex")).is_err());
    }

    #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
    struct Conf {
        steps: usize,
    }

    #[test]
    fn a_run_directory_in_use_is_refused_without_resume_and_left_as_it_was() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("run");
        prepare_run_dir(&out, &Conf { steps: 3 }, false, |_, _| {}).unwrap();
        std::fs::write(out.join("summary.json"), "{}").unwrap();
        let before = std::fs::read(out.join("config.toml")).unwrap();
        let e = prepare_run_dir(&out, &Conf { steps: 5 }, false, |_, _| {}).unwrap_err();
        assert!(
            e.contains(&out.display().to_string()) && e.contains("--resume"),
            "{e}"
        );
        assert_eq!(std::fs::read(out.join("config.toml")).unwrap(), before);
        // A resume with another configuration is refused too, and changes nothing.
        assert!(prepare_run_dir(&out, &Conf { steps: 5 }, true, |_, _| {}).is_err());
        assert_eq!(std::fs::read(out.join("config.toml")).unwrap(), before);
        prepare_run_dir(&out, &Conf { steps: 3 }, true, |_, _| {}).unwrap();
        // The devices are recorded; a resume on others is refused, naming both.
        let dp = tmp.path().join("dp");
        let two = names("cuda:0,cuda:1");
        prepare_run_dir_on(&dp, &Conf { steps: 3 }, &two, false, |_, _| {}).unwrap();
        let text = std::fs::read_to_string(dp.join("config.toml")).unwrap();
        assert!(text.contains("[run]") && text.contains("cuda:1"), "{text}");
        let e = prepare_run_dir_on(&dp, &Conf { steps: 3 }, &[], true, |_, _| {}).unwrap_err();
        assert!(
            e.contains("--devices cuda:0,cuda:1") && e.contains("one device"),
            "{e}"
        );
        prepare_run_dir_on(&dp, &Conf { steps: 3 }, &two, true, |_, _| {}).unwrap();
        // An empty directory is a fresh run.
        let empty = tmp.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        prepare_run_dir(&empty, &Conf { steps: 3 }, false, |_, _| {}).unwrap();
    }
}
