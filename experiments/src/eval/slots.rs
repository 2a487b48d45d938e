//! Grounded answer slots: every answer of the world is a template with one or more slots
//! (a color, a shape, a size, a position, a count, yes/no). A generated answer is right on a
//! slot when it has the reference's template around it and the same word(s) in it.

use std::collections::BTreeMap;

use vlalign_data::record::GroundedSpan;
use vlalign_data::{Record, Role, Turn};
use vlalign_eval::generation::Prediction;

/// One question per record: each assistant turn that carries grounding truth becomes a
/// single-turn record (`<image>` + the question, the answer, the spans moved to turn 1), id
/// `{id}#{turn}`.
pub fn single_turn(records: &[Record]) -> Vec<Record> {
    let mut out = Vec::new();
    for r in records {
        for (i, t) in r.turns.iter().enumerate() {
            if t.role != Role::Gpt || i == 0 {
                continue;
            }
            let spans: Vec<GroundedSpan> = r
                .truth
                .iter()
                .filter(|s| s.turn == i)
                .map(|s| GroundedSpan {
                    turn: 1,
                    ..s.clone()
                })
                .collect();
            if spans.is_empty() || r.images.is_empty() {
                continue;
            }
            let question = &r.turns[i - 1].value;
            let question = if question.contains("<image>") {
                question.clone()
            } else {
                format!("<image>\n{question}")
            };
            out.push(Record {
                id: format!("{}#{i}", r.id),
                images: r.images[..1].to_vec(),
                turns: vec![
                    Turn {
                        role: Role::Human,
                        value: question,
                    },
                    t.clone(),
                ],
                truth: spans,
            });
        }
    }
    out
}

/// The slot fillers of `output` if it follows `reference`'s template (the text between the
/// spans), compared case-insensitively; `None` when the template differs.
pub fn extract_slots(
    reference: &str,
    spans: &[(usize, usize)],
    output: &str,
) -> Option<Vec<String>> {
    let reference = reference.trim().to_lowercase();
    let output = output.trim().to_lowercase();
    let mut spans = spans.to_vec();
    spans.sort_unstable();
    // Literal pieces around the slots.
    let mut pieces = Vec::new();
    let mut at = 0;
    for &(s, e) in &spans {
        pieces.push(reference.get(at..s)?);
        at = e;
    }
    let tail = reference.get(at..)?;
    let mut rest = output.strip_prefix(pieces[0])?;
    let mut fills = Vec::new();
    for k in 0..spans.len() {
        let next = if k + 1 < spans.len() {
            pieces[k + 1]
        } else {
            tail
        };
        let fill = if k + 1 == spans.len() {
            rest.strip_suffix(next)?
        } else if next.is_empty() {
            return None;
        } else {
            let j = rest.find(next)?;
            let f = &rest[..j];
            rest = &rest[j + next.len()..];
            f
        };
        fills.push(fill.trim().to_string());
    }
    Some(fills)
}

/// Correct / total per slot kind.
#[derive(Clone, Debug, Default)]
pub struct SlotScores {
    /// kind → (correct, total).
    pub by_kind: BTreeMap<String, (usize, usize)>,
}

impl SlotScores {
    /// Accuracy over all slots.
    pub fn overall(&self) -> f64 {
        let (c, n) = self
            .by_kind
            .values()
            .fold((0, 0), |(c, n), (c1, n1)| (c + c1, n + n1));
        if n == 0 { 0.0 } else { c as f64 / n as f64 }
    }

    /// Accuracy of one kind.
    pub fn kind(&self, kind: &str) -> Option<f64> {
        self.by_kind
            .get(kind)
            .filter(|(_, n)| *n > 0)
            .map(|(c, n)| *c as f64 / *n as f64)
    }
}

/// Score predictions of [`single_turn`] records.
pub fn score(records: &[Record], predictions: &[Prediction]) -> SlotScores {
    let by_id: BTreeMap<&str, &Prediction> =
        predictions.iter().map(|p| (p.id.as_str(), p)).collect();
    let mut scores = SlotScores::default();
    for r in records {
        let Some(answer) = r.turns.get(1) else {
            continue;
        };
        let spans: Vec<(usize, usize)> = r.truth.iter().map(|s| (s.start, s.end)).collect();
        let mut order: Vec<&GroundedSpan> = r.truth.iter().collect();
        order.sort_by_key(|s| (s.start, s.end));
        let fills = by_id
            .get(r.id.as_str())
            .and_then(|p| extract_slots(&answer.value, &spans, &p.output));
        for (k, span) in order.iter().enumerate() {
            let expected = answer
                .value
                .get(span.start..span.end)
                .unwrap_or_default()
                .to_lowercase();
            let right = fills
                .as_ref()
                .and_then(|f| f.get(k))
                .is_some_and(|f| *f == expected);
            let e = scores.by_kind.entry(span.kind.clone()).or_default();
            e.0 += usize::from(right);
            e.1 += 1;
        }
    }
    scores
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_follow_the_template() {
        let r = "It is at the left.";
        let s = [(13, 17)];
        assert_eq!(
            extract_slots(r, &s, "It is at the left."),
            Some(vec!["left".into()])
        );
        assert_eq!(
            extract_slots(r, &s, "it is at the top left."),
            Some(vec!["top left".into()])
        );
        assert_eq!(extract_slots(r, &s, "There are two."), None);
        let r = "A large red square.";
        let s = [(2, 7), (8, 11), (12, 18)];
        assert_eq!(
            extract_slots(r, &s, "A small red circle."),
            Some(vec!["small".into(), "red".into(), "circle".into()])
        );
        assert_eq!(
            extract_slots("Yes.", &[(0, 3)], "No."),
            Some(vec!["no".into()])
        );
    }
}
