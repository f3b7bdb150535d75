//! JSON state files, written atomically.

use std::fs;
use std::path::Path;

use crate::AlertError;

pub(crate) fn write_atomic(path: &Path, data: &[u8]) -> Result<(), AlertError> {
    tenantflow_core::fsutil::write_atomic(path, &[data]).map_err(|e| AlertError::io(path, e))
}

/// Reads a JSON file; `Ok(None)` when it does not exist.
pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>, AlertError> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|source| AlertError::Json { path: path.into(), source }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(AlertError::io(path, e)),
    }
}

pub(crate) fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<(), AlertError> {
    let bytes = serde_json::to_vec_pretty(value).map_err(|source| AlertError::Json { path: path.into(), source })?;
    write_atomic(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_leaves_no_temporary() {
        let dir = std::env::temp_dir().join(format!("tf-alerts-fsutil-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("dir");
        let p = dir.join("x.json");
        write_json(&p, &vec![1, 2]).expect("write");
        write_json(&p, &vec![3]).expect("rewrite");
        assert_eq!(read_json::<Vec<i32>>(&p).expect("read"), Some(vec![3]));
        assert_eq!(read_json::<Vec<i32>>(&dir.join("missing.json")).expect("missing"), None);
        let names: Vec<_> = fs::read_dir(&dir).expect("ls").filter_map(|e| e.ok()).map(|e| e.file_name()).collect();
        assert_eq!(names.len(), 1, "{names:?}");
        fs::remove_dir_all(&dir).expect("cleanup");
    }
}
