//! The grounded synthetic world: a deterministic generator writing a real LLaVA-format dataset
//! (PNG images + JSON records) whose every answer word carries a truth label — grounded (its value
//! depends on the image) or template.
//!
//! Layout of the output folder:
//! ```text
//! images/<id>.png                  scenes (and group-<g>-<k>.png for multi-image groups)
//! {train,val,test}_captions.json   `<image>` → caption (template `plain`, pretraining)
//! {train,val,test}_qa.json         multi-turn questions and answers (template `vicuna_v1`)
//! {train,val,test}_groups.json     multi-image records: which object do all images share?
//! {train,val,test}_changes.json    two-image records: which object changed, and into what?
//! pope_{random,popular,adversarial}_{val,test}.jsonl   POPE-format existence questions
//! scenes.json                      every image's objects (truth for CHAIR and grounding)
//! world.json                       the generator's config and counts
//! tokenizer.json                   (written by `make_world`, trained on these texts)
//! ```

pub mod render;
pub mod scene;
pub mod text;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::error::DatasetError;
use crate::record::{Record, write_records};
use crate::template::{CHATML_SYSTEM, VICUNA_SYSTEM};
use scene::{Scene, SceneSampler};
use text::{Negative, ShapeStats};

/// The system prompt of the world's chat template: LLaVA-1.5's (`VICUNA_SYSTEM`) costs 83 tokens
/// of the world's tokenizer in every sequence and tells a model trained from scratch nothing.
pub const SYSTEM: &str = "A chat between a human and an assistant.";

/// The three splits.
pub const SPLITS: [&str; 3] = ["train", "val", "test"];

/// Generator settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorldConfig {
    /// Number of single-image scenes.
    pub images: usize,
    /// Seed; the same seed gives the same world, byte for byte.
    pub seed: u64,
    /// Side of the PNGs in pixels (the model's preprocessing resizes them).
    pub image_size: u32,
    /// Question/answer pairs per instruction record.
    pub qa_turns: usize,
    /// Number of multi-image groups (2–4 images each).
    pub groups: usize,
    /// Number of two-image "what changed?" pairs.
    #[serde(default)]
    pub changes: usize,
    /// Object sampling (language prior, co-occurrence).
    pub sampler: SceneSampler,
}

impl WorldConfig {
    /// `images` scenes, a group per 10 scenes, 128 px, 3 questions per record, the default
    /// language prior (stars are yellow 80 % of the time).
    pub fn new(images: usize, seed: u64) -> Self {
        Self {
            images,
            seed,
            image_size: 128,
            qa_turns: 3,
            groups: images / 10,
            changes: 0,
            sampler: SceneSampler::default(),
        }
    }
}

/// What was written.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct WorldSummary {
    /// The settings.
    pub config: Option<WorldConfig>,
    /// PNG files written.
    pub images_written: usize,
    /// Records per file name.
    pub records: BTreeMap<String, usize>,
}

/// Which split item `i` belongs to (10 % test, 10 % val, 80 % train).
pub fn split_of(i: usize) -> &'static str {
    match i % 10 {
        0 => "test",
        1 => "val",
        _ => "train",
    }
}

fn rng_for(seed: u64, stream: u64, i: usize) -> StdRng {
    StdRng::seed_from_u64(
        seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)
            ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03)
            ^ (i as u64).wrapping_mul(0xA24B_AED4_963E_E407),
    )
}

fn write_png(img: &image::RgbImage, path: &Path) -> Result<(), DatasetError> {
    img.save(path).map_err(|e| DatasetError::Write {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

fn write_json(path: &Path, value: &impl Serialize) -> Result<(), DatasetError> {
    let text = serde_json::to_string_pretty(value).expect("serialisable");
    std::fs::write(path, text).map_err(|e| DatasetError::Write {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// A group of images sharing one object (same shape and color), no other shape–color pair
/// common to all.
fn group_scenes(config: &WorldConfig, g: usize) -> (Vec<Scene>, scene::Object) {
    let mut rng = rng_for(config.seed, 2, g);
    let k = rng.random_range(2..=4);
    let sampler = &config.sampler;
    loop {
        let shape = scene::Shape::ALL[rng.random_range(0..5)];
        let shared = sampler.object(shape, 4, &mut rng);
        let scenes: Vec<Scene> = (0..k)
            .map(|j| {
                let mut sc = sampler.scene(format!("group-{g}-{j}"), &mut rng);
                sc.objects
                    .retain(|o| !(o.shape == shared.shape && o.color == shared.color));
                let cell = if sc.objects.len() < 4 || rng.random::<bool>() {
                    let free: Vec<usize> = (0..9)
                        .filter(|c| sc.objects.iter().all(|o| o.cell != *c))
                        .collect();
                    free[rng.random_range(0..free.len())]
                } else {
                    let victim = rng.random_range(0..sc.objects.len());
                    sc.objects.remove(victim).cell
                };
                let mut obj = sampler.object(shared.shape, cell, &mut rng);
                obj.color = shared.color;
                obj.prior = shared.prior;
                sc.objects.push(obj);
                sc.objects.sort_by_key(|o| o.cell);
                sc
            })
            .collect();
        let pairs = |s: &Scene| -> Vec<(scene::Shape, scene::Color)> {
            s.objects.iter().map(|o| (o.shape, o.color)).collect()
        };
        let common = pairs(&scenes[0])
            .into_iter()
            .filter(|p| scenes.iter().all(|s| pairs(s).contains(p)))
            .count();
        if common == 1 {
            return (scenes, shared);
        }
    }
}

/// Render the scenes of a multi-image record into `images/`, record their objects in
/// `all_scenes` and return their file names; `wrote(1)` after each image.
fn write_scenes(
    scenes: &[Scene],
    config: &WorldConfig,
    images_dir: &Path,
    all_scenes: &mut BTreeMap<String, Vec<scene::Object>>,
    wrote: &mut dyn FnMut(usize),
) -> Result<Vec<String>, DatasetError> {
    let mut names = Vec::new();
    for sc in scenes {
        let name = format!("{}.png", sc.id);
        write_png(
            &render::render(sc, config.image_size),
            &images_dir.join(&name),
        )?;
        wrote(1);
        all_scenes.insert(name.clone(), sc.objects.clone());
        names.push(name);
    }
    Ok(names)
}

/// A scene and the same scene with one object changed in color or in shape (never into a
/// shape–color pair the scene already has): `(before, after, index of the changed object)`.
fn change_scenes(config: &WorldConfig, c: usize) -> (Scene, Scene, usize) {
    let mut rng = rng_for(config.seed, 4, c);
    loop {
        let before = config.sampler.scene(format!("change-{c}-0"), &mut rng);
        let k = rng.random_range(0..before.objects.len());
        let mut after = before.clone();
        after.id = format!("change-{c}-1");
        let o = &mut after.objects[k];
        if rng.random::<bool>() {
            let others: Vec<scene::Color> = scene::Color::ALL
                .into_iter()
                .filter(|x| *x != o.color)
                .collect();
            o.color = others[rng.random_range(0..others.len())];
        } else {
            let others: Vec<scene::Shape> = scene::Shape::ALL
                .into_iter()
                .filter(|x| *x != o.shape)
                .collect();
            o.shape = others[rng.random_range(0..others.len())];
        }
        o.prior = false;
        let (shape, color) = (o.shape, o.color);
        let clash = before
            .objects
            .iter()
            .any(|b| b.shape == shape && b.color == color);
        if !clash {
            return (before, after, k);
        }
    }
}

/// Generate the world into `out` (created if needed). `progress` is called with the number of
/// images written so far.
pub fn generate(
    config: &WorldConfig,
    out: &Path,
    progress: &dyn Fn(usize),
) -> Result<WorldSummary, DatasetError> {
    let images_dir = out.join("images");
    std::fs::create_dir_all(&images_dir).map_err(|e| DatasetError::Write {
        path: images_dir.clone(),
        message: e.to_string(),
    })?;
    let scenes: Vec<Scene> = (0..config.images)
        .map(|i| {
            config
                .sampler
                .scene(format!("{i:06}"), &mut rng_for(config.seed, 1, i))
        })
        .collect();
    let mut written = 0;
    for sc in &scenes {
        write_png(
            &render::render(sc, config.image_size),
            &images_dir.join(format!("{}.png", sc.id)),
        )?;
        written += 1;
        progress(written);
    }
    // Negatives are drawn with the training split's statistics, as POPE draws them from COCO's.
    let stats = ShapeStats::new(
        scenes
            .iter()
            .enumerate()
            .filter(|(i, _)| split_of(*i) == "train")
            .map(|(_, s)| s),
    );
    let mut files: BTreeMap<String, Vec<Record>> = BTreeMap::new();
    let mut pope: BTreeMap<String, Vec<serde_json::Value>> = BTreeMap::new();
    for (i, sc) in scenes.iter().enumerate() {
        let split = split_of(i);
        let image = format!("{}.png", sc.id);
        let mut rng = rng_for(config.seed, 3, i);
        files
            .entry(format!("{split}_captions.json"))
            .or_default()
            .push(text::caption_record(sc, &image));
        files
            .entry(format!("{split}_qa.json"))
            .or_default()
            .push(text::qa_record(
                sc,
                &image,
                config.qa_turns,
                &stats,
                &mut rng,
            ));
        if split != "train" {
            for strategy in Negative::ALL {
                let lines = pope
                    .entry(format!("pope_{}_{split}.jsonl", strategy.name()))
                    .or_default();
                let present = sc.shapes();
                let yes = present[rng.random_range(0..present.len())];
                lines.push(text::pope_line(lines.len(), &image, yes, true));
                if let Some(no) = stats.negative(sc, strategy, &mut rng) {
                    lines.push(text::pope_line(lines.len(), &image, no, false));
                }
            }
        }
    }
    let mut all_scenes: BTreeMap<String, Vec<scene::Object>> = scenes
        .iter()
        .map(|s| (format!("{}.png", s.id), s.objects.clone()))
        .collect();
    for g in 0..config.groups {
        let (group, shared) = group_scenes(config, g);
        let names = write_scenes(&group, config, &images_dir, &mut all_scenes, &mut |n| {
            written += n;
            progress(written);
        })?;
        files
            .entry(format!("{}_groups.json", split_of(g)))
            .or_default()
            .push(text::group_record(&format!("group-{g}"), &names, &shared));
    }
    for c in 0..config.changes {
        let (before, after, k) = change_scenes(config, c);
        let pair = [before, after];
        let names = write_scenes(&pair, config, &images_dir, &mut all_scenes, &mut |n| {
            written += n;
            progress(written);
        })?;
        let [before, after] = pair;
        files
            .entry(format!("{}_changes.json", split_of(c)))
            .or_default()
            .push(text::change_record(
                &format!("change-{c}"),
                &names,
                &before.objects[k],
                &after.objects[k],
            ));
    }
    let mut summary = WorldSummary {
        config: Some(config.clone()),
        images_written: written,
        records: BTreeMap::new(),
    };
    for (name, records) in &files {
        write_records(&out.join(name), records)?;
        summary.records.insert(name.clone(), records.len());
    }
    for (name, lines) in &pope {
        let path = out.join(name);
        let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
        std::fs::write(&path, text).map_err(|e| DatasetError::Write {
            path: path.clone(),
            message: e.to_string(),
        })?;
        summary.records.insert(name.clone(), lines.len());
    }
    write_json(&out.join("scenes.json"), &all_scenes)?;
    write_json(&out.join("world.json"), &summary)?;
    Ok(summary)
}

/// Every text of the world's record files in `dir`, plus the templates' boilerplate (the world's
/// [`SYSTEM`] prompt and turn markers once per record): the corpus the world's tokenizer is
/// trained on.
pub fn tokenizer_corpus(dir: &Path) -> Result<Vec<String>, DatasetError> {
    let mut texts = vec![
        format!("{VICUNA_SYSTEM} USER: ASSISTANT:"),
        format!("system\n{CHATML_SYSTEM}\nuser\nassistant\n"),
    ];
    for path in record_files(dir)? {
        for record in crate::record::read_records(&path)?.into_iter().flatten() {
            // The chat template's words as often as the records that carry them, so that BPE
            // merges them (otherwise `ASSISTANT:` alone is 10 tokens of every turn).
            texts.push(format!("{SYSTEM} USER: ASSISTANT:"));
            for turn in record.turns {
                texts.push(turn.value.replace(crate::record::IMAGE_PLACEHOLDER, ""));
            }
        }
    }
    Ok(texts)
}

/// The `*.json` record files of a world folder (not `scenes.json` / `world.json`).
pub fn record_files(dir: &Path) -> Result<Vec<PathBuf>, DatasetError> {
    let entries = std::fs::read_dir(dir).map_err(|source| DatasetError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            name.ends_with(".json") && SPLITS.iter().any(|s| name.starts_with(&format!("{s}_")))
        })
        .collect();
    files.sort();
    Ok(files)
}
