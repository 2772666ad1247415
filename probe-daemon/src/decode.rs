//! Kernel records to values: ring-buffer events (exec, exit, OOM kill, Go GC and pauses, TLS
//! handshakes) decoded from their bytes, and the per-CPU counters summed over CPUs
//! ([`KernelSnapshot`]). Pure: the collector reads the maps, the aggregate applies what this gives.
use probe_common::{EventHeader, EventKind, ExecEvent, ExitEvent, FailureKey, GoCrashEvent, GoGcEvent, GoStwEvent, Http2Event, LibsslHeldEvent, OomEvent, ProcCounters, ProgId, ProgStats, TlsEvent};

/// Kernel counters read in one pass over the maps, summed over CPUs.
#[derive(Debug, Clone, Default)]
pub struct KernelSnapshot {
    pub procs: Vec<(u32, ProcCounters)>,
    pub failures: Vec<(FailureKey, u64)>,
    pub prog_stats: Vec<(ProgId, ProgStats)>,
}

/// A NUL-terminated C string from a fixed-size kernel buffer (lossy UTF-8).
pub fn cstr(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// A decoded ring-buffer event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// `cgroup_id`: the cgroup v2 id at exec (0 when unknown); `cgroup1_id`: the kernfs id of its
    /// cgroup in the cgroup v1 hierarchy the daemon chose (0: none).
    Exec { tgid: u32, comm: String, filename: String, cgroup_id: u64, cgroup1_id: u64 },
    Exit { tgid: u32, comm: String, exit_code: u32 },
    OomVictim { tgid: u32 },
    GoGc { tgid: u32, duration_ns: u64 },
    GoStw { tgid: u32, duration_ns: u64, reason: u32 },
    /// A TLS handshake finished (Go or OpenSSL).
    Tls(TlsEvent),
    /// A Go process reached a crash path (panic, fatal error, os.Exit with a code).
    GoCrash(Box<GoCrashEvent>),
    /// A Go process wrote or read an HTTP/2 GOAWAY or RST_STREAM frame.
    Http2(Http2Event),
    /// A process mapped a libssl file the kernel did not know and was stopped until it is probed.
    LibsslHeld(LibsslHeldEvent),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("ring-buffer record of {0} bytes is shorter than its header")]
    Short(usize),
    #[error("ring-buffer record kind {kind} needs {need} bytes, got {got}")]
    Truncated { kind: u32, need: usize, got: usize },
    #[error("unknown ring-buffer record kind {0}")]
    UnknownKind(u32),
}

/// Reads a `T` from the start of `bytes` (unaligned), if long enough.
fn read<T: Copy>(bytes: &[u8], kind: u32) -> Result<T, DecodeError> {
    let need = std::mem::size_of::<T>();
    if bytes.len() < need {
        return Err(DecodeError::Truncated { kind, need, got: bytes.len() });
    }
    // SAFETY: length checked; T is a repr(C) plain-data type from probe-common (any bit pattern
    // is valid); read_unaligned copes with the ring buffer's 8-byte alignment.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr() as *const T) })
}

/// Decodes one ring-buffer record.
pub fn decode(bytes: &[u8]) -> Result<Event, DecodeError> {
    if bytes.len() < std::mem::size_of::<EventHeader>() {
        return Err(DecodeError::Short(bytes.len()));
    }
    let header: EventHeader = read(bytes, 0)?;
    match header.kind {
        k if k == EventKind::Exec as u32 => {
            let e: ExecEvent = read(bytes, k)?;
            let len = (e.filename_len as usize).min(e.filename.len());
            Ok(Event::Exec { tgid: e.header.tgid, comm: cstr(&e.comm), filename: cstr(&e.filename[..len]), cgroup_id: e.cgroup_id, cgroup1_id: e.cgroup1_id })
        }
        k if k == EventKind::Exit as u32 => {
            let e: ExitEvent = read(bytes, k)?;
            Ok(Event::Exit { tgid: e.header.tgid, comm: cstr(&e.comm), exit_code: e.exit_code })
        }
        k if k == EventKind::OomVictim as u32 => {
            let e: OomEvent = read(bytes, k)?;
            Ok(Event::OomVictim { tgid: e.victim })
        }
        k if k == EventKind::GoGc as u32 => {
            let e: GoGcEvent = read(bytes, k)?;
            Ok(Event::GoGc { tgid: e.header.tgid, duration_ns: e.duration_ns })
        }
        k if k == EventKind::GoStw as u32 => {
            let e: GoStwEvent = read(bytes, k)?;
            Ok(Event::GoStw { tgid: e.header.tgid, duration_ns: e.duration_ns, reason: e.reason })
        }
        k if k == EventKind::Tls as u32 => Ok(Event::Tls(read(bytes, k)?)),
        k if k == EventKind::GoCrash as u32 => Ok(Event::GoCrash(Box::new(read(bytes, k)?))),
        k if k == EventKind::Http2 as u32 => Ok(Event::Http2(read(bytes, k)?)),
        k if k == EventKind::LibsslHeld as u32 => Ok(Event::LibsslHeld(read(bytes, k)?)),
        k => Err(DecodeError::UnknownKind(k)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use probe_common::{COMM_LEN, FILENAME_LEN};

    fn bytes_of<T>(v: &T) -> Vec<u8> {
        // SAFETY: test-only view of a plain-data struct.
        unsafe { std::slice::from_raw_parts(v as *const T as *const u8, std::mem::size_of::<T>()) }.to_vec()
    }

    fn name<const N: usize>(s: &str) -> [u8; N] {
        let mut a = [0u8; N];
        a[..s.len()].copy_from_slice(s.as_bytes());
        a
    }

    #[test]
    fn decodes_each_kind() {
        let exit = ExitEvent {
            header: EventHeader { kind: EventKind::Exit as u32, tgid: 42, ktime_ns: 1 },
            pid: 43,
            exit_code: 3 << 8,
            comm: name::<COMM_LEN>("worker"),
        };
        assert_eq!(decode(&bytes_of(&exit)), Ok(Event::Exit { tgid: 42, comm: "worker".into(), exit_code: 768 }));

        let exec = ExecEvent {
            header: EventHeader { kind: EventKind::Exec as u32, tgid: 7, ktime_ns: 1 },
            ppid: 0,
            filename_len: 8,
            cgroup_id: 4242,
            cgroup1_id: 77,
            comm: name::<COMM_LEN>("ls"),
            filename: name::<FILENAME_LEN>("/bin/ls\0"),
        };
        assert_eq!(decode(&bytes_of(&exec)), Ok(Event::Exec { tgid: 7, comm: "ls".into(), filename: "/bin/ls".into(), cgroup_id: 4242, cgroup1_id: 77 }));

        let h2 = Http2Event {
            header: EventHeader { kind: EventKind::Http2 as u32, tgid: 11, ktime_ns: 1 },
            code: 8,
            stream_id: 3,
            frame: probe_common::HTTP2_FRAME_RST_STREAM,
            direction: probe_common::HTTP2_SENT,
            debug_copied: 0,
            debug_len: 0,
            debug: [0; probe_common::HTTP2_DEBUG_LEN],
        };
        assert_eq!(decode(&bytes_of(&h2)), Ok(Event::Http2(h2)));
        assert!(matches!(decode(&bytes_of(&h2)[..40]), Err(DecodeError::Truncated { kind: 8, .. })));

        let held = LibsslHeldEvent {
            header: EventHeader { kind: EventKind::LibsslHeld as u32, tgid: 12, ktime_ns: 1 },
            tid: 13,
            stopped: 1,
            file: probe_common::LibsslFileKey { dev: 0x80_0001, _pad: 0, ino: 4711 },
        };
        assert_eq!(decode(&bytes_of(&held)), Ok(Event::LibsslHeld(held)));
        assert!(matches!(decode(&bytes_of(&held)[..32]), Err(DecodeError::Truncated { kind: 9, .. })));

        let oom = OomEvent { header: EventHeader { kind: EventKind::OomVictim as u32, tgid: 9, ktime_ns: 1 }, victim: 9, _pad: 0 };
        assert_eq!(decode(&bytes_of(&oom)), Ok(Event::OomVictim { tgid: 9 }));
    }

    #[test]
    fn malformed_records_are_errors_not_panics() {
        assert_eq!(decode(&[1, 2, 3]), Err(DecodeError::Short(3)));
        let h = EventHeader { kind: EventKind::Exec as u32, tgid: 1, ktime_ns: 0 };
        assert!(matches!(decode(&bytes_of(&h)), Err(DecodeError::Truncated { .. })));
        let h = EventHeader { kind: 99, tgid: 1, ktime_ns: 0 };
        assert_eq!(decode(&bytes_of(&h)), Err(DecodeError::UnknownKind(99)));
        // Oversized filename length is clamped.
        let mut exec = ExecEvent {
            header: EventHeader { kind: EventKind::Exec as u32, tgid: 7, ktime_ns: 1 },
            ppid: 0,
            filename_len: 100_000,
            cgroup_id: 0,
            cgroup1_id: 0,
            comm: [0; COMM_LEN],
            filename: [b'a'; FILENAME_LEN],
        };
        exec.comm[0] = b'x';
        assert!(matches!(decode(&bytes_of(&exec)), Ok(Event::Exec { .. })));
    }
}
