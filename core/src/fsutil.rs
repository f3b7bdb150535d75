//! Durable file replacement, shared by everything that keeps state in files (checkpoints, the
//! alert manager, the model registry).

use std::fs;
use std::io::Write;
use std::path::Path;

/// Writes the concatenation of `pieces` to `path` atomically: a temporary file beside it, fsync,
/// rename, fsync of the directory (the rename is durable only once the directory is). The
/// temporary file is removed on failure.
pub fn write_atomic(path: &Path, pieces: &[&[u8]]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    fs::create_dir_all(dir)?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp"));
    let result = (|| {
        let mut f = fs::File::create(&tmp)?;
        for piece in pieces {
            f.write_all(piece)?;
        }
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)?;
        if let Ok(d) = fs::File::open(dir) {
            d.sync_all()?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}
