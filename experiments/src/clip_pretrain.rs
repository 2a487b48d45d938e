//! CLIP pre-training on the world (DESIGN §5, the survey's seed idea): an image tower of
//! `cal_llava`'s size and a small causal text encoder trained with symmetric InfoNCE on the
//! world's (image, caption) pairs, then evaluated on held-out pairs the way CLIP is: zero-shot
//! retrieval (image → caption and caption → image, R@1 and R@5) and zero-shot attribute
//! classification (the true caption against copies with one attribute of its first object, or
//! its count, replaced by every other value: does the image pick the true one?). The trained
//! image tower is saved as a `CLIPVisionModel` directory that `cal_llava --vision-init` starts
//! its LLaVA from.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::Dataset;
use burn::module::Module;
use burn::tensor::{Device, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};
use vlalign_data::contrastive::caption_tokens;
use vlalign_data::world::scene::{Color, POSITIONS, Shape, Size};
use vlalign_data::{ImageProcessor, PairBatcher, PairDataset, TextTokenizer, read_records};
use vlalign_models::{Clip, ClipConfig, ClipTextConfig, VisionActivation, hf};
use vlalign_train::{ClipTrainee, TrainConfig, TrainReport};

use crate::eval::captions::{parse_caption, render_caption};
use crate::inputs::ensure_world;
use crate::run::{RunOptions, WorldSection};
use crate::setup::ModelSize;
use crate::table::{Table, pct};

/// The text encoder's sizes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TextTower {
    /// Width.
    pub width: usize,
    /// Layers.
    pub layers: usize,
    /// Attention heads.
    pub heads: usize,
    /// Longest caption, tokens (`<s>` and `</s>` included; longer ones are cut).
    pub max_tokens: usize,
}

impl Default for TextTower {
    fn default() -> Self {
        Self {
            width: 64,
            layers: 2,
            heads: 4,
            max_tokens: 96,
        }
    }
}

/// Held-out evaluation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClipEvalSection {
    /// Held-out pairs: the retrieval gallery and the zero-shot records.
    pub pairs: usize,
    /// Embedding batch size.
    pub batch_size: usize,
    /// Held-out split of the world: `val` or `test`.
    pub split: String,
}

impl Default for ClipEvalSection {
    fn default() -> Self {
        Self {
            pairs: 500,
            batch_size: 128,
            split: "val".into(),
        }
    }
}

/// Everything the experiment does; written to the run directory as `config.toml`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClipPretrainConfig {
    /// Model seed.
    pub seed: u64,
    /// The world (shared with `cal_llava`: the same folder serves both).
    pub world: WorldSection,
    /// The image tower's sizes: `cal_llava`'s `[model]` (only its vision fields are used), so
    /// that the trained tower drops into that LLaVA.
    pub model: ModelSize,
    /// The text encoder.
    pub text: TextTower,
    /// Width of the shared embedding space.
    pub projection_dim: usize,
    /// Training.
    pub train: TrainConfig,
    /// Evaluation.
    pub eval: ClipEvalSection,
}

impl Default for ClipPretrainConfig {
    fn default() -> Self {
        let mut train = TrainConfig {
            steps: 1500,
            batch_size: 64,
            checkpoint_every: 250,
            ..TrainConfig::default()
        };
        train.optim.lr = 1e-3;
        train.optim.warmup_steps = 75;
        Self {
            seed: 0,
            world: WorldSection::default(),
            model: ModelSize::default(),
            text: TextTower::default(),
            projection_dim: 64,
            train,
            eval: ClipEvalSection::default(),
        }
    }
}

impl ClipPretrainConfig {
    /// The CI smoke profile: `cal_llava --quick`'s world and tower sizes, a few steps.
    pub fn quick() -> Self {
        let q = crate::cal_llava::CalLlavaConfig::quick();
        let mut c = Self {
            world: q.world,
            model: q.model,
            ..Self::default()
        };
        c.train.steps = 12;
        c.train.batch_size = 8;
        c.train.checkpoint_every = 6;
        c.train.optim.warmup_steps = 2;
        c.eval.pairs = 16;
        c
    }

    /// The model for a vocabulary of `vocab` tokens.
    pub fn clip(&self, vocab: usize) -> ClipConfig {
        let vision = self.model.llava(vocab, 0).vision;
        let t = &self.text;
        let text = ClipTextConfig {
            vocab_size: vocab,
            hidden_size: t.width,
            intermediate_size: 2 * t.width,
            num_hidden_layers: t.layers,
            num_attention_heads: t.heads,
            max_position_embeddings: t.max_tokens,
            layer_norm_eps: 1e-5,
            hidden_act: VisionActivation::QuickGelu,
        };
        ClipConfig::new(vision, text, self.projection_dim)
    }
}

/// Zero-shot retrieval on the held-out pairs. A caption shared by several images (identical
/// scenes up to placement within a cell) counts as right for each of them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Retrieval {
    /// Image → caption, true caption ranked first.
    pub i2t_r1: f64,
    /// Image → caption, true caption in the top 5.
    pub i2t_r5: f64,
    /// Caption → image, its image ranked first.
    pub t2i_r1: f64,
    /// Caption → image, its image in the top 5.
    pub t2i_r5: f64,
    /// Size of the gallery.
    pub pairs: usize,
}

/// Zero-shot accuracy of one attribute, with its chance level.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ZeroShot {
    /// Share of images whose true caption outscores every variant.
    pub accuracy: f64,
    /// `1 / candidates`.
    pub chance: f64,
    /// Images scored.
    pub n: usize,
}

/// What the experiment produced.
pub struct ClipOutcome {
    /// Retrieval on the held-out pairs.
    pub retrieval: Retrieval,
    /// Zero-shot attribute classification, per attribute (`count`, `size`, …).
    pub zero_shot: BTreeMap<String, ZeroShot>,
    /// The training stage.
    pub report: TrainReport,
    /// Where the image tower was saved (a `CLIPVisionModel` directory).
    pub vision_dir: std::path::PathBuf,
}

/// Train and evaluate; see the module docs.
pub fn run(config: &ClipPretrainConfig, opts: &RunOptions) -> Result<ClipOutcome, String> {
    let err = |e: &dyn std::fmt::Display| e.to_string();
    let tokenizer = ensure_world(&config.world, opts.verbose)?;
    let processor = ImageProcessor::clip(config.model.image_size);
    let pairs = |split: &str, limit: usize| -> Result<PairDataset, String> {
        let path = config.world.dir.join(format!("{split}_captions.json"));
        let records = read_records(&path).map_err(|e| err(&e))?;
        let (set, bad) = PairDataset::from_records(
            records.into_iter().filter_map(Result::ok).take(limit),
            &config.world.dir.join("images"),
            &tokenizer,
            config.text.max_tokens,
            processor.clone(),
        )
        .map_err(|e| err(&e))?;
        if let Some(first) = bad.first() {
            eprintln!(
                "{}: skipped {} records ({first})",
                path.display(),
                bad.len()
            );
        }
        Ok(set)
    };
    let train = pairs("train", usize::MAX)?;
    let held = pairs(&config.eval.split, config.eval.pairs)?;
    let clip_config = config.clip(tokenizer.vocab_size());
    opts.device.seed(config.seed);
    let init = clip_config.init(&opts.device.clone().autodiff());
    let batcher = PairBatcher {
        pad_id: tokenizer.token_id("<pad>").unwrap_or(0),
        image_size: config.model.image_size,
    };
    eprintln!(
        "clip: {} steps on {} pairs, evaluating on {} held-out",
        config.train.steps,
        train.len(),
        held.len()
    );
    let (trained, report) = opts.fit_stage(
        ClipTrainee::new(init),
        (Arc::new(train), Arc::new(held.clone())),
        batcher.clone(),
        &config.train,
        "clip",
        &[("i2t_accuracy", "batch i2t accuracy")],
    )?;
    let model = trained.model.valid();
    let device = opts.device.clone();
    let bs = config.eval.batch_size.max(1);
    let (images, texts) = embed_pairs(&model, &held, &batcher, bs, &device)?;
    let retrieval = retrieval(&images, &texts, &held);
    let zero_shot = zero_shot(&model, &images, &held, &tokenizer, config, &device);
    let vision_dir = opts.out.join("vision");
    hf::save_vision(&model.vision_model, &clip_config.vision, &vision_dir).map_err(|e| err(&e))?;
    hf::save_clip(&model, &clip_config, &opts.out.join("clip-model")).map_err(|e| err(&e))?;
    tokenizer
        .save(&opts.out.join("clip-model").join("tokenizer.json"))
        .map_err(|e| err(&e))?;
    Ok(ClipOutcome {
        retrieval,
        zero_shot,
        report,
        vision_dir,
    })
}

/// Embeddings on the host, one row each.
type Rows = Vec<Vec<f32>>;

/// Unit-norm image and caption embeddings of every held-out pair, as host rows.
fn embed_pairs(
    model: &Clip,
    set: &PairDataset,
    batcher: &PairBatcher,
    batch_size: usize,
    device: &Device,
) -> Result<(Rows, Rows), String> {
    let (mut images, mut texts) = (Vec::new(), Vec::new());
    for start in (0..set.len()).step_by(batch_size) {
        let items = (start..(start + batch_size).min(set.len()))
            .map(|i| set.get(i).map_err(|e| e.to_string()))
            .collect::<Result<Vec<_>, _>>()?;
        let batch = batcher.batch(items, device);
        images.extend(rows(model.image_embeds(batch.images)));
        texts.extend(rows(model.text_embeds(batch.input_ids, &batch.lengths)));
    }
    Ok((images, texts))
}

fn rows(x: Tensor<2>) -> Rows {
    let [_, d] = x.dims();
    let v = x
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("float embeddings");
    v.chunks(d).map(<[f32]>::to_vec).collect()
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Whether a right answer is among the `k` best-scored candidates.
fn hit_at(scores: &[f32], right: impl Fn(usize) -> bool, k: usize) -> bool {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    order.iter().take(k).any(|&j| right(j))
}

/// R@1 and R@5 both ways over the gallery of held-out pairs.
fn retrieval(images: &[Vec<f32>], texts: &[Vec<f32>], set: &PairDataset) -> Retrieval {
    let caption = |i: usize| set.pairs()[i].caption.as_str();
    let n = images.len();
    let mut r = Retrieval {
        pairs: n,
        ..Retrieval::default()
    };
    for i in 0..n {
        let i2t: Vec<f32> = texts.iter().map(|t| dot(&images[i], t)).collect();
        let t2i: Vec<f32> = images.iter().map(|m| dot(m, &texts[i])).collect();
        let same = |j: usize| caption(j) == caption(i);
        r.i2t_r1 += f64::from(u8::from(hit_at(&i2t, same, 1)));
        r.i2t_r5 += f64::from(u8::from(hit_at(&i2t, same, 5)));
        r.t2i_r1 += f64::from(u8::from(hit_at(&t2i, same, 1)));
        r.t2i_r5 += f64::from(u8::from(hit_at(&t2i, same, 5)));
    }
    let n = n.max(1) as f64;
    for v in [&mut r.i2t_r1, &mut r.i2t_r5, &mut r.t2i_r1, &mut r.t2i_r5] {
        *v /= n;
    }
    r
}

/// The values each attribute can take in the world.
fn attribute_values(attribute: &str) -> Vec<&'static str> {
    match attribute {
        "count" => vec!["one", "two", "three", "four"],
        "size" => vec![Size::Small.name(), Size::Large.name()],
        "color" => Color::ALL.iter().map(|c| c.name()).collect(),
        "shape" => Shape::ALL.iter().map(|s| s.name()).collect(),
        _ => POSITIONS.to_vec(),
    }
}

/// Zero-shot attribute classification: for each held-out caption and attribute, the caption
/// with its count (or its first object's attribute) set to every value the world has; right
/// when the image scores the true value highest.
fn zero_shot(
    model: &Clip,
    images: &[Vec<f32>],
    set: &PairDataset,
    tokenizer: &TextTokenizer,
    config: &ClipPretrainConfig,
    device: &Device,
) -> BTreeMap<String, ZeroShot> {
    let mut out = BTreeMap::new();
    for attribute in crate::eval::captions::ATTRIBUTES {
        let values = attribute_values(attribute);
        let (mut right, mut n) = (0usize, 0usize);
        for (pair, image) in set.pairs().iter().zip(images) {
            let parsed = parse_caption(&pair.caption);
            if parsed.objects.is_empty() || render_caption(&parsed).is_none() {
                continue;
            }
            let variants: Vec<String> = values
                .iter()
                .filter_map(|v| {
                    let mut c = parsed.clone();
                    let o = &mut c.objects[0];
                    let slot = match attribute {
                        "count" => &mut c.count,
                        "size" => &mut o.size,
                        "color" => &mut o.color,
                        "shape" => &mut o.shape,
                        _ => &mut o.position,
                    };
                    *slot = Some(v.to_string());
                    render_caption(&c)
                })
                .collect();
            let Some(truth) = variants
                .iter()
                .position(|v| v.eq_ignore_ascii_case(&pair.caption))
            else {
                continue;
            };
            let embeds = embed_texts(model, &variants, tokenizer, config, device);
            let scores: Vec<f32> = embeds.iter().map(|t| dot(image, t)).collect();
            right += usize::from(hit_at(&scores, |j| j == truth, 1));
            n += 1;
        }
        out.insert(
            attribute.to_string(),
            ZeroShot {
                accuracy: right as f64 / n.max(1) as f64,
                chance: 1.0 / values.len() as f64,
                n,
            },
        );
    }
    out
}

/// Unit-norm embeddings of `texts`.
fn embed_texts(
    model: &Clip,
    texts: &[String],
    tokenizer: &TextTokenizer,
    config: &ClipPretrainConfig,
    device: &Device,
) -> Vec<Vec<f32>> {
    let tokens: Vec<Vec<u32>> = texts
        .iter()
        .map(|t| caption_tokens(tokenizer, t, config.text.max_tokens).expect("world text"))
        .collect();
    let width = tokens.iter().map(Vec::len).max().unwrap_or(1);
    let pad = tokenizer.token_id("<pad>").unwrap_or(0) as i64;
    let ids: Vec<i64> = tokens
        .iter()
        .flat_map(|t| {
            t.iter()
                .map(|&x| x as i64)
                .chain(std::iter::repeat_n(pad, width - t.len()))
        })
        .collect();
    let input = Tensor::<2, Int>::from_data(TensorData::new(ids, [texts.len(), width]), device);
    let lengths: Vec<usize> = tokens.iter().map(Vec::len).collect();
    rows(model.text_embeds(input, &lengths))
}

/// The loss curve of the stage, `(step, loss)`.
pub fn loss_curve(report: &TrainReport) -> Vec<(usize, f64)> {
    report.steps.iter().map(|s| (s.step, s.loss)).collect()
}

/// `summary.json`.
pub fn summary(config: &ClipPretrainConfig, o: &ClipOutcome) -> serde_json::Value {
    let last = o.report.steps.last();
    serde_json::json!({
        "experiment": "clip_pretrain",
        "seed": config.seed,
        "retrieval": o.retrieval,
        "zero_shot": o.zero_shot,
        "train": {
            "steps": last.map(|s| s.step),
            "final_loss": last.map(|s| s.loss),
            "valid_loss": o.report.valid_loss,
            "median_step_ms": o.report.median_step_ms(),
        },
        "vision_dir": o.vision_dir,
    })
}

/// `report.md`.
pub fn markdown(config: &ClipPretrainConfig, o: &ClipOutcome, command: &str) -> String {
    let r = &o.retrieval;
    let n = r.pairs.max(1) as f64;
    let mut md = format!(
        "# clip_pretrain\n\n`{command}`\n\nCLIP (image tower of `cal_llava`'s size, a {}-layer \
         text encoder of width {}) trained {} steps × {} pairs with symmetric InfoNCE on the \
         world's captions; evaluated on {} held-out `{}` pairs.\n\n",
        config.text.layers,
        config.text.width,
        config.train.steps,
        config.train.batch_size,
        r.pairs,
        config.eval.split
    );
    let chance = format!("{:.1} / {:.1}", 100.0 / n, 500.0 / n);
    let mut t = Table::new(["direction", "R@1 %", "R@5 %", "chance R@1 / R@5 %"]);
    t.row([
        "image → caption".into(),
        pct(r.i2t_r1),
        pct(r.i2t_r5),
        chance.clone(),
    ]);
    t.row([
        "caption → image".into(),
        pct(r.t2i_r1),
        pct(r.t2i_r5),
        chance,
    ]);
    md.push_str(&format!("## Zero-shot retrieval\n\n{t}\n"));
    let mut t = Table::new(["attribute", "accuracy %", "chance %", "images"]);
    for a in crate::eval::captions::ATTRIBUTES {
        if let Some(z) = o.zero_shot.get(a) {
            t.row([
                a.to_string(),
                pct(z.accuracy),
                pct(z.chance),
                z.n.to_string(),
            ]);
        }
    }
    md.push_str(&format!(
        "## Zero-shot attribute classification\n\nThe true caption against copies with the \
         count (or the first object's attribute) set to every other value of the world.\n\n{t}"
    ));
    md.push_str(&format!(
        "\n![loss](loss.png)\n\nThe image tower is in `{}` (a `CLIPVisionModel` directory): \
         `cal_llava --vision-init {}` starts its LLaVA from it. The whole model: `clip-model/`.\n",
        o.vision_dir.display(),
        o.vision_dir.display()
    ));
    md
}

/// Write `report.md`, `summary.json` and `loss.png` into `out`.
pub fn write_all(
    out: &Path,
    config: &ClipPretrainConfig,
    o: &ClipOutcome,
    command: &str,
) -> Result<(), String> {
    let write = |name: &str, text: String| {
        let path = out.join(name);
        std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))
    };
    write("report.md", markdown(config, o, command))?;
    write(
        "summary.json",
        serde_json::to_string_pretty(&summary(config, o)).expect("json"),
    )?;
    crate::plot::loss_curves(
        &out.join("loss.png"),
        "CLIP InfoNCE",
        &[("clip".to_string(), loss_curve(&o.report))],
    )
}
