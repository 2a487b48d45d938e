//! What a comparison starts from: the world (generated when absent) with its tokenizer and a
//! fresh model, or the user's records, model and tokenizer (`--data`, `--model` / `--vision` +
//! `--llm`), with the encoders, image preprocessing and batcher that go with them.

use std::path::{Path, PathBuf};

use burn::tensor::Device;

use vlalign_data::dataset::prepare;
use vlalign_data::world::WorldConfig;
use vlalign_data::{
    Encoder, ImageCheck, ImageProcessor, Record, Template, TextTokenizer, VlmBatcher, VlmDataset,
    read_records,
};
use vlalign_models::{Llava, VisionConfig, VisionTransformer};

use crate::run::{RunOptions, StageKind, WorldSection};
use crate::setup::{Encoders, ModelSize};

/// Real data instead of the world (`--data`): one stage (`--stage`) trained with MLE and with
/// CAL from the same loaded model.
#[derive(Clone, Debug)]
pub struct RealData {
    /// LLaVA records (JSON array or JSON Lines).
    pub data: PathBuf,
    /// Folder the image paths are relative to.
    pub image_folder: PathBuf,
    /// A Hugging Face LLaVA directory…
    pub model: Option<PathBuf>,
    /// …or a CLIP vision directory plus a causal-LM directory (fresh projector).
    pub vision: Option<PathBuf>,
    /// The causal LM of `vision`.
    pub llm: Option<PathBuf>,
    /// `tokenizer.json` (default: the model or LLM directory's).
    pub tokenizer: Option<PathBuf>,
    /// Chat template of the finetune stage.
    pub template: Template,
    /// The stage to run: pretrain trains the projector only, finetune the projector and the LLM.
    pub stage: StageKind,
    /// Share of records held out for evaluation.
    pub held_out: f64,
}

/// What a fresh model and its inputs need from an experiment's configuration.
#[derive(Clone, Copy, Debug)]
pub struct ModelSpec<'a> {
    /// Model seed.
    pub seed: u64,
    /// Longest sequence.
    pub max_len: usize,
    /// The world.
    pub world: &'a WorldSection,
    /// Model sizes.
    pub model: &'a ModelSize,
    /// A pretrained image tower (`CLIPVisionModel` directory) to start from.
    pub vision_init: Option<&'a Path>,
}

/// Everything a comparison needs.
pub struct Inputs {
    /// The tokenizer.
    pub tokenizer: TextTokenizer,
    /// Encoders of both stages.
    pub enc: Encoders,
    /// Image preprocessing.
    pub processor: ImageProcessor,
    /// Image folder.
    pub images: PathBuf,
    /// Batching.
    pub batcher: VlmBatcher,
    /// The initial model, on the autodiff device.
    pub init: Llava,
}

/// The valid records of `path` (malformed ones are counted on stderr).
pub fn read_valid(path: &Path) -> Result<Vec<Record>, String> {
    let parsed = read_records(path).map_err(|e| e.to_string())?;
    let bad = parsed.iter().filter(|r| r.is_err()).count();
    if bad > 0 {
        eprintln!("{}: skipping {bad} malformed records", path.display());
    }
    Ok(parsed.into_iter().filter_map(Result::ok).collect())
}

impl Inputs {
    /// Save the tokenizer into the run directory `out`: a run on the user's model keeps the
    /// tokenizer it trained with (the tokens added to a bare LLM included).
    pub fn keep_tokenizer(&self, out: &Path) -> Result<(), String> {
        std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
        self.tokenizer
            .save(&out.join("tokenizer.json"))
            .map_err(|e| e.to_string())
    }

    /// One dataset from record sets, each encoded with its template (bad records are
    /// reported on stderr and left out).
    pub fn dataset(&self, parts: Vec<(Vec<Record>, &Encoder)>) -> VlmDataset {
        dataset_of(&self.images, &self.processor, parts)
    }
}

/// One dataset from record sets, each encoded with its template, images from `images` (bad
/// records are reported on stderr and left out).
pub fn dataset_of(
    images: &Path,
    processor: &ImageProcessor,
    parts: Vec<(Vec<Record>, &Encoder)>,
) -> VlmDataset {
    let mut samples = Vec::new();
    for (records, encoder) in parts {
        let (part, report) = prepare(
            records.into_iter().map(Ok).collect(),
            encoder,
            images,
            ImageCheck::Exists,
        );
        if !report.errors.is_empty() || !report.truncated.is_empty() {
            eprintln!("{}", report.summary());
        }
        samples.extend(part);
    }
    VlmDataset::new(samples, processor.clone())
}

/// The world of `world` (generated when its folder has none, checked against the configuration
/// when it has one) and its tokenizer.
pub fn ensure_world(world: &WorldSection, verbose: bool) -> Result<TextTokenizer, String> {
    let err = |e: &dyn std::fmt::Display| e.to_string();
    if !world.dir.join("world.json").is_file() || !world.dir.join("tokenizer.json").is_file() {
        eprintln!(
            "generating the world ({} scenes) in {}",
            world.images,
            world.dir.display()
        );
        let mut wc = WorldConfig::new(world.images, world.seed);
        wc.sampler.prior = world.prior;
        wc.qa_turns = world.qa_turns;
        wc.groups = world.groups.unwrap_or(wc.groups);
        wc.changes = world.changes;
        crate::world::make_world(&wc, &world.dir, world.vocab, verbose).map_err(|e| err(&e))?;
    }
    check_world(&world.dir, world)?;
    TextTokenizer::from_file(&world.dir.join("tokenizer.json")).map_err(|e| err(&e))
}

/// The world (generated when absent), its tokenizer and encoders, and a fresh model (its image
/// tower loaded from `config.vision_init` when set).
pub fn world_inputs(config: ModelSpec<'_>, opts: &RunOptions) -> Result<Inputs, String> {
    let err = |e: &dyn std::fmt::Display| e.to_string();
    let world = &config.world;
    let tokenizer = ensure_world(world, opts.verbose)?;
    let size = &config.model;
    let image_tokens = (size.image_size / size.patch_size).pow(2);
    let mut enc = Encoders::new(&tokenizer, Template::VicunaV1, image_tokens, config.max_len)
        .map_err(|e| err(&e))?;
    enc.chat = enc.chat.with_system(world.system.clone());
    let llava = size.llava(tokenizer.vocab_size(), enc.chat.image_token_id() as usize);
    opts.device.seed(config.seed);
    // Parameters initialise lazily (at first use, in forward order, on this thread): the same
    // seed gives the same weights in every run of this program.
    let mut init = llava.init(&opts.device.clone().autodiff());
    if let Some(dir) = config.vision_init {
        init.vision_tower = pretrained_tower(dir, &llava.vision, &opts.device)?;
    }
    let pad = tokenizer.token_id("<pad>").unwrap_or(0);
    Ok(Inputs {
        batcher: VlmBatcher::new(pad, size.image_size),
        processor: ImageProcessor::clip(size.image_size),
        images: world.dir.join("images"),
        tokenizer,
        enc,
        init,
    })
}

/// The user's model and data (`real`; its tokenizer kept in the run directory) or the world.
pub fn inputs_for(
    spec: ModelSpec<'_>,
    real: Option<&RealData>,
    opts: &RunOptions,
) -> Result<Inputs, String> {
    match real {
        Some(r) => {
            let inputs = real_inputs(spec, r, opts)?;
            inputs.keep_tokenizer(&opts.out)?;
            Ok(inputs)
        }
        None => world_inputs(spec, opts),
    }
}

/// A pretrained image tower (a `CLIPVisionModel` directory, e.g. `clip_pretrain`'s `vision/`)
/// for a LLaVA whose tower is `want`; its shape must match.
fn pretrained_tower(
    dir: &Path,
    want: &VisionConfig,
    device: &Device,
) -> Result<VisionTransformer, String> {
    let (tower, got, _) = vlalign_models::hf::load_vision(dir, &device.clone().autodiff())
        .map_err(|e| format!("--vision-init: {e}"))?;
    let shape = |c: &VisionConfig| {
        (
            c.image_size,
            c.patch_size,
            c.hidden_size,
            c.num_hidden_layers,
            c.num_attention_heads,
            c.intermediate_size,
        )
    };
    if shape(&got) != shape(want) {
        return Err(format!(
            "--vision-init {}: the tower has (image, patch, width, layers, heads, mlp) = {:?}, \
             the model configuration asks for {:?} (train it with the same [model] sizes)",
            dir.display(),
            shape(&got),
            shape(want)
        ));
    }
    eprintln!("image tower from {}", dir.display());
    Ok(tower)
}

/// An existing world folder must have been made with the configured scenes, seed and prior:
/// otherwise a run with `[world] seed = 1` would silently train on the seed-0 world.
fn check_world(dir: &Path, want: &WorldSection) -> Result<(), String> {
    let path = dir.join("world.json");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let summary: vlalign_data::world::WorldSummary =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let Some(made) = summary.config else {
        return Ok(());
    };
    let differ = [
        ("images", made.images.to_string(), want.images.to_string()),
        ("seed", made.seed.to_string(), want.seed.to_string()),
        (
            "prior",
            made.sampler.prior.to_string(),
            want.prior.to_string(),
        ),
        (
            "groups",
            made.groups.to_string(),
            want.groups.unwrap_or(want.images / 10).to_string(),
        ),
        (
            "changes",
            made.changes.to_string(),
            want.changes.to_string(),
        ),
    ]
    .into_iter()
    .find(|(_, a, b)| a != b);
    match differ {
        None => Ok(()),
        Some((field, made, want)) => Err(format!(
            "{}: this world was made with {field} = {made}, the configuration asks for {want}; \
             give another folder (`--world` or `[world] dir`) or delete this one",
            path.display()
        )),
    }
}

/// The user's model (`--model`, or `--vision` + `--llm`), tokenizer and preprocessing.
pub fn real_inputs(
    config: ModelSpec<'_>,
    real: &RealData,
    opts: &RunOptions,
) -> Result<Inputs, String> {
    use vlalign_models::hf;
    let err = |e: &dyn std::fmt::Display| e.to_string();
    let device = opts.device.clone().autodiff();
    opts.device.seed(config.seed);
    let tokenizer_path = real
        .tokenizer
        .clone()
        .or_else(|| real.model.as_ref().map(|d| d.join("tokenizer.json")))
        .or_else(|| real.llm.as_ref().map(|d| d.join("tokenizer.json")))
        .ok_or("--tokenizer is needed")?;
    let mut tokenizer = TextTokenizer::from_file(&tokenizer_path).map_err(|e| err(&e))?;
    if real.model.is_none() {
        // Composing a LLaVA from a bare LLM (LLaVA's own pre-training): its tokenizer has no
        // image slot and often no pad token. Added here; the LLM grows rows for them below.
        for (token, id) in tokenizer.add_special_tokens(&["<image>", "<pad>"]) {
            eprintln!("{}: added {token} as token {id}", tokenizer_path.display());
        }
    }
    let image_token = tokenizer.token_id("<image>").ok_or_else(|| {
        format!(
            "{}: the tokenizer has no <image> token (a LLaVA checkpoint's tokenizer must have \
             the token its config's image_token_index names)",
            tokenizer_path.display()
        )
    })?;
    let (init, vision_dir, image_tokens, image_size) = match (&real.model, &real.vision, &real.llm)
    {
        (Some(dir), None, None) => {
            let (m, c, _) = hf::load_llava(dir, &device).map_err(|e| err(&e))?;
            (m, dir.clone(), c.image_tokens(), c.vision.image_size)
        }
        (None, Some(v), Some(l)) => {
            let (vision, vc, _) = hf::load_vision(v, &device).map_err(|e| err(&e))?;
            let (lm, mut tc, _) = hf::load_decoder(l, &device).map_err(|e| err(&e))?;
            let lm = lm.grow_vocab(tokenizer.vocab_size());
            tc.vocab_size = lm.vocab_size();
            let c = vlalign_models::LlavaConfig::new(vc, tc, image_token as usize);
            let mut m = c.init(&device);
            m.vision_tower = vision;
            m.language_model = lm;
            (m, v.clone(), c.image_tokens(), c.vision.image_size)
        }
        _ => return Err("give either --model, or --vision and --llm".into()),
    };
    let processor = match std::fs::read(vision_dir.join("preprocessor_config.json")) {
        Ok(bytes) => {
            let v: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| err(&e))?;
            ImageProcessor::from_hf_json(&v, vlalign_data::image::AspectMode::Pad)
        }
        Err(_) => ImageProcessor::clip(image_size),
    };
    let enc = Encoders::new(&tokenizer, real.template, image_tokens, config.max_len)
        .map_err(|e| err(&e))?;
    let pad = tokenizer
        .token_id("<pad>")
        .or_else(|| tokenizer.token_id("<unk>"))
        .unwrap_or(0);
    Ok(Inputs {
        batcher: VlmBatcher::new(pad, processor.size),
        processor,
        images: real.image_folder.clone(),
        tokenizer,
        enc,
        init,
    })
}
