//! Out-of-process goroutine profile: the goroutine list read from /proc/PID/mem with goinspect's
//! offsets (no endpoint in the target, stripped binaries too), written as a pprof goroutine profile.
//!
//! The target keeps running: nothing stops it. Each goroutine's g is read once; parked and runnable
//! goroutines (whose saved registers are valid) are unwound along the frame-pointer chain from
//! g.sched (pc, bp), every frame checked to lie inside the goroutine's stack. Running goroutines,
//! goroutines in system calls, or chains that change under the reader get their start function
//! only. Every stack ends (at its root) with the function that created the goroutine, as
//! `go tool pprof` users know from "created by".
use std::{collections::HashMap, time::Instant};

use serde::Serialize;

use super::profile::Profile;
use goinspect::{FuncTable, GoBinary};
use crate::{
    goruntime::{mem::status_name, Layout, MemError, ProcMem},
};

/// Frames unwound at most per goroutine.
pub const MAX_DEPTH: usize = 64;

/// memstats-style heap numbers, read from the runtime's own variables.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, PartialEq)]
pub struct HeapNumbers {
    pub heap_live_bytes: u64,
    pub heap_goal_bytes: u64,
    pub heap_in_use_bytes: Option<u64>,
    pub heap_marked_bytes: Option<u64>,
    pub memory_limit_bytes: Option<u64>,
    pub num_gc: u32,
    pub pause_total_seconds: Option<f64>,
}

/// What a dump found.
pub struct GoroutineDump {
    pub profile_gz: Vec<u8>,
    /// Goroutines as NumGoroutine counts them (system goroutines excluded from the profile).
    pub goroutines: u64,
    pub system: u64,
    /// Goroutines whose stack was unwound beyond the start function.
    pub unwound: u64,
    pub seconds: f64,
}

/// Offsets the dump needs beyond the runtime reader's.
struct GOffsets {
    gopc: u64,
    startpc: u64,
    stack_lo: u64,
    stack_hi: u64,
    sched_pc: u64,
    sched_sp: u64,
    sched_bp: Option<u64>,
}

fn offsets(bin: &GoBinary) -> Result<GOffsets, MemError> {
    let why = || bin.offsets_error.clone().unwrap_or_else(|| bin.go_version.clone());
    let off = |k: &'static str| bin.offset(k).ok_or_else(|| MemError::Missing(k, why()));
    let (stack, sched) = (off("g.stack")?, off("g.sched")?);
    Ok(GOffsets {
        gopc: off("g.gopc")?,
        startpc: off("g.startpc")?,
        stack_lo: stack + off("stack.lo")?,
        stack_hi: stack + off("stack.hi")?,
        sched_pc: sched + bin.offset("gobuf.pc").unwrap_or(8),
        sched_sp: sched + bin.offset("gobuf.sp").unwrap_or(0),
        sched_bp: bin.offset("gobuf.bp").map(|b| sched + b),
    })
}

/// The heap numbers of the process.
pub fn heap_numbers(mem: &ProcMem, l: &Layout, bin: &GoBinary) -> Result<HeapNumbers, MemError> {
    let opt = |base: u64, k: &str| bin.offset(k).and_then(|o| mem.u64(base + o).ok());
    Ok(HeapNumbers {
        heap_live_bytes: mem.u64(l.gc_controller + l.heap_live)?,
        heap_goal_bytes: mem.u64(l.gc_controller + l.heap_goal)?,
        heap_in_use_bytes: opt(l.gc_controller, "gcControllerState.heapInUse"),
        heap_marked_bytes: opt(l.gc_controller, "gcControllerState.heapMarked"),
        memory_limit_bytes: opt(l.gc_controller, "gcControllerState.memoryLimit").filter(|v| *v != i64::MAX as u64),
        num_gc: mem.u32(l.memstats + l.numgc)?,
        pause_total_seconds: opt(l.memstats, "mstats.pause_total_ns").map(|ns| ns as f64 / 1e9),
    })
}

fn word(b: &[u8], off: u64) -> u64 {
    let o = off as usize;
    b.get(o..o + 8).and_then(|s| s.try_into().ok()).map(u64::from_le_bytes).unwrap_or(0)
}

/// Bytes of each parked goroutine's stack read in the same batch as the others (from its saved
/// SP up); frame records beyond are read one by one.
const STACK_PEEK: u64 = 2048;

/// Unwinds a parked goroutine: its saved pc, then return addresses along the frame-pointer chain
/// (each frame record must lie inside [lo, hi) and move up the stack). `peek` holds the stack from
/// `sp` up.
fn unwind(mem: &ProcMem, pc: u64, mut bp: u64, lo: u64, hi: u64, sp: u64, peek: &[u8]) -> Vec<u64> {
    let mut pcs = vec![pc];
    let mut rec = [0u8; 16];
    while pcs.len() < MAX_DEPTH {
        if bp == 0 || bp < lo || bp.saturating_add(16) > hi || !bp.is_multiple_of(8) {
            break;
        }
        let in_peek = bp.checked_sub(sp).and_then(|at| usize::try_from(at).ok()).and_then(|at| peek.get(at..at.checked_add(16)?));
        match in_peek {
            Some(r) => rec.copy_from_slice(r),
            None => {
                if mem.read_exact(bp, &mut rec).is_err() {
                    break;
                }
            }
        }
        let (next, ret) = (word(&rec, 0), word(&rec, 8));
        if ret == 0 {
            break;
        }
        pcs.push(ret);
        if next <= bp {
            break;
        }
        bp = next;
    }
    pcs
}

/// Frames (pc, function), state, wait reason: goroutines alike in all three are one sample.
type SampleKey = (Vec<(u64, String)>, &'static str, String);

/// What one g says.
struct GRead {
    status: u32,
    wait: u8,
    startpc: u64,
    gopc: u64,
    lo: u64,
    hi: u64,
    pc: u64,
    sp: u64,
    bp: u64,
}

/// Reads every goroutine of the process and builds the profile.
pub fn dump(mem: &ProcMem, l: &Layout, bin: &GoBinary, funcs: &FuncTable, exe: &str, max_goroutines: usize) -> Result<GoroutineDump, MemError> {
    let started = Instant::now();
    let o = offsets(bin)?;
    let pid = mem.pid();
    let allglen = mem.u64(l.allglen)?;
    if allglen > 16_000_000 {
        return Err(MemError::Implausible { pid, what: format!("allglen = {allglen}") });
    }
    let n = (allglen as usize).min(max_goroutines);
    let mut ptrs = vec![0u8; n * 8];
    if n > 0 {
        mem.read_exact(mem.u64(l.allgs)?, &mut ptrs)?;
    }
    let span = [o.gopc, o.startpc, o.stack_lo, o.stack_hi, o.sched_pc, o.sched_sp, o.sched_bp.unwrap_or(0), l.g_status, l.g_waitreason]
        .into_iter()
        .max()
        .unwrap_or(0)
        + 8;
    let name_of = |pc: u64| funcs.lookup(pc.wrapping_sub(l.bias)).map(str::to_string);
    // Stacks with identical frames and state are one sample with a count.
    let mut samples: HashMap<SampleKey, i64> = HashMap::new();
    let (mut user, mut system, mut unwound) = (0u64, 0u64, 0u64);
    let gs: Vec<u64> = ptrs.chunks_exact(8).map(|p| word(p, 0)).filter(|g| *g != 0).collect();
    for chunk in gs.chunks(1024) {
        // One batch for the g structs, one for the tops of the parked goroutines' stacks.
        let reads: Vec<GRead> = mem
            .read_batch(&chunk.iter().map(|g| (*g, span as usize)).collect::<Vec<_>>())
            .into_iter()
            .flatten()
            .map(|b| GRead {
                status: (word(&b, l.g_status) as u32) & !0x1000,
                wait: b[l.g_waitreason as usize],
                startpc: word(&b, o.startpc),
                gopc: word(&b, o.gopc),
                lo: word(&b, o.stack_lo),
                hi: word(&b, o.stack_hi),
                pc: word(&b, o.sched_pc),
                sp: word(&b, o.sched_sp),
                bp: o.sched_bp.map(|x| word(&b, x)).unwrap_or(0),
            })
            .filter(|g| g.status != 6 && g.status != 11)
            .collect();
        let parked = |g: &GRead| matches!(g.status, 1 | 4) && g.pc != 0 && g.sp >= g.lo && g.sp < g.hi;
        let peek_reqs: Vec<(u64, usize)> = reads.iter().filter(|g| parked(g)).map(|g| (g.sp, (g.hi - g.sp).min(STACK_PEEK) as usize)).collect();
        let mut peeks = mem.read_batch(&peek_reqs).into_iter();
        for g in &reads {
            let peek = if parked(g) { peeks.next().flatten() } else { None };
            let start = name_of(g.startpc).unwrap_or_else(|| format!("{:#x}", g.startpc));
            // As runtime.isSystemGoroutine: runtime functions other than runtime.main.
            if start.starts_with("runtime.") && start != "runtime.main" {
                system += 1;
                continue;
            }
            user += 1;
            let state = status_name(g.status);
            let wait = if g.status == 4 {
                l.wait_reason(g.wait)
            } else {
                String::new()
            };
            let mut frames: Vec<(u64, String)> = Vec::new();
            if parked(g) {
                for (i, pc) in unwind(mem, g.pc, g.bp, g.lo, g.hi, g.sp, peek.as_deref().unwrap_or(&[])).into_iter().enumerate() {
                    // Return addresses point after the call: name the call instruction.
                    let at = if i == 0 { pc } else { pc - 1 };
                    match name_of(at) {
                        Some(n) if n == "runtime.goexit" => break,
                        Some(n) => frames.push((at, n)),
                        None => break,
                    }
                }
            }
            if frames.last().map(|f| f.1.as_str()) == Some(start.as_str()) {
                unwound += 1;
            } else {
                // The chain did not reach the start function (or was not walked): keep what is
                // certain, the start function.
                frames.retain(|f| f.1 != start);
                frames.push((g.startpc, start));
            }
            if let Some(creator) = name_of(g.gopc.wrapping_sub(1)).filter(|_| g.gopc != 0) {
                frames.push((g.gopc, format!("created by {creator}")));
            }
            *samples.entry((frames, state, wait)).or_insert(0) += 1;
        }
    }
    let now_ns = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0);
    let mut prof = Profile::new(&[("goroutine", "count")], ("goroutine", "count"), 1, now_ns);
    if let Ok((start, end, off)) = crate::goruntime::mem::exe_mapping(pid) {
        prof.set_mapping(start, end, off, exe);
    }
    prof.comment(&format!(
        "chainprobe out-of-process goroutine dump of pid {pid} ({}): {user} goroutines, {system} system goroutines not shown, {unwound} unwound beyond the start function",
        bin.go_version
    ));
    let mut ordered: Vec<_> = samples.into_iter().collect();
    ordered.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    for ((frames, state, wait), count) in ordered {
        let locs = frames.iter().map(|(pc, name)| prof.location(*pc, name)).collect();
        let mut labels = vec![("state", state)];
        if !wait.is_empty() {
            labels.push(("wait_reason", wait.as_str()));
        }
        prof.sample(locs, vec![count], &labels);
    }
    Ok(GoroutineDump { profile_gz: prof.gzipped(), goroutines: user, system, unwound, seconds: started.elapsed().as_secs_f64() })
}
