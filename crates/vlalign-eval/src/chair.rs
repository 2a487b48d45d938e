//! CHAIR (Rohrbach et al. 2018): how many objects a caption mentions that the image does not
//! hold. `CHAIR_i` = hallucinated object mentions / object mentions; `CHAIR_s` = captions with at
//! least one hallucination / captions. Mentions are found with a vocabulary of phrases mapped to
//! canonical objects (synonyms and plurals), longest phrase first; each object counts once per
//! caption.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// Phrases (lowercase, space-separated words) → canonical object names.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ObjectVocab {
    phrases: BTreeMap<Vec<String>, String>,
    longest: usize,
}

impl ObjectVocab {
    /// Build from `(object, [synonyms…])`; each object's own name is included, and plural
    /// forms (`+s`, `+es`, `y → ies`) are added.
    pub fn new<'a>(entries: impl IntoIterator<Item = (&'a str, &'a [&'a str])>) -> Self {
        let mut v = Self::default();
        for (object, synonyms) in entries {
            for phrase in std::iter::once(&object).chain(synonyms.iter()) {
                let ies = phrase.strip_suffix('y').map(|stem| format!("{stem}ies"));
                let forms = [
                    phrase.to_string(),
                    format!("{phrase}s"),
                    format!("{phrase}es"),
                ];
                for form in forms.into_iter().chain(ies) {
                    let words: Vec<String> =
                        form.split_whitespace().map(str::to_lowercase).collect();
                    v.longest = v.longest.max(words.len());
                    v.phrases.entry(words).or_insert_with(|| object.to_string());
                }
            }
        }
        v
    }

    /// The synthetic world's shapes.
    pub fn shapes() -> Self {
        Self::new([
            ("circle", &["ring", "disc", "disk", "round"][..]),
            ("square", &["box", "rectangle"][..]),
            ("triangle", &["pyramid"][..]),
            ("diamond", &["rhombus", "lozenge"][..]),
            ("star", &["pentagram"][..]),
        ])
    }

    /// Objects mentioned in a caption (each once).
    pub fn mentions(&self, caption: &str) -> BTreeSet<String> {
        let words: Vec<String> = caption
            .split(|c: char| !c.is_alphanumeric() && c != '-')
            .filter(|w| !w.is_empty())
            .map(str::to_lowercase)
            .collect();
        let mut found = BTreeSet::new();
        let mut i = 0;
        while i < words.len() {
            let mut matched = 0;
            for len in (1..=self.longest.min(words.len() - i)).rev() {
                if let Some(object) = self.phrases.get(&words[i..i + len]) {
                    found.insert(object.clone());
                    matched = len;
                    break;
                }
            }
            i += matched.max(1);
        }
        found
    }
}

/// CHAIR scores.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ChairScores {
    /// Captions scored.
    pub captions: usize,
    /// Object mentions (unique per caption).
    pub mentions: usize,
    /// Hallucinated mentions.
    pub hallucinated: usize,
    /// hallucinated / mentions.
    pub chair_i: f64,
    /// Captions with a hallucination / captions.
    pub chair_s: f64,
}

/// Score `(caption, objects truly in the image)` pairs.
pub fn chair<'a>(
    vocab: &ObjectVocab,
    items: impl IntoIterator<Item = (&'a str, &'a BTreeSet<String>)>,
) -> ChairScores {
    let mut s = ChairScores::default();
    let mut bad_captions = 0;
    for (caption, truth) in items {
        s.captions += 1;
        let mentioned = vocab.mentions(caption);
        let bad = mentioned.iter().filter(|o| !truth.contains(*o)).count();
        s.mentions += mentioned.len();
        s.hallucinated += bad;
        bad_captions += usize::from(bad > 0);
    }
    s.chair_i = if s.mentions == 0 {
        0.0
    } else {
        s.hallucinated as f64 / s.mentions as f64
    };
    s.chair_s = if s.captions == 0 {
        0.0
    } else {
        bad_captions as f64 / s.captions as f64
    };
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(v: &[&str]) -> BTreeSet<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn mentions_use_synonyms_plurals_and_longest_phrases() {
        let vocab = ObjectVocab::new([("hot dog", &["hotdog"][..]), ("dog", &["puppy"][..])]);
        assert_eq!(
            vocab.mentions("A hot dog next to two puppies."),
            set(&["hot dog", "dog"])
        );
        assert_eq!(vocab.mentions("hotdogs"), set(&["hot dog"]));
        assert_eq!(vocab.mentions("a hot day"), set(&[]));
    }

    #[test]
    fn scores_by_hand() {
        let vocab = ObjectVocab::shapes();
        let truth_a = set(&["circle", "square"]);
        let truth_b = set(&["star"]);
        let items = [
            // mentions circle, star (hallucinated) → 1 of 2
            ("A red circle and a yellow star.", &truth_a),
            // mentions square (box) → fine
            ("A blue box.", &truth_a),
            // mentions star, star again, diamond (hallucinated) → 1 of 2
            ("Two stars and a rhombus; another star.", &truth_b),
        ];
        let s = chair(&vocab, items);
        assert_eq!((s.captions, s.mentions, s.hallucinated), (3, 5, 2));
        assert!((s.chair_i - 0.4).abs() < 1e-12);
        assert!((s.chair_s - 2.0 / 3.0).abs() < 1e-12);
    }
}
