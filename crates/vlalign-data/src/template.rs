//! Chat templates and label masking, built turn by turn from token spans.
//!
//! A sequence is the concatenation of separately tokenized pieces — context text, image slots,
//! answers, end-of-turn tokens — so labels can never drift from tokens (LLaVA's string-based
//! masking silently zeroes whole samples on a "tokenization mismatch"). Only assistant tokens
//! and their end-of-turn token are supervised; everything else is `IGNORE` (-100).

use std::fmt;
use std::str::FromStr;

use crate::error::{DatasetError, Problem};
use crate::record::{IMAGE_PLACEHOLDER, Record, Role};
use crate::tokenizer::{Offsets, TextTokenizer};
use crate::truth::{TokenTruth, WordKind};

/// Label of an unsupervised position.
pub const IGNORE: i64 = -100;

/// LLaVA-1.5's system prompt for `vicuna_v1`.
pub const VICUNA_SYSTEM: &str = "A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, detailed, and polite answers to the human's questions.";
/// Qwen2's default system prompt for `chatml`.
pub const CHATML_SYSTEM: &str = "You are a helpful assistant.";

/// A conversation format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Template {
    /// Pretraining: `<s>` + images + caption + `\n`; only the caption and `\n` are supervised.
    Plain,
    /// LLaVA-1.5: `SYSTEM USER: q ASSISTANT: a</s>USER: …`.
    VicunaV1,
    /// Qwen2: `<|im_start|>role\n…<|im_end|>\n`.
    Chatml,
}

impl FromStr for Template {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "plain" => Ok(Self::Plain),
            "vicuna_v1" | "v1" => Ok(Self::VicunaV1),
            "chatml" | "qwen2" => Ok(Self::Chatml),
            other => Err(format!(
                "unknown template '{other}' (plain, vicuna_v1, chatml)"
            )),
        }
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Plain => "plain",
            Self::VicunaV1 => "vicuna_v1",
            Self::Chatml => "chatml",
        })
    }
}

/// One record as token ids and labels.
#[derive(Clone, Debug, PartialEq)]
pub struct Encoded {
    /// Token ids, every `<image>` expanded to the model's slots.
    pub ids: Vec<u32>,
    /// Next-token targets aligned with `ids` (the label of position t is `ids[t]` itself when
    /// supervised; the loss shifts), `IGNORE` elsewhere.
    pub labels: Vec<i64>,
    /// Grounding truth of each supervised token (synthetic data), `None` elsewhere.
    pub truth: Vec<Option<TokenTruth>>,
    /// The box `[x0, y0, x1, y1]` (in [0, 1]) of the object each supervised token names
    /// (synthetic data: the world gives each grounded word its object's box), `None` elsewhere.
    pub boxes: Vec<Option<[f32; 4]>>,
    /// `(start, len)` of each image's slots.
    pub image_spans: Vec<(usize, usize)>,
    /// Whether truncation shortened the record.
    pub truncated: bool,
}

impl Encoded {
    /// Number of supervised tokens.
    pub fn supervised(&self) -> usize {
        self.labels.iter().filter(|&&l| l != IGNORE).count()
    }
}

/// Turns records into [`Encoded`] sequences.
#[derive(Clone, Debug)]
pub struct Encoder {
    tokenizer: TextTokenizer,
    template: Template,
    image_token_id: u32,
    image_tokens: usize,
    max_len: usize,
    bos: Option<u32>,
    end_of_turn: u32,
    system: Option<String>,
}

impl Encoder {
    /// An encoder for `template`. `image_tokens` is the number of slots one image fills (the
    /// vision model's token count). The image slot id is the tokenizer's `<image>` unless
    /// `image_token_id` is given.
    pub fn new(
        tokenizer: TextTokenizer,
        template: Template,
        image_tokens: usize,
        max_len: usize,
        image_token_id: Option<u32>,
    ) -> Result<Self, DatasetError> {
        let need = |t: &str| {
            tokenizer.token_id(t).ok_or_else(|| {
                DatasetError::Tokenizer(format!(
                    "template {template} needs the token {t}, which the tokenizer lacks"
                ))
            })
        };
        let image_token_id = match image_token_id {
            Some(id) => id,
            None => need(IMAGE_PLACEHOLDER)?,
        };
        let (bos, end_of_turn) = match template {
            Template::Plain => (tokenizer.token_id("<s>"), None),
            Template::VicunaV1 => (tokenizer.token_id("<s>"), Some(need("</s>")?)),
            Template::Chatml => (None, Some(need("<|im_end|>")?)),
        };
        let end_of_turn = match end_of_turn {
            Some(id) => id,
            None => {
                let (ids, _) = tokenizer.encode("\n")?;
                match ids.as_slice() {
                    [id] => *id,
                    _ => {
                        return Err(DatasetError::Tokenizer(
                            "'\\n' is not a single token".into(),
                        ));
                    }
                }
            }
        };
        Ok(Self {
            tokenizer,
            template,
            image_token_id,
            image_tokens,
            max_len,
            bos,
            end_of_turn,
            system: None,
        })
    }

    /// Replace the template's default system prompt (`VICUNA_SYSTEM`, `CHATML_SYSTEM`) with
    /// `system`, e.g. a shorter one for a small model trained from scratch.
    pub fn with_system(mut self, system: impl Into<String>) -> Self {
        self.system = Some(system.into());
        self
    }

    /// The system prompt the template opens a conversation with (none for `plain`).
    pub fn system(&self) -> &str {
        match (&self.system, self.template) {
            (_, Template::Plain) => "",
            (Some(s), _) => s,
            (None, Template::VicunaV1) => VICUNA_SYSTEM,
            (None, Template::Chatml) => CHATML_SYSTEM,
        }
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &TextTokenizer {
        &self.tokenizer
    }

    /// The image slot id.
    pub fn image_token_id(&self) -> u32 {
        self.image_token_id
    }

    /// Slots per image.
    pub fn image_tokens(&self) -> usize {
        self.image_tokens
    }

    /// The template.
    pub fn template(&self) -> Template {
        self.template
    }

    /// Token id ending an assistant turn.
    pub fn end_of_turn(&self) -> u32 {
        self.end_of_turn
    }

    /// Encode a whole record (training).
    pub fn encode(&self, record: &Record) -> Result<Encoded, Problem> {
        self.truncate(self.build(record)?.finish())
    }

    /// Encode the prompt of the first assistant turn (generation): its token ids (ending where
    /// the answer starts), the number of images it holds, and the reference answer text.
    pub fn encode_prompt(&self, record: &Record) -> Result<(Vec<u32>, usize, String), Problem> {
        let first_answer = record
            .turns
            .iter()
            .position(|t| t.role == Role::Gpt)
            .ok_or(Problem::NoAnswer)?;
        let prompt = Record {
            turns: record.turns[..first_answer].to_vec(),
            truth: Vec::new(),
            ..record.clone()
        };
        let b = self.build(&prompt)?;
        let images = b.image_spans.len();
        Ok((b.ids, images, record.turns[first_answer].value.clone()))
    }

    /// The untruncated sequence of a record, turn by turn.
    fn build(&self, record: &Record) -> Result<Builder, Problem> {
        let mut b = Builder::default();
        if let Some(bos) = self.bos {
            b.push(&[bos], None);
        }
        for (i, turn) in record.turns.iter().enumerate() {
            match (self.template, turn.role) {
                (Template::Plain, Role::Human) => {
                    for _ in 0..turn.value.matches(IMAGE_PLACEHOLDER).count() {
                        b.image(self.image_token_id, self.image_tokens);
                    }
                }
                (Template::Plain, Role::Gpt) => {
                    self.answer(&mut b, record, i, "")?;
                }
                (_, Role::Human) => {
                    let first = !record.turns[..i].iter().any(|t| t.role == Role::Human);
                    let text = self.human_text(&turn.value, first);
                    self.context(&mut b, &text)?;
                }
                (Template::VicunaV1, Role::Gpt) => {
                    self.answer(&mut b, record, i, " ")?;
                }
                (Template::Chatml, Role::Gpt) => {
                    self.answer(&mut b, record, i, "")?;
                    self.context(&mut b, "\n")?;
                }
            }
        }
        Ok(b)
    }

    fn human_text(&self, value: &str, first: bool) -> String {
        match self.template {
            Template::VicunaV1 => {
                let system = if first && !self.system().is_empty() {
                    format!("{} ", self.system())
                } else {
                    String::new()
                };
                format!("{system}USER: {value} ASSISTANT:")
            }
            Template::Chatml => {
                let system = if first {
                    format!("<|im_start|>system\n{}<|im_end|>\n", self.system())
                } else {
                    String::new()
                };
                format!("{system}<|im_start|>user\n{value}<|im_end|>\n<|im_start|>assistant\n")
            }
            Template::Plain => String::new(),
        }
    }

    /// Unsupervised text with `<image>` placeholders expanded to slots.
    fn context(&self, b: &mut Builder, text: &str) -> Result<(), Problem> {
        for (k, chunk) in text.split(IMAGE_PLACEHOLDER).enumerate() {
            if k > 0 {
                b.image(self.image_token_id, self.image_tokens);
            }
            if !chunk.is_empty() {
                let (ids, _) = self.tokenize(chunk)?;
                b.push(&ids, None);
            }
        }
        Ok(())
    }

    /// A supervised answer (`prefix` + text) and its end-of-turn token.
    fn answer(
        &self,
        b: &mut Builder,
        record: &Record,
        turn: usize,
        prefix: &str,
    ) -> Result<(), Problem> {
        let text = &record.turns[turn].value;
        // Assistant text should not contain images; if it does they are context.
        if text.contains(IMAGE_PLACEHOLDER) {
            return self.context(b, text);
        }
        let piece = format!("{prefix}{text}");
        let (ids, offsets) = self.tokenize(&piece)?;
        let spans: Vec<_> = record.truth.iter().filter(|s| s.turn == turn).collect();
        let truth: Vec<(TokenTruth, Option<[f32; 4]>)> = offsets
            .iter()
            .map(|&(s, e)| {
                let (s, e) = (
                    s.saturating_sub(prefix.len()),
                    e.saturating_sub(prefix.len()),
                );
                let span = spans.iter().find(|span| s < span.end && e > span.start);
                let truth = span.map_or(TokenTruth::template(), |span| TokenTruth {
                    kind: WordKind::parse(&span.kind),
                    prior: span.prior,
                });
                (truth, span.and_then(|span| span.bbox))
            })
            .collect();
        for (id, (t, bbox)) in ids.iter().zip(truth) {
            b.push(&[*id], Some(t));
            if let Some(last) = b.boxes.last_mut() {
                *last = bbox;
            }
        }
        b.push(&[self.end_of_turn], Some(TokenTruth::template()));
        Ok(())
    }

    fn tokenize(&self, text: &str) -> Result<(Vec<u32>, Offsets), Problem> {
        self.tokenizer
            .encode(text)
            .map_err(|e| Problem::Json(format!("tokenizer failed: {e}")))
    }

    /// Cut to `max_len`, never inside an image's slots (a cut there drops the whole image).
    fn truncate(&self, mut enc: Encoded) -> Result<Encoded, Problem> {
        let tokens = enc.ids.len();
        if tokens <= self.max_len {
            return Ok(enc);
        }
        let mut cut = self.max_len;
        if let Some(&(start, _)) = enc
            .image_spans
            .iter()
            .find(|&&(s, n)| s < cut && cut < s + n)
        {
            cut = start;
        }
        if enc.image_spans.first().is_some_and(|&(s, _)| cut <= s) {
            return Err(Problem::TooLong {
                tokens,
                max_len: self.max_len,
            });
        }
        enc.ids.truncate(cut);
        enc.labels.truncate(cut);
        enc.truth.truncate(cut);
        enc.boxes.truncate(cut);
        enc.image_spans.retain(|&(s, n)| s + n <= cut);
        enc.truncated = true;
        if enc.supervised() == 0 {
            return Err(Problem::AnswerTruncated {
                tokens,
                max_len: self.max_len,
            });
        }
        Ok(enc)
    }
}

#[derive(Default)]
struct Builder {
    ids: Vec<u32>,
    labels: Vec<i64>,
    truth: Vec<Option<TokenTruth>>,
    boxes: Vec<Option<[f32; 4]>>,
    image_spans: Vec<(usize, usize)>,
}

impl Builder {
    fn push(&mut self, ids: &[u32], supervised: Option<TokenTruth>) {
        for &id in ids {
            self.ids.push(id);
            self.labels.push(if supervised.is_some() {
                id as i64
            } else {
                IGNORE
            });
            self.truth.push(supervised);
            self.boxes.push(None);
        }
    }

    fn image(&mut self, id: u32, n: usize) {
        self.image_spans.push((self.ids.len(), n));
        self.push(&vec![id; n], None);
    }

    fn finish(self) -> Encoded {
        Encoded {
            ids: self.ids,
            labels: self.labels,
            truth: self.truth,
            boxes: self.boxes,
            image_spans: self.image_spans,
            truncated: false,
        }
    }
}
