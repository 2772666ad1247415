//! Memory mappings: mmap, munmap and brk calls, bytes and failures (syscall tracepoints).
//!
//! sys_enter remembers the length (or requested break) per thread; sys_exit counts the call with
//! the result. Everything is counted per process in per-CPU maps.
use aya_ebpf::{helpers::bpf_get_current_pid_tgid, macros::tracepoint, programs::TracePointContext};
use probe_common::{tp, FailureKey, InflightCall, MemSyscall, ProgId};

use crate::maps::{count_event, count_failure, count_lost_map_full, proc_counters, INFLIGHT};

const MAX_ERRNO: i64 = 4095;
const ENOMEM: u16 = 12;

#[inline(always)]
fn remember(ctx: &TracePointContext, prog: ProgId, arg_off: u32) {
    count_event(prog);
    let arg: u64 = match unsafe { ctx.read_at(arg_off as usize) } {
        Ok(v) => v,
        Err(_) => return,
    };
    let id = bpf_get_current_pid_tgid();
    if INFLIGHT.insert(&id, &InflightCall { arg }, 0).is_err() {
        count_lost_map_full(prog);
    }
}

/// The call's remembered argument and return value; removes the in-flight entry.
#[inline(always)]
fn complete(ctx: &TracePointContext, prog: ProgId) -> Option<(u32, u64, i64)> {
    count_event(prog);
    let id = bpf_get_current_pid_tgid();
    let call = unsafe { INFLIGHT.get(&id) }.copied()?;
    let _ = INFLIGHT.remove(&id);
    let ret: i64 = unsafe { ctx.read_at(tp::SYS_EXIT_RET as usize).ok()? };
    Some(((id >> 32) as u32, call.arg, ret))
}

#[inline(always)]
fn errno_of(ret: i64) -> Option<u16> {
    if (-MAX_ERRNO..0).contains(&ret) {
        Some((-ret) as u16)
    } else {
        None
    }
}

#[tracepoint]
pub fn sys_enter_mmap(ctx: TracePointContext) -> u32 {
    remember(&ctx, ProgId::SysEnterMmap, tp::SYS_ENTER_ARG1);
    0
}

#[tracepoint]
pub fn sys_exit_mmap(ctx: TracePointContext) -> u32 {
    let prog = ProgId::SysExitMmap;
    if let Some((tgid, len, ret)) = complete(&ctx, prog) {
        match errno_of(ret) {
            Some(errno) => count_failure(
                prog,
                FailureKey { tgid, syscall: MemSyscall::Mmap as u16, errno },
            ),
            None => {
                if let Some(c) = proc_counters(prog, tgid) {
                    c.mmap_calls += 1;
                    c.mmap_bytes += len;
                }
            }
        }
    }
    0
}

/// munmap is counted at entry (calls and requested bytes) and its rare failures at exit, so it
/// needs no in-flight entry: half the map work of mmap on the hottest pair of memory syscalls.
#[tracepoint]
pub fn sys_enter_munmap(ctx: TracePointContext) -> u32 {
    let prog = ProgId::SysEnterMunmap;
    count_event(prog);
    let len: u64 = unsafe { ctx.read_at(tp::SYS_ENTER_ARG1 as usize) }.unwrap_or(0);
    if let Some(c) = proc_counters(prog, (bpf_get_current_pid_tgid() >> 32) as u32) {
        c.munmap_calls += 1;
        c.munmap_bytes += len;
    }
    0
}

#[tracepoint]
pub fn sys_exit_munmap(ctx: TracePointContext) -> u32 {
    let prog = ProgId::SysExitMunmap;
    count_event(prog);
    let ret: i64 = unsafe { ctx.read_at(tp::SYS_EXIT_RET as usize) }.unwrap_or(0);
    if let Some(errno) = errno_of(ret) {
        let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
        count_failure(prog, FailureKey { tgid, syscall: MemSyscall::Munmap as u16, errno });
    }
    0
}

#[tracepoint]
pub fn sys_enter_brk(ctx: TracePointContext) -> u32 {
    remember(&ctx, ProgId::SysEnterBrk, tp::SYS_ENTER_ARG0);
    0
}

#[tracepoint]
pub fn sys_exit_brk(ctx: TracePointContext) -> u32 {
    let prog = ProgId::SysExitBrk;
    if let Some((tgid, requested, ret)) = complete(&ctx, prog) {
        if let Some(c) = proc_counters(prog, tgid) {
            c.brk_calls += 1;
        }
        // brk returns the current break; asking for a new one and getting another is ENOMEM.
        if requested != 0 && ret as u64 != requested {
            count_failure(prog, FailureKey { tgid, syscall: MemSyscall::Brk as u16, errno: ENOMEM });
        }
    }
    0
}
