//! Checks a binary's struct offsets and data-symbol addresses against one live process before
//! any of its runtime reads is trusted, for offsets that do not come from the binary's own DWARF
//! (a generated table, or the nearest table for a Go version without one).
//!
//! Each check is an invariant of the Go runtime that a wrong offset or address breaks:
//! - `allglen` agrees with the length of the `allgs` slice (allgadd stores one after appending to
//!   the other, under a lock): it lies between the slice's lengths read before and after it, so a
//!   process creating goroutines while it is checked passes; the slice's pointer, length and
//!   capacity are consistent;
//! - every g's status (scan bit masked) is one the runtime uses, and every waiting g's wait reason
//!   is within the release's waitReason table;
//! - the goids of the live g's are unique, non-zero (but for the few a runtime that makes a g
//!   runnable before giving it its goid may show) and at most `sched.goidgen` (read after them);
//! - for parked (waiting) g's: `stack.lo <= sched.sp < stack.hi` and `sched.pc` inside a function
//!   of the binary (a goroutine may wake up while it is read, so 90% must pass, not all);
//! - `sched.ngsys` is at most the number of live g's;
//! - heap live and the GC goal are in range, and the live heap is at most 8× the goal (the goal
//!   is `u64::MAX` with GOGC=off);
//! - `memstats`: the last pause is at most the total of all pauses, which is non-zero once a cycle
//!   completed.
//!
//! A process whose runtime has not started yet (no g) is inconclusive: checked again next time.

use std::collections::HashSet;

use super::mem::{Layout, ProcMem};
use goinspect::{FuncTable, GoBinary};

/// The outcome of checking one process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every invariant holds; says what was checked.
    Accepted(String),
    /// An invariant is broken: the offsets are wrong for this binary.
    Rejected(String),
    /// Not enough state to judge yet (the runtime is still starting, or the process is gone).
    Inconclusive(String),
}

/// Offsets the checks need beyond the reader's [`Layout`].
#[derive(Debug, Clone)]
pub struct Checks {
    g_goid: u64,
    g_stack_lo: u64,
    g_stack_hi: u64,
    g_sched_sp: u64,
    g_sched_pc: u64,
    pause_ns: u64,
    pause_total_ns: u64,
    /// waitReason values the release can store (its own table's count; the nearest table's plus
    /// headroom, as releases add reasons).
    wait_reasons: usize,
    /// Highest g status the release uses.
    max_status: u32,
}

/// Goroutines checked at most.
const MAX_CHECKED: usize = 4096;
const G_SCAN: u32 = 0x1000;

impl Checks {
    /// The offsets of `bin`; Err names one that is missing.
    pub fn new(bin: &GoBinary) -> Result<Checks, String> {
        let n = bin.wait_reasons.len();
        let off = |k: &str| bin.offset(k).ok_or_else(|| format!("offset {k} unknown"));
        let stack = off("g.stack")?;
        let sched = off("g.sched")?;
        Ok(Checks {
            g_goid: off("g.goid")?,
            g_stack_lo: stack + off("stack.lo")?,
            g_stack_hi: stack + off("stack.hi")?,
            g_sched_sp: sched + off("gobuf.sp")?,
            g_sched_pc: sched + off("gobuf.pc")?,
            pause_ns: off("mstats.pause_ns")?,
            pause_total_ns: off("mstats.pause_total_ns")?,
            wait_reasons: if bin.wait_reasons_exact || n == 0 { n } else { n + 16 },
            // The release's statuses (1.26 added _Gleaked and _Gdeadextra); a newer release read
            // with the nearest table may add more, so it gets headroom (statuses are small
            // numbers, a wrong offset reads pointers, ids and flags).
            max_status: match (bin.wait_reasons_exact, bin.g_statuses) {
                (_, 0) => 15,
                (true, n) => n as u32 - 1,
                (false, n) => n as u32 + 3,
            },
        })
    }
}

fn u64_at(b: &[u8], off: u64) -> u64 {
    let o = off as usize;
    b.get(o..o + 8).and_then(|s| s.try_into().ok()).map(u64::from_le_bytes).unwrap_or(0)
}

fn u32_at(b: &[u8], off: u64) -> u32 {
    let o = off as usize;
    b.get(o..o + 4).and_then(|s| s.try_into().ok()).map(u32::from_le_bytes).unwrap_or(0)
}

/// The `allgs` slice (as read last) and `allglen`, found consistent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Allgs {
    ptr: u64,
    len: u64,
    allglen: u64,
}

/// Attempts at a consistent read of allgs and allglen before the addresses are called wrong.
const ALLGS_ATTEMPTS: usize = 4;

/// Reads the `allgs` slice at `allgs_at`, then `allglen` at `allglen_at`, then the slice again,
/// and checks them against what allgadd guarantees: it appends to allgs and then stores allglen,
/// under a lock, and allgs never shrinks. So at any instant allglen is len(allgs) or one less,
/// and across the three reads of a process creating goroutines (each can add thousands a
/// millisecond) allglen lies between the two lengths; with a process that creates none, both
/// lengths are equal and allglen must match them. The slice header is three words stored
/// without a lock: a read torn by an append, or a lie of the moment, is read again before the
/// addresses are called wrong. Err is the verdict (rejected, or inconclusive: still starting).
fn read_allgs(mem: &ProcMem, allgs_at: u64, allglen_at: u64) -> Result<Allgs, Verdict> {
    let slice = |at: u64| -> Result<(u64, u64, u64), Verdict> {
        let mut b = [0u8; 24];
        match mem.read_exact(at, &mut b) {
            Ok(()) => Ok((u64_at(&b, 0), u64_at(&b, 8), u64_at(&b, 16))),
            Err(super::MemError::Read { source, .. }) if source.kind() == std::io::ErrorKind::PermissionDenied => {
                Err(Verdict::Inconclusive(format!("cannot read process {}'s memory: {source}", mem.pid())))
            }
            Err(e) => Err(Verdict::Rejected(format!("runtime.allgs at {at:#x} is not readable ({e}): its address is wrong"))),
        }
    };
    let mut why = String::new();
    for attempt in 0..ALLGS_ATTEMPTS {
        if attempt > 0 {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let (_, len0, cap0) = slice(allgs_at)?;
        let allglen = mem.u64(allglen_at).map_err(|e| Verdict::Rejected(format!("runtime.allglen at {allglen_at:#x} is not readable ({e}): its address is wrong")))?;
        let (ptr, len, cap) = slice(allgs_at)?;
        if allglen == 0 && len0 == 0 && len == 0 {
            return Err(Verdict::Inconclusive("the Go runtime has no goroutine yet (still starting)".into()));
        }
        let header_ok = |len: u64, cap: u64| len <= cap && cap < 1 << 32;
        if ptr != 0 && header_ok(len0, cap0) && header_ok(len, cap) && len0 <= len && len0 <= allglen + 16 && allglen <= len {
            return Ok(Allgs { ptr, len, allglen });
        }
        why = format!("allglen = {allglen} disagrees with the allgs slice read before and after it (len {len0} then {len}; ptr {ptr:#x}, cap {cap})");
    }
    Err(Verdict::Rejected(format!("{why}, {ALLGS_ATTEMPTS} times: runtime.allgs or runtime.allglen is wrong")))
}

/// Checks the process behind `mem` with the reader's layout `l` and the extra offsets `c`;
/// `funcs` gives the binary's functions (link-time addresses). It is called only once the cheap
/// checks passed and there are parked goroutines to place: a process still starting is checked
/// again at every read, and parsing the binary each time would cost more than the check.
pub fn check(mem: &ProcMem, l: &Layout, c: &Checks, funcs: impl FnOnce() -> Result<FuncTable, String>) -> Verdict {
    use Verdict::{Accepted, Inconclusive, Rejected};
    let pid = mem.pid();
    let gone = |e: super::MemError| Inconclusive(format!("cannot read process {pid}: {e}"));
    let Allgs { ptr, len: slice_len, allglen, .. } = match read_allgs(mem, l.allgs, l.allglen) {
        Ok(a) => a,
        Err(v) => return v,
    };
    // The pointers come from the slice read last, which holds at least allglen of them.
    let n = (allglen.min(slice_len) as usize).min(MAX_CHECKED);
    let mut ptrs = vec![0u8; n * 8];
    if let Err(e) = mem.read_exact(ptr, &mut ptrs) {
        return gone(e);
    }
    // One read per g covering every field checked.
    let fields = [c.g_goid, c.g_stack_lo, c.g_stack_hi, c.g_sched_sp, c.g_sched_pc, l.g_status, l.g_waitreason];
    let (lo, hi) = (fields.iter().copied().min().unwrap_or(0), fields.iter().copied().max().unwrap_or(0) + 8);
    let gs: Vec<u64> = ptrs.chunks_exact(8).map(|p| u64::from_le_bytes(p.try_into().unwrap_or([0; 8]))).filter(|&g| g != 0).collect();
    let len = (hi - lo) as usize;
    let (buf, read) = mem.read_same_len(&gs.iter().map(|&g| g + lo).collect::<Vec<_>>(), len);
    let mut goids = HashSet::new();
    let (mut live, mut zero_goids) = (0u64, 0u64);
    // Parked g's: (stack.lo, stack.hi, sched.sp, sched.pc), placed once the cheap checks pass.
    let mut parked: Vec<(u64, u64, u64, u64)> = Vec::new();
    let mut max_goid = 0u64;
    for ((g, b), ok) in gs.iter().zip(buf.chunks_exact(len)).zip(&read) {
        if !ok {
            return Rejected(format!("g at {g:#x} listed in allgs is not readable: runtime.allgs is wrong"));
        }
        let at = |off: u64| off - lo;
        let status = u32_at(b, at(l.g_status)) & !G_SCAN;
        if status > c.max_status || (c.max_status <= 11 && (status == 5 || status == 7)) {
            return Rejected(format!("g at {g:#x} has status {status}, which the runtime never uses: g.atomicstatus is wrong"));
        }
        if status == 6 || status == 11 || status == 0 {
            continue; // dead (fields are stale) or idle (not set up yet)
        }
        live += 1;
        let goid = u64_at(b, at(c.g_goid));
        if goid == 0 {
            // Go ≤ 1.2x makes a new g runnable just before it gets its goid: a few may be caught.
            zero_goids += 1;
        } else if !goids.insert(goid) {
            return Rejected(format!("g at {g:#x} has goid {goid}, another g's too: g.goid is wrong"));
        }
        max_goid = max_goid.max(goid);
        if status == 4 {
            let reason = usize::from(b.get(at(l.g_waitreason) as usize).copied().unwrap_or(0));
            if c.wait_reasons > 0 && reason >= c.wait_reasons {
                return Rejected(format!("waiting g at {g:#x} has wait reason {reason}, beyond the {} this release defines: g.waitreason is wrong", c.wait_reasons));
            }
            parked.push((u64_at(b, at(c.g_stack_lo)), u64_at(b, at(c.g_stack_hi)), u64_at(b, at(c.g_sched_sp)), u64_at(b, at(c.g_sched_pc))));
        }
    }
    if live == 0 {
        return Inconclusive("no live goroutine yet".into());
    }
    if zero_goids > 2.max(live / 100) {
        return Rejected(format!("{zero_goids} of {live} live goroutines have goid 0: g.goid is wrong"));
    }
    let goidgen = match mem.u64(l.sched + l.sched_goidgen) {
        Ok(v) => v,
        Err(e) => return gone(e),
    };
    if max_goid > goidgen {
        return Rejected(format!("goid {max_goid} is beyond sched.goidgen = {goidgen}: runtime.sched or schedt.goidgen is wrong"));
    }
    let ngsys = match mem.u32(l.sched + l.sched_ngsys) {
        Ok(v) => u64::from(v),
        Err(e) => return gone(e),
    };
    if ngsys > live && allglen as usize <= MAX_CHECKED {
        return Rejected(format!("sched.ngsys = {ngsys} is more than the {live} live goroutines: schedt.ngsys is wrong"));
    }
    let (heap_live, heap_goal) = match (mem.u64(l.gc_controller + l.heap_live), mem.u64(l.gc_controller + l.heap_goal)) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => return gone(e),
    };
    if heap_goal == 0 || heap_live >= 1 << 46 || (heap_goal != u64::MAX && heap_live > heap_goal.saturating_mul(8)) {
        return Rejected(format!("heap live {heap_live} B against a GC goal of {heap_goal} B is impossible: runtime.gcController or its offsets are wrong"));
    }
    let (numgc, total) = match (mem.u32(l.memstats + l.numgc), mem.u64(l.memstats + c.pause_total_ns)) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => return gone(e),
    };
    let last = match mem.u64(l.memstats + c.pause_ns + 8 * ((u64::from(numgc) + 255) % 256)) {
        Ok(v) => v,
        Err(e) => return gone(e),
    };
    if last > total || (numgc > 0 && total == 0) || numgc > 1 << 30 {
        return Rejected(format!("memstats: {numgc} GC cycles, last pause {last} ns, total pauses {total} ns is impossible: runtime.memstats or its offsets are wrong"));
    }
    if !parked.is_empty() {
        let funcs = match funcs() {
            Ok(f) => f,
            Err(e) => return Inconclusive(format!("cannot read the function table: {e}")),
        };
        let ok = parked.iter().filter(|(slo, shi, sp, pc)| slo <= sp && sp < shi && funcs.lookup(pc.wrapping_sub(l.bias)).is_some()).count();
        if ok * 10 < parked.len() * 9 {
            return Rejected(format!(
                "only {ok} of {} parked goroutines have sched.sp inside their stack and sched.pc inside a function: g.stack or g.sched is wrong",
                parked.len()
            ));
        }
    }
    Accepted(format!("{live} live goroutines ({} parked) checked, heap {heap_live} B of a {heap_goal} B goal, {numgc} GC cycles", parked.len()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    /// A runtime's allgs slice header and allglen, in this process's memory.
    #[repr(C)]
    struct FakeRuntime {
        allgs: [AtomicU64; 3],
        allglen: AtomicU64,
    }

    impl FakeRuntime {
        fn new(len: u64) -> FakeRuntime {
            FakeRuntime { allgs: [AtomicU64::new(0x1c00_0000_0000), AtomicU64::new(len), AtomicU64::new(len.next_power_of_two())], allglen: AtomicU64::new(len) }
        }
        fn at(&self) -> (u64, u64) {
            (self.allgs.as_ptr() as u64, &self.allglen as *const AtomicU64 as u64)
        }
        /// What allgadd does: append (the slice header, growing its capacity), then store allglen.
        fn add(&self) {
            let len = self.allgs[1].load(Ordering::Relaxed) + 1;
            if len > self.allgs[2].load(Ordering::Relaxed) {
                self.allgs[0].fetch_add(0x10_0000, Ordering::Relaxed);
                self.allgs[2].store(2 * len, Ordering::Relaxed);
            }
            self.allgs[1].store(len, Ordering::Release);
            self.allglen.store(len, Ordering::Release);
        }
    }

    #[test]
    fn a_process_creating_goroutines_while_it_is_checked_is_not_rejected() {
        let rt = FakeRuntime::new(1000);
        let (allgs, allglen) = rt.at();
        let mem = ProcMem::open(std::process::id()).expect("own memory");
        let stop = AtomicBool::new(false);
        let (mut raced, mut rejected) = (0, Vec::new());
        std::thread::scope(|s| {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    rt.add();
                }
            });
            for _ in 0..3000 {
                // What a check that reads the slice once and then allglen sees: allglen past the
                // slice's length (the race the three reads are for).
                let mut b = [0u8; 24];
                mem.read_exact(allgs, &mut b).expect("read");
                if mem.u64(allglen).expect("read") > u64_at(&b, 8) {
                    raced += 1;
                }
                match read_allgs(&mem, allgs, allglen) {
                    Ok(a) => assert!(a.allglen <= a.len && a.ptr != 0, "{a:?}"),
                    Err(v) => rejected.push(v),
                }
            }
            stop.store(true, Ordering::Relaxed);
        });
        assert!(raced > 0, "the writer never outran a read: the test did not exercise the race");
        assert!(rejected.is_empty(), "{} of 3000 checks of a growing allgs failed, e.g. {:?} (the one-read check raced {raced} times)", rejected.len(), rejected.first());
    }

    #[test]
    fn a_wrong_allglen_or_slice_is_rejected_and_a_runtime_without_goroutines_is_inconclusive() {
        let mem = ProcMem::open(std::process::id()).expect("own memory");
        let rt = FakeRuntime::new(1000);
        let (allgs, allglen) = rt.at();
        assert_eq!(read_allgs(&mem, allgs, allglen), Ok(Allgs { ptr: 0x1c00_0000_0000, len: 1000, allglen: 1000 }));
        // allglen read from somewhere else: a small number, a pointer.
        let small = AtomicU64::new(5);
        let pointer = AtomicU64::new(0x7fff_1234_5678);
        for wrong in [&small, &pointer] {
            match read_allgs(&mem, allgs, wrong as *const AtomicU64 as u64) {
                Err(Verdict::Rejected(why)) => assert!(why.contains("is wrong") && why.contains("4 times"), "{why}"),
                other => panic!("{other:?}"),
            }
        }
        // A slice whose length is beyond its capacity (not a slice header).
        let torn = FakeRuntime::new(1000);
        torn.allgs[2].store(10, Ordering::Relaxed);
        assert!(matches!(read_allgs(&mem, torn.at().0, torn.at().1), Err(Verdict::Rejected(_))));
        // An address that is not mapped.
        assert!(matches!(read_allgs(&mem, 8, allglen), Err(Verdict::Rejected(w)) if w.contains("not readable")));
        let empty = FakeRuntime::new(0);
        empty.allgs[0].store(0, Ordering::Relaxed);
        assert!(matches!(read_allgs(&mem, empty.at().0, empty.at().1), Err(Verdict::Inconclusive(_))));
    }
}
