//! Step-level checkpoints. burn-train checkpoints once per epoch; we keep its
//! `LearningCheckpointer` (model, optimizer and scheduler records) but call it every N optimizer
//! steps from our training strategy, with a checkpointer that writes atomically, and we commit
//! each checkpoint with a manifest (`step-N.json`) written after its three files: the data
//! position, and the size and hash of every file, so a truncated or half-written checkpoint is
//! detected on resume and the previous one is used.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use burn::tensor::Bytes;
use burn::train::checkpoint::{
    Checkpoint, Checkpointer, CheckpointerError, CheckpointingAction, CheckpointingStrategy,
};
use burn::train::metric::store::EventStoreClient;
use serde::{Deserialize, Serialize};

use crate::TrainError;

/// The three record files of a checkpoint.
pub const RECORDS: [&str; 3] = ["model", "optim", "scheduler"];

/// Writes `{name}-{step}.bpk` through a temporary file and a rename, so a file either is
/// complete or does not exist under its final name.
#[derive(Clone, Debug)]
pub struct AtomicFileCheckpointer {
    dir: PathBuf,
    name: &'static str,
}

impl AtomicFileCheckpointer {
    /// A checkpointer for record `name` in `dir`.
    pub fn new(dir: &Path, name: &'static str) -> Self {
        Self {
            dir: dir.to_path_buf(),
            name,
        }
    }
}

/// Path of record `name` of step `step`.
pub fn record_path(dir: &Path, name: &str, step: usize) -> PathBuf {
    dir.join(format!("{name}-{step}.bpk"))
}

/// Write `bytes` to `path` atomically (temporary file, fsync, rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)
}

impl<R: Checkpoint> Checkpointer<R> for AtomicFileCheckpointer {
    fn save(&self, step: usize, record: R) -> Result<(), CheckpointerError> {
        let bytes = record
            .checkpoint_into_bytes()
            .map_err(CheckpointerError::Record)?;
        write_atomic(&record_path(&self.dir, self.name, step), &bytes)
            .map_err(CheckpointerError::IOError)
    }

    fn restore(&self, step: usize) -> Result<R, CheckpointerError> {
        let bytes = fs::read(record_path(&self.dir, self.name, step))
            .map_err(CheckpointerError::IOError)?;
        R::checkpoint_from_bytes(Bytes::from_bytes_vec(bytes)).map_err(CheckpointerError::Record)
    }

    fn delete(&self, step: usize) -> Result<(), CheckpointerError> {
        let path = record_path(&self.dir, self.name, step);
        if path.exists() {
            fs::remove_file(path).map_err(CheckpointerError::IOError)?;
        }
        Ok(())
    }
}

/// Save at every call (our strategy calls at the steps it wants), then a no-op delete: the
/// checkpointer threads take messages one at a time through a rendezvous channel, so once the
/// delete is handed over the save before it has finished, and the manifest can be written.
/// Old checkpoints are removed by [`prune`], manifest first.
#[derive(Clone, Copy, Debug, Default)]
pub struct SaveAndSync;

/// The step number of the no-op delete (no checkpoint has it).
const SYNC_STEP: usize = usize::MAX;

impl CheckpointingStrategy for SaveAndSync {
    fn checkpointing(&mut self, _step: usize, _: &EventStoreClient) -> Vec<CheckpointingAction> {
        vec![
            CheckpointingAction::Save,
            CheckpointingAction::Delete(SYNC_STEP),
        ]
    }
}

/// One record file as committed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// File name inside the checkpoint directory.
    pub name: String,
    /// Size in bytes.
    pub bytes: u64,
    /// FNV-1a 64 of the content, hex.
    pub fnv64: String,
}

/// A committed checkpoint: written after its record files, so it exists only for complete
/// checkpoints (and its sizes and hashes catch later damage).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Optimizer steps done.
    pub step: usize,
    /// Dataset items consumed from the training stream (the data position).
    pub items_consumed: usize,
    /// The record files.
    pub files: Vec<FileEntry>,
}

/// FNV-1a, 64 bit.
pub fn fnv64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Path of the manifest of step `step`.
pub fn manifest_path(dir: &Path, step: usize) -> PathBuf {
    dir.join(format!("step-{step}.json"))
}

impl Manifest {
    /// Describe the record files of `step` as they are on disk now.
    pub fn describe(dir: &Path, step: usize, items_consumed: usize) -> Result<Self, TrainError> {
        let files = RECORDS
            .iter()
            .map(|name| {
                let path = record_path(dir, name, step);
                let bytes = fs::read(&path).map_err(|e| TrainError::io(&path, e))?;
                Ok(FileEntry {
                    name: file_name(&path),
                    bytes: bytes.len() as u64,
                    fnv64: format!("{:016x}", fnv64(&bytes)),
                })
            })
            .collect::<Result<Vec<_>, TrainError>>()?;
        Ok(Self {
            step,
            items_consumed,
            files,
        })
    }

    /// Commit: write the manifest atomically.
    pub fn commit(&self, dir: &Path) -> Result<(), TrainError> {
        let path = manifest_path(dir, self.step);
        let json = serde_json::to_vec_pretty(self).expect("manifest serializes");
        write_atomic(&path, &json).map_err(|e| TrainError::io(&path, e))
    }

    /// Check every file against the manifest; the problem, if any, in words.
    pub fn verify(&self, dir: &Path) -> Result<(), String> {
        for f in &self.files {
            let path = dir.join(&f.name);
            let bytes = fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            if bytes.len() as u64 != f.bytes {
                return Err(format!(
                    "{} has {} bytes, {} were written{}",
                    path.display(),
                    bytes.len(),
                    f.bytes,
                    if (bytes.len() as u64) < f.bytes {
                        " (truncated)"
                    } else {
                        ""
                    }
                ));
            }
            if format!("{:016x}", fnv64(&bytes)) != f.fnv64 {
                return Err(format!(
                    "{} does not match its recorded hash (corrupted)",
                    path.display()
                ));
            }
        }
        Ok(())
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The committed checkpoints in `dir`, newest first (unreadable manifests are reported).
pub fn manifests(dir: &Path) -> (Vec<Manifest>, Vec<String>) {
    let mut found = Vec::new();
    let mut problems = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return (found, problems);
    };
    for entry in entries.flatten() {
        let name = file_name(&entry.path());
        if !(name.starts_with("step-") && name.ends_with(".json")) {
            continue;
        }
        match fs::read(entry.path())
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice::<Manifest>(&b).map_err(|e| e.to_string()))
        {
            Ok(m) => found.push(m),
            Err(e) => problems.push(format!(
                "{}: unreadable manifest: {e}",
                entry.path().display()
            )),
        }
    }
    found.sort_by_key(|m| std::cmp::Reverse(m.step));
    (found, problems)
}

/// The newest checkpoint whose files verify, and the problems met on the way (newer
/// checkpoints that are damaged). `Err` when checkpoints exist but none verifies.
pub fn latest_valid(dir: &Path) -> Result<(Option<Manifest>, Vec<String>), TrainError> {
    let (found, mut problems) = manifests(dir);
    let any = !found.is_empty();
    for m in found {
        match m.verify(dir) {
            Ok(()) => return Ok((Some(m), problems)),
            Err(e) => problems.push(format!("checkpoint at step {} is damaged: {e}", m.step)),
        }
    }
    if any || !problems.is_empty() {
        return Err(TrainError::NoValidCheckpoint {
            dir: dir.to_path_buf(),
            problems,
        });
    }
    Ok((None, problems))
}

/// Remove manifests (and their files) other than the newest `keep` committed ones.
pub fn prune(dir: &Path, keep: usize) {
    let (found, _) = manifests(dir);
    for m in found.into_iter().skip(keep.max(1)) {
        // Manifest first: a crash in between leaves stray files, never a manifest without them.
        let _ = fs::remove_file(manifest_path(dir, m.step));
        for f in &m.files {
            let _ = fs::remove_file(dir.join(&f.name));
        }
    }
}
