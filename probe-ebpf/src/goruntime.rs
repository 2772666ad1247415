//! Go runtime: GC cycles and stop-the-world pauses, from uprobes the daemon attaches to each Go
//! binary (function entries and RET instructions; never uretprobes, which crash Go). Each of these
//! fires a few times per GC cycle, so they are cheap enough to stay on.
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{map, uprobe},
    maps::HashMap,
    programs::ProbeContext,
};
use probe_common::{
    EventHeader, EventKind, GoGcEvent, GoStwEvent, ProgId, StwStart, DURATION_UNKNOWN, MAX_PROCS,
};

use crate::maps::{count_event, count_lost_map_full, count_lost_ringbuf, EVENTS};

/// Start of the GC cycle in progress, per process.
#[map]
static GC_START: HashMap<u32, u64> = HashMap::with_max_entries(MAX_PROCS, 0);

/// Start (and reason) of the stop-the-world pause in progress, per process.
#[map]
static STW_START: HashMap<u32, StwStart> = HashMap::with_max_entries(MAX_PROCS, 0);

const BPF_NOEXIST: u64 = 1;

#[inline(always)]
fn tgid() -> u32 {
    (bpf_get_current_pid_tgid() >> 32) as u32
}

/// First integer argument under Go's register ABI (amd64 RAX, arm64 X0).
#[inline(always)]
fn go_arg0(ctx: &ProbeContext) -> u64 {
    #[cfg(bpf_target_arch = "x86_64")]
    {
        unsafe { (*ctx.regs).rax }
    }
    #[cfg(bpf_target_arch = "aarch64")]
    {
        let regs = ctx.regs as *const aya_ebpf::bindings::user_pt_regs;
        unsafe { (*regs).regs[0] }
    }
    #[cfg(not(any(bpf_target_arch = "x86_64", bpf_target_arch = "aarch64")))]
    {
        let _ = ctx;
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
    if let Err(e) = GC_START.insert(&tgid(), &now, BPF_NOEXIST) {
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
    let tgid = tgid();
    let duration_ns = match unsafe { GC_START.get(&tgid) } {
        Some(start) => now.saturating_sub(*start),
        None => DURATION_UNKNOWN,
    };
    let _ = GC_START.remove(&tgid);
    let ev = GoGcEvent {
        header: EventHeader { kind: EventKind::GoGc as u32, tgid, ktime_ns: now },
        duration_ns,
    };
    if EVENTS.output::<GoGcEvent>(&ev, 0).is_err() {
        count_lost_ringbuf(prog);
    }
    0
}

/// runtime.stopTheWorldWithSema entry: the world starts stopping.
#[uprobe]
pub fn go_stw_stop(ctx: ProbeContext) -> u32 {
    let prog = ProgId::GoStwStop;
    count_event(prog);
    let start = StwStart {
        ktime_ns: unsafe { bpf_ktime_get_ns() },
        reason: (go_arg0(&ctx) & 0xff) as u32,
        _pad: 0,
    };
    if STW_START.insert(&tgid(), &start, 0).is_err() {
        count_lost_map_full(prog);
    }
    0
}

/// runtime.startTheWorldWithSema entry: the pause ends.
#[uprobe]
pub fn go_stw_start(_ctx: ProbeContext) -> u32 {
    let prog = ProgId::GoStwStart;
    count_event(prog);
    let now = unsafe { bpf_ktime_get_ns() };
    let tgid = tgid();
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
    if EVENTS.output::<GoStwEvent>(&ev, 0).is_err() {
        count_lost_ringbuf(prog);
    }
    0
}
