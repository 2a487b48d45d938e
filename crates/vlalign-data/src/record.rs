//! LLaVA instruct records: `{"id", "image": path | [paths], "conversations": [{"from", "value"}]}`,
//! read from a JSON array or JSON Lines, with typed errors per record.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{DatasetError, Problem, RecordError};

/// The text that marks where an image goes.
pub const IMAGE_PLACEHOLDER: &str = "<image>";

/// Who speaks a turn.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// The user (`"human"`, also `"user"`).
    Human,
    /// The assistant (`"gpt"`, also `"assistant"`): its tokens are supervised.
    Gpt,
}

/// One conversation turn.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Turn {
    /// Speaker.
    pub role: Role,
    /// Text, with `<image>` placeholders.
    pub value: String,
}

/// A span of an assistant turn whose words depend on the image (synthetic data only).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GroundedSpan {
    /// Index of the turn in `conversations`.
    pub turn: usize,
    /// Byte offset of the span in the turn's text.
    pub start: usize,
    /// Byte offset one past the span.
    pub end: usize,
    /// Word category: color, shape, size, position, count, yesno.
    pub kind: String,
    /// The object's box `[x0, y0, x1, y1]` in [0, 1] image coordinates, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bbox: Option<[f32; 4]>,
    /// Whether the word is partly predictable from text alone (the world's language prior).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub prior: bool,
}

/// A record as training sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    /// The record id.
    pub id: String,
    /// Image paths, relative to the image folder, in placeholder order.
    pub images: Vec<String>,
    /// The conversation.
    pub turns: Vec<Turn>,
    /// Grounding truth of the assistant words (the synthetic world writes it as `"truth"`).
    pub truth: Vec<GroundedSpan>,
}

impl Record {
    /// A single-turn record about one image: `<image>\n` + `question`, then `answer`.
    pub fn question_answer(id: String, image: &str, question: &str, answer: &str) -> Self {
        Self {
            id,
            images: vec![image.to_string()],
            turns: vec![
                Turn {
                    role: Role::Human,
                    value: format!("<image>\n{question}"),
                },
                Turn {
                    role: Role::Gpt,
                    value: answer.to_string(),
                },
            ],
            truth: Vec::new(),
        }
    }

    /// Resolve image paths against `folder`.
    pub fn image_paths(&self, folder: &Path) -> Vec<PathBuf> {
        self.images.iter().map(|p| folder.join(p)).collect()
    }

    /// The LLaVA JSON form of this record (with `truth` when it has any).
    pub fn to_json(&self) -> Value {
        let mut obj = serde_json::Map::new();
        obj.insert("id".into(), Value::String(self.id.clone()));
        match self.images.len() {
            0 => {}
            1 => {
                obj.insert("image".into(), Value::String(self.images[0].clone()));
            }
            _ => {
                obj.insert("image".into(), serde_json::json!(self.images));
            }
        }
        let turns: Vec<Value> = self
            .turns
            .iter()
            .map(|t| {
                serde_json::json!({
                    "from": match t.role { Role::Human => "human", Role::Gpt => "gpt" },
                    "value": t.value,
                })
            })
            .collect();
        obj.insert("conversations".into(), Value::Array(turns));
        if !self.truth.is_empty() {
            obj.insert(
                "truth".into(),
                serde_json::to_value(&self.truth).expect("spans serialise"),
            );
        }
        Value::Object(obj)
    }
}

/// Parse one record from JSON. `fallback_id` names it when it has no usable `id`.
/// `lossy` says the file had invalid UTF-8 (replaced by U+FFFD): text containing U+FFFD is
/// then reported as non-UTF-8.
pub fn parse_record(value: &Value, fallback_id: &str, lossy: bool) -> Result<Record, RecordError> {
    let id = match value.get("id") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => fallback_id.to_string(),
    };
    let err = |field: &str, problem: Problem| RecordError::new(id.clone(), field, problem);
    let obj = value.as_object().ok_or_else(|| {
        err(
            "<record>",
            Problem::WrongType {
                expected: "an object",
            },
        )
    })?;
    match obj.get("id") {
        None | Some(Value::Null) => return Err(err("id", Problem::Missing)),
        Some(Value::String(_)) | Some(Value::Number(_)) => {}
        Some(_) => {
            return Err(err(
                "id",
                Problem::WrongType {
                    expected: "a string",
                },
            ));
        }
    }
    let check_text = |field: &str, s: &str| {
        if lossy && s.contains('\u{FFFD}') {
            Err(err(field, Problem::NonUtf8))
        } else {
            Ok(())
        }
    };
    check_text("id", &id)?;
    let images = match obj.get("image") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, v)| {
                v.as_str().map(str::to_string).ok_or_else(|| {
                    err(
                        &format!("image[{i}]"),
                        Problem::WrongType {
                            expected: "a path string",
                        },
                    )
                })
            })
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err(err(
                "image",
                Problem::WrongType {
                    expected: "a path or a list of paths",
                },
            ));
        }
    };
    for (i, p) in images.iter().enumerate() {
        check_text(&format!("image[{i}]"), p)?;
    }
    let turns = match obj.get("conversations") {
        None | Some(Value::Null) => return Err(err("conversations", Problem::Missing)),
        Some(Value::Array(items)) => items,
        Some(_) => {
            return Err(err(
                "conversations",
                Problem::WrongType { expected: "a list" },
            ));
        }
    };
    if turns.is_empty() {
        return Err(err("conversations", Problem::EmptyConversation));
    }
    let turns = turns
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let field = |f: &str| format!("conversations[{i}].{f}");
            let role = match t.get("from") {
                None | Some(Value::Null) => return Err(err(&field("from"), Problem::Missing)),
                Some(Value::String(s)) => match s.as_str() {
                    "human" | "user" => Role::Human,
                    "gpt" | "assistant" => Role::Gpt,
                    other => {
                        return Err(err(&field("from"), Problem::UnknownRole(other.to_string())));
                    }
                },
                Some(_) => {
                    return Err(err(
                        &field("from"),
                        Problem::WrongType {
                            expected: "a string",
                        },
                    ));
                }
            };
            let value = match t.get("value") {
                None | Some(Value::Null) => return Err(err(&field("value"), Problem::Missing)),
                Some(Value::String(s)) => s.clone(),
                Some(_) => {
                    return Err(err(
                        &field("value"),
                        Problem::WrongType {
                            expected: "a string",
                        },
                    ));
                }
            };
            check_text(&field("value"), &value)?;
            Ok(Turn { role, value })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if !turns.iter().any(|t| t.role == Role::Gpt) {
        return Err(err("conversations", Problem::NoAnswer));
    }
    let placeholders: usize = turns
        .iter()
        .map(|t| t.value.matches(IMAGE_PLACEHOLDER).count())
        .sum();
    if placeholders != images.len() {
        return Err(err(
            "image",
            Problem::ImageCount {
                placeholders,
                images: images.len(),
            },
        ));
    }
    let truth = match obj.get("truth") {
        None | Some(Value::Null) => Vec::new(),
        Some(v) => serde_json::from_value::<Vec<GroundedSpan>>(v.clone()).map_err(|_| {
            err(
                "truth",
                Problem::WrongType {
                    expected: "a list of {turn, start, end, kind} spans",
                },
            )
        })?,
    };
    for (i, span) in truth.iter().enumerate() {
        let ok = turns.get(span.turn).is_some_and(|t| {
            t.role == Role::Gpt
                && span.start < span.end
                && span.end <= t.value.len()
                && t.value.is_char_boundary(span.start)
                && t.value.is_char_boundary(span.end)
        });
        if !ok {
            return Err(err(
                &format!("truth[{i}]"),
                Problem::WrongType {
                    expected: "a span inside a gpt turn",
                },
            ));
        }
    }
    Ok(Record {
        id,
        images,
        turns,
        truth,
    })
}

/// The records of a file, each parsed or its error, in file order.
pub type Parsed = Vec<Result<Record, RecordError>>;

/// Read a JSON array of records or JSON Lines from bytes. A malformed JSON array is a
/// [`DatasetError::Json`] (there is no record boundary to skip to); a malformed line of JSON
/// Lines is a record error for that line.
pub fn parse_records(bytes: &[u8], path: &Path) -> Result<Parsed, DatasetError> {
    let lossy = std::str::from_utf8(bytes).is_err();
    let text = String::from_utf8_lossy(bytes);
    let trimmed = text.trim_start_matches('\u{feff}').trim_start();
    if trimmed.starts_with('[') {
        let values: Vec<Value> = serde_json::from_str(trimmed).map_err(|e| {
            if e.is_data() {
                DatasetError::NotRecords {
                    path: path.to_path_buf(),
                }
            } else {
                DatasetError::Json {
                    path: path.to_path_buf(),
                    line: e.line(),
                    column: e.column(),
                    message: e.to_string(),
                }
            }
        })?;
        Ok(values
            .iter()
            .enumerate()
            .map(|(i, v)| parse_record(v, &format!("#{i}"), lossy))
            .collect())
    } else if trimmed.starts_with('{') || trimmed.is_empty() {
        Ok(text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(n, line)| {
                let fallback = format!("line {}", n + 1);
                let v: Value = serde_json::from_str(line).map_err(|e| {
                    RecordError::new(fallback.clone(), "<line>", Problem::Json(e.to_string()))
                })?;
                parse_record(&v, &fallback, lossy)
            })
            .collect())
    } else {
        Err(DatasetError::NotRecords {
            path: path.to_path_buf(),
        })
    }
}

/// Read and parse a records file.
pub fn read_records(path: &Path) -> Result<Parsed, DatasetError> {
    let bytes = std::fs::read(path).map_err(|source| DatasetError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_records(&bytes, path)
}

/// Write records as a JSON array (the LLaVA layout).
pub fn write_records(path: &Path, records: &[Record]) -> Result<(), DatasetError> {
    let values: Vec<Value> = records.iter().map(Record::to_json).collect();
    let text = serde_json::to_string_pretty(&values).expect("records serialise");
    std::fs::write(path, text).map_err(|e| DatasetError::Write {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn one(v: Value) -> Result<Record, RecordError> {
        parse_record(&v, "#0", false)
    }

    #[test]
    fn reads_single_and_multi_image_and_text_only() {
        let r = one(json!({"id": "a", "image": "x.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "A cat."}]}))
        .unwrap();
        assert_eq!(r.images, vec!["x.png"]);
        let r = one(
            json!({"id": 7, "image": ["a.png", "b.png"], "conversations": [
            {"from": "human", "value": "<image><image> same?"}, {"from": "gpt", "value": "Yes."}]}),
        )
        .unwrap();
        assert_eq!((r.id.as_str(), r.images.len()), ("7", 2));
        let r = one(json!({"id": "t", "conversations": [
            {"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]}))
        .unwrap();
        assert!(r.images.is_empty());
    }

    #[test]
    fn each_bad_case_names_record_and_field() {
        let cases = [
            (
                json!({"id": "r1", "conversations": [{"from": "robot", "value": "x"}]}),
                "conversations[0].from",
                "unknown_role",
            ),
            (
                json!({"id": "r2", "image": "a.png", "conversations": [
                {"from": "human", "value": "no placeholder"}, {"from": "gpt", "value": "x"}]}),
                "image",
                "image_count_mismatch",
            ),
            (
                json!({"id": "r3", "conversations": []}),
                "conversations",
                "empty_conversation",
            ),
            (
                json!({"id": "r4", "conversations": [{"from": "human", "value": "x"}]}),
                "conversations",
                "no_answer",
            ),
            (
                json!({"id": "r5", "conversations": [{"from": "gpt"}]}),
                "conversations[0].value",
                "missing_field",
            ),
            (
                json!({"id": "r6", "conversations": [{"from": "gpt", "value": 3}]}),
                "conversations[0].value",
                "wrong_type",
            ),
            (
                json!({"conversations": [{"from": "gpt", "value": "x"}]}),
                "id",
                "missing_field",
            ),
        ];
        for (v, field, reason) in cases {
            let e = one(v).unwrap_err();
            assert_eq!(e.field, field, "{e}");
            assert_eq!(e.problem.reason(), reason, "{e}");
        }
    }

    #[test]
    fn jsonl_malformed_line_is_a_record_error_and_array_is_fatal() {
        let text =
            b"{\"id\": \"a\", \"conversations\": [{\"from\": \"gpt\", \"value\": \"x\"}]}\n{oops\n";
        let parsed = parse_records(text, Path::new("d.jsonl")).unwrap();
        assert!(parsed[0].is_ok());
        let e = parsed[1].as_ref().unwrap_err();
        assert_eq!(
            (e.id.as_str(), e.problem.reason()),
            ("line 2", "malformed_json")
        );
        let e = parse_records(b"[{\"id\": 1,", Path::new("d.json")).unwrap_err();
        assert!(matches!(e, DatasetError::Json { line: 1, .. }), "{e}");
    }

    #[test]
    fn invalid_utf8_is_reported_for_its_record_only() {
        let mut bytes = br#"[{"id": "good", "conversations": [{"from": "gpt", "value": "ok"}]},
{"id": "bad", "conversations": [{"from": "gpt", "value": "caf"#
            .to_vec();
        bytes.push(0xE9);
        bytes.extend_from_slice(br#""}]}]"#);
        let parsed = parse_records(&bytes, Path::new("d.json")).unwrap();
        assert!(parsed[0].is_ok());
        let e = parsed[1].as_ref().unwrap_err();
        assert_eq!(
            (e.id.as_str(), e.field.as_str()),
            ("bad", "conversations[0].value")
        );
        assert_eq!(e.problem, Problem::NonUtf8);
    }
}
