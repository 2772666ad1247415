//! Snapshot storage: one directory, files written whole or not at all (temporary file, fsync,
//! rename), the summary written last (a snapshot exists once its summary does), retention by count
//! and bytes, and an index rebuilt from the summaries when the daemon starts.
use std::{
    collections::BTreeMap,
    io::Write,
    path::{Path, PathBuf},
};

use tracing::{info, warn};

use super::SnapshotMeta;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("snapshot directory {dir}: {source} (set [snapshot] dir to a writable directory)")]
    Dir { dir: PathBuf, source: std::io::Error },
    #[error("cannot write snapshot file {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

/// Suffix of summary files; data files are `<stem>.<kind>.pb.gz`.
pub const SUMMARY_SUFFIX: &str = ".summary.json";
const TMP_PREFIX: &str = ".tmp-";

#[derive(Debug, Clone)]
struct Entry {
    meta: SnapshotMeta,
    /// Every file of the snapshot (data files and the summary) with its size.
    files: Vec<(String, u64)>,
}

pub struct Store {
    dir: PathBuf,
    max_count: usize,
    max_bytes: u64,
    /// By (created time in ms, id): oldest first.
    index: BTreeMap<(u64, String), Entry>,
}

/// Characters allowed in a file name part; anything else becomes '-'.
pub fn sanitize(s: &str) -> String {
    let out: String = s
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' { c } else { '-' })
        .take(100)
        .collect();
    let out = out.trim_start_matches('.').to_string();
    if out.is_empty() {
        "unknown".into()
    } else {
        out
    }
}

impl Store {
    /// Opens (creating) `dir`: removes leftover temporary files and data files whose summary was
    /// never written (a crash mid-snapshot), and indexes the rest.
    pub fn open(dir: &Path, max_count: usize, max_bytes: u64) -> Result<Store, StoreError> {
        let derr = |source| StoreError::Dir { dir: dir.to_path_buf(), source };
        std::fs::create_dir_all(dir).map_err(derr)?;
        let mut names: Vec<(String, u64)> = Vec::new();
        for e in std::fs::read_dir(dir).map_err(derr)?.flatten() {
            let Ok(name) = e.file_name().into_string() else { continue };
            let Ok(md) = e.metadata() else { continue };
            if !md.is_file() {
                continue;
            }
            if name.starts_with(TMP_PREFIX) {
                let _ = std::fs::remove_file(e.path());
                continue;
            }
            names.push((name, md.len()));
        }
        let mut store = Store { dir: dir.to_path_buf(), max_count: max_count.max(1), max_bytes, index: BTreeMap::new() };
        let mut claimed = std::collections::HashSet::new();
        for (name, size) in &names {
            let Some(stem) = name.strip_suffix(SUMMARY_SUFFIX) else { continue };
            let meta: SnapshotMeta = match std::fs::read(dir.join(name)).ok().and_then(|b| serde_json::from_slice(&b).ok()) {
                Some(m) => m,
                None => {
                    warn!(file = %name, "unreadable snapshot summary: left alone, not indexed");
                    claimed.insert(name.clone());
                    continue;
                }
            };
            let mut files = vec![(name.clone(), *size)];
            for (n, s) in &names {
                if n != name && n.starts_with(&format!("{stem}.")) && meta.files.values().any(|f| &f.file == n) {
                    files.push((n.clone(), *s));
                }
            }
            claimed.extend(files.iter().map(|f| f.0.clone()));
            store.index.insert((meta.created_ms, meta.id.clone()), Entry { meta, files });
        }
        for (name, _) in names.iter().filter(|(n, _)| !claimed.contains(n) && n.ends_with(".pb.gz")) {
            info!(file = %name, "removing a snapshot file without summary (interrupted snapshot)");
            let _ = std::fs::remove_file(dir.join(name));
        }
        store.enforce_retention();
        info!(dir = %dir.display(), snapshots = store.index.len(), bytes = store.bytes(), "snapshot store opened");
        Ok(store)
    }

    pub fn bytes(&self) -> u64 {
        self.index.values().flat_map(|e| e.files.iter().map(|f| f.1)).sum()
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Writes `data` as `name` atomically; returns its size.
    pub fn write_file(&self, name: &str, data: &[u8]) -> Result<u64, StoreError> {
        let path = self.dir.join(name);
        let tmp = self.dir.join(format!("{TMP_PREFIX}{}-{name}", super::random_id()));
        let werr = |source| StoreError::Write { path: path.clone(), source };
        let res = (|| {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(data)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)
        })();
        if let Err(e) = res {
            let _ = std::fs::remove_file(&tmp);
            return Err(werr(e));
        }
        Ok(data.len() as u64)
    }

    /// Records a finished snapshot: writes its summary (last, atomically) and applies retention.
    pub fn commit(&mut self, stem: &str, meta: &SnapshotMeta) -> Result<(), StoreError> {
        let name = format!("{stem}{SUMMARY_SUFFIX}");
        let json = serde_json::to_vec_pretty(meta).unwrap_or_default();
        let size = self.write_file(&name, &json)?;
        let mut files: Vec<(String, u64)> = meta.files.values().map(|f| (f.file.clone(), f.bytes)).collect();
        files.push((name, size));
        self.index.insert((meta.created_ms, meta.id.clone()), Entry { meta: meta.clone(), files });
        self.enforce_retention();
        Ok(())
    }

    /// Rewrites the summary of stored snapshot `id` after `f` changed it (files stay as they are).
    pub fn update(&mut self, id: &str, f: impl FnOnce(&mut SnapshotMeta)) -> Result<bool, StoreError> {
        let Some(e) = self.index.values_mut().find(|e| e.meta.id == id) else { return Ok(false) };
        let Some(name) = e.files.iter().map(|f| f.0.clone()).find(|n| n.ends_with(SUMMARY_SUFFIX)) else { return Ok(false) };
        let mut meta = e.meta.clone();
        f(&mut meta);
        let json = serde_json::to_vec_pretty(&meta).unwrap_or_default();
        let size = self.write_file(&name, &json)?;
        let Some(e) = self.index.values_mut().find(|e| e.meta.id == id) else { return Ok(false) };
        e.meta = meta;
        if let Some(f) = e.files.iter_mut().find(|f| f.0 == name) {
            f.1 = size;
        }
        Ok(true)
    }

    /// Deletes the oldest snapshots until both limits hold (the newest is always kept).
    fn enforce_retention(&mut self) {
        while self.index.len() > 1 && (self.index.len() > self.max_count || self.bytes() > self.max_bytes) {
            let Some((_, e)) = self.index.pop_first() else { break };
            info!(id = %e.meta.id, "snapshot removed by retention");
            for (f, _) in &e.files {
                let _ = std::fs::remove_file(self.dir.join(f));
            }
        }
    }

    /// Every stored snapshot, newest first.
    pub fn list(&self) -> Vec<SnapshotMeta> {
        self.index.values().rev().map(|e| e.meta.clone()).collect()
    }

    pub fn get(&self, id: &str) -> Option<&SnapshotMeta> {
        self.index.values().find(|e| e.meta.id == id).map(|e| &e.meta)
    }

    /// Path of a stored file of snapshot `id` (kind "heap", "goroutine" or "summary").
    pub fn file(&self, id: &str, kind: &str) -> Option<PathBuf> {
        let e = self.index.values().find(|e| e.meta.id == id)?;
        let name = if kind == "summary" {
            e.files.iter().find(|f| f.0.ends_with(SUMMARY_SUFFIX))?.0.clone()
        } else {
            e.meta.files.get(kind)?.file.clone()
        };
        Some(self.dir.join(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::{FileInfo, SnapshotMeta, Status};

    fn meta(id: &str, ms: u64, files: &[(&str, &str)]) -> SnapshotMeta {
        SnapshotMeta {
            id: id.into(),
            created_ms: ms,
            status: Status::Done,
            files: files
                .iter()
                .map(|(k, f)| (k.to_string(), FileInfo { file: f.to_string(), bytes: 0, source: "test".into() }))
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn atomic_files_retention_and_reindex() {
        let dir = std::env::temp_dir().join(format!("chainprobe-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut s = Store::open(&dir, 2, 1 << 30).unwrap();
        for i in 0..3u64 {
            let stem = format!("app_{i}_10");
            let f = format!("{stem}.goroutine.pb.gz");
            s.write_file(&f, b"data").unwrap();
            let mut m = meta(&format!("{i:016x}"), 1000 + i, &[("goroutine", &f)]);
            m.files.get_mut("goroutine").unwrap().bytes = 4;
            s.commit(&stem, &m).unwrap();
        }
        // Count retention: the oldest went, with its files.
        assert_eq!(s.len(), 2);
        assert!(!dir.join("app_0_10.goroutine.pb.gz").exists());
        assert!(!dir.join("app_0_10.summary.json").exists());
        assert_eq!(s.list()[0].id, format!("{:016x}", 2));
        // Leftovers of an interrupted snapshot: a temp file and a data file without summary.
        std::fs::write(dir.join(".tmp-abc-x.pb.gz"), b"part").unwrap();
        std::fs::write(dir.join("app_9_10.heap.pb.gz"), b"orphan").unwrap();
        let s2 = Store::open(&dir, 2, 1 << 30).unwrap();
        assert_eq!(s2.len(), 2, "index rebuilt from summaries");
        assert!(s2.file(&format!("{:016x}", 1), "goroutine").unwrap().exists());
        assert!(s2.file(&format!("{:016x}", 1), "summary").unwrap().exists());
        assert!(!dir.join(".tmp-abc-x.pb.gz").exists());
        assert!(!dir.join("app_9_10.heap.pb.gz").exists());
        // Byte retention.
        let s3 = Store::open(&dir, 10, 1).unwrap();
        assert_eq!(s3.len(), 1, "the newest is always kept");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn names_are_sanitized() {
        assert_eq!(sanitize("../etc/passwd"), "-etc-passwd");
        assert_eq!(sanitize("my pod"), "my-pod");
        assert_eq!(sanitize(""), "unknown");
    }
}
