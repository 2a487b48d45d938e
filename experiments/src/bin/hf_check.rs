//! Open a Hugging Face model directory with vlalign and run one forward pass.
//!
//! ```text
//! cargo run --release -p experiments --bin hf_check -- --model DIR \
//!     (--input-ids 1,2,3 | --prompt TEXT) [--image PNG]... [--out logits.safetensors] [--save-hf DIR]
//! ```
//! Accepts `LlavaForConditionalGeneration` (every key layout), `Blip2ForConditionalGeneration` and
//! `InstructBlipForConditionalGeneration` with a LLaMA LM (`--qformer-input-ids`), `LlamaForCausalLM`,
//! `Qwen2ForCausalLM`, single or sharded safetensors, f32/f16/bf16. Prints the load report and
//! the top-5 next tokens. `--input-ids` are taken exactly as `transformers` takes them (image
//! tokens already expanded); `--prompt` goes through the directory's `tokenizer.json` and a chat
//! template. Images go through the data crate's preprocessing with the directory's
//! `preprocessor_config.json` when present (CLIP's constants otherwise). `--out` writes the
//! logits of every position, `[T, V]` f32 under the key `logits`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use burn::tensor::{Bool, Device, Int, Tensor, TensorData};
use clap::Parser;
use experiments::device::select_device;
use vlalign_data::record::{Record, Role, Turn};
use vlalign_data::{AspectMode, Encoder, ImageProcessor, Template, TextTokenizer};
use vlalign_models::hf::{self, HfModelConfig};
use vlalign_models::{Blip2Input, LlavaInput, QFormerText, mask::position_ids_from_mask};

#[derive(Parser, Debug)]
#[command(about = "Load a Hugging Face model directory and run one forward pass")]
struct Args {
    /// Model directory (config.json + safetensors).
    #[arg(long)]
    model: PathBuf,
    /// Token ids, comma separated, image tokens already expanded.
    #[arg(long, value_delimiter = ',', conflicts_with = "prompt")]
    input_ids: Option<Vec<i64>>,
    /// A user message; `<image>` marks where each image goes (added in front when absent).
    #[arg(long)]
    prompt: Option<String>,
    /// Chat template for `--prompt`: plain, vicuna_v1, chatml.
    #[arg(long, default_value = "vicuna_v1")]
    template: Template,
    /// Image files, in order (repeatable).
    #[arg(long)]
    image: Vec<PathBuf>,
    /// InstructBLIP: the Q-Former's instruction ids (BERT vocabulary), comma separated. With
    /// `--prompt` they come from the prompt through `DIR/qformer_tokenizer/tokenizer.json`.
    #[arg(long, value_delimiter = ',')]
    qformer_input_ids: Option<Vec<i64>>,
    /// Write the logits `[T, V]` (f32, key `logits`) here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Also save the model back as a transformers directory (LLaVA only).
    #[arg(long)]
    save_hf: Option<PathBuf>,
    /// Backend: flex, ndarray, wgpu, cuda[:N].
    #[arg(long)]
    device: Option<String>,
}

fn main() -> ExitCode {
    experiments::alloc::keep_freed_memory();
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn processor(dir: &Path, size: usize) -> ImageProcessor {
    let file = dir.join("preprocessor_config.json");
    match std::fs::read_to_string(&file)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
    {
        Some(v) => ImageProcessor::from_hf_json(&v, AspectMode::CenterCrop),
        None => ImageProcessor {
            mode: AspectMode::CenterCrop,
            ..ImageProcessor::clip(size)
        },
    }
}

fn prompt_ids(
    args: &Args,
    text: &str,
    image_tokens: usize,
    image_token_id: u32,
) -> Result<Vec<i64>, Box<dyn std::error::Error>> {
    let tokenizer = TextTokenizer::from_file(&args.model.join("tokenizer.json"))?;
    let mut value = text.to_string();
    let missing = args
        .image
        .len()
        .saturating_sub(value.matches("<image>").count());
    value = "<image>\n".repeat(missing) + &value;
    let encoder = Encoder::new(
        tokenizer,
        args.template,
        image_tokens,
        usize::MAX,
        Some(image_token_id),
    )?;
    let record = Record {
        id: "prompt".into(),
        images: args.image.iter().map(|p| p.display().to_string()).collect(),
        turns: vec![
            Turn {
                role: Role::Human,
                value,
            },
            Turn {
                role: Role::Gpt,
                value: String::new(),
            },
        ],
        truth: Vec::new(),
    };
    let (ids, _, _) = encoder.encode_prompt(&record)?;
    Ok(ids.into_iter().map(i64::from).collect())
}

type Error = Box<dyn std::error::Error>;

fn run(args: Args) -> Result<(), Error> {
    let selected = select_device(args.device.as_deref())?;
    if let Some(w) = &selected.warning {
        eprintln!("warning: {w}");
    }
    let device = selected.device;
    let config = hf::read_config(&args.model)?;
    let ids = checked_ids(&args, &config)?;
    let t = ids.len();
    let id_tensor = Tensor::<2, Int>::from_data(TensorData::new(ids, [1, t]), &device);
    let logits = match config {
        HfModelConfig::Llava(c) => llava_logits(&args, c.vision.image_size, id_tensor, &device)?,
        HfModelConfig::Blip2(c) => blip2_logits(&args, c.vision.image_size, id_tensor, &device)?,
        HfModelConfig::Decoder(_) => {
            let (model, _, report) = hf::load_decoder(&args.model, &device)?;
            println!("loaded causal LM from {}: {report}", args.model.display());
            let pos = position_ids_from_mask(&[vec![true; t]]).concat();
            let pos = Tensor::<2, Int>::from_data(TensorData::new(pos, [1, t]), &device);
            model.forward(id_tensor, pos, None, None)
        }
        HfModelConfig::Vision(_) => {
            return Err(
                "a vision tower has no next-token logits; give a LLaVA or causal LM directory"
                    .into(),
            );
        }
    };
    let [_, _, vocab] = logits.dims();
    let values: Vec<f32> = logits
        .reshape([t, vocab])
        .to_data()
        .convert::<f32>()
        .try_into_vec()?;
    print_top5(&args, &values[(t - 1) * vocab..], t);
    if let Some(out) = &args.out {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let view =
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![t, vocab], &bytes)?;
        safetensors::serialize_to_file([("logits", view)], None, out)?;
        println!("wrote logits [{t}, {vocab}] to {}", out.display());
    }
    Ok(())
}

/// The input ids (`--input-ids`, or `--prompt` tokenized), checked against the model: as many
/// image slots as the images need, every id inside the vocabulary.
fn checked_ids(args: &Args, config: &HfModelConfig) -> Result<Vec<i64>, Error> {
    let (image_tokens, image_token_id, vocab) = match config {
        HfModelConfig::Llava(c) => (c.image_tokens(), c.image_token_id as u32, c.text.vocab_size),
        HfModelConfig::Blip2(c) => (c.image_tokens(), c.image_token_id as u32, c.text.vocab_size),
        HfModelConfig::Decoder(c) => (0, 0, c.vocab_size),
        HfModelConfig::Vision(_) => (0, 0, 0),
    };
    let ids: Vec<i64> = match (&args.input_ids, &args.prompt) {
        (Some(ids), _) => ids.clone(),
        (None, Some(text)) => prompt_ids(args, text, image_tokens, image_token_id)?,
        (None, None) => return Err("give --input-ids or --prompt".into()),
    };
    if ids.is_empty() {
        return Err("the input is empty".into());
    }
    let slots = ids
        .iter()
        .filter(|&&t| image_tokens > 0 && t == image_token_id as i64)
        .count();
    if slots != args.image.len() * image_tokens {
        return Err(format!(
            "the ids hold {slots} image slots (id {image_token_id}) but {} image(s) need {} \
             ({image_tokens} each): expand each image to its slots, as transformers does",
            args.image.len(),
            args.image.len() * image_tokens
        )
        .into());
    }
    if let Some(bad) = ids.iter().find(|&&t| t < 0 || t as usize >= vocab.max(1)) {
        return Err(format!("token id {bad} is outside the model's vocabulary of {vocab}").into());
    }
    Ok(ids)
}

/// Load the LLaVA (saving it back with `--save-hf`), preprocess `--image`s and run it.
fn llava_logits(
    args: &Args,
    image_size: usize,
    input_ids: Tensor<2, Int>,
    device: &Device,
) -> Result<Tensor<3>, Error> {
    let (model, config, report) = hf::load_llava(&args.model, device)?;
    println!("loaded LLaVA from {}: {report}", args.model.display());
    let images = load_images(args, image_size, device)?;
    if let Some(dir) = &args.save_hf {
        hf::save_llava(&model, &config, dir)?;
        println!("saved to {}", dir.display());
    }
    let [_, t] = input_ids.dims();
    let mask = Tensor::<2, Bool>::from_data(TensorData::new(vec![true; t], [1, t]), device);
    Ok(model
        .forward(LlavaInput {
            image_index: None,
            input_ids,
            attention_mask: mask,
            images,
        })
        .logits)
}

/// The `--image`s, preprocessed as the directory's `preprocessor_config.json` says, at the
/// tower's input size.
fn load_images(
    args: &Args,
    image_size: usize,
    device: &Device,
) -> Result<Option<Tensor<4>>, Error> {
    if args.image.is_empty() {
        return Ok(None);
    }
    let mut p = processor(&args.model, image_size);
    // The tower's learned positions fix the input size.
    p.size = image_size;
    let mut pixels = Vec::new();
    for path in &args.image {
        pixels.extend(
            p.load(path)
                .map_err(|e| format!("{}: {e}", path.display()))?,
        );
    }
    let s = p.size;
    Ok(Some(Tensor::<4>::from_data(
        TensorData::new(pixels, [args.image.len(), 3, s, s]),
        device,
    )))
}

/// InstructBLIP's Q-Former instruction ids: `--qformer-input-ids`, or `--prompt` through the
/// directory's `qformer_tokenizer/tokenizer.json`.
fn qformer_ids(args: &Args) -> Result<Vec<i64>, Error> {
    if let Some(ids) = &args.qformer_input_ids {
        return Ok(ids.clone());
    }
    let Some(prompt) = &args.prompt else {
        return Err(
            "InstructBLIP's Q-Former reads the instruction: give --qformer-input-ids \
                    (or --prompt with a qformer_tokenizer/ in the model directory)"
                .into(),
        );
    };
    let file = args.model.join("qformer_tokenizer").join("tokenizer.json");
    let tokenizer = TextTokenizer::from_file(&file)
        .map_err(|e| format!("{}: {e} (or give --qformer-input-ids)", file.display()))?;
    let text = prompt.replace("<image>", "");
    let encoding = tokenizer
        .inner()
        .encode(text.trim(), true)
        .map_err(|e| format!("tokenizing the prompt for the Q-Former: {e}"))?;
    Ok(encoding.get_ids().iter().map(|&i| i64::from(i)).collect())
}

/// Load the BLIP-2 / InstructBLIP, preprocess `--image`s and run it.
fn blip2_logits(
    args: &Args,
    image_size: usize,
    input_ids: Tensor<2, Int>,
    device: &Device,
) -> Result<Tensor<3>, Error> {
    let (model, config, report) = hf::load_blip2(&args.model, device)?;
    println!("loaded BLIP-2 from {}: {report}", args.model.display());
    let images = load_images(args, image_size, device)?;
    let n_images = args.image.len();
    let qformer_text = match (config.qformer.text_input, n_images) {
        (true, n) if n > 0 => {
            let ids = qformer_ids(args)?;
            let vocab = config.qformer.vocab_size as i64;
            if let Some(bad) = ids.iter().find(|&&t| t < 0 || t >= vocab) {
                return Err(
                    format!("Q-Former id {bad} is outside its vocabulary of {vocab}").into(),
                );
            }
            let t = ids.len();
            let rows: Vec<i64> = (0..n).flat_map(|_| ids.iter().copied()).collect();
            Some(QFormerText {
                ids: Tensor::from_data(TensorData::new(rows, [n, t]), device),
                valid: Tensor::from_data(TensorData::new(vec![true; n * t], [n, t]), device),
            })
        }
        _ => None,
    };
    let [_, t] = input_ids.dims();
    let mask = Tensor::<2, Bool>::from_data(TensorData::new(vec![true; t], [1, t]), device);
    Ok(model
        .forward(Blip2Input {
            input_ids,
            attention_mask: mask,
            images,
            image_index: None,
            qformer_text,
        })
        .logits)
}

/// The five largest next-token logits of the last position, with their tokens.
fn print_top5(args: &Args, last: &[f32], t: usize) {
    let mut top: Vec<(usize, f32)> = last.iter().copied().enumerate().collect();
    top.sort_by(|a, b| b.1.total_cmp(&a.1));
    let tokenizer = TextTokenizer::from_file(&args.model.join("tokenizer.json")).ok();
    println!("{t} input tokens; top-5 next tokens:");
    for (id, logit) in top.iter().take(5) {
        let text = tokenizer
            .as_ref()
            .and_then(|tk| tk.inner().id_to_token(*id as u32))
            .unwrap_or_default();
        println!("  {id:>8}  {logit:>10.4}  {text:?}");
    }
}
