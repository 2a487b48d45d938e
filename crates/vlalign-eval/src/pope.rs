//! POPE (Li et al. 2023): yes/no object-existence questions; accuracy, precision, recall, F1
//! and the yes-ratio with "yes" as the positive class.
//!
//! Answer parsing: the first word that is `yes` or `no` (case-insensitive, punctuation
//! stripped) decides; an answer with neither counts as "no" and is counted as unparsed.

use serde::{Deserialize, Serialize};

/// A parsed answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// "yes".
    Yes,
    /// "no", stated.
    No,
    /// Neither word: scored as "no".
    Unparsed,
}

/// Parse a free-form answer.
pub fn parse_answer(text: &str) -> Answer {
    for word in text.split(|c: char| !c.is_alphanumeric()) {
        match word.to_ascii_lowercase().as_str() {
            "yes" => return Answer::Yes,
            "no" => return Answer::No,
            _ => {}
        }
    }
    Answer::Unparsed
}

/// POPE scores.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PopeScores {
    /// Questions scored.
    pub questions: usize,
    /// (TP + TN) / all.
    pub accuracy: f64,
    /// TP / (TP + FP).
    pub precision: f64,
    /// TP / (TP + FN).
    pub recall: f64,
    /// Harmonic mean of precision and recall.
    pub f1: f64,
    /// Share of "yes" answers.
    pub yes_ratio: f64,
    /// Answers with neither yes nor no (scored as no).
    pub unparsed: usize,
}

/// Score `(answer text, label is yes)` pairs.
pub fn pope<'a>(items: impl IntoIterator<Item = (&'a str, bool)>) -> PopeScores {
    let (mut tp, mut fp, mut tn, mut fn_, mut unparsed) = (0usize, 0usize, 0usize, 0usize, 0usize);
    for (text, label_yes) in items {
        let answer = parse_answer(text);
        unparsed += usize::from(answer == Answer::Unparsed);
        match (answer == Answer::Yes, label_yes) {
            (true, true) => tp += 1,
            (true, false) => fp += 1,
            (false, false) => tn += 1,
            (false, true) => fn_ += 1,
        }
    }
    let n = tp + fp + tn + fn_;
    let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    let precision = ratio(tp, tp + fp);
    let recall = ratio(tp, tp + fn_);
    let f1 = if precision + recall > 0.0 {
        2.0 * precision * recall / (precision + recall)
    } else {
        0.0
    };
    PopeScores {
        questions: n,
        accuracy: ratio(tp + tn, n),
        precision,
        recall,
        f1,
        yes_ratio: ratio(tp + fp, n),
        unparsed,
    }
}

/// One line of a POPE question file: `{question_id, image, text, label}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PopeQuestion {
    /// Question id.
    pub question_id: u64,
    /// Image file.
    pub image: String,
    /// The question.
    pub text: String,
    /// `yes` or `no`.
    pub label: String,
}

/// Read a POPE question file (JSON Lines); errors name the line.
pub fn read_questions(text: &str) -> Result<Vec<PopeQuestion>, String> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            let q: PopeQuestion =
                serde_json::from_str(l).map_err(|e| format!("line {}: {e}", i + 1))?;
            if q.label != "yes" && q.label != "no" {
                return Err(format!(
                    "line {}: label '{}' is neither yes nor no",
                    i + 1,
                    q.label
                ));
            }
            Ok(q)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsing_takes_the_first_yes_or_no() {
        assert_eq!(parse_answer("Yes, there is."), Answer::Yes);
        assert_eq!(parse_answer("no."), Answer::No);
        assert_eq!(parse_answer("I see no cat, yes"), Answer::No);
        assert_eq!(parse_answer("There is a cat."), Answer::Unparsed);
        assert_eq!(parse_answer("eyes"), Answer::Unparsed, "whole words only");
    }

    #[test]
    fn scores_by_hand() {
        // Labels: Y Y Y N N N N ; answers: yes yes no yes no ??? no
        // TP 2, FN 1, FP 1, TN 3 (the unparsed one is a "no" on a "no" label).
        let items = [
            ("Yes.", true),
            ("yes", true),
            ("No.", true),
            ("Yes!", false),
            ("no", false),
            ("maybe", false),
            ("No, there is not.", false),
        ];
        let s = pope(items);
        assert_eq!((s.questions, s.unparsed), (7, 1));
        assert!((s.accuracy - 5.0 / 7.0).abs() < 1e-12);
        assert!((s.precision - 2.0 / 3.0).abs() < 1e-12);
        assert!((s.recall - 2.0 / 3.0).abs() < 1e-12);
        assert!((s.f1 - 2.0 / 3.0).abs() < 1e-12);
        assert!((s.yes_ratio - 3.0 / 7.0).abs() < 1e-12);
    }

    #[test]
    fn reads_pope_lines() {
        let q = read_questions("{\"question_id\": 1, \"image\": \"a.png\", \"text\": \"Is there a star in the image?\", \"label\": \"no\"}\n").unwrap();
        assert_eq!(q[0].label, "no");
        assert!(
            read_questions(
                "{\"question_id\": 1, \"image\": \"a\", \"text\": \"q\", \"label\": \"maybe\"}"
            )
            .unwrap_err()
            .contains("line 1")
        );
    }
}
