//! Go crash paths: the entries of runtime.fatalpanic (unrecovered panics), runtime.throw and
//! runtime.fatal (fatal errors) and os.Exit (log.Fatal's way out). Each fires once in a process's
//! life, so they stay on for every tracked Go process. The event carries what the dying process
//! knows that user space may not be able to read later: the message, the panic value's first
//! bytes, the frame-pointer chain. When allowed, the program stops the whole process (SIGSTOP)
//! before it prints anything, so user space can read its goroutines and heap; user space resumes
//! it (SIGCONT) within a bounded time.
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_get_current_task, bpf_ktime_get_ns, bpf_probe_read_kernel, bpf_probe_read_user, bpf_probe_read_user_buf, bpf_send_signal_thread},
    macros::{map, uprobe},
    maps::{Array, HashMap},
    programs::ProbeContext,
};
use probe_common::{
    EventHeader, EventKind, GoCrashConfig, GoCrashEvent, ProgId, CRASH_EXIT, CRASH_FATAL, CRASH_HEAD_LEN, CRASH_MAX_PCS,
    CRASH_PANIC, CRASH_TEXT_LEN, CRASH_THROW, MAX_PROCS, OFFSET_NONE, PAUSES_ENDED, PAUSES_STARTED, PAUSE_LIMIT, PAUSE_NONE, PAUSE_TRACED,
    PAUSE_STOPPED,
};

use crate::{
    goruntime::{go_reg, GoReg},
    maps::{count_event, count_lost_ringbuf, EVENTS, SIGSTOP},
};

/// Per-process offsets and pause permission (written by the daemon when it tracks the process).
#[map]
static GO_CRASH: HashMap<u32, GoCrashConfig> = HashMap::with_max_entries(MAX_PROCS, 0);

/// [PAUSES_STARTED] (added here only) and [PAUSES_ENDED] (written by the daemon only).
#[map]
static CRASH_PAUSES: Array<u64> = Array::with_max_entries(2, 0);


#[uprobe]
pub fn go_fatalpanic(ctx: ProbeContext) -> u32 {
    crash(&ctx, ProgId::GoFatalPanic, CRASH_PANIC)
}

#[uprobe]
pub fn go_throw(ctx: ProbeContext) -> u32 {
    crash(&ctx, ProgId::GoThrow, CRASH_THROW)
}

#[uprobe]
pub fn go_fatal(ctx: ProbeContext) -> u32 {
    crash(&ctx, ProgId::GoFatal, CRASH_FATAL)
}

#[uprobe]
pub fn go_os_exit(ctx: ProbeContext) -> u32 {
    // os.Exit(0) is a normal end.
    if go_reg(&ctx, GoReg::Arg0) as i64 == 0 {
        return 0;
    }
    crash(&ctx, ProgId::GoOsExit, CRASH_EXIT)
}

#[inline(always)]
fn read_u64(addr: u64) -> u64 {
    if addr == 0 {
        return 0;
    }
    unsafe { bpf_probe_read_user(addr as *const u64) }.unwrap_or(0)
}

#[inline(always)]
fn crash(ctx: &ProbeContext, prog: ProgId, kind: u32) -> u32 {
    count_event(prog);
    let id = bpf_get_current_pid_tgid();
    let (tgid, tid) = ((id >> 32) as u32, id as u32);
    let cfg = match GO_CRASH.get_ptr_mut(&tgid) {
        Some(p) => {
            // SAFETY: a live map value; only this program family writes `crashed`.
            let c = unsafe { &mut *p };
            if c.crashed != 0 {
                return 0;
            }
            c.crashed = 1;
            *c
        }
        None => GoCrashConfig::UNKNOWN,
    };
    // Stop first: the sooner the process stops, the less of its state is gone.
    let paused = pause(cfg.max_pauses);
    let Some(mut entry) = EVENTS.reserve::<GoCrashEvent>(0) else {
        count_lost_ringbuf(prog);
        return 0;
    };
    // SAFETY: the reserved record is ours until submitted; every field is written below.
    let ev: &mut GoCrashEvent = unsafe { &mut *entry.as_mut_ptr() };
    let (pc, sp, fp, lr) = (go_reg(ctx, GoReg::Pc), go_reg(ctx, GoReg::Sp), go_reg(ctx, GoReg::Fp), go_reg(ctx, GoReg::Lr));
    let (a0, a1, g) = (go_reg(ctx, GoReg::Arg0), go_reg(ctx, GoReg::Arg1), go_reg(ctx, GoReg::CurrentG));
    unsafe {
        ev.header = EventHeader { kind: EventKind::GoCrash as u32, tgid, ktime_ns: bpf_ktime_get_ns() };
        ev.kind = kind;
        ev.tid = tid;
        ev.code = if kind == CRASH_EXIT { a0 as i64 } else { 0 };
        ev.g = g;
        ev.goid = if cfg.g_goid != OFFSET_NONE && g != 0 { read_u64(g + cfg.g_goid as u64) } else { 0 };
        ev.pc = pc;
        ev.sp = sp;
        ev.fp = fp;
        ev.value_type = 0;
        ev.value_data = 0;
        ev.head = [0; CRASH_HEAD_LEN];
        ev.paused = paused;
        ev.text_len = 0;
        ev.text_truncated = 0;
        ev.npcs = 0;
        ev.system_pcs = 0;
        // The message: throw/fatal get it as a string (pointer, length); a panic's value is an
        // `any` in the *_panic argument, whose data word points at a string header for strings
        // and for the usual errors (errors.errorString, fmt.wrapError: the message comes first).
        let (text_ptr, text_len) = if kind == CRASH_THROW || kind == CRASH_FATAL {
            (a0, a1)
        } else if kind == CRASH_PANIC && cfg.panic_arg != OFFSET_NONE && a0 != 0 {
            let arg = a0 + cfg.panic_arg as u64;
            let (t, d) = (read_u64(arg), read_u64(arg + 8));
            ev.value_type = t;
            ev.value_data = d;
            if d != 0 {
                let _ = bpf_probe_read_user_buf(d as *const u8, &mut ev.head);
            }
            let head = ev.head;
            (u64::from_le_bytes([head[0], head[1], head[2], head[3], head[4], head[5], head[6], head[7]]),
             u64::from_le_bytes([head[8], head[9], head[10], head[11], head[12], head[13], head[14], head[15]]))
        } else {
            (0, 0)
        };
        if text_ptr != 0 && text_len > 0 && text_len < (1 << 32) {
            let n = if text_len > CRASH_TEXT_LEN as u64 { CRASH_TEXT_LEN } else { text_len as usize };
            ev.text_truncated = u16::from(text_len > CRASH_TEXT_LEN as u64);
            if n > 0 && n <= CRASH_TEXT_LEN && bpf_probe_read_user_buf(text_ptr as *const u8, &mut ev.text[..n]).is_ok() {
                ev.text_len = n as u16;
            }
        }
        // pc, the caller (top of the stack on amd64, the link register on arm64), then the
        // frame-pointer chain: [fp] = the caller's frame pointer, [fp+8] = its return address.
        ev.pcs = [0; CRASH_MAX_PCS];
        ev.pcs[0] = pc;
        ev.pcs[1] = if lr != 0 { lr } else { read_u64(sp) };
        let mut n = walk(&mut ev.pcs, 2, fp);
        // On the system stack (g is the thread's g0, not m.curg): the user goroutine's stack too.
        if cfg.g_m != OFFSET_NONE && cfg.m_curg != OFFSET_NONE && cfg.sched_pc != OFFSET_NONE && cfg.sched_bp != OFFSET_NONE && g != 0 {
            let m = read_u64(g + cfg.g_m as u64);
            let curg = if m != 0 { read_u64(m + cfg.m_curg as u64) } else { 0 };
            if curg != 0 && curg != g {
                if cfg.g_goid != OFFSET_NONE {
                    ev.goid = read_u64(curg + cfg.g_goid as u64);
                }
                // The frame-pointer walk from the system stack can run on into the goroutine's
                // frames (morestack links to them, without the frame that overflowed): keep at
                // most half the room for it, so the goroutine's own stack, from its saved pc,
                // always fits.
                n = if n > CRASH_MAX_PCS / 2 { CRASH_MAX_PCS / 2 } else { n };
                ev.system_pcs = n as u32;
                let upc = read_u64(curg + cfg.sched_pc as u64);
                if upc != 0 {
                    ev.pcs[n & (CRASH_MAX_PCS - 1)] = upc;
                    n = walk(&mut ev.pcs, n + 1, read_u64(curg + cfg.sched_bp as u64));
                }
            }
        }
        ev.npcs = n as u32;
    }
    entry.submit(0);
    0
}

/// Follows the frame-pointer chain from `frame` ([fp] = the caller's frame pointer, [fp+8] = its
/// return address), filling `pcs` from index `n`; returns the new count.
#[inline(always)]
fn walk(pcs: &mut [u64; CRASH_MAX_PCS], mut n: usize, mut frame: u64) -> usize {
    for _ in 0..CRASH_MAX_PCS {
        if frame == 0 || frame & 7 != 0 || n >= CRASH_MAX_PCS {
            break;
        }
        let ret = read_u64(frame + 8);
        if ret == 0 {
            break;
        }
        pcs[n & (CRASH_MAX_PCS - 1)] = ret;
        n += 1;
        let next = read_u64(frame);
        if next <= frame {
            break;
        }
        frame = next;
    }
    n
}

/// Whether the current thread or its process's main thread has a tracer (a debugger): its
/// `task_struct.ptrace`, at offsets from the kernel's BTF. Unknown offsets: not traced.
#[inline(always)]
pub(crate) fn traced() -> bool {
    let cfg = crate::maps::config();
    if cfg.task_ptrace == OFFSET_NONE {
        return false;
    }
    let task = unsafe { bpf_get_current_task() };
    if task == 0 {
        return false;
    }
    let ptrace = |t: u64| unsafe { bpf_probe_read_kernel((t + cfg.task_ptrace as u64) as *const u32) }.unwrap_or(0);
    if ptrace(task) != 0 {
        return true;
    }
    if cfg.task_group_leader == OFFSET_NONE {
        return false;
    }
    let leader = unsafe { bpf_probe_read_kernel((task + cfg.task_group_leader as u64) as *const u64) }.unwrap_or(0);
    leader != 0 && leader != task && ptrace(leader) != 0
}

/// Stops the current process when the node's pause budget allows it and no debugger holds it.
#[inline(always)]
fn pause(max: u32) -> u32 {
    if max == 0 {
        return PAUSE_NONE;
    }
    if traced() {
        return PAUSE_TRACED;
    }
    let (Some(started), Some(ended)) = (CRASH_PAUSES.get_ptr_mut(PAUSES_STARTED), CRASH_PAUSES.get(PAUSES_ENDED)) else {
        return PAUSE_NONE;
    };
    // Racy between CPUs: user space resumes at once any process beyond its own count of pauses.
    let now = unsafe { *started }.wrapping_sub(*ended);
    if now >= u64::from(max) {
        return PAUSE_LIMIT;
    }
    // To this thread, not the process: the kernel takes a thread's own pending signals before
    // the process's, so a process-wide SIGSTOP lost the race to a SIGURG (Go's preemption, sent
    // to the thread) and the thread stopped at the entry of the runtime's signal handler, not at
    // the crash function the keeper of a restarted daemon looks for. A stop signal sent to one
    // thread still stops them all.
    if unsafe { bpf_send_signal_thread(SIGSTOP) } != 0 {
        return PAUSE_NONE;
    }
    // A plain add (the BPF target has no atomic read-modify-write in core): two CPUs crashing in
    // the same instant may count one pause; user space counts stops itself and ends extra ones.
    unsafe { *started += 1 };
    PAUSE_STOPPED
}
