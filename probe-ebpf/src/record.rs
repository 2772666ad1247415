//! Fields of a tracepoint's record.
use aya_ebpf::{programs::TracePointContext, EbpfContext};

/// The `T` at byte `off` of the tracepoint record `ctx` points at, loaded straight from the
/// context. aya's `TracePointContext::read_at` calls `bpf_probe_read_kernel` for every field: a
/// helper call each (~100 ns on this project's VM, where a connection's ~10 TCP state changes read
/// 4–6 fields apiece). The verifier allows direct loads from a tracepoint program's context at
/// constant offsets aligned to the load's size; the offsets in `probe_common::tp` are, and the
/// daemon checks them against the live format before it attaches (a misaligned one would fail at
/// load time, never read wrong data).
#[inline(always)]
pub fn field<T: Copy>(ctx: &TracePointContext, off: u32) -> T {
    // SAFETY: the verifier bounds-checks context loads; `off` is a constant, aligned field offset.
    unsafe { core::ptr::read((ctx.as_ptr() as *const u8).add(off as usize) as *const T) }
}
