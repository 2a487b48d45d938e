//! `seva_dpo score`: the summed log-probs of each pair's chosen and rejected answer under a
//! model (the answer's supervised tokens: answer + end of turn, as DPO and MLE count them) —
//! how a user inspects a pairs file, or checks a converted checkpoint against transformers.

use std::io::Write as _;
use std::path::PathBuf;

use serde_json::json;
use vlalign_data::{Template, read_pairs};

use crate::cal_llava::CalLlavaConfig;
use crate::inputs::{RealData, real_inputs};
use crate::run::{RunArgs, RunOptions, StageKind};
use crate::seva_pairs::score_pairs;

/// `seva_dpo score`'s flags.
#[derive(clap::Args, Debug)]
pub struct ScoreArgs {
    /// A Hugging Face LLaVA directory.
    #[arg(long)]
    pub model: PathBuf,
    /// Pairs (JSON Lines: `{"id", "image", "question", "chosen", "rejected", …}`).
    #[arg(long)]
    pub pairs: PathBuf,
    /// Folder the pairs' image paths are relative to.
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
    /// Longest sequence (tokens, image slots included); a longer pair is an error naming it.
    #[arg(long, default_value_t = 2048)]
    pub max_len: usize,
    /// Pairs per batch.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// Output JSON Lines.
    #[arg(long)]
    pub out: PathBuf,
}

/// Score `args.pairs` with `args.model` into `args.out`.
pub fn score(args: &ScoreArgs, run: &RunArgs) -> Result<(), String> {
    let selected = run.select_device()?;
    let real = RealData {
        data: args.pairs.clone(),
        image_folder: args.image_folder.clone(),
        model: Some(args.model.clone()),
        vision: None,
        llm: None,
        tokenizer: args.tokenizer.clone(),
        template: args.template,
        stage: StageKind::Finetune,
        held_out: 0.0,
    };
    let opts = RunOptions {
        device: selected.device.clone(),
        out: args.out.parent().map(PathBuf::from).unwrap_or_default(),
        resume: false,
        verbose: !run.quiet,
    };
    let mut c = CalLlavaConfig::default();
    c.max_len = args.max_len;
    let mut inputs = real_inputs(c.spec(), &real, &opts)?;
    if let Some(system) = &args.system {
        inputs.enc.chat = inputs.enc.chat.clone().with_system(system.clone());
    }
    let mut pairs = read_pairs(&args.pairs).map_err(|e| e.to_string())?;
    score_pairs(
        &inputs.init,
        &mut pairs,
        &inputs,
        args.batch_size,
        None,
        &opts,
    )?;
    let mut text = Vec::new();
    for p in &pairs {
        let line = json!({
            "id": p.id,
            "logp_chosen": p.ref_logp_chosen,
            "logp_rejected": p.ref_logp_rejected,
        });
        writeln!(text, "{line}").map_err(|e| e.to_string())?;
    }
    std::fs::write(&args.out, text).map_err(|e| format!("{}: {e}", args.out.display()))?;
    eprintln!("scored {} pairs into {}", pairs.len(), args.out.display());
    Ok(())
}
