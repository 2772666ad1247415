//! Error type of the Go binary inspector.

use std::path::PathBuf;

/// Everything that can go wrong while inspecting a binary. Messages say what failed and what to do.
#[derive(Debug, thiserror::Error)]
pub enum GoInspectError {
    #[error("cannot read {path}: {source} (check the path exists, is a regular file and is readable by this user)")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path} is not a regular file (give the path of an executable, not a directory or device)"
    )]
    NotAFile { path: PathBuf },
    #[error("{path} is empty (0 bytes): not an executable")]
    Empty { path: PathBuf },
    #[error(
        "{path} is not a valid ELF file ({reason}); only Linux ELF executables can be inspected"
    )]
    NotElf { path: PathBuf, reason: String },
    #[error("{path}: unsupported ELF ({reason}); chainprobe supports 64-bit little-endian x86-64 and arm64 executables")]
    UnsupportedElf { path: PathBuf, reason: String },
    #[error("{path} is not a Go binary: no .go.buildinfo section or build-info header and no Go pclntab found")]
    NotGo { path: PathBuf },
    #[error("{path}: malformed or truncated Go {what}: {reason} (the file may be truncated, corrupted or still being written)")]
    Malformed {
        path: PathBuf,
        what: &'static str,
        reason: String,
    },
    #[error("{path}: Go version {version} on {arch} is not supported: {reason}")]
    UnsupportedGoVersion {
        path: PathBuf,
        version: String,
        arch: String,
        reason: String,
    },
    #[error("process {pid}: {reason} (is the process running, and does chainprobe have CAP_SYS_PTRACE / run as root?)")]
    Process { pid: u32, reason: String },
}

impl GoInspectError {
    pub(crate) fn malformed(
        path: &std::path::Path,
        what: &'static str,
        reason: impl Into<String>,
    ) -> Self {
        GoInspectError::Malformed {
            path: path.to_path_buf(),
            what,
            reason: reason.into(),
        }
    }
}
