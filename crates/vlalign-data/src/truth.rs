//! Per-token grounding truth (synthetic data): does the token's value depend on the image?

use serde::{Deserialize, Serialize};

/// Category of an answer word.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WordKind {
    /// Not grounded: template words, end-of-turn tokens.
    Template,
    /// Object color.
    Color,
    /// Object shape.
    Shape,
    /// Object size.
    Size,
    /// Object position.
    Position,
    /// Number of objects.
    Count,
    /// Yes/no answer to an existence question.
    YesNo,
    /// Grounded, of another category.
    Other,
}

impl WordKind {
    /// Every kind, in report order.
    pub const ALL: [WordKind; 8] = [
        WordKind::Color,
        WordKind::Shape,
        WordKind::Size,
        WordKind::Position,
        WordKind::Count,
        WordKind::YesNo,
        WordKind::Other,
        WordKind::Template,
    ];

    /// Parse a span's `kind` string (unknown kinds are grounded `Other`).
    pub fn parse(s: &str) -> Self {
        match s {
            "template" => Self::Template,
            "color" => Self::Color,
            "shape" => Self::Shape,
            "size" => Self::Size,
            "position" => Self::Position,
            "count" => Self::Count,
            "yesno" => Self::YesNo,
            _ => Self::Other,
        }
    }

    /// The name used in spans and reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::Template => "template",
            Self::Color => "color",
            Self::Shape => "shape",
            Self::Size => "size",
            Self::Position => "position",
            Self::Count => "count",
            Self::YesNo => "yesno",
            Self::Other => "other",
        }
    }
}

/// Truth of one supervised token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenTruth {
    /// Category (`Template` = not grounded).
    pub kind: WordKind,
    /// Partly predictable from text alone (the world's language prior).
    pub prior: bool,
}

impl TokenTruth {
    /// A template (ungrounded) token.
    pub fn template() -> Self {
        Self {
            kind: WordKind::Template,
            prior: false,
        }
    }

    /// Whether the token's value depends on the image.
    pub fn grounded(self) -> bool {
        self.kind != WordKind::Template
    }
}
