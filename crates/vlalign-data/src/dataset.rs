//! Loading a dataset exactly as training does: parse, encode with a template, check images, and
//! apply the bad-record policy; serving samples with decoded images through burn's `Dataset`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::data::dataset::Dataset;
use serde::{Deserialize, Serialize};

use crate::error::{DatasetError, Problem, RecordError};
use crate::image::ImageProcessor;
use crate::record::{Record, read_records};
use crate::template::{Encoded, Encoder};

/// What to do with a bad record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BadRecordPolicy {
    /// Leave it out, count it, report it at the end.
    Skip,
    /// Stop with its error.
    Fail,
}

impl std::str::FromStr for BadRecordPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "skip" => Ok(Self::Skip),
            "fail" => Ok(Self::Fail),
            other => Err(format!("unknown policy '{other}' (skip, fail)")),
        }
    }
}

/// How thoroughly images are checked while loading.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageCheck {
    /// Decode every image (finds corrupt files).
    Decode,
    /// Only check that the files exist.
    Exists,
    /// Trust the paths.
    None,
}

/// A record ready for training: its tokens and its image files.
#[derive(Clone, Debug)]
pub struct Sample {
    /// Record id.
    pub id: String,
    /// Tokens, labels, truth.
    pub encoded: Encoded,
    /// Resolved paths of the images kept after truncation.
    pub images: Vec<PathBuf>,
}

/// The outcome of loading.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LoadReport {
    /// Records in the file.
    pub records: usize,
    /// Records loaded.
    pub loaded: usize,
    /// Bad records.
    #[serde(skip)]
    pub errors: Vec<RecordError>,
    /// Images referenced by loaded records.
    pub images: usize,
    /// Supervised tokens of loaded records.
    pub supervised_tokens: usize,
    /// Ids of records shortened by truncation.
    pub truncated: Vec<String>,
}

impl LoadReport {
    /// Bad records by reason, with the first few ids of each.
    pub fn by_reason(&self) -> BTreeMap<&'static str, (usize, Vec<String>)> {
        let mut m: BTreeMap<&'static str, (usize, Vec<String>)> = BTreeMap::new();
        for e in &self.errors {
            let entry = m.entry(e.problem.reason()).or_default();
            entry.0 += 1;
            if entry.1.len() < 5 {
                entry.1.push(e.id.clone());
            }
        }
        m
    }

    /// Under `Fail`, the first bad record's error.
    pub fn enforce(&self, policy: BadRecordPolicy) -> Result<(), DatasetError> {
        match (policy, self.errors.first()) {
            (BadRecordPolicy::Fail, Some(e)) => Err(DatasetError::Record(e.clone())),
            _ => Ok(()),
        }
    }

    /// A human-readable summary.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "records {}, loaded {}, skipped {}, images {}, supervised tokens {}, truncated {}",
            self.records,
            self.loaded,
            self.errors.len(),
            self.images,
            self.supervised_tokens,
            self.truncated.len()
        );
        for (reason, (n, ids)) in self.by_reason() {
            s.push_str(&format!(
                "\n  skipped {n} × {reason} (e.g. {})",
                ids.join(", ")
            ));
        }
        s
    }
}

/// Parse, encode and check `records` (already read); bad ones go to the report.
pub fn prepare(
    parsed: Vec<Result<Record, RecordError>>,
    encoder: &Encoder,
    image_folder: &Path,
    check: ImageCheck,
) -> (Vec<Sample>, LoadReport) {
    let mut report = LoadReport {
        records: parsed.len(),
        ..LoadReport::default()
    };
    let mut samples = Vec::new();
    for item in parsed {
        let record = match item {
            Ok(r) => r,
            Err(e) => {
                report.errors.push(e);
                continue;
            }
        };
        let result = encoder
            .encode(&record)
            .map_err(|p| RecordError::new(&record.id, "conversations", p))
            .and_then(|encoded| {
                let paths: Vec<PathBuf> = record
                    .image_paths(image_folder)
                    .into_iter()
                    .take(encoded.image_spans.len())
                    .collect();
                for (i, path) in paths.iter().enumerate() {
                    let field = format!("image[{i}]");
                    let problem = match check {
                        ImageCheck::None => None,
                        ImageCheck::Exists => (!path.is_file()).then(|| Problem::ImageMissing {
                            path: path.clone(),
                            message: "no such file".into(),
                        }),
                        ImageCheck::Decode => ImageProcessor::open(path).err(),
                    };
                    if let Some(p) = problem {
                        return Err(RecordError::new(&record.id, field, p));
                    }
                }
                Ok(Sample {
                    id: record.id.clone(),
                    encoded,
                    images: paths,
                })
            });
        match result {
            Ok(s) => {
                report.loaded += 1;
                report.images += s.images.len();
                report.supervised_tokens += s.encoded.supervised();
                if s.encoded.truncated {
                    report.truncated.push(s.id.clone());
                }
                samples.push(s);
            }
            Err(e) => report.errors.push(e),
        }
    }
    (samples, report)
}

/// Read and prepare a records file; returns the dataset and the report (apply
/// [`LoadReport::enforce`] for the `fail` policy).
pub fn load_dataset(
    path: &Path,
    encoder: &Encoder,
    processor: ImageProcessor,
    image_folder: &Path,
    check: ImageCheck,
) -> Result<(VlmDataset, LoadReport), DatasetError> {
    let parsed = read_records(path)?;
    let (samples, report) = prepare(parsed, encoder, image_folder, check);
    Ok((VlmDataset::new(samples, processor), report))
}

/// A sample with its images decoded and preprocessed (what the batcher takes).
#[derive(Clone, Debug)]
pub struct Item {
    /// Record id.
    pub id: String,
    /// Tokens, labels, truth.
    pub encoded: Encoded,
    /// Normalized CHW pixels of each image.
    pub pixels: Vec<Vec<f32>>,
    /// Optional per-token loss weights (e.g. a VIG selection), aligned with the tokens.
    pub weights: Option<Vec<f32>>,
}

/// Samples served with decoded images; decoding happens in `get`, i.e. in the data loader's
/// workers, off the training thread.
#[derive(Clone, Debug)]
pub struct VlmDataset {
    samples: Vec<Sample>,
    processor: ImageProcessor,
}

impl VlmDataset {
    /// Wrap prepared samples.
    pub fn new(samples: Vec<Sample>, processor: ImageProcessor) -> Self {
        Self { samples, processor }
    }

    /// The prepared samples.
    pub fn samples(&self) -> &[Sample] {
        &self.samples
    }

    /// The preprocessing.
    pub fn processor(&self) -> &ImageProcessor {
        &self.processor
    }
}

impl Dataset<Item> for VlmDataset {
    fn get(&self, index: usize) -> Result<Item, burn::data::dataset::DatasetError> {
        let s = &self.samples[index];
        // Images were checked at load time; a file that changed since is a retrieval error
        // naming the record and the image.
        let pixels = s
            .images
            .iter()
            .enumerate()
            .map(|(i, p)| {
                self.processor.load(p).map_err(|problem| {
                    burn::data::dataset::DatasetError::new(RecordError::new(
                        &s.id,
                        format!("image[{i}]"),
                        problem,
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Item {
            id: s.id.clone(),
            encoded: s.encoded.clone(),
            pixels,
            weights: None,
        })
    }

    fn len(&self) -> usize {
        self.samples.len()
    }
}

/// A subset of a dataset with per-token weights attached (a data selection such as VIG's):
/// item `i` is `inner[index[i]]` with `weights[i]` (one weight per token of its sequence).
pub struct Weighted<D> {
    inner: D,
    index: Vec<usize>,
    weights: Vec<Option<Vec<f32>>>,
}

impl<D: Dataset<Item>> Weighted<D> {
    /// Keep the items `index` of `inner`, with `weights` (same length as `index`).
    pub fn new(inner: D, index: Vec<usize>, weights: Vec<Option<Vec<f32>>>) -> Self {
        assert_eq!(
            index.len(),
            weights.len(),
            "one weight vector per kept item"
        );
        Self {
            inner,
            index,
            weights,
        }
    }
}

impl<D: Dataset<Item>> Dataset<Item> for Weighted<D> {
    fn get(&self, index: usize) -> Result<Item, burn::data::dataset::DatasetError> {
        let mut item = self.inner.get(self.index[index])?;
        if let Some(w) = &self.weights[index] {
            item.weights = Some(w.clone());
        }
        Ok(item)
    }

    fn len(&self) -> usize {
        self.index.len()
    }
}
