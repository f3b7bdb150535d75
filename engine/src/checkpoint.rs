//! Checkpoint files: one directory per checkpoint (`epoch-000042/`), holding a part file per
//! operator instance and, once every part is written, `MANIFEST.json`, which commits it.
//!
//! Every file is written to a temporary name, fsynced and renamed, so a crash leaves either the
//! old state or the new one. Part files carry a header (magic, format version, length, CRC-32)
//! so a truncated or corrupted part is detected on restore, which then falls back to the
//! previous complete checkpoint. With a key in `TENANTFLOW_CHECKPOINT_KEY` parts are encrypted
//! with AES-256-GCM (random 96-bit nonce per part).

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Version of the state layout inside part files; a restore refuses other versions.
/// 3: bincode with variable-length integers (window state a third smaller than version 2's).
/// 4: the sink part holds the alert rules' state.
/// 5: a window part holds the baselines of the anomaly steps after the window; the manifest
/// records the model versions of score steps.
pub const FORMAT_VERSION: u32 = 6;
const MAGIC: &[u8; 4] = b"TFCK";
const MAGIC_ENCRYPTED: &[u8; 4] = b"TFCE";
/// Environment variable holding the checkpoint key: 64 hex digits (256 bits).
pub const KEY_VAR: &str = "TENANTFLOW_CHECKPOINT_KEY";

/// AES-256-GCM for part files.
#[derive(Clone)]
pub struct Crypto(aes_gcm::Aes256Gcm);

impl Crypto {
    /// The key from `TENANTFLOW_CHECKPOINT_KEY`, if set.
    pub fn from_env() -> Result<Option<Crypto>, CheckpointError> {
        let Ok(hex) = std::env::var(KEY_VAR) else { return Ok(None) };
        let bad = || CheckpointError::Key(format!("{KEY_VAR} must be 64 hex digits (a 256-bit key)"));
        let hex = hex.trim();
        if hex.len() != 64 {
            return Err(bad());
        }
        let mut key = [0u8; 32];
        for (i, byte) in key.iter_mut().enumerate() {
            *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2).ok_or_else(bad)?, 16).map_err(|_| bad())?;
        }
        use aes_gcm::KeyInit;
        Ok(Some(Crypto(aes_gcm::Aes256Gcm::new(&key.into()))))
    }

    fn seal(&self, plain: &[u8]) -> std::io::Result<Vec<u8>> {
        use aes_gcm::aead::{Aead, AeadCore, OsRng};
        let nonce = aes_gcm::Aes256Gcm::generate_nonce(&mut OsRng);
        let mut out = nonce.to_vec();
        out.extend(self.0.encrypt(&nonce, plain).map_err(|_| std::io::Error::other("encryption failed"))?);
        Ok(out)
    }

    fn open(&self, sealed: &[u8]) -> Option<Vec<u8>> {
        use aes_gcm::aead::Aead;
        if sealed.len() < 12 {
            return None;
        }
        let (nonce, data) = sealed.split_at(12);
        self.0.decrypt(aes_gcm::Nonce::from_slice(nonce), data).ok()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint {path}: {message}")]
    Invalid { path: String, message: String },
    #[error("checkpoint directory {0}: {1}")]
    Io(String, std::io::Error),
    #[error("no complete checkpoint in {0}")]
    NoneFound(String),
    #[error("checkpoint key: {0}")]
    Key(String),
}

fn invalid(path: &Path, message: impl Into<String>) -> CheckpointError {
    CheckpointError::Invalid { path: path.display().to_string(), message: message.into() }
}

/// What a committed checkpoint holds.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    pub job: String,
    pub epoch: u64,
    /// Total workers of the run that took it; a restore needs the same number.
    pub workers: usize,
    /// Workers whose source had finished before this checkpoint (they wrote no part).
    pub finished_sources: Vec<u32>,
    /// Part file names in the checkpoint directory.
    pub parts: Vec<String>,
    pub created_unix_ms: i64,
    /// The ids of the job's sinks: a restore needs the same sinks (their progress is recorded
    /// by id in the sink part).
    #[serde(default)]
    pub sinks: Vec<String>,
    /// The model versions each score step (by its output prefix, `as`) uses after this
    /// checkpoint: a restore scores with them, so replayed rows get the same predictions.
    #[serde(default)]
    pub models: std::collections::BTreeMap<String, crate::scoring::Versions>,
}

/// A checkpoint directory ready to restore from.
#[derive(Clone, Debug)]
pub struct Restore {
    pub dir: PathBuf,
    pub manifest: Manifest,
}

impl Restore {
    pub fn read_part(&self, name: &str, crypto: Option<&Crypto>) -> Result<Vec<u8>, CheckpointError> {
        read_part(&self.dir.join(name), crypto)
    }
}

pub fn epoch_dir(root: &Path, epoch: u64) -> PathBuf {
    root.join(format!("epoch-{epoch:06}"))
}

/// Writes `bytes` to `path` atomically (temporary file, fsync, rename, fsync of the directory).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    tenantflow_core::fsutil::write_atomic(path, &[bytes])
}

/// Writes one operator's state into checkpoint `epoch` (encrypted when `crypto` is given).
pub fn write_part(root: &Path, epoch: u64, name: &str, payload: &[u8], crypto: Option<&Crypto>) -> std::io::Result<()> {
    let sealed;
    let payload = match crypto {
        Some(c) => {
            sealed = c.seal(payload)?;
            &sealed[..]
        }
        None => payload,
    };
    let mut header = Vec::with_capacity(20);
    header.extend_from_slice(if crypto.is_some() { MAGIC_ENCRYPTED } else { MAGIC });
    header.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    header.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    header.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    tenantflow_core::fsutil::write_atomic(&epoch_dir(root, epoch).join(name), &[&header, payload])
}

/// Operator state as part files hold it: bincode with variable-length integers.
fn state_format() -> impl bincode::Options {
    bincode::DefaultOptions::new()
}

/// Appends `value`, encoded as part files hold state, to `out`.
pub fn encode_into<T: Serialize>(out: &mut Vec<u8>, value: &T) -> std::io::Result<()> {
    bincode::Options::serialize_into(state_format(), out, value).map_err(std::io::Error::other)
}

pub fn encode<T: Serialize>(value: &T) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    encode_into(&mut out, value)?;
    Ok(out)
}

pub fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    bincode::Options::deserialize(state_format(), bytes).map_err(|e| e.to_string())
}

/// Whether every named part of checkpoint `epoch` has been written (parts appear under their
/// final name only once fsynced, by whichever process wrote them).
pub fn parts_written(root: &Path, epoch: u64, names: &[String]) -> bool {
    let dir = epoch_dir(root, epoch);
    names.iter().all(|n| dir.join(n).exists())
}

/// Parts queued on the writer before a worker that submits one more waits: bounds the memory
/// of serialized state waiting for the disk.
const QUEUED_PARTS: usize = 8;

enum WriterJob {
    Part { root: PathBuf, epoch: u64, name: String, payload: Vec<u8> },
    Flush(std::sync::mpsc::Sender<()>),
}

/// Writes part files on a thread of their own, so that writing and fsyncing a large state does
/// not stall the worker that serialized it (asynchronous snapshots, as Flink's). Correctness
/// does not depend on when a part lands: a checkpoint is committed only once all of its parts
/// exist ([`parts_written`]), so a crash with parts still queued leaves it uncommitted.
pub struct PartWriter {
    tx: Option<std::sync::mpsc::SyncSender<WriterJob>>,
    thread: Option<std::thread::JoinHandle<()>>,
    errors: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    /// Large buffers back from the disk, for the next snapshot: a fresh allocation of tens of
    /// megabytes is mapped anew and faults in every page again.
    buffers: std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
}

/// Buffers at least this large are kept for reuse, at most [`POOLED_BUFFERS`] of them.
const POOLED_MIN: usize = 1 << 20;
const POOLED_BUFFERS: usize = 2;

impl PartWriter {
    pub fn start(crypto: Option<Crypto>) -> std::io::Result<PartWriter> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<WriterJob>(QUEUED_PARTS);
        let errors = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let errs = std::sync::Arc::clone(&errors);
        let buffers = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let pool = std::sync::Arc::clone(&buffers);
        let thread = std::thread::Builder::new().name("checkpoint-writer".into()).spawn(move || {
            for job in rx {
                match job {
                    WriterJob::Part { root, epoch, name, mut payload } => {
                        if let Err(e) = write_part(&root, epoch, &name, &payload, crypto.as_ref()) {
                            if let Ok(mut errs) = errs.lock() {
                                errs.push(format!("checkpoint {epoch}: writing {name}: {e}"));
                            }
                        }
                        if let Ok(mut pool) = pool.lock() {
                            if payload.capacity() >= POOLED_MIN && pool.len() < POOLED_BUFFERS {
                                payload.clear();
                                pool.push(payload);
                            }
                        }
                    }
                    WriterJob::Flush(done) => {
                        let _ = done.send(());
                    }
                }
            }
        })?;
        Ok(PartWriter { tx: Some(tx), thread: Some(thread), errors, buffers })
    }

    /// An empty buffer for a part, with the capacity of an earlier large one when there is one.
    pub fn buffer(&self) -> Vec<u8> {
        self.buffers.lock().ok().and_then(|mut b| b.pop()).unwrap_or_default()
    }

    /// Queues a part (waits while [`QUEUED_PARTS`] are queued already).
    pub fn submit(&self, root: &Path, epoch: u64, name: String, payload: Vec<u8>) -> std::io::Result<()> {
        let job = WriterJob::Part { root: root.to_path_buf(), epoch, name, payload };
        let gone = || std::io::Error::other("the checkpoint writer stopped");
        self.tx.as_ref().ok_or_else(gone)?.send(job).map_err(|_| gone())
    }

    /// Waits until every part queued so far is written (or failed).
    pub fn flush(&self) {
        let (done, wait) = std::sync::mpsc::channel();
        if self.tx.as_ref().is_some_and(|tx| tx.send(WriterJob::Flush(done)).is_ok()) {
            let _ = wait.recv();
        }
    }

    /// Write failures since the last call.
    pub fn take_errors(&self) -> Vec<String> {
        self.errors.lock().map(|mut e| std::mem::take(&mut *e)).unwrap_or_default()
    }
}

impl Drop for PartWriter {
    fn drop(&mut self) {
        // Closing the channel lets the thread write what is queued and end.
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub fn read_part(path: &Path, crypto: Option<&Crypto>) -> Result<Vec<u8>, CheckpointError> {
    let bytes = fs::read(path).map_err(|e| invalid(path, format!("cannot read part: {e}")))?;
    let encrypted = bytes.get(..4) == Some(&MAGIC_ENCRYPTED[..]);
    if bytes.len() < 20 || !(encrypted || &bytes[..4] == MAGIC) {
        return Err(invalid(path, "not a tenantflow checkpoint part (bad header)"));
    }
    let version = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    if version != FORMAT_VERSION {
        return Err(invalid(path, format!("state format version {version}, this tenantflow reads {FORMAT_VERSION}")));
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(&bytes[8..16]);
    let len = u64::from_le_bytes(len) as usize;
    let crc = u32::from_le_bytes([bytes[16], bytes[17], bytes[18], bytes[19]]);
    let payload = &bytes[20..];
    if payload.len() != len {
        return Err(invalid(path, format!("truncated: {} of {len} bytes", payload.len())));
    }
    if crc32fast::hash(payload) != crc {
        return Err(invalid(path, "checksum mismatch (corrupted)"));
    }
    match (encrypted, crypto) {
        (false, _) => Ok(payload.to_vec()),
        (true, None) => Err(CheckpointError::Key(format!("{} is encrypted: set {KEY_VAR}", path.display()))),
        (true, Some(c)) => {
            c.open(payload).ok_or_else(|| CheckpointError::Key(format!("cannot decrypt {}: wrong {KEY_VAR}?", path.display())))
        }
    }
}

/// Commits checkpoint `manifest.epoch` and removes all but the newest `retain` checkpoints.
pub fn commit(root: &Path, manifest: &Manifest, retain: usize) -> std::io::Result<()> {
    let json = serde_json::to_vec_pretty(manifest).map_err(std::io::Error::other)?;
    write_atomic(&epoch_dir(root, manifest.epoch).join("MANIFEST.json"), &json)?;
    // Keep the newest `retain` committed checkpoints; drop older ones and abandoned partial
    // ones. Newer directories are checkpoints still in progress: leave them alone.
    let mut committed: Vec<u64> = list_epochs(root).into_iter().filter(|&e| e <= manifest.epoch).collect();
    committed.sort_unstable_by(|a, b| b.cmp(a));
    let mut kept = 0;
    for epoch in committed {
        let dir = epoch_dir(root, epoch);
        if kept < retain.max(1) && dir.join("MANIFEST.json").exists() {
            kept += 1;
        } else {
            let _ = fs::remove_dir_all(dir);
        }
    }
    Ok(())
}

/// Total size of a checkpoint's files, and the time since its oldest file was written (the
/// checkpoint's duration, when called right after the commit).
pub fn size_and_age(dir: &Path) -> (u64, std::time::Duration) {
    let mut bytes = 0;
    let mut oldest = std::time::SystemTime::now();
    if let Ok(entries) = fs::read_dir(dir) {
        for meta in entries.filter_map(|e| e.ok()?.metadata().ok()) {
            bytes += meta.len();
            if let Ok(m) = meta.modified() {
                oldest = oldest.min(m);
            }
        }
    }
    (bytes, oldest.elapsed().unwrap_or_default())
}

fn list_epochs(root: &Path) -> Vec<u64> {
    let Ok(entries) = fs::read_dir(root) else { return Vec::new() };
    entries.filter_map(|e| e.ok()?.file_name().to_str()?.strip_prefix("epoch-")?.parse().ok()).collect()
}

/// Checks a checkpoint directory: a readable manifest of this format, all parts intact.
pub fn open(dir: &Path, crypto: Option<&Crypto>) -> Result<Restore, CheckpointError> {
    let manifest_path = dir.join("MANIFEST.json");
    let text = fs::read(&manifest_path).map_err(|e| invalid(dir, format!("no readable MANIFEST.json ({e}): incomplete checkpoint")))?;
    let manifest: Manifest = serde_json::from_slice(&text).map_err(|e| invalid(&manifest_path, format!("bad manifest: {e}")))?;
    if manifest.format_version != FORMAT_VERSION {
        return Err(invalid(dir, format!("state format version {}, this tenantflow reads {FORMAT_VERSION}", manifest.format_version)));
    }
    for part in &manifest.parts {
        read_part(&dir.join(part), crypto)?;
    }
    Ok(Restore { dir: dir.to_path_buf(), manifest })
}

/// The newest complete and intact checkpoint under `root`; damaged newer ones are reported
/// through `warn` and skipped. `NoneFound` only when there is no checkpoint at all: when all are
/// unusable (a wrong key, say) the last reason is returned, so a job never silently starts over.
pub fn latest(root: &Path, crypto: Option<&Crypto>, mut warn: impl FnMut(&CheckpointError)) -> Result<Restore, CheckpointError> {
    let mut epochs = list_epochs(root);
    epochs.sort_unstable_by(|a, b| b.cmp(a));
    let mut last = None;
    for epoch in epochs {
        let dir = epoch_dir(root, epoch);
        if !dir.join("MANIFEST.json").exists() {
            // In progress when the job stopped: never committed, nothing to restore.
            continue;
        }
        match open(&dir, crypto) {
            Ok(r) => return Ok(r),
            Err(e) => {
                warn(&e);
                last = Some(e);
            }
        }
    }
    Err(last.unwrap_or_else(|| CheckpointError::NoneFound(root.display().to_string())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn damaged_checkpoints_fall_back_to_the_previous_one() {
        let root = std::env::temp_dir().join(format!("tenantflow-ckpt-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        for epoch in 1..=3 {
            write_part(&root, epoch, "p0", format!("state {epoch}").as_bytes(), None).expect("part");
            let m = Manifest {
                format_version: FORMAT_VERSION,
                job: "j".into(),
                epoch,
                workers: 1,
                finished_sources: vec![],
                parts: vec!["p0".into()],
                models: Default::default(),
                created_unix_ms: 0,
                sinks: vec![],
            };
            commit(&root, &m, 2).expect("commit");
        }
        assert_eq!(list_epochs(&root).len(), 2, "retention keeps the newest two");
        assert_eq!(latest(&root, None, |_| {}).expect("latest").manifest.epoch, 3);

        // Truncate the newest part: restore falls back to epoch 2 and says why.
        let part = epoch_dir(&root, 3).join("p0");
        let bytes = fs::read(&part).expect("read");
        fs::write(&part, &bytes[..bytes.len() - 2]).expect("truncate");
        let mut warnings = Vec::new();
        let r = latest(&root, None, |e| warnings.push(e.to_string())).expect("fallback");
        assert_eq!(r.manifest.epoch, 2);
        assert!(warnings[0].contains("truncated"), "{warnings:?}");
        assert_eq!(r.read_part("p0", None).expect("part"), b"state 2");

        // Corrupt a byte: checksum mismatch.
        let part = epoch_dir(&root, 2).join("p0");
        let mut bytes = fs::read(&part).expect("read");
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        fs::write(&part, bytes).expect("corrupt");
        assert!(open(&epoch_dir(&root, 2), None).expect_err("corrupt").to_string().contains("checksum"));
        // Every checkpoint is damaged: an error, not a silent fresh start.
        assert!(latest(&root, None, |_| {}).expect_err("all damaged").to_string().contains("checksum"));
        let _ = fs::remove_dir_all(&root);
        assert!(matches!(latest(&root, None, |_| {}), Err(CheckpointError::NoneFound(_))));
    }

    #[test]
    fn encrypted_parts_need_the_right_key() {
        let root = std::env::temp_dir().join(format!("tenantflow-ckpt-key-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let key = |hex: &str| {
            Crypto(
                aes_gcm::KeyInit::new_from_slice(
                    &(0..32).map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap_or(0)).collect::<Vec<_>>(),
                )
                .expect("key"),
            )
        };
        let right = key(&"ab".repeat(32));
        let wrong = key(&"cd".repeat(32));
        write_part(&root, 1, "p0", b"secret state", Some(&right)).expect("write");
        let path = epoch_dir(&root, 1).join("p0");
        assert!(!fs::read(&path).expect("read").windows(6).any(|w| w == b"secret"), "stored in the clear");
        assert_eq!(read_part(&path, Some(&right)).expect("decrypt"), b"secret state");
        assert!(read_part(&path, Some(&wrong)).expect_err("wrong key").to_string().contains("wrong TENANTFLOW_CHECKPOINT_KEY"));
        assert!(read_part(&path, None).expect_err("no key").to_string().contains("is encrypted"));
        let _ = fs::remove_dir_all(&root);
    }
}
