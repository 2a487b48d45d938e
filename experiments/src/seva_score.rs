//! `seva_dpo score`: the summed log-probs of each pair's chosen and rejected answer under a
//! model (the answer's supervised tokens: answer + end of turn, as DPO and MLE count them) —
//! how a user inspects a pairs file, or checks a converted checkpoint against transformers.

use std::io::Write as _;
use std::path::PathBuf;

use burn::data::dataset::Dataset;
use serde_json::json;
use vlalign_data::{PreferenceDataset, PreferencePair, Template, read_pairs};

use crate::cal_llava::CalLlavaConfig;
use crate::inputs::{Inputs, RealData, read_valid, real_inputs};
use crate::run::{RunArgs, RunOptions, StageKind};
use crate::seva_pairs::{Answering, noise_pairs, qa_questions, score_pairs, write_pairs_file};

/// The model flags `score` and `pairs` share.
#[derive(clap::Args, Debug)]
pub struct ModelArgs {
    /// A Hugging Face LLaVA directory.
    #[arg(long)]
    pub model: PathBuf,
    /// Folder the image paths are relative to.
    #[arg(long)]
    pub image_folder: PathBuf,
    /// Chat template: plain, vicuna_v1, chatml.
    #[arg(long, default_value = "vicuna_v1")]
    pub template: Template,
    /// System prompt of the chat template (default: the template's; a `seva_dpo` model of the
    /// world was trained with the world's, written in its run's `config.toml`).
    #[arg(long)]
    pub system: Option<String>,
    /// `tokenizer.json` (default: the model directory's).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Longest sequence (tokens, image slots included); a longer pair is reported and skipped.
    #[arg(long, default_value_t = 2048)]
    pub max_len: usize,
    /// Pairs (or prompts) per batch.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// Output JSON Lines.
    #[arg(long)]
    pub out: PathBuf,
}

impl ModelArgs {
    /// The model, tokenizer and template (`system` replacing the template's prompt), and run
    /// options writing next to `out`.
    fn inputs(&self, run: &RunArgs) -> Result<(Inputs, RunOptions), String> {
        let selected = run.select_device()?;
        let real = RealData {
            data: PathBuf::new(),
            image_folder: self.image_folder.clone(),
            model: Some(self.model.clone()),
            vision: None,
            llm: None,
            tokenizer: self.tokenizer.clone(),
            template: self.template,
            stage: StageKind::Finetune,
            held_out: 0.0,
        };
        let opts = RunOptions {
            device: selected.device.clone(),
            out: self.out.parent().map(PathBuf::from).unwrap_or_default(),
            resume: false,
            verbose: !run.quiet,
            devices: Vec::new(),
        };
        let c = CalLlavaConfig {
            max_len: self.max_len,
            ..CalLlavaConfig::default()
        };
        let mut inputs = real_inputs(c.spec(), &real, &opts)?;
        if let Some(system) = &self.system {
            inputs.enc.chat = inputs.enc.chat.clone().with_system(system.clone());
        }
        Ok((inputs, opts))
    }
}

/// `seva_dpo score`'s flags.
#[derive(clap::Args, Debug)]
pub struct ScoreArgs {
    /// Pairs (JSON Lines: `{"id", "image", "question", "chosen", "rejected", …}`).
    #[arg(long)]
    pub pairs: PathBuf,
    #[command(flatten)]
    pub model: ModelArgs,
}

/// Score `args.pairs` with `args.model.model` into `args.model.out`.
pub fn score(args: &ScoreArgs, run: &RunArgs) -> Result<(), String> {
    let (inputs, opts) = args.model.inputs(run)?;
    let pairs = read_pairs(&args.pairs).map_err(|e| e.to_string())?;
    let mut pairs = usable(pairs, &inputs);
    let b = args.model.batch_size;
    score_pairs(&inputs.init, &mut pairs, &inputs, b, None, &opts)?;
    let mut text = Vec::new();
    for p in &pairs {
        let line = json!({
            "id": p.id,
            "logp_chosen": p.ref_logp_chosen,
            "logp_rejected": p.ref_logp_rejected,
        });
        writeln!(text, "{line}").map_err(|e| e.to_string())?;
    }
    std::fs::write(&args.model.out, text)
        .map_err(|e| format!("{}: {e}", args.model.out.display()))?;
    eprintln!(
        "scored {} pairs into {}",
        pairs.len(),
        args.model.out.display()
    );
    Ok(())
}

/// `seva_dpo pairs`'s flags (`--out`: all noise steps in one file; `augmentation` names each
/// pair's).
#[derive(clap::Args, Debug)]
pub struct PairsArgs {
    /// LLaVA records (JSON array or JSON Lines): each one-image record's questions.
    #[arg(long)]
    pub data: PathBuf,
    /// Diffusion steps of the rejected images (SeVa: 500, 800).
    #[arg(long, value_delimiter = ',', default_value = "500,800")]
    pub noise_steps: Vec<usize>,
    /// At most this many questions.
    #[arg(long)]
    pub questions: Option<usize>,
    /// Generation budget per answer.
    #[arg(long, default_value_t = 64)]
    pub max_new_tokens: usize,
    /// Seed of the noise.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub model: ModelArgs,
}

/// Make and score pairs (`seva_dpo pairs`).
pub fn pairs(args: &PairsArgs, run: &RunArgs) -> Result<(), String> {
    if args.noise_steps.iter().any(|&t| t == 0 || t >= 1000) {
        return Err(format!(
            "--noise-steps: each in 1..999, got {:?}",
            args.noise_steps
        ));
    }
    let (inputs, opts) = args.model.inputs(run)?;
    let mut questions = qa_questions(&read_valid(&args.data)?);
    if let Some(n) = args.questions {
        questions.truncate(n);
    }
    let answering = Answering {
        max_new_tokens: args.max_new_tokens,
        batch_size: args.model.batch_size,
        verbose: opts.verbose,
    };
    let steps = &args.noise_steps;
    let sets = noise_pairs(
        &inputs.init,
        &questions,
        &inputs,
        steps,
        answering,
        args.seed,
    );
    let mut all = Vec::new();
    for set in sets {
        all.extend(set.pairs);
    }
    let mut all = usable(all, &inputs);
    score_pairs(
        &inputs.init,
        &mut all,
        &inputs,
        args.model.batch_size,
        None,
        &opts,
    )?;
    write_pairs_file(&args.model.out, &all)?;
    eprintln!(
        "{} pairs from {} questions into {}",
        all.len(),
        questions.len(),
        args.model.out.display()
    );
    Ok(())
}

/// The pairs that can be scored: both answers encoded whole within the length limit, the image
/// present and decodable. Each other pair is reported on stderr by id and field and left out,
/// so one bad pair does not cost the others.
fn usable(pairs: Vec<PreferencePair>, inputs: &Inputs) -> Vec<PreferencePair> {
    let total = pairs.len();
    let mut kept = Vec::with_capacity(total);
    for pair in pairs {
        let checked = PreferenceDataset::new(
            vec![pair.clone()],
            &inputs.enc.chat,
            &inputs.images,
            inputs.processor.clone(),
        )
        .map_err(|e| e.to_string())
        .and_then(|d| d.get(0).map(|_| ()).map_err(|e| e.to_string()));
        match checked {
            Ok(()) => kept.push(pair),
            Err(e) => eprintln!("skipped pair {}: {e}", pair.id),
        }
    }
    if kept.len() < total {
        eprintln!(
            "skipped {} of {total} pairs (named above); the other {} are written",
            total - kept.len(),
            kept.len()
        );
    }
    kept
}
