//! Does the model read the image? Per-attribute accuracy of greedy held-out captions against the
//! world's truth, and the same with the images swapped between records (the language-prior
//! baseline: what the captions score when they cannot come from the image).
//!
//! A world caption names the object count and, for every object in reading order, its size,
//! color, shape and position: `Two objects: a small red circle at the top left and a large
//! blue star at the center.` Generated captions are parsed with the same grammar and compared
//! object by object (the i-th described object against the i-th true one); an object the
//! caption leaves out, or a phrase that does not parse, is wrong on every attribute.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use vlalign_data::{Encoder, ImageProcessor, Record};
use vlalign_eval::generation::{GenerationRun, Prediction, generate_split};
use vlalign_models::{GenerationConfig, Generator};

use crate::setup::add_label_noise;

/// The attributes a caption names, in the order of `summary.json`.
pub const ATTRIBUTES: [&str; 5] = ["count", "size", "color", "shape", "position"];

/// One object as a caption describes it (`None`: the phrase did not say it).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Described {
    /// `small` | `large`.
    pub size: Option<String>,
    /// A color word.
    pub color: Option<String>,
    /// A shape word.
    pub shape: Option<String>,
    /// A grid position (`top left`, `center`, …).
    pub position: Option<String>,
}

impl Described {
    fn get(&self, attribute: &str) -> Option<&str> {
        match attribute {
            "size" => self.size.as_deref(),
            "color" => self.color.as_deref(),
            "shape" => self.shape.as_deref(),
            "position" => self.position.as_deref(),
            _ => None,
        }
    }
}

/// A parsed caption.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Caption {
    /// The count word (`one` … `four`).
    pub count: Option<String>,
    /// The described objects, in the caption's order.
    pub objects: Vec<Described>,
}

/// Parse a caption of the world's grammar, leniently: case, spacing and the final period are
/// ignored; what does not parse is left `None`.
pub fn parse_caption(text: &str) -> Caption {
    let text = text.trim().to_lowercase();
    let text = text.trim_end_matches('.');
    let Some((head, tail)) = text.split_once(':') else {
        return Caption {
            count: text.split_whitespace().next().map(str::to_string),
            objects: Vec::new(),
        };
    };
    let objects = tail
        .replace(" and ", ", ")
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(parse_object)
        .collect();
    Caption {
        count: head.split_whitespace().next().map(str::to_string),
        objects,
    }
}

/// The caption a parsed [`Caption`] came from, in the world's grammar (the inverse of
/// [`parse_caption`] on world captions); `None` when a part is missing.
pub fn render_caption(c: &Caption) -> Option<String> {
    let count = c.count.as_deref()?;
    let mut phrases = Vec::with_capacity(c.objects.len());
    for o in &c.objects {
        phrases.push(format!(
            "a {} {} {} at the {}",
            o.size.as_deref()?,
            o.color.as_deref()?,
            o.shape.as_deref()?,
            o.position.as_deref()?
        ));
    }
    let list = match phrases.split_last() {
        None => String::new(),
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} and {last}", rest.join(", ")),
    };
    let mut head = count.to_string();
    if let Some(first) = head.get(..1) {
        head = first.to_uppercase() + &head[1..];
    }
    let noun = if count == "one" { "object" } else { "objects" };
    Some(format!("{head} {noun}: {list}."))
}

/// `a small red circle at the top left`.
fn parse_object(phrase: &str) -> Described {
    let phrase = phrase
        .strip_prefix("a ")
        .or_else(|| phrase.strip_prefix("an "))
        .unwrap_or(phrase);
    let (description, position) = match phrase.split_once(" at the ") {
        Some((d, p)) => (d, Some(p.trim().to_string())),
        None => (phrase, None),
    };
    let words: Vec<&str> = description.split_whitespace().collect();
    let word = |i: usize| (words.len() == 3).then(|| words[i].to_string());
    Described {
        size: word(0),
        color: word(1),
        shape: word(2),
        position,
    }
}

/// Accuracy per attribute and over all of them (fractions 0–1).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AttributeAccuracy {
    /// The count word.
    pub count: f64,
    /// Object sizes.
    pub size: f64,
    /// Object colors.
    pub color: f64,
    /// Object shapes.
    pub shape: f64,
    /// Object positions.
    pub position: f64,
    /// Every attribute slot of every caption.
    pub all: f64,
}

impl AttributeAccuracy {
    /// The value of `attribute` (one of [`ATTRIBUTES`] or `all`).
    pub fn get(&self, attribute: &str) -> f64 {
        match attribute {
            "count" => self.count,
            "size" => self.size,
            "color" => self.color,
            "shape" => self.shape,
            "position" => self.position,
            _ => self.all,
        }
    }
}

/// Score `(reference, generated)` caption pairs.
pub fn score<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> AttributeAccuracy {
    let mut tally: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    let mut add = |attribute: &'static str, right: bool| {
        let e = tally.entry(attribute).or_default();
        e.0 += usize::from(right);
        e.1 += 1;
    };
    for (reference, output) in pairs {
        let (truth, said) = (parse_caption(reference), parse_caption(output));
        add("count", truth.count.is_some() && truth.count == said.count);
        for (i, object) in truth.objects.iter().enumerate() {
            for attribute in &ATTRIBUTES[1..] {
                let right = object
                    .get(attribute)
                    .is_some_and(|t| said.objects.get(i).and_then(|o| o.get(attribute)) == Some(t));
                add(attribute, right);
            }
        }
    }
    let share = |(c, n): (usize, usize)| if n == 0 { 0.0 } else { c as f64 / n as f64 };
    let of = |a: &str| share(tally.get(a).copied().unwrap_or_default());
    let all = tally
        .values()
        .fold((0, 0), |(c, n), (c1, n1)| (c + c1, n + n1));
    AttributeAccuracy {
        count: of("count"),
        size: of("size"),
        color: of("color"),
        shape: of("shape"),
        position: of("position"),
        all: share(all),
    }
}

/// A model's caption accuracy on its own images and with the images swapped.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CaptionAccuracy {
    /// Captions of the records' own images.
    pub caption_accuracy: AttributeAccuracy,
    /// Captions of another record's image, scored against this record's truth.
    pub blind_caption_accuracy: AttributeAccuracy,
    /// Captions scored in each.
    pub captions: usize,
}

/// What generating the captions needs.
pub struct CaptionRun<'a> {
    /// The `plain` encoder.
    pub encoder: &'a Encoder,
    /// Image preprocessing.
    pub processor: &'a ImageProcessor,
    /// The world's `images/` folder.
    pub image_folder: &'a std::path::Path,
    /// Generation batch.
    pub batch_size: usize,
    /// Show progress bars.
    pub verbose: bool,
}

/// Generate greedy captions of `records` twice, on their own images and on swapped ones, and
/// score both. Returns the scores and the two prediction lists (own, swapped).
pub fn evaluate(
    model: &impl Generator,
    records: &[Record],
    run: &CaptionRun<'_>,
) -> Result<(CaptionAccuracy, [Vec<Prediction>; 2]), String> {
    let config = GenerationConfig::new()
        .with_max_new_tokens(64)
        .with_stop_tokens(vec![run.encoder.end_of_turn()])
        .with_pad_token_id(run.encoder.tokenizer().token_id("<pad>").unwrap_or(0));
    let generation = GenerationRun {
        encoder: run.encoder,
        processor: run.processor,
        image_folder: run.image_folder,
        batch_size: run.batch_size,
        config: &config,
        show_progress: run.verbose,
    };
    let mut swapped = records.to_vec();
    add_label_noise(&mut swapped, 1.0, 0);
    let mut outputs = Vec::new();
    for set in [records, &swapped[..]] {
        let (predictions, errors) = generate_split(model, set, &generation);
        if let Some(e) = errors.first() {
            return Err(format!(
                "captions: {} bad records, first: {e}",
                errors.len()
            ));
        }
        outputs.push(predictions);
    }
    let scored =
        |p: &[Prediction]| score(p.iter().map(|p| (p.reference.as_str(), p.output.as_str())));
    let result = CaptionAccuracy {
        caption_accuracy: scored(&outputs[0]),
        blind_caption_accuracy: scored(&outputs[1]),
        captions: outputs[0].len(),
    };
    let blind = outputs.pop().unwrap_or_default();
    let own = outputs.pop().unwrap_or_default();
    Ok((result, [own, blind]))
}

#[cfg(test)]
mod tests {
    use super::*;

    const REF: &str =
        "Two objects: a small red circle at the top left and a large blue star at the center.";

    #[test]
    fn parses_the_world_grammar() {
        let c = parse_caption(REF);
        assert_eq!(c.count.as_deref(), Some("two"));
        assert_eq!(c.objects.len(), 2);
        assert_eq!(c.objects[0].size.as_deref(), Some("small"));
        assert_eq!(c.objects[0].position.as_deref(), Some("top left"));
        assert_eq!(c.objects[1].shape.as_deref(), Some("star"));
        assert_eq!(c.objects[1].position.as_deref(), Some("center"));
        let three = parse_caption(
            "Three objects: a small red circle at the top, a large blue star at the left and a \
             small green diamond at the bottom right.",
        );
        assert_eq!(three.objects.len(), 3);
        assert_eq!(three.objects[2].color.as_deref(), Some("green"));
        assert_eq!(three.objects[2].position.as_deref(), Some("bottom right"));
    }

    #[test]
    fn renders_what_it_parses() {
        let three = "Three objects: a small red circle at the top, a large blue star at the left \
                     and a small green diamond at the bottom right.";
        let one = "One object: a large yellow star at the center.";
        for text in [REF, three, one] {
            assert_eq!(render_caption(&parse_caption(text)).as_deref(), Some(text));
        }
        let mut c = parse_caption(REF);
        c.objects[1].color = None;
        assert_eq!(render_caption(&c), None);
    }

    #[test]
    fn scores_each_attribute_by_object_order() {
        assert_eq!(score([(REF, REF)]).all, 1.0);
        // Wrong color of the second object, wrong count.
        let out = "Three objects: a small red circle at the top left and a large green star at the center.";
        let s = score([(REF, out)]);
        assert_eq!(s.count, 0.0);
        assert_eq!(s.color, 0.5);
        assert_eq!((s.size, s.shape, s.position), (1.0, 1.0, 1.0));
        assert!((s.all - 7.0 / 9.0).abs() < 1e-12);
        // A missing object is wrong on every attribute; garbage parses to nothing.
        let s = score([(REF, "Two objects: a small red circle at the top left.")]);
        assert_eq!((s.size, s.position), (0.5, 0.5));
        assert_eq!(score([(REF, "the the the")]).all, 0.0);
    }
}
