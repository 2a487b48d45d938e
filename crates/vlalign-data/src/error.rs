//! Typed errors for bad input: each names the record and the field.

use std::path::PathBuf;

/// What is wrong with one record.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Problem {
    /// A required field is absent.
    #[error("missing")]
    Missing,
    /// A field has the wrong JSON type.
    #[error("expected {expected}")]
    WrongType {
        /// What was expected.
        expected: &'static str,
    },
    /// A line of a JSON Lines file is not JSON.
    #[error("malformed JSON: {0}")]
    Json(String),
    /// A conversation turn names a role other than human/gpt.
    #[error("unknown role '{0}' (expected human or gpt)")]
    UnknownRole(String),
    /// The conversation has no turns.
    #[error("empty conversation")]
    EmptyConversation,
    /// The conversation has no assistant turn: nothing to learn from.
    #[error("no gpt turn: nothing to supervise")]
    NoAnswer,
    /// The number of `<image>` placeholders differs from the number of images.
    #[error("{placeholders} <image> placeholders for {images} images")]
    ImageCount {
        /// `<image>` occurrences in the text.
        placeholders: usize,
        /// Images listed.
        images: usize,
    },
    /// Text that was not valid UTF-8 in the file.
    #[error("text is not valid UTF-8")]
    NonUtf8,
    /// The image file does not exist or cannot be read.
    #[error("cannot read image {path}: {message}")]
    ImageMissing {
        /// Resolved path.
        path: PathBuf,
        /// The OS error.
        message: String,
    },
    /// The image file exists but does not decode.
    #[error("cannot decode image {path}: {message}")]
    ImageCorrupt {
        /// Resolved path.
        path: PathBuf,
        /// The decoder's error.
        message: String,
    },
    /// The record does not fit `max_len` even without its answers (e.g. too many images).
    #[error("{tokens} tokens do not fit max_len {max_len}")]
    TooLong {
        /// Tokens needed.
        tokens: usize,
        /// The limit.
        max_len: usize,
    },
    /// Truncation to `max_len` cut into a preference pair's answer: the pair's two answers
    /// would not be scored whole.
    #[error(
        "truncation to max_len {max_len} cuts the answer (a preference pair compares whole answers)"
    )]
    PairTruncated {
        /// The limit.
        max_len: usize,
    },
    /// Truncation to `max_len` removed every supervised token.
    #[error("truncation to max_len {max_len} cut away every answer token ({tokens} tokens)")]
    AnswerTruncated {
        /// Tokens before truncation.
        tokens: usize,
        /// The limit.
        max_len: usize,
    },
}

impl Problem {
    /// A short stable name for grouping in reports.
    pub fn reason(&self) -> &'static str {
        match self {
            Problem::Missing => "missing_field",
            Problem::WrongType { .. } => "wrong_type",
            Problem::Json(_) => "malformed_json",
            Problem::UnknownRole(_) => "unknown_role",
            Problem::EmptyConversation => "empty_conversation",
            Problem::NoAnswer => "no_answer",
            Problem::ImageCount { .. } => "image_count_mismatch",
            Problem::NonUtf8 => "non_utf8",
            Problem::ImageMissing { .. } => "missing_image",
            Problem::ImageCorrupt { .. } => "corrupt_image",
            Problem::TooLong { .. } => "too_long",
            Problem::AnswerTruncated { .. } => "answer_truncated",
            Problem::PairTruncated { .. } => "pair_truncated",
        }
    }
}

/// A bad record: which one, which field, what is wrong.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("record {id}: field `{field}`: {problem}")]
pub struct RecordError {
    /// The record's `id`, or `#N` (its index) when it has none, or `line N` in JSON Lines.
    pub id: String,
    /// The field, as a JSON path (`conversations[2].from`).
    pub field: String,
    /// What is wrong.
    pub problem: Problem,
}

impl RecordError {
    /// Build an error.
    pub fn new(id: impl Into<String>, field: impl Into<String>, problem: Problem) -> Self {
        Self {
            id: id.into(),
            field: field.into(),
            problem,
        }
    }
}

/// A failure that concerns the whole dataset, not one record.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    /// The file cannot be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A JSON array file that does not parse (no record boundary to skip to).
    #[error("{path}: malformed JSON at line {line}, column {column}: {message}")]
    Json {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// The parser's message.
        message: String,
    },
    /// The top level is neither a JSON array nor JSON Lines of objects.
    #[error("{path}: expected a JSON array of records or JSON Lines")]
    NotRecords {
        /// The file.
        path: PathBuf,
    },
    /// A bad record under the `fail` policy.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// The tokenizer cannot be loaded, trained or saved.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// Writing output failed.
    #[error("cannot write {path}: {message}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        message: String,
    },
}
