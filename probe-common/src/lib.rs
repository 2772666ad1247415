//! Types shared by chainprobe's kernel programs (`probe-ebpf`) and its daemon (`probe-daemon`).
//!
//! Everything here is `#[repr(C)]`, `Copy` and free of pointers so that the same bytes mean the
//! same thing on both sides of a BPF map or ring buffer. Kernel ↔ user types live only here.
#![no_std]

/// Most processes tracked at once in the per-process kernel maps.
pub const MAX_PROCS: u32 = 16_384;
/// Sockets remembered for owner attribution (LRU: the oldest idle sockets fall out first).
pub const MAX_SOCKETS: u32 = 65_536;
/// Listening sockets remembered for attributing passive opens (accepts).
pub const MAX_LISTENERS: u32 = 8_192;
/// (process, syscall, errno) failure counters.
pub const MAX_FAILURE_KEYS: u32 = 4_096;
/// Syscalls in flight between sys_enter and sys_exit (one per thread at a time).
pub const MAX_INFLIGHT: u32 = 16_384;
/// Ring buffer for rare events (exec, exit, OOM kill, Go GC/STW), bytes. Must be a power of two.
/// Producers do not wake the consumer (a wake-up costs ~10–20 µs on a VM); the daemon polls every
/// [`EVENTS_POLL_MS`], so the ring must hold that long a burst: 1 MiB ≈ 6,000 events.
pub const EVENTS_RING_BYTES: u32 = 1024 * 1024;
/// How often the daemon drains the event ring buffer, in milliseconds.
pub const EVENTS_POLL_MS: u64 = 50;
/// `bpf_ringbuf_output`/`submit` flag: do not wake the consumer.
pub const BPF_RB_NO_WAKEUP: u64 = 1;
/// Length of the executable path carried by exec events.
pub const FILENAME_LEN: usize = 128;
/// Length of a task's comm.
pub const COMM_LEN: usize = 16;

/// Index of each kernel program in the [`ProgStats`] array. The names are the `program` label of
/// chainprobe's self metrics.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgId {
    InetSockSetState = 0,
    TcpSendReset = 1,
    TcpReceiveReset = 2,
    TcpRetransmitSkb = 3,
    SysEnterMmap = 4,
    SysExitMmap = 5,
    SysEnterMunmap = 6,
    SysExitMunmap = 7,
    SysEnterBrk = 8,
    SysExitBrk = 9,
    SchedProcessExec = 10,
    SchedProcessExit = 11,
    OomMarkVictim = 12,
    GoGcStart = 13,
    GoGcDone = 14,
    /// A stop-the-world pause begins (`runtime.stopTheWorldWithSema`; program `go_stw_stop`,
    /// named after the runtime function).
    GoPauseBegin = 15,
    /// A stop-the-world pause ends (`runtime.startTheWorldWithSema`; program `go_stw_start`).
    GoPauseEnd = 16,
    GoNewproc = 17,
    GoExit = 18,
    GoTlsEnter = 19,
    GoTlsReturn = 20,
    SslHandshakeEnter = 21,
    SslHandshakeReturn = 22,
    SslFree = 23,
    MmapFexit = 24,
    MunmapFexit = 25,
    BrkFexit = 26,
    /// An unrecovered panic is about to be printed (`runtime.fatalpanic`).
    GoFatalPanic = 27,
    /// A fatal runtime error (`runtime.throw`: out of memory, stack overflow, deadlock …).
    GoThrow = 28,
    /// A fatal error of user code (`runtime.fatal`, Go 1.21+: concurrent map writes …).
    GoFatal = 29,
    /// `os.Exit` (the exit path of `log.Fatal`): counted when the code is not 0.
    GoOsExit = 30,
    /// libssl raises an error (its PLT stubs of `ERR_set_error` / `ERR_vset_error`, 1.1.1's
    /// `ERR_put_error`): the failure reason of the handshake in flight on that thread.
    SslError = 31,
    /// HTTP/2: a GOAWAY frame written (`(*Framer).WriteGoAway`).
    Http2GoAwaySent = 32,
    /// HTTP/2: a RST_STREAM frame written (`(*Framer).WriteRSTStream`).
    Http2RstSent = 33,
    /// HTTP/2: a GOAWAY frame read (`parseGoAwayFrame`, the framer's parser of that frame type).
    Http2GoAwayReceived = 34,
    /// HTTP/2: a RST_STREAM frame read (`parseRSTStreamFrame`).
    Http2RstReceived = 35,
    /// A process faults in pages of a file (`filemap:mm_filemap_map_pages`, raw): when it is a
    /// libssl not probed yet, the process is held until it is (`[tls] hold_new_libssl`).
    LibsslMapPages = 36,
    /// The same at a page-cache miss (`filemap:mm_filemap_fault`, raw).
    LibsslFault = 37,
}

/// Where in a Go function a uprobe goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GoSite {
    /// The function's entry.
    Entry,
    /// Every RET instruction (uprobes there replace a uretprobe, which would crash Go).
    Returns,
    /// The first instruction after the stack-bound check: reached once per call (a call that
    /// grows its stack runs the entry twice).
    AfterStackCheck,
}

/// Program families. Tracepoints attach at start; the Go families per Go process (GoCreation only
/// on demand); OpenSSL per libssl file; the memory fexit programs at start where the kernel allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgGroup {
    Tracepoint,
    GoRuntime,
    GoCreation,
    GoTls,
    OpenSsl,
    MemoryFexit,
    /// Crash paths of every tracked Go process (rare by nature, so always on).
    GoCrash,
    /// HTTP/2 control frames (GOAWAY, RST_STREAM) written and read by Go's HTTP/2 code: std's
    /// (bundled in net/http, or net/http/internal/http2) and golang.org/x/net/http2. Called once
    /// per control frame, never per data frame, so always on.
    GoHttp2,
    /// Page faults on files, to hold the first process of a new libssl file (raw tracepoints,
    /// attached once the system's libssl files are probed, when `[tls] hold_new_libssl`).
    LibsslHold,
}

/// BPF program types chainprobe uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgKind {
    TracePoint,
    UProbe,
    /// Only on C code (libssl): Go's movable stacks crash under uretprobes.
    URetProbe,
    FExit,
    RawTracePoint,
}

impl ProgId {
    pub const COUNT: u32 = 38;
    pub const ALL: [ProgId; Self::COUNT as usize] = [
        ProgId::InetSockSetState,
        ProgId::TcpSendReset,
        ProgId::TcpReceiveReset,
        ProgId::TcpRetransmitSkb,
        ProgId::SysEnterMmap,
        ProgId::SysExitMmap,
        ProgId::SysEnterMunmap,
        ProgId::SysExitMunmap,
        ProgId::SysEnterBrk,
        ProgId::SysExitBrk,
        ProgId::SchedProcessExec,
        ProgId::SchedProcessExit,
        ProgId::OomMarkVictim,
        ProgId::GoGcStart,
        ProgId::GoGcDone,
        ProgId::GoPauseBegin,
        ProgId::GoPauseEnd,
        ProgId::GoNewproc,
        ProgId::GoExit,
        ProgId::GoTlsEnter,
        ProgId::GoTlsReturn,
        ProgId::SslHandshakeEnter,
        ProgId::SslHandshakeReturn,
        ProgId::SslFree,
        ProgId::MmapFexit,
        ProgId::MunmapFexit,
        ProgId::BrkFexit,
        ProgId::GoFatalPanic,
        ProgId::GoThrow,
        ProgId::GoFatal,
        ProgId::GoOsExit,
        ProgId::SslError,
        ProgId::Http2GoAwaySent,
        ProgId::Http2RstSent,
        ProgId::Http2GoAwayReceived,
        ProgId::Http2RstReceived,
        ProgId::LibsslMapPages,
        ProgId::LibsslFault,
    ];
    /// The tracepoint programs, attached once at start.
    /// Programs of `group`, in index order.
    pub fn in_group(group: ProgGroup) -> impl Iterator<Item = ProgId> {
        Self::ALL.into_iter().filter(move |p| p.group() == group)
    }

    /// The family a program belongs to (what attaches it, and when).
    pub const fn group(self) -> ProgGroup {
        match self {
            ProgId::InetSockSetState
            | ProgId::TcpSendReset
            | ProgId::TcpReceiveReset
            | ProgId::TcpRetransmitSkb
            | ProgId::SysEnterMmap
            | ProgId::SysExitMmap
            | ProgId::SysEnterMunmap
            | ProgId::SysExitMunmap
            | ProgId::SysEnterBrk
            | ProgId::SysExitBrk
            | ProgId::SchedProcessExec
            | ProgId::SchedProcessExit
            | ProgId::OomMarkVictim => ProgGroup::Tracepoint,
            ProgId::GoGcStart | ProgId::GoGcDone | ProgId::GoPauseBegin | ProgId::GoPauseEnd => ProgGroup::GoRuntime,
            ProgId::GoNewproc | ProgId::GoExit => ProgGroup::GoCreation,
            ProgId::GoTlsEnter | ProgId::GoTlsReturn => ProgGroup::GoTls,
            ProgId::SslHandshakeEnter | ProgId::SslHandshakeReturn | ProgId::SslFree | ProgId::SslError => ProgGroup::OpenSsl,
            ProgId::MmapFexit | ProgId::MunmapFexit | ProgId::BrkFexit => ProgGroup::MemoryFexit,
            ProgId::GoFatalPanic | ProgId::GoThrow | ProgId::GoFatal | ProgId::GoOsExit => ProgGroup::GoCrash,
            ProgId::Http2GoAwaySent | ProgId::Http2RstSent | ProgId::Http2GoAwayReceived | ProgId::Http2RstReceived => ProgGroup::GoHttp2,
            ProgId::LibsslMapPages | ProgId::LibsslFault => ProgGroup::LibsslHold,
        }
    }

    /// The BPF program type, as the kernel object declares it.
    pub const fn kind(self) -> ProgKind {
        match self.group() {
            // libssl is C: a uretprobe is safe there (never on Go code, whose stack moves).
            _ if matches!(self, ProgId::SslHandshakeReturn) => ProgKind::URetProbe,
            ProgGroup::Tracepoint => ProgKind::TracePoint,
            ProgGroup::GoRuntime | ProgGroup::GoCreation | ProgGroup::GoTls | ProgGroup::OpenSsl | ProgGroup::GoCrash | ProgGroup::GoHttp2 => ProgKind::UProbe,
            ProgGroup::MemoryFexit => ProgKind::FExit,
            ProgGroup::LibsslHold => ProgKind::RawTracePoint,
        }
    }

    pub const fn program_name(self) -> &'static str {
        match self {
            ProgId::InetSockSetState => "inet_sock_set_state",
            ProgId::TcpSendReset => "tcp_send_reset",
            ProgId::TcpReceiveReset => "tcp_receive_reset",
            ProgId::TcpRetransmitSkb => "tcp_retransmit_skb",
            ProgId::SysEnterMmap => "sys_enter_mmap",
            ProgId::SysExitMmap => "sys_exit_mmap",
            ProgId::SysEnterMunmap => "sys_enter_munmap",
            ProgId::SysExitMunmap => "sys_exit_munmap",
            ProgId::SysEnterBrk => "sys_enter_brk",
            ProgId::SysExitBrk => "sys_exit_brk",
            ProgId::SchedProcessExec => "sched_process_exec",
            ProgId::SchedProcessExit => "sched_process_exit",
            ProgId::OomMarkVictim => "oom_mark_victim",
            ProgId::GoGcStart => "go_gc_start",
            ProgId::GoGcDone => "go_gc_done",
            ProgId::GoPauseBegin => "go_stw_stop",
            ProgId::GoPauseEnd => "go_stw_start",
            ProgId::GoNewproc => "go_newproc",
            ProgId::GoExit => "go_goexit",
            ProgId::GoTlsEnter => "go_tls_handshake_enter",
            ProgId::GoTlsReturn => "go_tls_handshake_return",
            ProgId::SslHandshakeEnter => "ssl_handshake_enter",
            ProgId::SslHandshakeReturn => "ssl_handshake_return",
            ProgId::SslFree => "ssl_free",
            ProgId::MmapFexit => "mmap_fexit",
            ProgId::MunmapFexit => "munmap_fexit",
            ProgId::BrkFexit => "brk_fexit",
            ProgId::GoFatalPanic => "go_fatalpanic",
            ProgId::GoThrow => "go_throw",
            ProgId::GoFatal => "go_fatal",
            ProgId::GoOsExit => "go_os_exit",
            ProgId::SslError => "ssl_error",
            ProgId::Http2GoAwaySent => "go_http2_goaway_sent",
            ProgId::Http2RstSent => "go_http2_rst_sent",
            ProgId::Http2GoAwayReceived => "go_http2_goaway_received",
            ProgId::Http2RstReceived => "go_http2_rst_received",
            ProgId::LibsslMapPages => "libssl_map_pages",
            ProgId::LibsslFault => "libssl_fault",
        }
    }

    /// For a [`Self::MEMORY_FEXIT`] program: the system call (the kernel function is its entry
    /// point, `__x64_sys_<name>` / `__arm64_sys_<name>`) and the tracepoint programs it replaces.
    pub const fn replaces(self) -> Option<(&'static str, [ProgId; 2])> {
        match self {
            ProgId::MmapFexit => Some(("mmap", [ProgId::SysEnterMmap, ProgId::SysExitMmap])),
            ProgId::MunmapFexit => Some(("munmap", [ProgId::SysEnterMunmap, ProgId::SysExitMunmap])),
            ProgId::BrkFexit => Some(("brk", [ProgId::SysEnterBrk, ProgId::SysExitBrk])),
            _ => None,
        }
    }

    /// The Go runtime function and site a uprobe program attaches to.
    pub const fn go_site(self) -> Option<(&'static str, GoSite)> {
        match self {
            ProgId::GoGcStart => Some(("runtime.gcStart", GoSite::Entry)),
            // Not the RETs: mark termination wakes runtime.GC's waiters before it returns, so the
            // next cycle's gcStart can run before the RET of this one. Not the entry either: its
            // 1 KiB frame often needs a bigger stack, and morestack reruns the entry.
            ProgId::GoGcDone => Some(("runtime.gcMarkTermination", GoSite::AfterStackCheck)),
            ProgId::GoPauseBegin => Some(("runtime.stopTheWorldWithSema", GoSite::Entry)),
            ProgId::GoPauseEnd => Some(("runtime.startTheWorldWithSema", GoSite::Entry)),
            // newproc1 returns the new g: read it at every RET (never a uretprobe).
            ProgId::GoNewproc => Some(("runtime.newproc1", GoSite::Returns)),
            ProgId::GoExit => Some(("runtime.goexit1", GoSite::Entry)),
            // Entries: before anything is printed (fatalpanic, fatal), or right after the one line
            // throw prints itself; the message is in the argument registers there.
            ProgId::GoFatalPanic => Some(("runtime.fatalpanic", GoSite::Entry)),
            ProgId::GoThrow => Some(("runtime.throw", GoSite::Entry)),
            ProgId::GoFatal => Some(("runtime.fatal", GoSite::Entry)),
            ProgId::GoOsExit => Some(("os.Exit", GoSite::Entry)),
            _ => None,
        }
    }

    /// The tracepoint (category, name) the program attaches to; `("", "")` for uprobes and fexit
    /// programs.
    pub const fn tracepoint(self) -> (&'static str, &'static str) {
        match self {
            ProgId::InetSockSetState => ("sock", "inet_sock_set_state"),
            ProgId::TcpSendReset => ("tcp", "tcp_send_reset"),
            ProgId::TcpReceiveReset => ("tcp", "tcp_receive_reset"),
            ProgId::TcpRetransmitSkb => ("tcp", "tcp_retransmit_skb"),
            ProgId::SysEnterMmap => ("syscalls", "sys_enter_mmap"),
            ProgId::SysExitMmap => ("syscalls", "sys_exit_mmap"),
            ProgId::SysEnterMunmap => ("syscalls", "sys_enter_munmap"),
            ProgId::SysExitMunmap => ("syscalls", "sys_exit_munmap"),
            ProgId::SysEnterBrk => ("syscalls", "sys_enter_brk"),
            ProgId::SysExitBrk => ("syscalls", "sys_exit_brk"),
            ProgId::SchedProcessExec => ("sched", "sched_process_exec"),
            ProgId::SchedProcessExit => ("sched", "sched_process_exit"),
            ProgId::OomMarkVictim => ("oom", "mark_victim"),
            ProgId::LibsslMapPages => ("filemap", "mm_filemap_map_pages"),
            ProgId::LibsslFault => ("filemap", "mm_filemap_fault"),
            ProgId::GoGcStart
            | ProgId::GoGcDone
            | ProgId::GoPauseBegin
            | ProgId::GoPauseEnd
            | ProgId::GoNewproc
            | ProgId::GoExit
            | ProgId::GoTlsEnter
            | ProgId::GoTlsReturn
            | ProgId::SslHandshakeEnter
            | ProgId::SslHandshakeReturn
            | ProgId::SslFree
            | ProgId::MmapFexit
            | ProgId::MunmapFexit
            | ProgId::BrkFexit
            | ProgId::GoFatalPanic
            | ProgId::GoThrow
            | ProgId::GoFatal
            | ProgId::GoOsExit
            | ProgId::SslError
            | ProgId::Http2GoAwaySent
            | ProgId::Http2RstSent
            | ProgId::Http2GoAwayReceived
            | ProgId::Http2RstReceived => ("", ""),
        }
    }

    /// Optional programs may be missing on a kernel without failing readiness.
    pub const fn optional(self) -> bool {
        matches!(
            self,
            ProgId::OomMarkVictim
                | ProgId::GoGcStart
                | ProgId::GoGcDone
                | ProgId::GoPauseBegin
                | ProgId::GoPauseEnd
                | ProgId::GoNewproc
                | ProgId::GoExit
                | ProgId::GoTlsEnter
                | ProgId::GoTlsReturn
                | ProgId::SslHandshakeEnter
                | ProgId::SslHandshakeReturn
                | ProgId::SslFree
                // Not attached where the kernel refuses fexit and `[collect] memory_hooks = "auto"`:
                // the daemon is ready without them (the calls are then not counted).
                | ProgId::MmapFexit
                | ProgId::MunmapFexit
                | ProgId::BrkFexit
                | ProgId::GoFatalPanic
                | ProgId::GoThrow
                | ProgId::GoFatal
                | ProgId::GoOsExit
                | ProgId::SslError
                | ProgId::Http2GoAwaySent
                | ProgId::Http2RstSent
                | ProgId::Http2GoAwayReceived
                | ProgId::Http2RstReceived
                | ProgId::LibsslMapPages
                | ProgId::LibsslFault
        )
    }
}

// ---- Go crashes -----------------------------------------------------------------

/// The functions each crash program attaches to (at their entries), those a binary has: the
/// runtime's own, and the linkname'd copies other runtime-internal packages call (Go 1.24's
/// swiss maps report concurrent writes through internal/runtime/maps.fatal, with runtime.fatal
/// inlined into it). All take the message as a string.
pub const CRASH_FUNCTIONS: [(ProgId, &[&str]); 4] = [
    (ProgId::GoFatalPanic, &["runtime.fatalpanic"]),
    (ProgId::GoThrow, &["runtime.throw", "sync.throw", "internal/sync.throw", "internal/runtime/cgroup.throw"]),
    (ProgId::GoFatal, &["runtime.fatal", "sync.fatal", "internal/sync.fatal", "internal/runtime/maps.fatal"]),
    (ProgId::GoOsExit, &["os.Exit"]),
];

/// Bytes of a crash message the kernel copies (the throw string, or a panic value's string).
pub const CRASH_TEXT_LEN: usize = 256;
/// Bytes the kernel copies at a panic value's data pointer (a string header, an error's first
/// fields, a runtime.boundsError).
pub const CRASH_HEAD_LEN: usize = 32;
/// Return addresses the kernel collects along the frame-pointer chain.
pub const CRASH_MAX_PCS: usize = 32;

/// What kind of crash a [`GoCrashEvent`] reports.
pub const CRASH_PANIC: u32 = 1;
pub const CRASH_THROW: u32 = 2;
pub const CRASH_FATAL: u32 = 3;
pub const CRASH_EXIT: u32 = 4;

/// [`GoCrashEvent::paused`]: the process was not stopped (pauses off, or no settings for it).
pub const PAUSE_NONE: u32 = 0;
/// The kernel sent SIGSTOP to the process: user space must send SIGCONT.
pub const PAUSE_STOPPED: u32 = 1;
/// Not stopped: the node's concurrent-pause limit was reached.
pub const PAUSE_LIMIT: u32 = 2;
/// Not stopped: the process is traced (a debugger is attached to the crashing or the main thread).
pub const PAUSE_TRACED: u32 = 3;

/// Per-process settings of the crash programs (`GO_CRASH`, written when the process is tracked).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GoCrashConfig {
    /// `g.goid`.
    pub g_goid: u32,
    /// `_panic.arg` (an `any`: type and data words), or [`OFFSET_NONE`].
    pub panic_arg: u32,
    /// Stop the process (SIGSTOP) at a crash while fewer than this many are stopped on the node;
    /// 0: never (pauses off). A traced process is never stopped (the kernel checks).
    pub max_pauses: u32,
    /// `g.m`, `m.curg`, and `g.sched` + `gobuf.pc` / `gobuf.bp`: a crash on a thread's system
    /// stack (runtime.throw from newstack: stack overflow) also walks the user goroutine's stack
    /// from its saved registers. [`OFFSET_NONE`] when unknown.
    pub g_m: u32,
    pub m_curg: u32,
    pub sched_pc: u32,
    pub sched_bp: u32,
    /// Set by the kernel at the first crash event of the process: later ones (a wrapper such as
    /// sync.fatal calling runtime.fatal, a panic while panicking) are counted, not reported again.
    pub crashed: u32,
}

impl GoCrashConfig {
    /// No offsets known: the event still carries the kind, the registers and the caller chain.
    pub const UNKNOWN: GoCrashConfig =
        GoCrashConfig { g_goid: OFFSET_NONE, panic_arg: OFFSET_NONE, max_pauses: 0, g_m: OFFSET_NONE, m_curg: OFFSET_NONE, sched_pc: OFFSET_NONE, sched_bp: OFFSET_NONE, crashed: 0 };
}

/// `CRASH_PAUSES` indexes: pauses the kernel started (it alone adds), pauses user space ended
/// (it alone writes). Stopped now = started − ended.
pub const PAUSES_STARTED: u32 = 0;
pub const PAUSES_ENDED: u32 = 1;

/// A Go process reached a crash path.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GoCrashEvent {
    pub header: EventHeader,
    /// [`CRASH_PANIC`] …
    pub kind: u32,
    /// The crashing thread.
    pub tid: u32,
    /// `os.Exit`'s code (0 otherwise).
    pub code: i64,
    /// The current g, and its goid (0 when unknown).
    pub g: u64,
    pub goid: u64,
    /// Registers at the function's entry.
    pub pc: u64,
    pub sp: u64,
    pub fp: u64,
    /// Panic: the value's type and data words.
    pub value_type: u64,
    pub value_data: u64,
    /// Panic: bytes at `value_data`.
    pub head: [u8; CRASH_HEAD_LEN],
    /// [`PAUSE_NONE`], [`PAUSE_STOPPED`] or [`PAUSE_LIMIT`].
    pub paused: u32,
    /// Bytes of `text` copied; `text_truncated` is 1 when the message was longer.
    pub text_len: u16,
    pub text_truncated: u16,
    /// Throw/fatal: the message; panic: the string the value's first word points at.
    pub text: [u8; CRASH_TEXT_LEN],
    pub npcs: u32,
    /// The first `system_pcs` of `pcs` are the thread's system stack (g0); the rest are the user
    /// goroutine's (`m.curg`), from its saved pc and frame pointer.
    pub system_pcs: u32,
    /// pc, then return addresses, innermost first.
    pub pcs: [u64; CRASH_MAX_PCS],
}

// ---- HTTP/2 control frames ------------------------------------------------------

/// The implementations of Go's HTTP/2 whose control frames are counted, by the prefix of their
/// function names: std's up to Go 1.26 (bundled into net/http with an `http2` prefix on every
/// name), std's from Go 1.27 (net/http/internal/http2), and golang.org/x/net/http2 (gRPC-go's).
pub const HTTP2_PACKAGES: [(&str, &str); 3] = [
    ("net/http", "http2"),
    ("net/http/internal/http2", ""),
    ("golang.org/x/net/http2", ""),
];

/// The function of each HTTP/2 program, without package and prefix: `package.(*PREFIXFramer).WriteGoAway`
/// for a receiver type, `package.PREFIXparseGoAwayFrame` for a plain function. All run once per
/// frame of their type: the writers where a frame is written (server and client alike), the
/// parsers (the framer calls the one of the frame's type from its table, so they are never
/// inlined away) where one is read.
pub const HTTP2_FUNCTIONS: [(ProgId, Option<&str>, &str); 4] = [
    (ProgId::Http2GoAwaySent, Some("Framer"), "WriteGoAway"),
    (ProgId::Http2RstSent, Some("Framer"), "WriteRSTStream"),
    (ProgId::Http2GoAwayReceived, None, "parseGoAwayFrame"),
    (ProgId::Http2RstReceived, None, "parseRSTStreamFrame"),
];

/// Bytes of a GOAWAY frame's debug data the kernel copies.
pub const HTTP2_DEBUG_LEN: usize = 40;
pub const HTTP2_FRAME_GOAWAY: u8 = 7;
pub const HTTP2_FRAME_RST_STREAM: u8 = 3;
pub const HTTP2_SENT: u8 = 1;
pub const HTTP2_RECEIVED: u8 = 2;

/// A GOAWAY or RST_STREAM frame written or read by a Go process.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Http2Event {
    pub header: EventHeader,
    /// The error code (RFC 9113 §7).
    pub code: u32,
    /// RST_STREAM: the stream; GOAWAY: the last stream id.
    pub stream_id: u32,
    /// [`HTTP2_FRAME_GOAWAY`] or [`HTTP2_FRAME_RST_STREAM`] (the frame type on the wire).
    pub frame: u8,
    /// [`HTTP2_SENT`] or [`HTTP2_RECEIVED`].
    pub direction: u8,
    /// Bytes of `debug` copied.
    pub debug_copied: u16,
    /// GOAWAY: the length of its debug data.
    pub debug_len: u32,
    pub debug: [u8; HTTP2_DEBUG_LEN],
}

// ---- TLS handshakes -------------------------------------------------------------

/// Go functions that run once per real handshake (never the entry of `handshakeContext`, which
/// runs again on every Read and Write): the entry program goes at each entry; the return program
/// right after `handshakeContext`'s call of them (amd64), else at every RET of both.
pub const GO_TLS_FUNCTIONS: [&str; 2] =
    ["crypto/tls.(*Conn).clientHandshake", "crypto/tls.(*Conn).serverHandshake"];

/// OpenSSL functions whose entry/return time a handshake. SSL_connect and SSL_accept call
/// SSL_do_handshake: nested calls on one thread count once (the outermost).
pub const SSL_HANDSHAKE_FUNCTIONS: [&str; 3] = ["SSL_do_handshake", "SSL_connect", "SSL_accept"];

/// Handshakes in flight at once (Go: per goroutine; OpenSSL: per SSL object).
pub const MAX_TLS_INFLIGHT: u32 = 16_384;
/// Longest ALPN protocol name carried by an event (longer ones are truncated and flagged).
pub const TLS_ALPN_LEN: usize = 24;

/// Per-process offsets for the Go TLS probes (present = this process's handshakes are reported).
/// Computed in user space from the process's Go version (DWARF or generated tables).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GoTlsConfig {
    /// `crypto/tls.Conn` fields.
    pub conn_is_client: u32,
    pub conn_vers: u32,
    pub conn_cipher_suite: u32,
    pub conn_client_protocol: u32,
    /// `Conn.in.err` / `Conn.out.err` (halfConn.err): the alert received / sent, as a
    /// `*net.OpError`; [`OFFSET_NONE`] when unknown (failures are then not classified by alert).
    pub conn_in_err: u32,
    pub conn_out_err: u32,
    /// `net.OpError`.`Op` (string) and `.Err` (error interface).
    pub op_error_op: u32,
    pub op_error_err: u32,
    /// `crypto/tls.permanentError`.`err` (interface): halfConn.err usually holds
    /// `&permanentError{err: *net.OpError}`.
    pub permanent_error_err: u32,
    pub _pad: u32,
}

/// A handshake between entry and return, keyed by [`TlsInflightKey`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TlsInflight {
    pub start_ns: u64,
    /// Go: the *tls.Conn. OpenSSL: the SSL*.
    pub conn: u64,
    /// OpenSSL: nesting depth on the thread (SSL_accept → SSL_do_handshake).
    pub depth: u32,
    /// 1 = client, 2 = server, 0 = unknown yet.
    pub role: u32,
    /// OpenSSL: when the last call for a pending (non-blocking or failed) handshake returned.
    pub last_ns: u64,
    /// OpenSSL: the first libssl error reason (`SSL_R_*` below 1000) raised during the
    /// handshake, 0 if none.
    pub ssl_reason: u32,
    /// OpenSSL: the fatal alert received (from the `SSL_AD_REASON_OFFSET + alert` error the
    /// record layer raises), [`TLS_NO_ALERT`] if none.
    pub ssl_alert: u32,
}

/// Where one libssl build keeps fields of an `SSL` (learned from its accessor functions in user
/// space; [`OFFSET_NONE`] where unknown). Indexed by the attach cookie of the return and SSL_free
/// programs.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SslLibConfig {
    /// int: negotiated protocol version (SSL_version).
    pub version: u32,
    /// int: non-zero on the server side (SSL_is_server).
    pub is_server: u32,
    /// unsigned char *, unsigned int: selected ALPN protocol (SSL_get0_alpn_selected), from
    /// the SSL itself or, when `alpn_base` is set, from the struct the pointer there points at
    /// (1.1.1: `s->s3->alpn_selected`).
    pub alpn_ptr: u32,
    pub alpn_len: u32,
    pub alpn_base: u32,
    /// OpenSSL 3.2+: the accessors read the fields only when the object's `type` (the int at this
    /// offset) is 0 (`SSL_TYPE_SSL_CONNECTION`; QUIC objects differ): nothing is read otherwise.
    pub type_off: u32,
    /// [`SSL_LIB_ERRORS`]: the error probes of this libssl are attached (failure reasons are
    /// read).
    pub flags: u32,
    pub _pad: u32,
}

/// [`SslLibConfig::flags`]: failure reasons are read from the errors OpenSSL raises.
pub const SSL_LIB_ERRORS: u32 = 1;
/// OpenSSL's `ERR_LIB_SSL` (the same in 1.1.1 and 3.x).
pub const ERR_LIB_SSL: u32 = 20;
/// OpenSSL's `SSL_AD_REASON_OFFSET`: a received fatal alert is raised as this plus its code.
pub const SSL_AD_REASON_OFFSET: u32 = 1000;

/// libssl builds probed at once.
pub const MAX_SSL_LIBS: u32 = 256;

/// libssl files the kernel knows (probed, or held once already): see [`LibsslFileKey`].
pub const MAX_LIBSSL_FILES: u32 = 1024;

/// A libssl file as the kernel names it: `super_block.s_dev` (the kernel's `dev_t`, major << 20
/// | minor, not stat's encoding) and the inode number.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LibsslFileKey {
    pub dev: u32,
    pub _pad: u32,
    pub ino: u64,
}

/// Files (their page caches) remembered per CPU as needing no hold (the kernel's own state).
pub const RECENT_MAPPINGS: usize = 8;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecentMappings {
    pub mappings: [u64; RECENT_MAPPINGS],
    /// The slot replaced next.
    pub next: u32,
    pub _pad: u32,
}

/// [`LibsslFileKey`] values: the daemon has probed the file (or tried to: it is never held for).
pub const LIBSSL_FILE_PROBED: u32 = 1;
/// The kernel held a process for it and waits for the daemon.
pub const LIBSSL_FILE_HELD: u32 = 2;

/// A process faulted in pages of a libssl file the kernel did not know (its loader, before any
/// of the library's code ran), and was stopped (`stopped` = 1; 0: the signal failed) until the
/// daemon probes the file and resumes it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LibsslHeldEvent {
    pub header: EventHeader,
    /// The thread that faulted.
    pub tid: u32,
    pub stopped: u32,
    pub file: LibsslFileKey,
}

/// `TlsEvent.alpn_len` when the ALPN protocol could not be read (OpenSSL build with unknown
/// layout). Real protocol names are 1–254 bytes here (longer ones are clamped to 254).
pub const TLS_ALPN_UNREAD: u8 = 0xff;

/// Attach-cookie bit of the OpenSSL entry program: the probe is on SSL_set_connect_state /
/// SSL_set_accept_state (remember the role; the low byte is the role).
pub const SSL_COOKIE_SET_STATE: u64 = 0x100;

/// Go: (tgid, address of the goroutine's runtime.g). OpenSSL thread state: (tgid, tid) with
/// `id` = tid; OpenSSL pending non-blocking handshakes: (tgid, SSL*) with `kind` = 2.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TlsInflightKey {
    pub tgid: u32,
    pub kind: u32,
    pub id: u64,
}

pub const TLS_LIBRARY_GO: u8 = 1;
pub const TLS_LIBRARY_OPENSSL: u8 = 2;
pub const TLS_ROLE_UNKNOWN: u8 = 0;
pub const TLS_ROLE_CLIENT: u8 = 1;
pub const TLS_ROLE_SERVER: u8 = 2;
/// `alert_sent` / `alert_received` when no alert was seen.
pub const TLS_NO_ALERT: u16 = 0xffff;
/// `alert_sent` / `alert_received` when the offsets to read alerts are unknown (OpenSSL, or a Go
/// build whose `tls.Conn.in`/`out` offsets are not known).
pub const TLS_ALERT_UNREAD: u16 = 0xfffe;
/// `version` when it could not be read.
pub const TLS_VERSION_UNKNOWN: u16 = 0;

/// A TLS handshake finished (successfully or not).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TlsEvent {
    pub header: EventHeader,
    pub duration_ns: u64,
    /// [`TLS_LIBRARY_GO`] or [`TLS_LIBRARY_OPENSSL`].
    pub library: u8,
    /// [`TLS_ROLE_CLIENT`], [`TLS_ROLE_SERVER`] or [`TLS_ROLE_UNKNOWN`].
    pub role: u8,
    /// 1 = the handshake failed.
    pub failed: u8,
    pub alpn_len: u8,
    /// Wire version (0x0303 = TLS 1.2, 0x0304 = TLS 1.3), [`TLS_VERSION_UNKNOWN`] if unread.
    pub version: u16,
    pub cipher_suite: u16,
    /// TLS alert codes sent / received by this side, or [`TLS_NO_ALERT`].
    pub alert_sent: u16,
    pub alert_received: u16,
    /// OpenSSL: the return value of the last handshake call.
    pub ret: i32,
    pub alpn: [u8; TLS_ALPN_LEN],
    /// OpenSSL failures: the first libssl error reason (`SSL_R_*`) raised during the handshake,
    /// 0 if none (the alert received is in `alert_received`; the alert sent is not read).
    pub ssl_reason: u32,
    pub _pad: u32,
}

/// Per-program self statistics (a per-CPU array indexed by [`ProgId`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProgStats {
    /// Events the program handled.
    pub events: u64,
    /// Events dropped because the ring buffer was full.
    pub lost_ringbuf: u64,
    /// Events dropped because a map was full.
    pub lost_map_full: u64,
}

/// Hot-path counters per process (per-CPU hash keyed by tgid). Summed over CPUs in user space.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcCounters {
    pub tcp_connect_ok: u64,
    pub tcp_connect_refused: u64,
    pub tcp_connect_timeout: u64,
    pub tcp_connect_reset: u64,
    pub tcp_connect_error: u64,
    pub tcp_accepts: u64,
    /// Connections that reached ESTABLISHED; minus `tcp_established_closed` = active now.
    pub tcp_established_opened: u64,
    pub tcp_established_closed: u64,
    pub tcp_resets_sent: u64,
    pub tcp_resets_received: u64,
    pub tcp_retransmits: u64,
    pub mmap_calls: u64,
    pub mmap_bytes: u64,
    pub munmap_calls: u64,
    pub munmap_bytes: u64,
    pub brk_calls: u64,
}

impl ProcCounters {
    /// Adds `other` field by field (used to sum per-CPU values).
    pub fn accumulate(&mut self, other: &ProcCounters) {
        self.tcp_connect_ok += other.tcp_connect_ok;
        self.tcp_connect_refused += other.tcp_connect_refused;
        self.tcp_connect_timeout += other.tcp_connect_timeout;
        self.tcp_connect_reset += other.tcp_connect_reset;
        self.tcp_connect_error += other.tcp_connect_error;
        self.tcp_accepts += other.tcp_accepts;
        self.tcp_established_opened += other.tcp_established_opened;
        self.tcp_established_closed += other.tcp_established_closed;
        self.tcp_resets_sent += other.tcp_resets_sent;
        self.tcp_resets_received += other.tcp_resets_received;
        self.tcp_retransmits += other.tcp_retransmits;
        self.mmap_calls += other.mmap_calls;
        self.mmap_bytes += other.mmap_bytes;
        self.munmap_calls += other.munmap_calls;
        self.munmap_bytes += other.munmap_bytes;
        self.brk_calls += other.brk_calls;
    }
}

/// Memory syscalls whose failures are counted.
#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MemSyscall {
    Mmap = 1,
    Munmap = 2,
    Brk = 3,
}

impl MemSyscall {
    pub const fn from_u16(v: u16) -> Option<MemSyscall> {
        match v {
            1 => Some(MemSyscall::Mmap),
            2 => Some(MemSyscall::Munmap),
            3 => Some(MemSyscall::Brk),
            _ => None,
        }
    }
    pub const fn name(self) -> &'static str {
        match self {
            MemSyscall::Mmap => "mmap",
            MemSyscall::Munmap => "munmap",
            MemSyscall::Brk => "brk",
        }
    }
}

/// Key of the failure counters: which process, which syscall, which errno.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FailureKey {
    pub tgid: u32,
    /// A [`MemSyscall`] value.
    pub syscall: u16,
    /// Positive errno (brk, which returns no errno, reports ENOMEM when the break did not move).
    pub errno: u16,
}

/// A syscall between sys_enter and sys_exit, keyed by pid_tgid of the calling thread.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InflightCall {
    /// Requested length (mmap, munmap) or requested break (brk).
    pub arg: u64,
}

/// Key of a listening socket: network namespace, family and local port. Passive opens on that port
/// in that namespace belong to the listener's process.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ListenKey {
    pub netns: u32,
    pub family: u16,
    pub port: u16,
}

/// Offsets the kernel programs need and that differ between kernels. User space fills this from
/// tracefs formats and /sys/kernel/btf/vmlinux before attaching; a field the kernel does not have
/// is [`OFFSET_NONE`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelConfig {
    /// `sched_process_exit`'s `group_dead` field, or [`OFFSET_NONE`] on kernels without it.
    pub tp_exit_group_dead: u32,
    /// `struct task_struct`: `exit_code`.
    pub task_exit_code: u32,
    /// `struct task_struct`: `signal` (pointer), and `struct signal_struct`: `live` (atomic_t):
    /// used to find the last thread of a process when the tracepoint has no `group_dead`.
    pub task_signal: u32,
    pub signal_live: u32,
    /// `struct sock`: `sk_err`.
    pub sock_err: u32,
    /// `struct sock` → network namespace inode: `sk->__sk_common.skc_net` (pointer), then
    /// `struct net`.`ns` + `struct ns_common`.`inum`.
    pub sock_net: u32,
    pub net_ns_inum: u32,
    /// Non-zero: the daemon's own tgid, whose events are ignored.
    pub self_tgid: u32,
    /// `struct task_struct`: `ptrace` (non-zero while a tracer is attached) and `group_leader`
    /// (pointer): a crashing process is not paused while its crashing thread or its main thread
    /// is traced (a debugger holds it).
    pub task_ptrace: u32,
    pub task_group_leader: u32,
    /// The chain from a task to the kernfs id of its cgroup in one cgroup v1 hierarchy (a
    /// controller's, the daemon chooses which): `task_struct.cgroups` (pointer to `css_set`),
    /// the offset in `css_set` of that controller's `subsys[]` slot (pointer to
    /// `cgroup_subsys_state`), `cgroup_subsys_state.cgroup`, `cgroup.kn` and `kernfs_node.id`.
    /// All [`OFFSET_NONE`] when no v1 hierarchy is mounted: the exec's v2 id tells enough.
    pub task_cgroups: u32,
    pub css_set_subsys: u32,
    pub css_cgroup: u32,
    pub cgroup_kn: u32,
    pub kernfs_node_id: u32,
    /// From the page cache of a faulting file to its name and identity (issue #18 (a), holding
    /// the first process of a libssl file not probed yet): `address_space.host` (the inode),
    /// `inode.i_dentry` (the first alias, an hlist node) minus `dentry.d_u` (+ `d_alias`: where
    /// that node sits in its dentry), `dentry.d_name` + `qstr.name`, `inode.i_ino`, `inode.i_sb`,
    /// `super_block.s_dev`; all or none.
    pub mapping_host: u32,
    pub inode_dentry: u32,
    pub dentry_alias: u32,
    pub dentry_name: u32,
    pub inode_ino: u32,
    pub inode_sb: u32,
    pub sb_dev: u32,
    /// `signal_struct.tty`: a process with a controlling terminal is never held (its shell's
    /// job control would report it stopped).
    pub signal_tty: u32,
    /// Non-zero: hold (SIGSTOP) a process that maps a libssl file [`LIBSSL_FILES`](maps::LIBSSL_FILES)
    /// does not know, until the daemon has probed it (`[tls] hold_new_libssl`).
    pub hold_libssl: u32,
}

/// A [`KernelConfig`] offset that this kernel does not provide.
pub const OFFSET_NONE: u32 = u32::MAX;

impl KernelConfig {
    pub const UNKNOWN: KernelConfig = KernelConfig {
        tp_exit_group_dead: OFFSET_NONE,
        task_exit_code: OFFSET_NONE,
        task_signal: OFFSET_NONE,
        signal_live: OFFSET_NONE,
        sock_err: OFFSET_NONE,
        sock_net: OFFSET_NONE,
        net_ns_inum: OFFSET_NONE,
        self_tgid: 0,
        task_ptrace: OFFSET_NONE,
        task_group_leader: OFFSET_NONE,
        task_cgroups: OFFSET_NONE,
        css_set_subsys: OFFSET_NONE,
        css_cgroup: OFFSET_NONE,
        cgroup_kn: OFFSET_NONE,
        kernfs_node_id: OFFSET_NONE,
        mapping_host: OFFSET_NONE,
        inode_dentry: OFFSET_NONE,
        dentry_alias: OFFSET_NONE,
        dentry_name: OFFSET_NONE,
        inode_ino: OFFSET_NONE,
        inode_sb: OFFSET_NONE,
        sb_dev: OFFSET_NONE,
        signal_tty: OFFSET_NONE,
        hold_libssl: 0,
    };
}

/// Kinds of ring-buffer events.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Exec = 1,
    Exit = 2,
    OomVictim = 3,
    GoGc = 4,
    GoStw = 5,
    Tls = 6,
    GoCrash = 7,
    Http2 = 8,
    LibsslHeld = 9,
}

/// Header shared by every ring-buffer event; `kind` tells which struct follows.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventHeader {
    pub kind: u32,
    pub tgid: u32,
    /// bpf_ktime_get_ns() (CLOCK_MONOTONIC) at the event.
    pub ktime_ns: u64,
}

/// A process image was replaced (`sched_process_exec`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExecEvent {
    pub header: EventHeader,
    pub ppid: u32,
    pub filename_len: u32,
    /// The process's cgroup v2 id (`bpf_get_current_cgroup_id`: the kernfs id of its cgroup
    /// directory): its pod, even when the process is gone before user space reads its /proc.
    pub cgroup_id: u64,
    /// The kernfs id of its cgroup in the cgroup v1 hierarchy [`KernelConfig::css_set_subsys`]
    /// names (0: none, or no v1 hierarchy): with `cgroup_id`, the key of the daemon's cache of
    /// parsed /proc/PID/cgroup files on nodes that mount both versions.
    pub cgroup1_id: u64,
    pub comm: [u8; COMM_LEN],
    pub filename: [u8; FILENAME_LEN],
}

/// The last thread of a process exited (`sched_process_exit` with the group dead).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExitEvent {
    pub header: EventHeader,
    /// Thread that exited last.
    pub pid: u32,
    /// `task_struct.exit_code`: status << 8 for exit(status), the signal number (| 0x80 for a core
    /// dump) for a fatal signal. `u32::MAX` when the kernel's layout was unknown.
    pub exit_code: u32,
    pub comm: [u8; COMM_LEN],
}

/// The OOM killer chose a victim (`oom:mark_victim`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OomEvent {
    pub header: EventHeader,
    /// The victim's tgid (the tracepoint's `pid` is the victim process).
    pub victim: u32,
    pub _pad: u32,
}

/// A Go GC cycle reached mark termination (marking done).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GoGcEvent {
    pub header: EventHeader,
    /// From the cycle's gcStart to the start of mark termination; [`DURATION_UNKNOWN`] when the
    /// cycle began before the probes were attached.
    pub duration_ns: u64,
}

/// A Go stop-the-world pause ended (startTheWorldWithSema).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GoStwEvent {
    pub header: EventHeader,
    pub duration_ns: u64,
    /// stwReason (Go >= 1.21; the first argument register at stopTheWorldWithSema).
    pub reason: u32,
    pub _pad: u32,
}

/// A stop-the-world pause in progress (per process).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StwStart {
    pub ktime_ns: u64,
    pub reason: u32,
    pub _pad: u32,
}

/// Per-process settings of the on-demand goroutine probes (present = counting is on). Offsets are
/// those of this process's Go version, computed in user space.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GoCreationConfig {
    /// `runtime.g` field offsets.
    pub g_gopc: u32,
    pub g_goid: u32,
}

/// Goroutines created while the creation probes were on, and how many of those exited
/// (per-CPU, per process).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GoCreationCounts {
    pub created: u64,
    pub exited: u64,
}

/// Key of the creation-site table: process and creation PC (runtime address of the `go`
/// statement, g.gopc).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CreationSite {
    pub tgid: u32,
    pub _pad: u32,
    pub gopc: u64,
}

/// Key of the goroutines created during a creation-probe window: (process, goid).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct GoidKey {
    pub tgid: u32,
    pub _pad: u32,
    pub goid: u64,
}

/// Goroutines of creation-probe windows remembered at once (over all processes).
pub const MAX_WINDOW_GOIDS: u32 = 65_536;

/// Creation sites remembered at once (over all processes); further sites count as lost.
pub const MAX_CREATION_SITES: u32 = 16_384;

/// Duration of an interval whose start was not seen.
pub const DURATION_UNKNOWN: u64 = u64::MAX;

/// Exit code stored when the kernel layout for `task_struct.exit_code` was unknown.
pub const EXIT_CODE_UNKNOWN: u32 = u32::MAX;

/// Tracepoint field offsets the kernel programs read directly. They have been stable since Linux
/// 4.16; the daemon checks each against the running kernel's tracefs format before attaching and
/// refuses (with the mismatch named) rather than misread.
pub mod tp {
    /// (tracepoint category, name, field, offset, size)
    pub type Field = (&'static str, &'static str, &'static str, u32, u32);
    pub const INET_SOCK_SET_STATE_SKADDR: u32 = 8;
    pub const INET_SOCK_SET_STATE_OLDSTATE: u32 = 16;
    pub const INET_SOCK_SET_STATE_NEWSTATE: u32 = 20;
    pub const INET_SOCK_SET_STATE_SPORT: u32 = 24;
    pub const INET_SOCK_SET_STATE_FAMILY: u32 = 28;
    pub const INET_SOCK_SET_STATE_PROTOCOL: u32 = 30;
    pub const TCP_SEND_RESET_SKADDR: u32 = 16;
    pub const TCP_RECEIVE_RESET_SKADDR: u32 = 8;
    pub const TCP_RETRANSMIT_SKB_SKADDR: u32 = 16;
    /// sys_enter_* first and second argument; sys_exit_* return value.
    pub const SYS_ENTER_ARG0: u32 = 16;
    pub const SYS_ENTER_ARG1: u32 = 24;
    pub const SYS_EXIT_RET: u32 = 16;
    pub const EXEC_FILENAME: u32 = 8;
    pub const EXEC_PID: u32 = 12;
    pub const EXIT_COMM: u32 = 8;
    pub const EXIT_PID: u32 = 24;
    pub const MARK_VICTIM_PID: u32 = 8;

    pub const FIELDS: &[Field] = &[
        ("sock", "inet_sock_set_state", "skaddr", INET_SOCK_SET_STATE_SKADDR, 8),
        ("sock", "inet_sock_set_state", "oldstate", INET_SOCK_SET_STATE_OLDSTATE, 4),
        ("sock", "inet_sock_set_state", "newstate", INET_SOCK_SET_STATE_NEWSTATE, 4),
        ("sock", "inet_sock_set_state", "sport", INET_SOCK_SET_STATE_SPORT, 2),
        ("sock", "inet_sock_set_state", "family", INET_SOCK_SET_STATE_FAMILY, 2),
        ("sock", "inet_sock_set_state", "protocol", INET_SOCK_SET_STATE_PROTOCOL, 2),
        ("tcp", "tcp_send_reset", "skaddr", TCP_SEND_RESET_SKADDR, 8),
        ("tcp", "tcp_receive_reset", "skaddr", TCP_RECEIVE_RESET_SKADDR, 8),
        ("tcp", "tcp_retransmit_skb", "skaddr", TCP_RETRANSMIT_SKB_SKADDR, 8),
        ("syscalls", "sys_enter_mmap", "addr", SYS_ENTER_ARG0, 8),
        ("syscalls", "sys_enter_mmap", "len", SYS_ENTER_ARG1, 8),
        ("syscalls", "sys_exit_mmap", "ret", SYS_EXIT_RET, 8),
        ("syscalls", "sys_enter_munmap", "len", SYS_ENTER_ARG1, 8),
        ("syscalls", "sys_exit_munmap", "ret", SYS_EXIT_RET, 8),
        ("syscalls", "sys_enter_brk", "brk", SYS_ENTER_ARG0, 8),
        ("syscalls", "sys_exit_brk", "ret", SYS_EXIT_RET, 8),
        ("sched", "sched_process_exec", "filename", EXEC_FILENAME, 4),
        ("sched", "sched_process_exec", "pid", EXEC_PID, 4),
        ("sched", "sched_process_exit", "comm", EXIT_COMM, 16),
        ("sched", "sched_process_exit", "pid", EXIT_PID, 4),
        ("oom", "mark_victim", "pid", MARK_VICTIM_PID, 4),
    ];
}

// TCP states as in include/net/tcp_states.h.
pub const TCP_ESTABLISHED: i32 = 1;
pub const TCP_SYN_SENT: i32 = 2;
pub const TCP_SYN_RECV: i32 = 3;
pub const TCP_CLOSE: i32 = 7;
pub const TCP_LISTEN: i32 = 10;
pub const IPPROTO_TCP: u16 = 6;

// errno values the connect classification uses.
pub const ECONNRESET: i32 = 104;
pub const ETIMEDOUT: i32 = 110;
pub const ECONNREFUSED: i32 = 111;

/// The maps the kernel object defines, by name: the daemon opens them by these names, and a test
/// (probe-daemon `abi` tests, no root) checks the built object against every field here.
pub mod maps {
    use super::*;
    use core::mem::size_of;

    /// `bpf_map_type` values of the map types used.
    #[repr(u32)]
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum MapKind {
        Hash = 1,
        Array = 2,
        PerCpuHash = 5,
        PerCpuArray = 6,
        LruHash = 9,
        RingBuf = 27,
    }

    /// One map: name, type, key and value size, capacity (bytes for a ring buffer), and whether
    /// the daemon opens it (the others are the kernel programs' own state).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct MapSpec {
        pub name: &'static str,
        pub kind: MapKind,
        pub key_size: u32,
        pub value_size: u32,
        pub max_entries: u32,
        pub user: bool,
    }

    const fn spec(name: &'static str, kind: MapKind, key_size: usize, value_size: usize, max_entries: u32, user: bool) -> MapSpec {
        MapSpec { name, kind, key_size: key_size as u32, value_size: value_size as u32, max_entries, user }
    }

    // Shared by every family.
    pub const CONFIG: MapSpec = spec("CONFIG", MapKind::Array, 4, size_of::<KernelConfig>(), 1, true);
    pub const PROG_STATS: MapSpec = spec("PROG_STATS", MapKind::PerCpuArray, 4, size_of::<ProgStats>(), ProgId::COUNT, true);
    pub const PROC_COUNTERS: MapSpec = spec("PROC_COUNTERS", MapKind::PerCpuHash, 4, size_of::<ProcCounters>(), MAX_PROCS, true);
    pub const FAILURES: MapSpec = spec("FAILURES", MapKind::PerCpuHash, size_of::<FailureKey>(), 8, MAX_FAILURE_KEYS, true);
    pub const EVENTS: MapSpec = spec("EVENTS", MapKind::RingBuf, 0, 0, EVENTS_RING_BYTES, true);
    // Memory system calls (tracepoint pairs), TCP owner attribution.
    pub const INFLIGHT: MapSpec = spec("INFLIGHT", MapKind::Hash, 8, size_of::<InflightCall>(), MAX_INFLIGHT, false);
    pub const SOCK_OWNERS: MapSpec = spec("SOCK_OWNERS", MapKind::LruHash, 8, 4, MAX_SOCKETS, false);
    pub const LISTENERS: MapSpec = spec("LISTENERS", MapKind::Hash, size_of::<ListenKey>(), 4, MAX_LISTENERS, false);
    // Go runtime.
    pub const GC_START: MapSpec = spec("GC_START", MapKind::Hash, 4, 8, MAX_PROCS, false);
    pub const STW_START: MapSpec = spec("STW_START", MapKind::Hash, 4, size_of::<StwStart>(), MAX_PROCS, false);
    pub const GO_CREATION: MapSpec = spec("GO_CREATION", MapKind::Hash, 4, size_of::<GoCreationConfig>(), MAX_PROCS, true);
    pub const GO_CREATION_COUNTS: MapSpec = spec("GO_CREATION_COUNTS", MapKind::PerCpuHash, 4, size_of::<GoCreationCounts>(), MAX_PROCS, true);
    pub const CREATION_SITES: MapSpec = spec("CREATION_SITES", MapKind::PerCpuHash, size_of::<CreationSite>(), 8, MAX_CREATION_SITES, true);
    pub const WINDOW_GOIDS: MapSpec = spec("WINDOW_GOIDS", MapKind::Hash, size_of::<GoidKey>(), 1, MAX_WINDOW_GOIDS, true);
    // TLS.
    pub const GO_TLS_CONFIG: MapSpec = spec("GO_TLS_CONFIG", MapKind::Hash, 4, size_of::<GoTlsConfig>(), MAX_PROCS, true);
    pub const TLS_INFLIGHT: MapSpec = spec("TLS_INFLIGHT", MapKind::LruHash, size_of::<TlsInflightKey>(), size_of::<TlsInflight>(), MAX_TLS_INFLIGHT, false);
    pub const SSL_LIBS: MapSpec = spec("SSL_LIBS", MapKind::Hash, 4, size_of::<SslLibConfig>(), MAX_SSL_LIBS, true);
    pub const SSL_ROLES: MapSpec = spec("SSL_ROLES", MapKind::LruHash, size_of::<TlsInflightKey>(), 4, MAX_TLS_INFLIGHT, false);
    // Go crashes.
    pub const GO_CRASH: MapSpec = spec("GO_CRASH", MapKind::Hash, 4, size_of::<GoCrashConfig>(), MAX_PROCS, true);
    pub const CRASH_PAUSES: MapSpec = spec("CRASH_PAUSES", MapKind::Array, 4, 8, 2, true);
    // libssl files known to the kernel (holds of a new one's first process).
    pub const LIBSSL_FILES: MapSpec = spec("LIBSSL_FILES", MapKind::Hash, size_of::<LibsslFileKey>(), 4, MAX_LIBSSL_FILES, true);
    pub const LIBSSL_RECENT: MapSpec = spec("LIBSSL_RECENT", MapKind::PerCpuArray, 4, size_of::<RecentMappings>(), 1, false);

    /// Every map of the kernel object.
    pub const ALL: [MapSpec; 22] = [
        CONFIG, PROG_STATS, PROC_COUNTERS, FAILURES, EVENTS, INFLIGHT, SOCK_OWNERS, LISTENERS, GC_START, STW_START,
        GO_CREATION, GO_CREATION_COUNTS, CREATION_SITES, WINDOW_GOIDS, GO_TLS_CONFIG, TLS_INFLIGHT, SSL_LIBS, SSL_ROLES,
        GO_CRASH, CRASH_PAUSES, LIBSSL_FILES, LIBSSL_RECENT,
    ];
}

// Sizes of every type that crosses the kernel/user boundary: a field added on one side only, or a
// padding change, fails the build here instead of misreading a map.
const _: () = {
    use core::mem::size_of;
    assert!(size_of::<KernelConfig>() == 96);
    assert!(size_of::<LibsslFileKey>() == 16);
    assert!(size_of::<RecentMappings>() == 72);
    assert!(size_of::<LibsslHeldEvent>() == 40);
    assert!(size_of::<ProgStats>() == 24);
    assert!(size_of::<ProcCounters>() == 128);
    assert!(size_of::<FailureKey>() == 8);
    assert!(size_of::<InflightCall>() == 8);
    assert!(size_of::<ListenKey>() == 8);
    assert!(size_of::<EventHeader>() == 16);
    assert!(size_of::<ExecEvent>() == 184);
    assert!(size_of::<ExitEvent>() == 40);
    assert!(size_of::<OomEvent>() == 24);
    assert!(size_of::<GoGcEvent>() == 24);
    assert!(size_of::<GoStwEvent>() == 32);
    assert!(size_of::<StwStart>() == 16);
    assert!(size_of::<GoCreationConfig>() == 8);
    assert!(size_of::<GoCreationCounts>() == 16);
    assert!(size_of::<CreationSite>() == 16);
    assert!(size_of::<GoidKey>() == 16);
    assert!(size_of::<GoTlsConfig>() == 40);
    assert!(size_of::<TlsInflight>() == 40);
    assert!(size_of::<TlsInflightKey>() == 16);
    assert!(size_of::<SslLibConfig>() == 32);
    assert!(size_of::<TlsEvent>() == 72);
    assert!(size_of::<GoCrashConfig>() == 32);
    assert!(size_of::<Http2Event>() == 72);
    assert!(core::mem::offset_of!(Http2Event, header) == 0);
    assert!(size_of::<GoCrashEvent>() == 88 + CRASH_HEAD_LEN + 8 + CRASH_TEXT_LEN + 8 + 8 * CRASH_MAX_PCS);
    // Every ring-buffer record starts with the header.
    assert!(core::mem::offset_of!(ExecEvent, header) == 0);
    assert!(core::mem::offset_of!(ExitEvent, header) == 0);
    assert!(core::mem::offset_of!(OomEvent, header) == 0);
    assert!(core::mem::offset_of!(GoGcEvent, header) == 0);
    assert!(core::mem::offset_of!(GoStwEvent, header) == 0);
    assert!(core::mem::offset_of!(TlsEvent, header) == 0);
    assert!(core::mem::offset_of!(GoCrashEvent, header) == 0);
    assert!(core::mem::offset_of!(LibsslHeldEvent, header) == 0);
};

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    #[test]
    fn program_groups_partition_all() {
        let group = |g| ProgId::in_group(g).collect::<std::vec::Vec<_>>();
        assert!(ProgId::in_group(ProgGroup::Tracepoint).all(|p| p.go_site().is_none() && !p.tracepoint().0.is_empty()));
        assert!(ProgId::in_group(ProgGroup::GoRuntime).chain(ProgId::in_group(ProgGroup::GoCreation)).all(|p| p.go_site().is_some()));
        assert!(ProgId::in_group(ProgGroup::GoTls).chain(ProgId::in_group(ProgGroup::OpenSsl)).all(|p| p.go_site().is_none() && p.optional()));
        assert_eq!(group(ProgGroup::GoTls), [ProgId::GoTlsEnter, ProgId::GoTlsReturn]);
        assert_eq!(group(ProgGroup::GoCreation), [ProgId::GoNewproc, ProgId::GoExit]);
        assert!(ProgId::in_group(ProgGroup::GoCrash).all(|p| p.optional() && p.go_site().is_some_and(|s| s.1 == GoSite::Entry)));
        assert_eq!(group(ProgGroup::MemoryFexit), [ProgId::MmapFexit, ProgId::MunmapFexit, ProgId::BrkFexit]);
        assert!(ProgId::in_group(ProgGroup::GoHttp2).all(|p| p.optional() && p.go_site().is_none()));
        assert_eq!(group(ProgGroup::GoHttp2), HTTP2_FUNCTIONS.map(|f| f.0));
        for p in ProgId::in_group(ProgGroup::MemoryFexit) {
            let (_, replaced) = p.replaces().expect("a memory fexit program names the tracepoints it replaces");
            assert!(p.tracepoint().0.is_empty() && p.go_site().is_none() && p.kind() == ProgKind::FExit);
            assert!(replaced.iter().all(|t| t.group() == ProgGroup::Tracepoint && t.tracepoint().0 == "syscalls"));
        }
        // Never a uretprobe on Go code.
        assert!(ProgId::ALL.iter().filter(|p| p.kind() == ProgKind::URetProbe).all(|p| p.group() == ProgGroup::OpenSsl));
        assert!(ProgId::ALL.iter().filter(|p| p.group() != ProgGroup::MemoryFexit).all(|p| p.replaces().is_none()));
        for (i, p) in ProgId::ALL.iter().enumerate() {
            assert_eq!(*p as usize, i, "ALL is in index order");
        }
        let mut names: std::vec::Vec<_> = ProgId::ALL.iter().map(|p| p.program_name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ProgId::COUNT as usize, "program names are unique");
    }

    #[test]
    fn map_names_are_unique() {
        let mut names: std::vec::Vec<_> = maps::ALL.iter().map(|m| m.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), maps::ALL.len());
    }
}

#[cfg(feature = "user")]
mod user {
    use super::*;
    // SAFETY: all of these are repr(C), Copy, contain no pointers and accept any bit pattern.
    unsafe impl aya::Pod for ProgStats {}
    unsafe impl aya::Pod for ProcCounters {}
    unsafe impl aya::Pod for FailureKey {}
    unsafe impl aya::Pod for ListenKey {}
    unsafe impl aya::Pod for KernelConfig {}
    unsafe impl aya::Pod for LibsslFileKey {}
    unsafe impl aya::Pod for InflightCall {}
    unsafe impl aya::Pod for GoCreationConfig {}
    unsafe impl aya::Pod for GoCreationCounts {}
    unsafe impl aya::Pod for CreationSite {}
    unsafe impl aya::Pod for GoidKey {}
    unsafe impl aya::Pod for GoTlsConfig {}
    unsafe impl aya::Pod for TlsInflight {}
    unsafe impl aya::Pod for TlsInflightKey {}
    unsafe impl aya::Pod for SslLibConfig {}
    unsafe impl aya::Pod for GoCrashConfig {}
}
