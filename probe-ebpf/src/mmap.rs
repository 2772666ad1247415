//! Memory mappings: mmap, munmap and brk calls, bytes and failures.
//!
//! Preferred: one fexit program per system call, on its entry point (`__x64_sys_mmap`, …: the
//! daemon picks the name for the architecture). It sees the arguments (through the `pt_regs` the
//! entry point receives) and the result together, and costs only these three calls a BPF
//! trampoline.
//!
//! Fallback (a kernel without BTF trampolines): the syscall tracepoints. sys_enter remembers the
//! length (or requested break) per thread; sys_exit counts the call with the result. Enabling any
//! syscall tracepoint sends every system call of every process through the kernel's slow syscall
//! path (measured here: 3% fewer 64-byte TLS round trips/s with one unused syscall tracepoint
//! enabled), which is why they are only the fallback.
//!
//! Either way the calls are counted per process in per-CPU maps.
use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::{fexit, tracepoint},
    programs::{FExitContext, TracePointContext},
};
use probe_common::{tp, FailureKey, InflightCall, MemSyscall, ProgId};

use crate::record::field;
use crate::maps::{count_event, count_failure, count_lost_map_full, current_tgid, proc_counters, INFLIGHT};

const MAX_ERRNO: i64 = 4095;
const ENOMEM: u16 = 12;

#[inline(always)]
fn remember(ctx: &TracePointContext, prog: ProgId, arg_off: u32) {
    count_event(prog);
    let arg: u64 = field(ctx, arg_off);
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
    let ret: i64 = field(ctx, tp::SYS_EXIT_RET);
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

/// Argument `n` of the system call whose `pt_regs` the entry point received (its only argument).
#[inline(always)]
fn syscall_arg(ctx: &FExitContext, n: usize) -> u64 {
    #[cfg(bpf_target_arch = "x86_64")]
    {
        let regs: *const aya_ebpf::bindings::pt_regs = ctx.arg(0);
        // SAFETY: a BTF-typed pointer: the verifier turns the loads into checked kernel reads.
        unsafe {
            match n {
                0 => (*regs).rdi,
                1 => (*regs).rsi,
                2 => (*regs).rdx,
                3 => (*regs).r10,
                4 => (*regs).r8,
                _ => (*regs).r9,
            }
        }
    }
    #[cfg(bpf_target_arch = "aarch64")]
    {
        let regs: *const aya_ebpf::bindings::user_pt_regs = ctx.arg(0);
        // SAFETY: as above; arm64's pt_regs begins with user_pt_regs.
        unsafe { (*regs).regs[n & 7] }
    }
    #[cfg(not(any(bpf_target_arch = "x86_64", bpf_target_arch = "aarch64")))]
    {
        let _ = (ctx, n);
        0
    }
}

/// The system call's result (an fexit program's context holds it after the one argument).
#[inline(always)]
fn syscall_ret(ctx: &FExitContext) -> i64 {
    ctx.arg::<u64>(1) as i64
}

#[inline(always)]
fn count_mmap(prog: ProgId, tgid: u32, len: u64, ret: i64) {
    match errno_of(ret) {
        Some(errno) => count_failure(prog, FailureKey { tgid, syscall: MemSyscall::Mmap as u16, errno }),
        None => {
            if let Some(c) = proc_counters(prog, tgid) {
                c.mmap_calls += 1;
                c.mmap_bytes += len;
            }
        }
    }
}

/// Every munmap call and its requested bytes; a failure also by errno.
#[inline(always)]
fn count_munmap(prog: ProgId, tgid: u32, len: u64) {
    if let Some(c) = proc_counters(prog, tgid) {
        c.munmap_calls += 1;
        c.munmap_bytes += len;
    }
}

#[inline(always)]
fn count_munmap_failure(prog: ProgId, tgid: u32, ret: i64) {
    if let Some(errno) = errno_of(ret) {
        count_failure(prog, FailureKey { tgid, syscall: MemSyscall::Munmap as u16, errno });
    }
}

#[inline(always)]
fn count_brk(prog: ProgId, tgid: u32, requested: u64, ret: i64) {
    if let Some(c) = proc_counters(prog, tgid) {
        c.brk_calls += 1;
    }
    // brk returns the current break; asking for a new one and getting another is ENOMEM.
    if requested != 0 && ret as u64 != requested {
        count_failure(prog, FailureKey { tgid, syscall: MemSyscall::Brk as u16, errno: ENOMEM });
    }
}

/// Return of the mmap system call.
#[fexit]
pub fn mmap_fexit(ctx: FExitContext) -> u32 {
    let prog = ProgId::MmapFexit;
    count_event(prog);
    count_mmap(prog, current_tgid(), syscall_arg(&ctx, 1), syscall_ret(&ctx));
    0
}

/// Return of the munmap system call.
#[fexit]
pub fn munmap_fexit(ctx: FExitContext) -> u32 {
    let prog = ProgId::MunmapFexit;
    count_event(prog);
    let tgid = current_tgid();
    count_munmap(prog, tgid, syscall_arg(&ctx, 1));
    count_munmap_failure(prog, tgid, syscall_ret(&ctx));
    0
}

/// Return of the brk system call.
#[fexit]
pub fn brk_fexit(ctx: FExitContext) -> u32 {
    let prog = ProgId::BrkFexit;
    count_event(prog);
    count_brk(prog, current_tgid(), syscall_arg(&ctx, 0), syscall_ret(&ctx));
    0
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
        count_mmap(prog, tgid, len, ret);
    }
    0
}

/// munmap is counted at entry (calls and requested bytes) and its rare failures at exit, so it
/// needs no in-flight entry: half the map work of mmap on the hottest pair of memory syscalls.
#[tracepoint]
pub fn sys_enter_munmap(ctx: TracePointContext) -> u32 {
    let prog = ProgId::SysEnterMunmap;
    count_event(prog);
    let len: u64 = field(&ctx, tp::SYS_ENTER_ARG1);
    count_munmap(prog, current_tgid(), len);
    0
}

#[tracepoint]
pub fn sys_exit_munmap(ctx: TracePointContext) -> u32 {
    let prog = ProgId::SysExitMunmap;
    count_event(prog);
    let ret: i64 = field(&ctx, tp::SYS_EXIT_RET);
    count_munmap_failure(prog, current_tgid(), ret);
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
        count_brk(prog, tgid, requested, ret);
    }
    0
}
