//! Go runtime: GC cycles and stop-the-world pauses, from uprobes the daemon attaches to each Go
//! binary (function entries and RET instructions; never uretprobes, which crash Go). Each of these
//! fires a few times per GC cycle, so they are cheap enough to stay on.
use aya_ebpf::{
    helpers::{bpf_ktime_get_ns, bpf_probe_read_user},
    macros::{map, uprobe},
    maps::{HashMap, PerCpuHashMap},
    programs::ProbeContext,
};
use probe_common::{
    BPF_RB_NO_WAKEUP,
    CreationSite, EventHeader, EventKind, GoCreationConfig, GoCreationCounts, GoGcEvent, GoStwEvent, GoidKey,
    ProgId, StwStart, DURATION_UNKNOWN, MAX_CREATION_SITES, MAX_PROCS, MAX_WINDOW_GOIDS,
};

use crate::maps::{count_event, count_lost_map_full, count_lost_ringbuf, current_tgid, BPF_NOEXIST, EVENTS};

/// Start of the GC cycle in progress, per process.
#[map]
static GC_START: HashMap<u32, u64> = HashMap::with_max_entries(MAX_PROCS, 0);

/// Start (and reason) of the stop-the-world pause in progress, per process.
#[map]
static STW_START: HashMap<u32, StwStart> = HashMap::with_max_entries(MAX_PROCS, 0);

/// Processes whose goroutine creations are being counted, with their g offsets.
#[map]
pub static GO_CREATION: HashMap<u32, GoCreationConfig> = HashMap::with_max_entries(MAX_PROCS, 0);

/// Goroutines created / exited per process while counting.
#[map]
pub static GO_CREATION_COUNTS: PerCpuHashMap<u32, GoCreationCounts> = PerCpuHashMap::with_max_entries(MAX_PROCS, 0);

/// Goroutines created per (process, creation PC) while counting (per CPU: exact without atomics).
#[map]
pub static CREATION_SITES: PerCpuHashMap<CreationSite, u64> = PerCpuHashMap::with_max_entries(MAX_CREATION_SITES, 0);

/// Goroutines created while counting and still alive: (tgid, goid). Exits count only these, so a
/// goroutine that began before the window does not count as an exit of the window.
#[map]
static WINDOW_GOIDS: HashMap<GoidKey, u8> = HashMap::with_max_entries(MAX_WINDOW_GOIDS, 0);


#[inline(always)]
fn creation_counts(prog: ProgId, tgid: u32) -> Option<&'static mut GoCreationCounts> {
    if let Some(p) = GO_CREATION_COUNTS.get_ptr_mut(&tgid) {
        return Some(unsafe { &mut *p });
    }
    let _ = GO_CREATION_COUNTS.insert(&tgid, &GoCreationCounts::default(), BPF_NOEXIST);
    match GO_CREATION_COUNTS.get_ptr_mut(&tgid) {
        Some(p) => Some(unsafe { &mut *p }),
        None => {
            count_lost_map_full(prog);
            None
        }
    }
}

/// Every RET of runtime.newproc1 (on demand, one process): the new g is the result register.
#[uprobe]
pub fn go_newproc(ctx: ProbeContext) -> u32 {
    let prog = ProgId::GoNewproc;
    count_event(prog);
    let tgid = current_tgid();
    let Some(cfg) = (unsafe { GO_CREATION.get(&tgid) }).copied() else { return 0 };
    let newg = go_reg(&ctx, GoReg::Arg0);
    if newg == 0 {
        return 0;
    }
    if let Some(c) = creation_counts(prog, tgid) {
        c.created += 1;
    }
    let goid: u64 = unsafe { bpf_probe_read_user((newg + cfg.g_goid as u64) as *const u64) }.unwrap_or(0);
    if WINDOW_GOIDS.insert(&GoidKey { tgid, _pad: 0, goid }, &1u8, 0).is_err() {
        count_lost_map_full(prog);
    }
    let gopc: u64 = unsafe { bpf_probe_read_user((newg + cfg.g_gopc as u64) as *const u64) }.unwrap_or(0);
    let key = CreationSite { tgid, _pad: 0, gopc };
    if let Some(n) = CREATION_SITES.get_ptr_mut(&key) {
        unsafe { *n += 1 };
    } else if CREATION_SITES.insert(&key, &1u64, BPF_NOEXIST).is_err() {
        match CREATION_SITES.get_ptr_mut(&key) {
            Some(n) => unsafe { *n += 1 },
            None => count_lost_map_full(prog),
        }
    }
    0
}

/// runtime.goexit1 entry (on demand, one process): a goroutine ends (it runs on that goroutine).
#[uprobe]
pub fn go_goexit(ctx: ProbeContext) -> u32 {
    let prog = ProgId::GoExit;
    count_event(prog);
    let tgid = current_tgid();
    let Some(cfg) = (unsafe { GO_CREATION.get(&tgid) }).copied() else { return 0 };
    let g = go_reg(&ctx, GoReg::CurrentG);
    if g == 0 {
        return 0;
    }
    let goid: u64 = unsafe { bpf_probe_read_user((g + cfg.g_goid as u64) as *const u64) }.unwrap_or(0);
    if WINDOW_GOIDS.remove(&GoidKey { tgid, _pad: 0, goid }).is_ok() {
        if let Some(c) = creation_counts(prog, tgid) {
            c.exited += 1;
        }
    }
    0
}

/// The registers Go's register ABI gives a meaning to.
#[derive(Clone, Copy)]
pub(crate) enum GoReg {
    /// First integer argument / result (amd64 RAX, arm64 X0).
    Arg0,
    /// Second integer argument (amd64 RBX, arm64 X1).
    Arg1,
    /// The current goroutine (amd64 R14, arm64 X28).
    CurrentG,
    /// Instruction, stack and frame pointers.
    Pc,
    Sp,
    Fp,
    /// arm64's link register (the return address at a function's entry); 0 on amd64, where it is
    /// at the top of the stack.
    Lr,
}

#[inline(always)]
pub(crate) fn go_reg(ctx: &ProbeContext, reg: GoReg) -> u64 {
    #[cfg(bpf_target_arch = "x86_64")]
    {
        let regs = unsafe { &*ctx.regs };
        match reg {
            GoReg::Arg0 => regs.rax,
            GoReg::Arg1 => regs.rbx,
            GoReg::CurrentG => regs.r14,
            GoReg::Pc => regs.rip,
            GoReg::Sp => regs.rsp,
            GoReg::Fp => regs.rbp,
            GoReg::Lr => 0,
        }
    }
    #[cfg(bpf_target_arch = "aarch64")]
    {
        let regs = unsafe { &*(ctx.regs as *const aya_ebpf::bindings::user_pt_regs) };
        match reg {
            GoReg::Arg0 => regs.regs[0],
            GoReg::Arg1 => regs.regs[1],
            GoReg::CurrentG => regs.regs[28],
            GoReg::Pc => regs.pc,
            GoReg::Sp => regs.sp,
            GoReg::Fp => regs.regs[29],
            GoReg::Lr => regs.regs[30],
        }
    }
    #[cfg(not(any(bpf_target_arch = "x86_64", bpf_target_arch = "aarch64")))]
    {
        let _ = (ctx, reg);
        0
    }
}

/// Integer argument `n` (0-based) of Go's register ABI: amd64 RAX, RBX, RCX, RDI, RSI, R8, R9,
/// R10, R11; arm64 X0..X8 (of X0..X15). 0 beyond them.
#[inline(always)]
pub(crate) fn go_arg(ctx: &ProbeContext, n: usize) -> u64 {
    #[cfg(bpf_target_arch = "x86_64")]
    {
        let r = unsafe { &*ctx.regs };
        match n {
            0 => r.rax,
            1 => r.rbx,
            2 => r.rcx,
            3 => r.rdi,
            4 => r.rsi,
            5 => r.r8,
            6 => r.r9,
            7 => r.r10,
            8 => r.r11,
            _ => 0,
        }
    }
    #[cfg(bpf_target_arch = "aarch64")]
    {
        let regs = unsafe { &*(ctx.regs as *const aya_ebpf::bindings::user_pt_regs) };
        // Constant indexes only: the verifier refuses a variable offset into the context.
        match n {
            0 => regs.regs[0],
            1 => regs.regs[1],
            2 => regs.regs[2],
            3 => regs.regs[3],
            4 => regs.regs[4],
            5 => regs.regs[5],
            6 => regs.regs[6],
            7 => regs.regs[7],
            8 => regs.regs[8],
            _ => 0,
        }
    }
    #[cfg(not(any(bpf_target_arch = "x86_64", bpf_target_arch = "aarch64")))]
    {
        let _ = (ctx, n);
        0
    }
}

/// runtime.gcStart entry: the first call since the last cycle ended starts a cycle (later calls
/// while one runs return early and must not move the start).
#[uprobe]
pub fn go_gc_start(_ctx: ProbeContext) -> u32 {
    let prog = ProgId::GoGcStart;
    count_event(prog);
    let now = unsafe { bpf_ktime_get_ns() };
    if let Err(e) = GC_START.insert(&current_tgid(), &now, BPF_NOEXIST) {
        // -EEXIST (17): a cycle is already under way; anything else: the map is full.
        if e != -17 {
            count_lost_map_full(prog);
        }
    }
    0
}

/// runtime.gcMarkTermination entry: marking is complete; the cycle is counted.
#[uprobe]
pub fn go_gc_done(_ctx: ProbeContext) -> u32 {
    let prog = ProgId::GoGcDone;
    count_event(prog);
    let now = unsafe { bpf_ktime_get_ns() };
    let tgid = current_tgid();
    let duration_ns = match unsafe { GC_START.get(&tgid) } {
        Some(start) => now.saturating_sub(*start),
        None => DURATION_UNKNOWN,
    };
    let _ = GC_START.remove(&tgid);
    let ev = GoGcEvent {
        header: EventHeader { kind: EventKind::GoGc as u32, tgid, ktime_ns: now },
        duration_ns,
    };
    if EVENTS.output::<GoGcEvent>(&ev, BPF_RB_NO_WAKEUP).is_err() {
        count_lost_ringbuf(prog);
    }
    0
}

/// runtime.stopTheWorldWithSema entry: the world starts stopping.
#[uprobe]
pub fn go_stw_stop(ctx: ProbeContext) -> u32 {
    let prog = ProgId::GoPauseBegin;
    count_event(prog);
    let start = StwStart {
        ktime_ns: unsafe { bpf_ktime_get_ns() },
        reason: (go_reg(&ctx, GoReg::Arg0) & 0xff) as u32,
        _pad: 0,
    };
    if STW_START.insert(&current_tgid(), &start, 0).is_err() {
        count_lost_map_full(prog);
    }
    0
}

/// runtime.startTheWorldWithSema entry: the pause ends.
#[uprobe]
pub fn go_stw_start(_ctx: ProbeContext) -> u32 {
    let prog = ProgId::GoPauseEnd;
    count_event(prog);
    let now = unsafe { bpf_ktime_get_ns() };
    let tgid = current_tgid();
    let Some(start) = (unsafe { STW_START.get(&tgid) }).copied() else {
        return 0;
    };
    let _ = STW_START.remove(&tgid);
    let ev = GoStwEvent {
        header: EventHeader { kind: EventKind::GoStw as u32, tgid, ktime_ns: now },
        duration_ns: now.saturating_sub(start.ktime_ns),
        reason: start.reason,
        _pad: 0,
    };
    if EVENTS.output::<GoStwEvent>(&ev, BPF_RB_NO_WAKEUP).is_err() {
        count_lost_ringbuf(prog);
    }
    0
}
