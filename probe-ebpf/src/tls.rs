//! TLS handshakes: Go crypto/tls and OpenSSL (libssl).
//!
//! Go: uprobes at the entry of `(*Conn).clientHandshake` and `(*Conn).serverHandshake` (they run
//! once per real handshake; `handshakeContext` runs again on every Read and Write), and where the
//! result is back: on amd64 in `handshakeContext` just after its call `c.handshakeFn(ctx)` (a
//! jump the kernel emulates, found by the daemon), else at every RET of both functions. State
//! between entry and return is keyed by goroutine (its g pointer): goroutines move between
//! threads. At return the outcome is read from the `tls.Conn` with offsets the daemon computed
//! for the process's Go version (GO_TLS_CONFIG, per tgid).
//!
//! OpenSSL: uprobes at SSL_do_handshake / SSL_connect / SSL_accept entry, uretprobes at their
//! return (fine for C code), SSL_set_connect_state / SSL_set_accept_state for the role, and
//! SSL_free to end handshakes that never succeeded. The attach cookie says which function fired.
//! Failure reasons: uprobes on libssl's PLT stubs of libcrypto's ERR_set_error / ERR_vset_error
//! (1.1.1: ERR_put_error) note the first libssl error reason and the fatal alert received (raised as SSL_AD_REASON_OFFSET +
//! alert) of the handshake in flight on the thread.
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_get_current_task, bpf_ktime_get_ns, bpf_probe_read_kernel_str_bytes, bpf_probe_read_user, bpf_send_signal_thread},
    macros::{map, raw_tracepoint, uprobe, uretprobe},
    maps::{HashMap, LruHashMap, PerCpuArray},
    programs::{ProbeContext, RawTracePointContext, RetProbeContext},
    EbpfContext,
};
use probe_common::{
    RecentMappings, RECENT_MAPPINGS,
    LibsslFileKey, LibsslHeldEvent, LIBSSL_FILE_HELD, MAX_LIBSSL_FILES,
    EventHeader, EventKind, GoTlsConfig, ProgId, TlsEvent, TlsInflight, TlsInflightKey, ERR_LIB_SSL, SSL_AD_REASON_OFFSET, SSL_LIB_ERRORS,
    BPF_RB_NO_WAKEUP, MAX_PROCS, MAX_SSL_LIBS, SSL_COOKIE_SET_STATE, SslLibConfig, TLS_ALPN_UNREAD, MAX_TLS_INFLIGHT, OFFSET_NONE, TLS_ALERT_UNREAD, TLS_ALPN_LEN, TLS_LIBRARY_GO,
    TLS_LIBRARY_OPENSSL, TLS_NO_ALERT, TLS_ROLE_CLIENT, TLS_ROLE_SERVER, TLS_ROLE_UNKNOWN,
    TLS_VERSION_UNKNOWN,
};

use crate::{
    goruntime::{go_reg, GoReg},
    maps::{config, count_event, count_lost_map_full, count_lost_ringbuf, current_tgid, read_kernel, BPF_NOEXIST, EVENTS, SIGSTOP},
};

/// Processes whose Go handshakes are reported, with their offsets.
#[map]
pub static GO_TLS_CONFIG: HashMap<u32, GoTlsConfig> = HashMap::with_max_entries(MAX_PROCS, 0);

/// Handshakes between entry and return (LRU: a goroutine or thread that never returns — killed
/// process — falls out instead of filling the map).
#[map]
static TLS_INFLIGHT: LruHashMap<TlsInflightKey, TlsInflight> = LruHashMap::with_max_entries(MAX_TLS_INFLIGHT, 0);

/// OpenSSL: field offsets of each probed libssl build, by the return/SSL_free attach cookie.
#[map]
pub static SSL_LIBS: HashMap<u32, SslLibConfig> = HashMap::with_max_entries(MAX_SSL_LIBS, 0);

/// OpenSSL: the libssl files the daemon has probed (or tried to), and those a process is held
/// for (see [`libssl_faulted`]).
#[map]
pub static LIBSSL_FILES: HashMap<LibsslFileKey, u32> = HashMap::with_max_entries(MAX_LIBSSL_FILES, 0);

/// The page caches (`address_space`) of the last files faulted in on this CPU that need no hold
/// (not a libssl, or a known one), replaced in turn: faults come in runs on a few files
/// (fault-around, a loader relocating its libraries), and this scan replaces the four reads that
/// find a file's name.
#[map]
static LIBSSL_RECENT: PerCpuArray<RecentMappings> = PerCpuArray::with_max_entries(1, 0);

/// OpenSSL: role of an SSL object, from SSL_set_connect_state / SSL_set_accept_state.
#[map]
static SSL_ROLES: LruHashMap<TlsInflightKey, u32> = LruHashMap::with_max_entries(MAX_TLS_INFLIGHT, 0);

/// Bytes of a `tls.Conn` copied at once at a handshake's result, from `isClient` on: they hold
/// `vers` and `cipherSuite` too (isClient at 16, cipherSuite ending by byte 102 in Go 1.19–1.27).
/// On the program's stack: uprobe programs run with preemption enabled, so a per-CPU buffer could
/// be overwritten by another hit on the same CPU mid-read.
const CONN_SPAN: usize = 128;

const KEY_GO: u32 = 0;
const KEY_SSL_THREAD: u32 = 1;
const KEY_SSL_PENDING: u32 = 2;
const KEY_SSL_ROLE: u32 = 3;


#[inline(always)]
fn read<T: Copy>(addr: u64) -> Option<T> {
    if addr < 4096 {
        return None;
    }
    unsafe { bpf_probe_read_user(addr as *const T) }.ok()
}

/// A `tls.Conn` with [`CONN_SPAN`] bytes from `base` copied at once (one helper call instead of
/// one per field: a helper call costs ~70–150 ns on this kind of CPU).
struct ConnSpan {
    conn: u64,
    base: u32,
    span: Option<[u8; CONN_SPAN]>,
}

impl ConnSpan {
    #[inline(always)]
    fn read(conn: u64, base: u32) -> ConnSpan {
        let mut buf = [0u8; CONN_SPAN];
        let ok = conn >= 4096
            // SAFETY: buf is on this program's stack, CONN_SPAN bytes; the kernel checks the user
            // address.
            && unsafe {
                aya_ebpf::helpers::generated::bpf_probe_read_user(
                    buf.as_mut_ptr() as *mut _,
                    CONN_SPAN as u32,
                    conn.wrapping_add(base as u64) as *const _,
                )
            } == 0;
        ConnSpan { conn, base, span: ok.then_some(buf) }
    }

    /// The `T` at byte `off` of the Conn: from the copy when it holds it, else read on its own.
    #[inline(always)]
    fn field<T: Copy>(&self, off: u32) -> Option<T> {
        if let Some(span) = &self.span {
            let i = off.wrapping_sub(self.base) as usize;
            if off >= self.base && i <= CONN_SPAN - core::mem::size_of::<T>() {
                // SAFETY: i + size_of::<T>() <= CONN_SPAN: inside the copy.
                return Some(unsafe { core::ptr::read_unaligned(span.as_ptr().add(i) as *const T) });
            }
        }
        read::<T>(self.conn.wrapping_add(off as u64))
    }
}

/// A Go handshake's key: the goroutine, by its `runtime.g` (R14 / X28). A goroutine may move
/// between threads mid-handshake but keeps its g; reading g.goid instead would cost a user-memory
/// read (~400 ns at the entry here) and say nothing more.
#[inline(always)]
fn go_key(ctx: &ProbeContext, tgid: u32) -> TlsInflightKey {
    TlsInflightKey { tgid, kind: KEY_GO, id: go_reg(ctx, GoReg::CurrentG) }
}

/// Entry of clientHandshake / serverHandshake: the receiver (*Conn) is the first argument.
#[uprobe]
pub fn go_tls_handshake_enter(ctx: ProbeContext) -> u32 {
    let prog = ProgId::GoTlsEnter;
    count_event(prog);
    let tgid = current_tgid();
    if unsafe { GO_TLS_CONFIG.get(&tgid) }.is_none() {
        return 0;
    }
    let v = TlsInflight {
        start_ns: unsafe { bpf_ktime_get_ns() },
        conn: go_reg(&ctx, GoReg::Arg0),
        depth: 1,
        role: TLS_ROLE_UNKNOWN as u32,
        last_ns: 0,
        ssl_reason: 0,
        ssl_alert: 0,
    };
    // Overwrites: a stack-growth re-entry of the prologue is the same call.
    if TLS_INFLIGHT.insert(&go_key(&ctx, tgid), &v, 0).is_err() {
        count_lost_map_full(prog);
    }
    0
}

/// The selected ALPN protocol, `len` bytes at `ptr`, into `ev`: its length (clamped to 254; 255
/// means unread) and its first TLS_ALPN_LEN bytes.
#[inline(always)]
fn read_alpn(ev: &mut TlsEvent, ptr: u64, len: u64) {
    ev.alpn_len = if len > 254 { 254 } else { len as u8 };
    let n = if len > TLS_ALPN_LEN as u64 { TLS_ALPN_LEN as u32 } else { len as u32 };
    if n > 0 && ptr != 0 {
        unsafe {
            aya_ebpf::helpers::generated::bpf_probe_read_user(ev.alpn.as_mut_ptr() as *mut _, n, ptr as *const _);
        }
    }
}

/// The alert of the `*net.OpError` at `operr` when its Op is `op` ("local error": sent,
/// "remote error": received).
#[inline(always)]
fn op_error_alert(cfg: &GoTlsConfig, operr: u64, op: &[u8; 12], op_len: u64) -> Option<u16> {
    let op_ptr = read::<u64>(operr.wrapping_add(cfg.op_error_op as u64))?;
    let len = read::<u64>(operr.wrapping_add(cfg.op_error_op as u64 + 8))?;
    if len != op_len {
        return None;
    }
    let text = read::<[u8; 12]>(op_ptr)?;
    let mut i = 0;
    while i < 12 {
        if (i as u64) < op_len && text[i] != op[i] {
            return None;
        }
        i += 1;
    }
    // OpError.Err holds an alert (a uint8 boxed in an interface: data points at the byte).
    let data = read::<u64>(operr.wrapping_add(cfg.op_error_err as u64 + 8))?;
    read::<u8>(data).map(|a| a as u16)
}

/// The alert recorded in the halfConn error interface at `field`: `&permanentError{*OpError}`
/// (what setErrorLocked stores) or a bare `*OpError`.
#[inline(always)]
fn alert_of(cfg: &GoTlsConfig, field: u64, op: &[u8; 12], op_len: u64) -> u16 {
    let Some(tab) = read::<u64>(field) else { return TLS_NO_ALERT };
    if tab == 0 {
        return TLS_NO_ALERT;
    }
    let Some(data) = read::<u64>(field + 8) else { return TLS_NO_ALERT };
    if cfg.permanent_error_err != OFFSET_NONE {
        if let Some(inner) = read::<u64>(data.wrapping_add(cfg.permanent_error_err as u64 + 8)) {
            if let Some(a) = op_error_alert(cfg, inner, op, op_len) {
                return a;
            }
        }
    }
    op_error_alert(cfg, data, op, op_len).unwrap_or(TLS_NO_ALERT)
}

/// The handshake's result is back: the error is in the result registers (RAX, RBX on amd64; at
/// every RET of clientHandshake / serverHandshake, and still there after handshakeContext's call).
#[uprobe]
pub fn go_tls_handshake_return(ctx: ProbeContext) -> u32 {
    let prog = ProgId::GoTlsReturn;
    count_event(prog);
    let tgid = current_tgid();
    let Some(cfg) = (unsafe { GO_TLS_CONFIG.get(&tgid) }).copied() else { return 0 };
    let key = go_key(&ctx, tgid);
    let Some(start) = (unsafe { TLS_INFLIGHT.get(&key) }).copied() else { return 0 };
    let _ = TLS_INFLIGHT.remove(&key);
    let now = unsafe { bpf_ktime_get_ns() };
    let failed = go_reg(&ctx, GoReg::Arg0) != 0;
    let c = start.conn;
    let head = ConnSpan::read(c, cfg.conn_is_client);
    let is_client = head.field::<u8>(cfg.conn_is_client).unwrap_or(0);
    let mut ev = TlsEvent {
        header: EventHeader { kind: EventKind::Tls as u32, tgid, ktime_ns: now },
        duration_ns: now.saturating_sub(start.start_ns),
        library: TLS_LIBRARY_GO,
        role: if is_client != 0 { TLS_ROLE_CLIENT } else { TLS_ROLE_SERVER },
        failed: failed as u8,
        alpn_len: 0,
        // OFFSET_NONE (the nearest table's guess for this Go version): not reported.
        version: if cfg.conn_vers == OFFSET_NONE { TLS_VERSION_UNKNOWN } else { head.field::<u16>(cfg.conn_vers).unwrap_or(TLS_VERSION_UNKNOWN) },
        cipher_suite: head.field::<u16>(cfg.conn_cipher_suite).unwrap_or(0),
        alert_sent: TLS_NO_ALERT,
        alert_received: TLS_NO_ALERT,
        ret: 0,
        alpn: [0; TLS_ALPN_LEN],
        ssl_reason: 0,
        _pad: 0,
    };
    if failed {
        ev.alert_sent = TLS_ALERT_UNREAD;
        ev.alert_received = TLS_ALERT_UNREAD;
        if cfg.conn_out_err != OFFSET_NONE {
            ev.alert_sent = alert_of(&cfg, c.wrapping_add(cfg.conn_out_err as u64), b"local error\0", 11);
        }
        if cfg.conn_in_err != OFFSET_NONE {
            ev.alert_received = alert_of(&cfg, c.wrapping_add(cfg.conn_in_err as u64), b"remote error", 12);
        }
    } else if cfg.conn_client_protocol == OFFSET_NONE {
        ev.alpn_len = TLS_ALPN_UNREAD;
    } else {
        // The string header (pointer, length) in one read.
        let [ptr, len] = read::<[u64; 2]>(c.wrapping_add(cfg.conn_client_protocol as u64)).unwrap_or([0, 0]);
        read_alpn(&mut ev, ptr, len);
    }
    if EVENTS.output::<TlsEvent>(&ev, BPF_RB_NO_WAKEUP).is_err() {
        count_lost_ringbuf(prog);
    }
    0
}

#[inline(always)]
fn ssl_arg0(ctx: &ProbeContext) -> u64 {
    ctx.arg::<u64>(0).unwrap_or(0)
}

#[inline(always)]
fn cookie<C: EbpfContext>(ctx: &C) -> u64 {
    unsafe { aya_ebpf::helpers::generated::bpf_get_attach_cookie(ctx.as_ptr()) }
}

/// Entry of SSL_do_handshake / SSL_connect (cookie: client) / SSL_accept (cookie: server), and of
/// SSL_set_connect_state / SSL_set_accept_state (cookie | COOKIE_SET_STATE).
#[uprobe]
pub fn ssl_handshake_enter(ctx: ProbeContext) -> u32 {
    let prog = ProgId::SslHandshakeEnter;
    let tgid = current_tgid();
    if tgid == config().self_tgid {
        return 0;
    }
    count_event(prog);
    let ssl = ssl_arg0(&ctx);
    let c = cookie(&ctx);
    let role_key = TlsInflightKey { tgid, kind: KEY_SSL_ROLE, id: ssl };
    if c & SSL_COOKIE_SET_STATE != 0 {
        let _ = SSL_ROLES.insert(&role_key, &((c & 0xff) as u32), 0);
        return 0;
    }
    let thread = TlsInflightKey { tgid, kind: KEY_SSL_THREAD, id: bpf_get_current_pid_tgid() };
    if let Some(t) = TLS_INFLIGHT.get_ptr_mut(&thread) {
        // SSL_connect / SSL_accept → SSL_do_handshake on the same thread: count the outer call.
        unsafe { (*t).depth += 1 };
        return 0;
    }
    let now = unsafe { bpf_ktime_get_ns() };
    let pending = TlsInflightKey { tgid, kind: KEY_SSL_PENDING, id: ssl };
    // A retried (non-blocking) handshake keeps its start and the errors seen so far.
    let (start_ns, ssl_reason, ssl_alert) = match unsafe { TLS_INFLIGHT.get(&pending) } {
        Some(p) => (p.start_ns, p.ssl_reason, p.ssl_alert),
        None => (now, 0, TLS_NO_ALERT as u32),
    };
    let mut role = (c & 0xff) as u32;
    if role == TLS_ROLE_UNKNOWN as u32 {
        if let Some(r) = unsafe { SSL_ROLES.get(&role_key) } {
            role = *r;
        }
    }
    let v = TlsInflight { start_ns, conn: ssl, depth: 1, role, last_ns: 0, ssl_reason, ssl_alert };
    if TLS_INFLIGHT.insert(&thread, &v, 0).is_err() {
        count_lost_map_full(prog);
    }
    0
}

/// The event of a finished OpenSSL handshake; with the library's offsets (cookie), the role when
/// not known yet and, on success, the negotiated version and ALPN protocol are read from the SSL.
#[inline(always)]
fn ssl_event(tgid: u32, now: u64, v: &TlsInflight, failed: bool, ret: i32, lib: Option<SslLibConfig>) -> TlsEvent {
    let mut ev = TlsEvent {
        header: EventHeader { kind: EventKind::Tls as u32, tgid, ktime_ns: now },
        duration_ns: now.saturating_sub(v.start_ns),
        library: TLS_LIBRARY_OPENSSL,
        role: v.role as u8,
        failed: failed as u8,
        alpn_len: TLS_ALPN_UNREAD,
        version: TLS_VERSION_UNKNOWN,
        cipher_suite: 0,
        alert_sent: TLS_ALERT_UNREAD,
        alert_received: TLS_ALERT_UNREAD,
        ret,
        alpn: [0; TLS_ALPN_LEN],
        ssl_reason: 0,
        _pad: 0,
    };
    let Some(lib) = lib else { return ev };
    if failed && lib.flags & SSL_LIB_ERRORS != 0 {
        ev.alert_sent = TLS_NO_ALERT;
        ev.alert_received = if v.ssl_alert > 255 { TLS_NO_ALERT } else { v.ssl_alert as u16 };
        ev.ssl_reason = v.ssl_reason;
    }
    let ssl = v.conn;
    // OpenSSL 3.2+: the fields are those of an SSL_CONNECTION (type 0); anything else (QUIC) is
    // not read.
    if lib.type_off != OFFSET_NONE && read::<u32>(ssl.wrapping_add(lib.type_off as u64)) != Some(0) {
        return ev;
    }
    if ev.role == TLS_ROLE_UNKNOWN && lib.is_server != OFFSET_NONE {
        if let Some(s) = read::<i32>(ssl.wrapping_add(lib.is_server as u64)) {
            ev.role = if s != 0 { TLS_ROLE_SERVER } else { TLS_ROLE_CLIENT };
        }
    }
    if failed {
        return ev;
    }
    if lib.version != OFFSET_NONE {
        if let Some(ver) = read::<i32>(ssl.wrapping_add(lib.version as u64)) {
            ev.version = ver as u16;
        }
    }
    // 1.1.1: the fields are in the struct `s->s3` points at.
    let base = if lib.alpn_base == OFFSET_NONE { Some(ssl) } else { read::<u64>(ssl.wrapping_add(lib.alpn_base as u64)) };
    if let (Some(base), true) = (base, lib.alpn_ptr != OFFSET_NONE && lib.alpn_len != OFFSET_NONE) {
        let ptr = read::<u64>(base.wrapping_add(lib.alpn_ptr as u64));
        let len = read::<u32>(base.wrapping_add(lib.alpn_len as u64));
        if let (Some(ptr), Some(len)) = (ptr, len) {
            if ptr == 0 {
                ev.alpn_len = 0;
            } else {
                read_alpn(&mut ev, ptr, u64::from(len));
            }
        }
    }
    ev
}

#[inline(always)]
fn ssl_lib<C: EbpfContext>(ctx: &C) -> Option<SslLibConfig> {
    let idx = cookie(ctx) as u32;
    unsafe { SSL_LIBS.get(&idx) }.copied()
}

/// Return of SSL_do_handshake / SSL_connect / SSL_accept. 1: done; 0: failed (shut down);
/// < 0: failed or would block (non-blocking I/O): remembered per SSL object until a later call
/// succeeds or SSL_free ends it.
#[uretprobe]
pub fn ssl_handshake_return(ctx: RetProbeContext) -> u32 {
    let prog = ProgId::SslHandshakeReturn;
    let tgid = current_tgid();
    if tgid == config().self_tgid {
        return 0;
    }
    count_event(prog);
    let thread = TlsInflightKey { tgid, kind: KEY_SSL_THREAD, id: bpf_get_current_pid_tgid() };
    let Some(t) = TLS_INFLIGHT.get_ptr_mut(&thread) else { return 0 };
    let mut v = unsafe { *t };
    if v.depth > 1 {
        unsafe { (*t).depth -= 1 };
        return 0;
    }
    let _ = TLS_INFLIGHT.remove(&thread);
    let ret: i64 = ctx.ret();
    let ret = ret as i32;
    let now = unsafe { bpf_ktime_get_ns() };
    let pending = TlsInflightKey { tgid, kind: KEY_SSL_PENDING, id: v.conn };
    if ret < 0 {
        v.last_ns = now;
        if TLS_INFLIGHT.insert(&pending, &v, 0).is_err() {
            count_lost_map_full(prog);
        }
        return 0;
    }
    let _ = TLS_INFLIGHT.remove(&pending);
    let ev = ssl_event(tgid, now, &v, ret != 1, ret, ssl_lib(&ctx));
    if EVENTS.output::<TlsEvent>(&ev, BPF_RB_NO_WAKEUP).is_err() {
        count_lost_ringbuf(prog);
    }
    0
}

/// SSL_free entry: a handshake still pending (its last call returned < 0) failed.
#[uprobe]
pub fn ssl_free(ctx: ProbeContext) -> u32 {
    let prog = ProgId::SslFree;
    let tgid = current_tgid();
    if tgid == config().self_tgid {
        return 0;
    }
    count_event(prog);
    let ssl = ssl_arg0(&ctx);
    let _ = SSL_ROLES.remove(&TlsInflightKey { tgid, kind: KEY_SSL_ROLE, id: ssl });
    let pending = TlsInflightKey { tgid, kind: KEY_SSL_PENDING, id: ssl };
    let Some(v) = (unsafe { TLS_INFLIGHT.get(&pending) }).copied() else { return 0 };
    let _ = TLS_INFLIGHT.remove(&pending);
    let mut ev = ssl_event(tgid, v.last_ns, &v, true, -1, ssl_lib(&ctx));
    ev.header.ktime_ns = unsafe { bpf_ktime_get_ns() };
    if EVENTS.output::<TlsEvent>(&ev, BPF_RB_NO_WAKEUP).is_err() {
        count_lost_ringbuf(prog);
    }
    0
}

/// libssl's calls of ERR_set_error / ERR_vset_error(lib, reason, …) (cookie 1) and 1.1.1's
/// ERR_put_error(lib, func, reason, …) (cookie 2), at its PLT stubs: an error raised on a thread
/// with a handshake in flight is its failure reason. libssl's error paths only; a lookup and out
/// when no handshake is in flight.
#[uprobe]
pub fn ssl_error(ctx: ProbeContext) -> u32 {
    let prog = ProgId::SslError;
    let tgid = current_tgid();
    if tgid == config().self_tgid {
        return 0;
    }
    count_event(prog);
    let thread = TlsInflightKey { tgid, kind: KEY_SSL_THREAD, id: bpf_get_current_pid_tgid() };
    let Some(t) = TLS_INFLIGHT.get_ptr_mut(&thread) else { return 0 };
    let lib = ctx.arg::<u64>(0).unwrap_or(0) as u32;
    if lib != ERR_LIB_SSL {
        return 0;
    }
    // Both read, then chosen: a load at a computed context offset is refused by the verifier.
    let (second, third) = (ctx.arg::<u64>(1).unwrap_or(0), ctx.arg::<u64>(2).unwrap_or(0));
    let reason = if cookie(&ctx) == 2 { third } else { second };
    // ERR_REASON_MASK: the low 23 bits.
    let reason = (reason as u32) & 0x7f_ffff;
    unsafe {
        if (SSL_AD_REASON_OFFSET..SSL_AD_REASON_OFFSET + 256).contains(&reason) {
            if (*t).ssl_alert > 255 {
                (*t).ssl_alert = reason - SSL_AD_REASON_OFFSET;
            }
        } else if (*t).ssl_reason == 0 {
            (*t).ssl_reason = reason;
        }
    }
    0
}

// Role constants are used by the daemon as cookies.
const _: () = assert!(TLS_ROLE_CLIENT == 1 && TLS_ROLE_SERVER == 2);

/// `filemap:mm_filemap_map_pages` (raw: the `address_space` is argument 0).
#[raw_tracepoint(tracepoint = "mm_filemap_map_pages")]
pub fn libssl_map_pages(ctx: RawTracePointContext) -> i32 {
    libssl_faulted(ProgId::LibsslMapPages, ctx.arg::<u64>(0));
    0
}

/// `filemap:mm_filemap_fault` (raw: the `address_space` is argument 0).
#[raw_tracepoint(tracepoint = "mm_filemap_fault")]
pub fn libssl_fault(ctx: RawTracePointContext) -> i32 {
    libssl_faulted(ProgId::LibsslFault, ctx.arg::<u64>(0));
    0
}

/// Issue #18 (a). The current process faults in pages of the file whose page cache is `mapping`.
/// When the file is a libssl (`libssl.so`, `libssl.so.*`) that LIBSSL_FILES does not know, the
/// process is stopped (SIGSTOP, taken as the fault returns: its loader is mapping or relocating
/// the library, none of the library's code has run) and the daemon told, so that it probes the
/// file and then resumes the process. Once per file: the entry is made here, and the daemon marks
/// the file probed. Never a traced process or one with a controlling terminal (a shell would
/// report it stopped); their files are probed when their exec is noticed, as before.
#[inline(always)]
fn libssl_faulted(prog: ProgId, mapping: u64) {
    let cfg = config();
    if cfg.hold_libssl == 0 || mapping == 0 {
        return;
    }
    count_event(prog);
    let recent = LIBSSL_RECENT.get_ptr_mut(0);
    if let Some(r) = recent {
        let r = unsafe { &*r };
        for i in 0..RECENT_MAPPINGS {
            if r.mappings[i] == mapping {
                return;
            }
        }
    }
    // No hold needed for this file: the next faults on it on this CPU return above.
    let skip = || {
        if let Some(r) = recent {
            let r = unsafe { &mut *r };
            let i = (r.next as usize) % RECENT_MAPPINGS;
            r.mappings[i] = mapping;
            r.next = (i as u32 + 1) % RECENT_MAPPINGS as u32;
        }
    };
    let ptr = |base: u64, off: u32| read_kernel::<u64>(base, off).unwrap_or(0);
    let inode = ptr(mapping, cfg.mapping_host);
    let alias = ptr(inode, cfg.inode_dentry);
    if alias == 0 {
        return;
    }
    let name_ptr = ptr(alias - cfg.dentry_alias as u64, cfg.dentry_name);
    if name_ptr == 0 {
        return;
    }
    let mut buf = [0u8; 16];
    let Ok(name) = (unsafe { bpf_probe_read_kernel_str_bytes(name_ptr as *const u8, &mut buf) }) else { return };
    // libssl.so or libssl.so.<anything>: not NSS's libssl3.so.
    if name.len() < 9 || &name[..9] != b"libssl.so" || (name.len() > 9 && name[9] != b'.') {
        skip();
        return;
    }
    let Some(dev) = read_kernel::<u32>(ptr(inode, cfg.inode_sb), cfg.sb_dev) else { return };
    let key = LibsslFileKey { dev, _pad: 0, ino: ptr(inode, cfg.inode_ino) };
    if unsafe { LIBSSL_FILES.get(&key) }.is_some() {
        skip();
        return;
    }
    let signal = ptr(unsafe { bpf_get_current_task() }, cfg.task_signal);
    if signal == 0 || ptr(signal, cfg.signal_tty) != 0 || crate::crash::traced() {
        return;
    }
    // Another CPU may hold a process for the same file this instant: only one is held.
    if LIBSSL_FILES.insert(&key, &LIBSSL_FILE_HELD, BPF_NOEXIST).is_err() {
        return;
    }
    let Some(mut entry) = EVENTS.reserve::<LibsslHeldEvent>(0) else {
        // Not held: the next process to fault it in will be.
        let _ = LIBSSL_FILES.remove(&key);
        count_lost_ringbuf(prog);
        return;
    };
    let id = bpf_get_current_pid_tgid();
    let stopped = unsafe { bpf_send_signal_thread(SIGSTOP) } == 0;
    let ev = LibsslHeldEvent {
        header: EventHeader { kind: EventKind::LibsslHeld as u32, tgid: (id >> 32) as u32, ktime_ns: unsafe { bpf_ktime_get_ns() } },
        tid: id as u32,
        stopped: stopped as u32,
        file: key,
    };
    entry.write(ev);
    entry.submit(0);
}
