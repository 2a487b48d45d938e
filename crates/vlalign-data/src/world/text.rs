//! Texts about scenes — captions, questions and answers, existence questions, group captions —
//! with the grounding truth of every answer word.

use rand::Rng;
use rand::rngs::StdRng;

use super::scene::{Object, Scene, Shape};
use crate::record::{GroundedSpan, Record, Role, Turn};

/// Builds an answer string and records which of its words are grounded.
#[derive(Default)]
struct Answer {
    text: String,
    spans: Vec<GroundedSpan>,
}

impl Answer {
    fn lit(&mut self, s: &str) -> &mut Self {
        self.text.push_str(s);
        self
    }

    fn word(&mut self, s: &str, kind: &'static str, obj: Option<&Object>) -> &mut Self {
        let start = self.text.len();
        self.text.push_str(s);
        let prior = kind == "color" && obj.is_some_and(|o| o.prior);
        self.spans.push(GroundedSpan {
            turn: 0,
            start,
            end: self.text.len(),
            kind: kind.to_string(),
            bbox: obj.map(Object::bbox),
            prior,
        });
        self
    }

    /// `a large red circle at the top left`
    fn describe(&mut self, o: &Object) -> &mut Self {
        self.lit("a ")
            .word(o.size.name(), "size", Some(o))
            .lit(" ")
            .word(o.color.name(), "color", Some(o))
            .lit(" ")
            .word(o.shape.name(), "shape", Some(o))
            .lit(" at the ")
            .word(o.position(), "position", Some(o))
    }

    fn spans(&self, turn: usize) -> Vec<GroundedSpan> {
        self.spans
            .iter()
            .map(|s| GroundedSpan { turn, ..s.clone() })
            .collect()
    }
}

const COUNT_WORDS: [&str; 5] = ["zero", "one", "two", "three", "four"];

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
        .unwrap_or_default()
}

/// The caption of a scene and its spans: `Two objects: a small red circle at the top left and
/// a large blue star at the center.`
fn caption_answer(scene: &Scene) -> Answer {
    let mut a = Answer::default();
    let n = scene.objects.len();
    a.word(&capitalize(COUNT_WORDS[n]), "count", None)
        .lit(if n == 1 { " object: " } else { " objects: " });
    for (i, o) in scene.objects.iter().enumerate() {
        if i > 0 {
            a.lit(if i + 1 == n { " and " } else { ", " });
        }
        a.describe(o);
    }
    a.lit(".");
    a
}

/// A pretraining record: `<image>` → caption (template `plain`).
pub fn caption_record(scene: &Scene, image: &str) -> Record {
    let a = caption_answer(scene);
    Record {
        id: format!("cap-{}", scene.id),
        images: vec![image.to_string()],
        turns: vec![
            Turn {
                role: Role::Human,
                value: "<image>".into(),
            },
            Turn {
                role: Role::Gpt,
                value: a.text.clone(),
            },
        ],
        truth: a.spans(1),
    }
}

/// The kinds of existence negatives (POPE).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Negative {
    /// A uniformly random absent shape.
    Random,
    /// The most frequent absent shape in the dataset.
    Popular,
    /// The absent shape that co-occurs most with the present ones.
    Adversarial,
}

impl Negative {
    /// All strategies.
    pub const ALL: [Negative; 3] = [Negative::Random, Negative::Popular, Negative::Adversarial];

    /// Name as in POPE's file names.
    pub fn name(self) -> &'static str {
        match self {
            Negative::Random => "random",
            Negative::Popular => "popular",
            Negative::Adversarial => "adversarial",
        }
    }
}

/// Shape statistics of a split: frequency and co-occurrence, for POPE negatives.
#[derive(Clone, Debug, Default)]
pub struct ShapeStats {
    freq: [usize; 5],
    co: [[usize; 5]; 5],
}

fn idx(s: Shape) -> usize {
    Shape::ALL
        .iter()
        .position(|x| *x == s)
        .expect("known shape")
}

impl ShapeStats {
    /// Count the shapes of `scenes`.
    pub fn new<'a>(scenes: impl Iterator<Item = &'a Scene>) -> Self {
        let mut st = Self::default();
        for sc in scenes {
            let shapes = sc.shapes();
            for &a in &shapes {
                st.freq[idx(a)] += 1;
                for &b in &shapes {
                    if a != b {
                        st.co[idx(a)][idx(b)] += 1;
                    }
                }
            }
        }
        st
    }

    /// An absent shape chosen by `strategy`, or `None` when every shape is present.
    pub fn negative(&self, scene: &Scene, strategy: Negative, rng: &mut StdRng) -> Option<Shape> {
        let present = scene.shapes();
        let absent: Vec<Shape> = Shape::ALL
            .into_iter()
            .filter(|s| !present.contains(s))
            .collect();
        if absent.is_empty() {
            return None;
        }
        Some(match strategy {
            Negative::Random => absent[rng.random_range(0..absent.len())],
            Negative::Popular => *absent
                .iter()
                .max_by_key(|s| self.freq[idx(**s)])
                .expect("non-empty"),
            Negative::Adversarial => *absent
                .iter()
                .max_by_key(|s| {
                    present
                        .iter()
                        .map(|p| self.co[idx(*p)][idx(**s)])
                        .sum::<usize>()
                })
                .expect("non-empty"),
        })
    }
}

fn unique(scene: &Scene, key: impl Fn(&Object) -> String) -> Vec<&Object> {
    scene
        .objects
        .iter()
        .filter(|o| scene.objects.iter().filter(|p| key(p) == key(o)).count() == 1)
        .collect()
}

/// One question and its answer about `scene`.
fn question(
    scene: &Scene,
    kind: usize,
    stats: &ShapeStats,
    rng: &mut StdRng,
) -> Option<(String, Answer)> {
    let mut a = Answer::default();
    let pick = |v: Vec<&Object>, rng: &mut StdRng| -> Option<Object> {
        (!v.is_empty()).then(|| v[rng.random_range(0..v.len())].clone())
    };
    let q = match kind {
        0 => {
            let n = scene.objects.len();
            a.lit(if n == 1 { "There is " } else { "There are " })
                .word(COUNT_WORDS[n], "count", None)
                .lit(if n == 1 { " object." } else { " objects." });
            "How many objects are there?".to_string()
        }
        1 => {
            let o = pick(unique(scene, |o| o.shape.name().into()), rng)?;
            a.lit(&format!("The {} is ", o.shape.name()))
                .word(o.color.name(), "color", Some(&o))
                .lit(".");
            format!("What color is the {}?", o.shape.name())
        }
        2 => {
            let o = pick(unique(scene, |o| o.color.name().into()), rng)?;
            a.lit("It is a ")
                .word(o.shape.name(), "shape", Some(&o))
                .lit(".");
            format!("What shape is the {} object?", o.color.name())
        }
        3 => {
            let o = pick(
                unique(scene, |o| format!("{:?}{:?}", o.color, o.shape)),
                rng,
            )?;
            a.lit("It is ")
                .word(o.size.name(), "size", Some(&o))
                .lit(".");
            format!(
                "Is the {} {} small or large?",
                o.color.name(),
                o.shape.name()
            )
        }
        4 => {
            let o = pick(
                unique(scene, |o| format!("{:?}{:?}", o.color, o.shape)),
                rng,
            )?;
            a.lit("It is at the ")
                .word(o.position(), "position", Some(&o))
                .lit(".");
            format!("Where is the {} {}?", o.color.name(), o.shape.name())
        }
        _ => {
            let yes = rng.random::<bool>();
            let shape = if yes {
                let s = scene.shapes();
                s[rng.random_range(0..s.len())]
            } else {
                let strategy = Negative::ALL[rng.random_range(0..3)];
                stats.negative(scene, strategy, rng)?
            };
            let obj = scene.objects.iter().find(|o| o.shape == shape);
            a.word(if yes { "Yes" } else { "No" }, "yesno", obj)
                .lit(".");
            format!("Is there a {} in the image?", shape.name())
        }
    };
    Some((q, a))
}

/// An instruction record of `turns` questions (template `vicuna_v1`); the first carries the
/// image.
pub fn qa_record(
    scene: &Scene,
    image: &str,
    turns: usize,
    stats: &ShapeStats,
    rng: &mut StdRng,
) -> Record {
    let mut record = Record {
        id: format!("qa-{}", scene.id),
        images: vec![image.to_string()],
        turns: Vec::new(),
        truth: Vec::new(),
    };
    let mut asked = Vec::new();
    let mut tries = 0;
    while asked.len() < turns && tries < 50 {
        tries += 1;
        let kind = rng.random_range(0..6);
        let Some((q, a)) = question(scene, kind, stats, rng) else {
            continue;
        };
        if asked.contains(&q) {
            continue;
        }
        let q_text = if record.turns.is_empty() {
            format!("<image>\n{q}")
        } else {
            q.clone()
        };
        asked.push(q);
        record.turns.push(Turn {
            role: Role::Human,
            value: q_text,
        });
        record.truth.extend(a.spans(record.turns.len()));
        record.turns.push(Turn {
            role: Role::Gpt,
            value: a.text,
        });
    }
    record
}

/// A POPE question: `{question_id, image, text, label}`.
pub fn pope_line(qid: usize, image: &str, shape: Shape, yes: bool) -> serde_json::Value {
    serde_json::json!({
        "question_id": qid,
        "image": image,
        "text": format!("Is there a {} in the image?", shape.name()),
        "label": if yes { "yes" } else { "no" },
    })
}

/// A multi-image record: every image holds `shared`; the answer names it.
pub fn group_record(id: &str, images: &[String], shared: &Object) -> Record {
    let mut q = String::new();
    for _ in images {
        q.push_str("<image>\n");
    }
    q.push_str("Which object appears in every image?");
    let mut a = Answer::default();
    a.lit("Every image has a ")
        .word(shared.color.name(), "color", Some(shared))
        .lit(" ")
        .word(shared.shape.name(), "shape", Some(shared))
        .lit(".");
    // Boxes differ per image; the group answer carries none.
    a.spans.iter_mut().for_each(|s| s.bbox = None);
    Record {
        id: id.to_string(),
        images: images.to_vec(),
        turns: vec![
            Turn {
                role: Role::Human,
                value: q,
            },
            Turn {
                role: Role::Gpt,
                value: a.text.clone(),
            },
        ],
        truth: a.spans(1),
    }
}

/// A two-image record: which object changed between the images, and into what.
/// `The red circle became a blue circle.`
pub fn change_record(id: &str, images: &[String], before: &Object, after: &Object) -> Record {
    let mut a = Answer::default();
    a.lit("The ")
        .word(before.color.name(), "color", Some(before))
        .lit(" ")
        .word(before.shape.name(), "shape", Some(before))
        .lit(" became a ")
        .word(after.color.name(), "color", Some(after))
        .lit(" ")
        .word(after.shape.name(), "shape", Some(after))
        .lit(".");
    Record {
        id: id.to_string(),
        images: images.to_vec(),
        turns: vec![
            Turn {
                role: Role::Human,
                value: "<image>\n<image>\nWhat changed between the two images?".into(),
            },
            Turn {
                role: Role::Gpt,
                value: a.text.clone(),
            },
        ],
        truth: a.spans(1),
    }
}
