//! The one lock helper: a poisoned mutex (a panic while it was held) still gives its data. The
//! state behind chainprobe's few mutexes (attached probes, snapshot bookkeeping, the series
//! limiter) stays consistent enough to keep serving, which beats a daemon that stops reporting.
use std::sync::{Mutex, MutexGuard};

pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
