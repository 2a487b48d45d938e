//! Scoring a model on the world's multi-image tasks: greedy answers to held-out group records
//! ("which object appears in every image?") scored with SAM's metrics (CIDEr-D, BLEU-4,
//! ROUGE-L, pycocoevalcap's definitions) and as exact shared-object accuracy per group size,
//! and to change pairs ("what changed?"), right when both objects' color and shape are.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use vlalign_data::world::scene::{Color, Shape};
use vlalign_data::{Encoder, ImageProcessor, Record};
use vlalign_eval::generation::{GenerationRun, Prediction, generate_split, write_predictions};
use vlalign_eval::score_captions;
use vlalign_models::{GenerationConfig, Generator};

/// What generating the answers needs.
pub struct GroupEval<'a> {
    /// The chat encoder.
    pub encoder: &'a Encoder,
    /// Image preprocessing.
    pub processor: &'a ImageProcessor,
    /// The world's `images/`.
    pub image_folder: &'a Path,
    /// Generation batch.
    pub batch_size: usize,
    /// Generation budget.
    pub max_new_tokens: usize,
    /// Progress bars.
    pub verbose: bool,
}

/// Accuracy over a number of items.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Share {
    /// Items scored.
    pub n: usize,
    /// Share right.
    pub accuracy: f64,
}

/// A model's scores on the multi-image tasks.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GroupScores {
    /// CIDEr-D of the group answers.
    pub cider: f64,
    /// Corpus BLEU-4 of the group answers.
    pub bleu4: f64,
    /// Mean ROUGE-L of the group answers.
    pub rouge_l: f64,
    /// Exact shared-object accuracy (color and shape) over all groups.
    pub object_accuracy: Share,
    /// The same per group size (images per record).
    pub by_size: BTreeMap<usize, Share>,
    /// Change pairs with both objects named right.
    pub change_accuracy: Share,
}

/// The (color, shape) pairs an answer names, in order: `a red circle … a blue star`.
pub fn named_objects(text: &str) -> Vec<(String, String)> {
    let words: Vec<String> = text
        .to_lowercase()
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect();
    let is_color = |w: &str| Color::ALL.iter().any(|c| c.name() == w);
    let is_shape = |w: &str| Shape::ALL.iter().any(|s| s.name() == w);
    words
        .windows(2)
        .filter(|p| is_color(&p[0]) && is_shape(&p[1]))
        .map(|p| (p[0].clone(), p[1].clone()))
        .collect()
}

fn share(right: usize, n: usize) -> Share {
    Share {
        n,
        accuracy: if n == 0 { 0.0 } else { right as f64 / n as f64 },
    }
}

/// Answer `groups` and `changes` with `model` and score them; predictions are written to
/// `dir/groups.jsonl` and `dir/changes.jsonl`.
pub fn score_groups(
    model: &impl Generator,
    groups: &[Record],
    changes: &[Record],
    eval: &GroupEval<'_>,
    dir: &Path,
) -> Result<GroupScores, String> {
    let config = GenerationConfig::new()
        .with_max_new_tokens(eval.max_new_tokens)
        .with_stop_tokens(vec![eval.encoder.end_of_turn()])
        .with_pad_token_id(eval.encoder.tokenizer().token_id("<pad>").unwrap_or(0));
    let run = GenerationRun {
        encoder: eval.encoder,
        processor: eval.processor,
        image_folder: eval.image_folder,
        batch_size: eval.batch_size,
        config: &config,
        show_progress: eval.verbose,
    };
    let answer = |records: &[Record], file: &str| -> Result<Vec<Prediction>, String> {
        let (predictions, errors) = generate_split(model, records, &run);
        if let Some(e) = errors.first() {
            return Err(format!("{file}: {} bad records, first: {e}", errors.len()));
        }
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        write_predictions(&dir.join(file), &predictions).map_err(|e| e.to_string())?;
        Ok(predictions)
    };
    let group_answers = answer(groups, "groups.jsonl")?;
    let change_answers = answer(changes, "changes.jsonl")?;

    let candidates: BTreeMap<String, String> = group_answers
        .iter()
        .map(|p| (p.id.clone(), p.output.clone()))
        .collect();
    let references: BTreeMap<String, Vec<String>> = group_answers
        .iter()
        .map(|p| (p.id.clone(), vec![p.reference.clone()]))
        .collect();
    let captions = score_captions(&candidates, &references);
    let size_of: BTreeMap<&str, usize> = groups
        .iter()
        .map(|r| (r.id.as_str(), r.images.len()))
        .collect();
    let mut tally: BTreeMap<usize, (usize, usize)> = BTreeMap::new();
    for p in &group_answers {
        let right = exact(&p.output, &p.reference);
        let size = size_of.get(p.id.as_str()).copied().unwrap_or(0);
        let t = tally.entry(size).or_default();
        t.0 += usize::from(right);
        t.1 += 1;
    }
    let (right, n) = tally.values().fold((0, 0), |(r, n), (a, b)| (r + a, n + b));
    let change_right = change_answers
        .iter()
        .filter(|p| exact(&p.output, &p.reference))
        .count();
    Ok(GroupScores {
        cider: captions.cider,
        bleu4: captions.bleu[3],
        rouge_l: captions.rouge_l,
        object_accuracy: share(right, n),
        by_size: tally
            .into_iter()
            .map(|(k, (r, n))| (k, share(r, n)))
            .collect(),
        change_accuracy: share(change_right, change_answers.len()),
    })
}

/// The answer names exactly the reference's objects, in order.
fn exact(output: &str, reference: &str) -> bool {
    let want = named_objects(reference);
    !want.is_empty() && named_objects(output) == want
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_are_read_in_order_and_exactness_needs_all() {
        assert_eq!(
            named_objects("The red circle became a blue star."),
            vec![
                ("red".to_string(), "circle".to_string()),
                ("blue".to_string(), "star".to_string())
            ]
        );
        assert!(exact(
            "every image has a green square",
            "Every image has a green square."
        ));
        assert!(!exact(
            "Every image has a green circle.",
            "Every image has a green square."
        ));
        assert!(!exact(
            "The red circle became a red circle.",
            "The red circle became a blue circle."
        ));
        assert!(!exact("", "no objects"));
    }
}
