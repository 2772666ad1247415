//! What evidence a snapshot holds. A leaf: health rules name the kinds they want, the snapshotter
//! takes them, the API parses them.
use serde::{Deserialize, Serialize};

/// The profiles a snapshot can hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Heap,
    Goroutine,
}

impl Kind {
    pub const ALL: [Kind; 2] = [Kind::Heap, Kind::Goroutine];
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Heap => "heap",
            Kind::Goroutine => "goroutine",
        }
    }
    pub fn parse(s: &str) -> Option<Kind> {
        match s {
            "heap" => Some(Kind::Heap),
            "goroutine" => Some(Kind::Goroutine),
            _ => None,
        }
    }
}


/// How a Go process died, as a crash capsule and `chainprobe_go_crashes_total{kind}` name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CrashKind {
    /// An unrecovered panic (runtime errors included: nil map write, nil dereference, index).
    Panic,
    /// A fatal error (`fatal error: …`: concurrent map writes, out of memory, stack overflow,
    /// deadlock): runtime.throw / runtime.fatal.
    FatalError,
    /// `os.Exit` with a non-zero code (log.Fatal).
    Exit,
    /// Killed by a signal that means a crash (SIGSEGV, SIGBUS, SIGABRT, SIGILL, SIGFPE, SIGTRAP).
    Signal,
    /// Killed by the OOM killer.
    OomKill,
}

impl CrashKind {
    pub const ALL: [CrashKind; 5] = [CrashKind::Panic, CrashKind::FatalError, CrashKind::Exit, CrashKind::Signal, CrashKind::OomKill];

    pub fn as_str(self) -> &'static str {
        match self {
            CrashKind::Panic => "panic",
            CrashKind::FatalError => "fatal_error",
            CrashKind::Exit => "exit",
            CrashKind::Signal => "signal",
            CrashKind::OomKill => "oom_kill",
        }
    }

    /// The kind of a kernel crash event (`probe_common::CRASH_*`).
    pub fn of_event(kind: u32) -> Option<CrashKind> {
        match kind {
            probe_common::CRASH_PANIC => Some(CrashKind::Panic),
            probe_common::CRASH_THROW | probe_common::CRASH_FATAL => Some(CrashKind::FatalError),
            probe_common::CRASH_EXIT => Some(CrashKind::Exit),
            _ => None,
        }
    }

    /// Signals whose default action is a core dump: a crash, not a stop request.
    pub fn crash_signal(sig: &str) -> bool {
        matches!(sig, "SIGSEGV" | "SIGBUS" | "SIGABRT" | "SIGILL" | "SIGFPE" | "SIGTRAP" | "SIGSYS")
    }
}
