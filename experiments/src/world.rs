//! Making the synthetic world (with a progress bar) and measuring it.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use indicatif::{ProgressBar, ProgressStyle};
use vlalign_data::world::{WorldConfig, WorldSummary, generate, tokenizer_corpus};
use vlalign_data::{DatasetError, Encoder, Template, TextTokenizer, WordKind, read_records};

/// Generate the world into `out` and train `out/tokenizer.json` on its texts.
pub fn make_world(
    config: &WorldConfig,
    out: &Path,
    vocab: usize,
    show_progress: bool,
) -> Result<WorldSummary, DatasetError> {
    let total = config.images + config.groups * 4;
    let bar = if show_progress {
        ProgressBar::new(total as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{msg} {bar:40} {pos}/{len} images ({per_sec}, eta {eta})")
            .expect("valid template"),
    );
    bar.set_message("rendering");
    let summary = generate(config, out, &|n| bar.set_position(n as u64))?;
    bar.finish_and_clear();
    let corpus = tokenizer_corpus(out)?;
    let tokenizer = TextTokenizer::train_bpe(corpus.iter(), vocab)?;
    tokenizer.save(&out.join("tokenizer.json"))?;
    Ok(summary)
}

/// Answer-token statistics of the world's QA and caption records.
#[derive(Debug, Default)]
pub struct GroundedShare {
    /// Supervised tokens per word kind, per file.
    pub by_file: BTreeMap<String, BTreeMap<&'static str, usize>>,
}

impl GroundedShare {
    /// Grounded share of the supervised tokens of one file.
    pub fn share(&self, file: &str) -> Option<f64> {
        let counts = self.by_file.get(file)?;
        let total: usize = counts.values().sum();
        let template = counts.get("template").copied().unwrap_or(0);
        (total > 0).then(|| (total - template) as f64 / total as f64)
    }
}

impl fmt::Display for GroundedShare {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "supervised answer tokens by kind (grounded share):")?;
        for (file, counts) in &self.by_file {
            let total: usize = counts.values().sum();
            let parts: Vec<String> = counts.iter().map(|(k, n)| format!("{k} {n}")).collect();
            writeln!(
                f,
                "  {file:<24} {total:>7} tokens, grounded {:.1} %: {}",
                100.0 * self.share(file).unwrap_or(0.0),
                parts.join(", ")
            )?;
        }
        Ok(())
    }
}

/// Count supervised tokens by kind in the training files of a world folder (captions with the
/// `plain` template, QA and groups with `vicuna_v1`; end-of-turn tokens count as template).
pub fn grounded_share(dir: &Path) -> Result<GroundedShare, DatasetError> {
    let tokenizer = TextTokenizer::from_file(&dir.join("tokenizer.json"))?;
    let mut out = GroundedShare::default();
    for (file, template) in [
        ("train_captions.json", Template::Plain),
        ("train_qa.json", Template::VicunaV1),
        ("train_groups.json", Template::VicunaV1),
    ] {
        let path = dir.join(file);
        if !path.is_file() {
            continue;
        }
        let encoder = Encoder::new(tokenizer.clone(), template, 1, usize::MAX, None)?;
        let counts = out.by_file.entry(file.to_string()).or_default();
        for record in read_records(&path)?.into_iter().flatten() {
            let Ok(enc) = encoder.encode(&record) else {
                continue;
            };
            for t in enc.truth.iter().flatten() {
                *counts.entry(t.kind.name()).or_default() += 1;
            }
        }
        for kind in WordKind::ALL {
            counts.entry(kind.name()).or_default();
        }
        counts.retain(|_, n| *n > 0);
    }
    Ok(out)
}
