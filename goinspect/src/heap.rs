//! The Go runtime's memory-profile buckets (`runtime.mbuckets`), read out of process: what
//! `runtime.MemProfile` would report, without an endpoint in the target and without stopping it.
//!
//! Layout (every offset from the binary's DWARF or the generated per-version tables, never a
//! constant): a bucket is `{next, allnext *bucket; typ; hash, size, nstk uintptr}` followed by
//! `nstk` return PCs and, for memory buckets, a memRecord `{active memRecordCycle; future
//! [3]memRecordCycle}`. memRecordCycle holds allocs/frees and, before Go 1.27, alloc_bytes/
//! free_bytes (1.27 dropped them: bytes are counts × the bucket's object size).
//!
//! Folding, as `runtime.memProfileInternal` does: the profile cycle `c` (mProfCycle.value >> 1)
//! names the future slot `c % 3` a concurrent `mProf_Flush` may not have moved into `active` yet:
//! each bucket's numbers are `active + future[c % 3]`; when every bucket's `active` is still zero
//! (no GC has completed a cycle yet) all three future cycles are added, as the runtime does.
//!
//! Consistency without stopping the target: the runtime only ever prepends to the list
//! (`stkbucket` fills a new bucket, sets its `allnext` to the current head, then publishes it) and
//! never frees or unlinks a bucket (persistentalloc). So the chain reachable from one reading of
//! the head is immutable: walking it gives exactly the buckets that existed at that moment, and
//! buckets added during the walk are simply newer than the profile. Only the counters move, and a
//! GC cycle that ends while they are read (mProfCycle changes) moves counts between the slots
//! being read. So the read has two phases: the walk (headers and stacks, through 64 KiB windows,
//! one process_vm_readv each: persistentalloc places consecutive buckets next to each other),
//! however long it takes; then every bucket's memRecord in one batched sweep (process_vm_readv,
//! 1,024 ranges a call: a few ms for 100k buckets) between two readings of the cycle, repeated
//! when the cycle changed in between (3 times, then a clean error).
//!
//! No I/O of its own: it reads through [`Memory`] (the daemon gives it /proc/PID/mem through
//! process_vm_readv, the fuzzer a byte buffer), so it lives here with the rest of what chainprobe
//! knows of Go's runtime structures. The process side (ProcMem, the layout from the binary) is
//! the daemon's snapshot/heap.rs.
use std::time::{Duration, Instant};

/// `memProfile` in runtime/mprof.go (`bucketType = 1 + iota`, the same in every release).
const MEM_PROFILE: u64 = 1;
/// Return PCs per bucket at most (Go 1.23+ caps GODEBUG profstackdepth at 1024).
const MAX_STACK: u64 = 1024;
/// Bytes read per window.
const WINDOW: u64 = 64 << 10;
/// Windows kept (buckets that straddle two windows, the head's neighbourhood).
const WINDOWS_KEPT: usize = 4;
/// Walks tried when GC cycles keep ending under the reader.
const ATTEMPTS: u32 = 3;

/// Reads of another process's memory (ProcMem; a slice of bytes in tests and the fuzzer).
pub trait Memory {
    /// Fills `buf` from `addr`; false when any of it cannot be read.
    fn read(&self, addr: u64, buf: &mut [u8]) -> bool;
    /// Reads `len` bytes at each of `addrs` (range `i` at `i * len`); the flags say which were
    /// read. ProcMem batches them (process_vm_readv, 1,024 ranges a call).
    fn read_many(&self, addrs: &[u64], len: usize) -> (Vec<u8>, Vec<bool>) {
        let mut buf = vec![0u8; addrs.len() * len];
        let ok = addrs.iter().enumerate().map(|(i, a)| self.read(*a, &mut buf[i * len..(i + 1) * len])).collect();
        (buf, ok)
    }
    /// Whether the process is still there (a failed read of a live process is not an exit).
    fn alive(&self) -> bool {
        true
    }
}

/// Addresses (relocated for the process) and offsets of what the reader needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeapLayout {
    pub mbuckets: u64,
    pub mprof_cycle: u64,
    pub mem_profile_rate: u64,
    /// mProfCycleHolder.value
    pub cycle_value: u64,
    pub bucket_size: u64,
    pub allnext: u64,
    pub typ: u64,
    pub size: u64,
    pub nstk: u64,
    pub record_size: u64,
    pub active: u64,
    pub future: u64,
    /// Future cycles in a memRecord.
    pub futures: u64,
    pub cycle_size: u64,
    pub allocs: u64,
    pub frees: u64,
    /// memRecordCycle.alloc_bytes / free_bytes (absent from Go 1.27: bytes = count × size).
    pub bytes: Option<(u64, u64)>,
}

impl HeapLayout {
    /// Rejects a layout whose fields do not fit their structs (so reads stay in bounds).
    pub fn check(&self) -> Result<(), String> {
        let in_bucket = [self.allnext, self.typ, self.size, self.nstk].iter().all(|o| o.saturating_add(8) <= self.bucket_size);
        let mut cycle_fields = vec![self.allocs, self.frees];
        if let Some((a, f)) = self.bytes {
            cycle_fields.extend([a, f]);
        }
        let in_cycle = cycle_fields.iter().all(|o| o.saturating_add(8) <= self.cycle_size);
        let in_record = self.active.saturating_add(self.cycle_size) <= self.record_size
            && self.future.saturating_add(self.futures.saturating_mul(self.cycle_size)) <= self.record_size;
        if !in_bucket || !in_cycle || !in_record || self.bucket_size > 4096 || self.record_size > 4096 || self.futures == 0 || self.futures > 16 {
            return Err(format!("memory-profile bucket layout does not fit together: {self:?}"));
        }
        Ok(())
    }
}

/// One bucket, its cycles folded as runtime.MemProfile does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bucket {
    /// The allocation size the bucket counts (one size per bucket).
    pub size: u64,
    /// Return PCs, leaf first (runtime addresses).
    pub stack: Vec<u64>,
    pub allocs: u64,
    pub frees: u64,
    pub alloc_bytes: u64,
    pub free_bytes: u64,
}

/// What one read found.
#[derive(Debug, Clone)]
pub struct HeapRead {
    /// runtime.MemProfileRate when read (bytes between samples).
    pub rate: i64,
    /// The profile cycle the numbers belong to.
    pub cycle: u32,
    /// In list order (newest first).
    pub buckets: Vec<Bucket>,
    /// Whether the bucket layout has byte counters (before Go 1.27): how Go writes the profile.
    pub has_byte_counters: bool,
    pub bytes_read: u64,
    pub reads: u64,
    /// Walks made (more than one when a GC cycle ended under the reader).
    pub attempts: u32,
    pub seconds: f64,
}

/// Bounds of one read.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_buckets: usize,
    pub max_bytes: u64,
    pub timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum HeapError {
    #[error("heap profiling disabled in this process (runtime.MemProfileRate = 0; the Go linker sets it so in programs that never reference runtime.MemProfile, i.e. do not import runtime/pprof)")]
    Disabled,
    #[error("process exited during the heap read")]
    Gone,
    #[error("more than {cap} memory-profile buckets ([snapshot] heap_max_buckets): no partial profile is written")]
    TooManyBuckets { cap: usize },
    #[error("reading the memory-profile buckets needs more than {cap} bytes ([snapshot] heap_max_read_bytes): no partial profile is written")]
    TooManyBytes { cap: u64 },
    #[error("the heap read did not finish within {seconds} s ({buckets} buckets read): no partial profile is written")]
    Deadline { seconds: f64, buckets: usize },
    #[error("a GC cycle ended during each of {attempts} reads of the bucket list: no consistent profile")]
    Changed { attempts: u32 },
    #[error("implausible memory-profile bucket list: {0}")]
    Implausible(String),
    #[error("the heap profile cannot be read for this binary: {0}")]
    Layout(String),
}

/// Reads through a few cached windows, counting what it reads.
struct Reader<'m, M: Memory + ?Sized> {
    mem: &'m M,
    windows: Vec<(u64, Vec<u8>)>,
    unmapped: std::collections::HashSet<u64>,
    bytes: u64,
    reads: u64,
    max_bytes: u64,
}

impl<M: Memory + ?Sized> Reader<'_, M> {
    fn charge(&mut self, n: u64) -> Result<(), HeapError> {
        self.bytes = self.bytes.saturating_add(n);
        self.reads += 1;
        if self.bytes > self.max_bytes {
            return Err(HeapError::TooManyBytes { cap: self.max_bytes });
        }
        Ok(())
    }

    /// `len` bytes at `addr` appended to `out`; false when unreadable.
    fn get(&mut self, addr: u64, len: u64, out: &mut Vec<u8>) -> Result<bool, HeapError> {
        let w = addr & !(WINDOW - 1);
        let Some(end) = addr.checked_add(len) else { return Ok(false) };
        if end <= w.saturating_add(WINDOW) {
            let at = (addr - w) as usize;
            if let Some(i) = self.windows.iter().position(|(a, _)| *a == w) {
                out.extend_from_slice(&self.windows[i].1[at..at + len as usize]);
                return Ok(true);
            }
            // A window that runs into unmapped memory is not tried again.
            if !self.unmapped.contains(&w) {
                self.charge(WINDOW)?;
                let mut buf = vec![0u8; WINDOW as usize];
                if self.mem.read(w, &mut buf) {
                    out.extend_from_slice(&buf[at..at + len as usize]);
                    if self.windows.len() >= WINDOWS_KEPT {
                        self.windows.remove(0);
                    }
                    self.windows.push((w, buf));
                    return Ok(true);
                }
                self.unmapped.insert(w);
            }
            // Part of the window is not mapped: the exact range alone.
        }
        self.charge(len)?;
        let start = out.len();
        out.resize(start + len as usize, 0);
        if self.mem.read(addr, &mut out[start..]) {
            return Ok(true);
        }
        out.truncate(start);
        Ok(false)
    }

    fn word(&mut self, addr: u64) -> Result<Option<u64>, HeapError> {
        let mut b = Vec::with_capacity(8);
        Ok(self.get(addr, 8, &mut b)?.then(|| u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])))
    }
}

fn word_at(b: &[u8], off: u64) -> u64 {
    let o = off as usize;
    b.get(o..o + 8).and_then(|s| s.try_into().ok()).map(u64::from_le_bytes).unwrap_or(0)
}

/// Reads and folds the bucket list of the process behind `mem`.
pub fn read<M: Memory + ?Sized>(mem: &M, l: &HeapLayout, limits: Limits) -> Result<HeapRead, HeapError> {
    let started = Instant::now();
    let deadline = started + limits.timeout;
    l.check().map_err(HeapError::Implausible)?;
    let mut r = Reader { mem, windows: Vec::new(), unmapped: Default::default(), bytes: 0, reads: 0, max_bytes: limits.max_bytes };
    let unreadable = |r: &Reader<'_, M>, what: String| if r.mem.alive() { HeapError::Implausible(what) } else { HeapError::Gone };
    let rate = match r.word(l.mem_profile_rate)? {
        Some(v) => v as i64,
        None => return Err(unreadable(&r, "runtime.MemProfileRate is not readable".into())),
    };
    if rate == 0 {
        return Err(HeapError::Disabled);
    }
    // A wrong address reads some other word: a rate no program sets.
    if !(0..=1 << 40).contains(&rate) {
        return Err(HeapError::Implausible(format!("runtime.MemProfileRate = {rate}")));
    }
    let read_cycle = |r: &mut Reader<'_, M>| -> Result<u32, HeapError> {
        let mut b = Vec::with_capacity(4);
        let at = l.mprof_cycle.wrapping_add(l.cycle_value);
        // Read afresh, never from a cached window: the second reading must see a change.
        r.windows.retain(|(w, _)| *w != at & !(WINDOW - 1));
        if !r.get(at, 4, &mut b)? {
            return Err(unreadable(r, "runtime.mProfCycle is not readable".into()));
        }
        let cycle = u32::from_le_bytes([b[0], b[1], b[2], b[3]]) >> 1;
        // The runtime wraps the cycle at mProfCycleWrap = len(future) × 2<<24.
        if u64::from(cycle) >= l.futures * (2 << 24) {
            return Err(HeapError::Implausible(format!("runtime.mProfCycle = {cycle}")));
        }
        Ok(cycle)
    };
    // 1. The list: sizes and stacks never change once a bucket is published, so one walk from
    //    one reading of the head is a consistent list however long it takes.
    let Some(head) = r.word(l.mbuckets)? else {
        return Err(unreadable(&r, "runtime.mbuckets is not readable".into()));
    };
    // (size, stack) per bucket, in list order, and where its memRecord is.
    let mut list: Vec<(u64, Vec<u64>)> = Vec::new();
    let mut records: Vec<u64> = Vec::new();
    let mut b = head;
    let mut buf = Vec::new();
    while b != 0 {
        if list.len() >= limits.max_buckets {
            return Err(HeapError::TooManyBuckets { cap: limits.max_buckets });
        }
        if list.len().is_multiple_of(256) && Instant::now() > deadline {
            return Err(HeapError::Deadline { seconds: limits.timeout.as_secs_f64(), buckets: list.len() });
        }
        if !b.is_multiple_of(8) {
            return Err(HeapError::Implausible(format!("bucket pointer {b:#x} is not aligned (bucket {})", list.len())));
        }
        buf.clear();
        if !r.get(b, l.bucket_size, &mut buf)? {
            return Err(unreadable(&r, format!("bucket {} at {b:#x} is not readable", list.len())));
        }
        let (next, typ, size, nstk) = (word_at(&buf, l.allnext), word_at(&buf, l.typ), word_at(&buf, l.size), word_at(&buf, l.nstk));
        if typ != MEM_PROFILE || nstk > MAX_STACK {
            return Err(HeapError::Implausible(format!("bucket {} at {b:#x}: type {typ}, {nstk} frames", list.len())));
        }
        buf.clear();
        if !r.get(b + l.bucket_size, nstk * 8, &mut buf)? {
            return Err(unreadable(&r, format!("bucket {} at {b:#x}: stack not readable", list.len())));
        }
        list.push((size, buf.chunks_exact(8).map(|c| word_at(c, 0)).collect()));
        records.push(b + l.bucket_size + nstk * 8);
        b = next;
    }
    r.windows.clear();
    // 2. The counters, which do move: every memRecord in one batched sweep between two readings
    //    of the profile cycle, again if a GC cycle ended in between (the sweep is short: a few ms
    //    for 100k buckets, where the walk above may take longer than a busy program's GC cycle).
    let rec_len = l.record_size as usize;
    for attempt in 1..=ATTEMPTS {
        if Instant::now() > deadline {
            return Err(HeapError::Deadline { seconds: limits.timeout.as_secs_f64(), buckets: list.len() });
        }
        let cycle = read_cycle(&mut r)?;
        r.charge((records.len() as u64).saturating_mul(l.record_size))?;
        let (recs, ok) = mem.read_many(&records, rec_len);
        if let Some(i) = ok.iter().position(|o| !o) {
            return Err(unreadable(&r, format!("memRecord of bucket {i} at {:#x} is not readable", records[i])));
        }
        if read_cycle(&mut r)? != cycle {
            tracing::debug!(attempt, "a GC cycle ended while the counters were read: reading them again");
            continue;
        }
        let buckets = fold(l, cycle, list, &recs);
        return Ok(HeapRead {
            rate,
            cycle,
            buckets,
            has_byte_counters: l.bytes.is_some(),
            bytes_read: r.bytes,
            reads: r.reads,
            attempts: attempt,
            seconds: started.elapsed().as_secs_f64(),
        });
    }
    Err(HeapError::Changed { attempts: ATTEMPTS })
}

/// (allocs, frees, alloc_bytes, free_bytes) of cycle record `c` of a memRecord.
fn cycle_counts(l: &HeapLayout, rec: &[u8], at: u64, size: u64) -> [u64; 4] {
    let (a, f) = (word_at(rec, at + l.allocs), word_at(rec, at + l.frees));
    match l.bytes {
        Some((ab, fb)) => [a, f, word_at(rec, at + ab), word_at(rec, at + fb)],
        None => [a, f, a.wrapping_mul(size), f.wrapping_mul(size)],
    }
}

fn fold(l: &HeapLayout, cycle: u32, list: Vec<(u64, Vec<u64>)>, recs: &[u8]) -> Vec<Bucket> {
    let index = u64::from(cycle) % l.futures;
    let add = |x: [u64; 4], y: [u64; 4]| [0, 1, 2, 3].map(|i| x[i].wrapping_add(y[i]));
    let rec = |i: usize| recs.get(i * l.record_size as usize..(i + 1) * l.record_size as usize).unwrap_or(&[]);
    let mut counts: Vec<[u64; 4]> = list
        .iter()
        .enumerate()
        .map(|(i, (size, _))| add(cycle_counts(l, rec(i), l.active, *size), cycle_counts(l, rec(i), l.future + index * l.cycle_size, *size)))
        .collect();
    if counts.iter().all(|c| c[0] == 0 && c[1] == 0) {
        // No completed cycle yet: every future cycle counts.
        counts = list
            .iter()
            .enumerate()
            .map(|(i, (size, _))| (0..l.futures).fold(cycle_counts(l, rec(i), l.active, *size), |acc, c| add(acc, cycle_counts(l, rec(i), l.future + c * l.cycle_size, *size))))
            .collect();
    }
    list.into_iter()
        .zip(counts)
        .map(|((size, stack), [allocs, frees, alloc_bytes, free_bytes])| Bucket { size, stack, allocs, frees, alloc_bytes, free_bytes })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// A fake address space: mapped ranges of bytes.
    #[derive(Default)]
    struct Fake {
        ranges: BTreeMap<u64, Vec<u8>>,
    }

    impl Memory for Fake {
        fn read(&self, addr: u64, buf: &mut [u8]) -> bool {
            let Some((start, data)) = self.ranges.range(..=addr).next_back() else { return false };
            let at = (addr - start) as usize;
            match data.get(at..at + buf.len()) {
                Some(s) => {
                    buf.copy_from_slice(s);
                    true
                }
                None => false,
            }
        }
    }

    /// Go 1.21's layout (bucket 48 bytes; memRecordCycle of four words).
    fn layout(bytes: bool) -> HeapLayout {
        HeapLayout {
            mbuckets: 0x1000,
            mprof_cycle: 0x1010,
            mem_profile_rate: 0x1020,
            cycle_value: 0,
            bucket_size: 48,
            allnext: 8,
            typ: 16,
            size: 32,
            nstk: 40,
            record_size: if bytes { 128 } else { 64 },
            active: 0,
            future: if bytes { 32 } else { 16 },
            futures: 3,
            cycle_size: if bytes { 32 } else { 16 },
            allocs: 0,
            frees: 8,
            bytes: bytes.then_some((16, 24)),
        }
    }

    fn put(v: &mut [u8], off: u64, w: u64) {
        v[off as usize..off as usize + 8].copy_from_slice(&w.to_le_bytes());
    }

    /// Buckets (size, stack, [active, f0, f1, f2] as (allocs, frees)) laid out from 0x10000, the
    /// first one the list's head.
    /// (size, stack, (allocs, frees) of active and the three future cycles)
    type FakeBucket = (u64, Vec<u64>, [(u64, u64); 4]);

    fn memory(l: &HeapLayout, rate: u64, cycle: u32, buckets: &[FakeBucket]) -> Fake {
        let mut globals = vec![0u8; 0x30];
        put(&mut globals, 0x20, rate);
        globals[0x10..0x14].copy_from_slice(&(cycle << 1).to_le_bytes());
        let mut heap = Vec::new();
        let mut addrs = Vec::new();
        for (_, stack, _) in buckets {
            addrs.push(0x10000 + heap.len() as u64);
            heap.resize(heap.len() + (l.bucket_size + stack.len() as u64 * 8 + l.record_size) as usize, 0);
        }
        for (i, (size, stack, cycles)) in buckets.iter().enumerate() {
            let b = (addrs[i] - 0x10000) as usize;
            let next = addrs.get(i + 1).copied().unwrap_or(0);
            let h = &mut heap[b..];
            put(h, l.allnext, next);
            put(h, l.typ, MEM_PROFILE);
            put(h, l.size, *size);
            put(h, l.nstk, stack.len() as u64);
            for (k, pc) in stack.iter().enumerate() {
                put(h, l.bucket_size + 8 * k as u64, *pc);
            }
            let rec = l.bucket_size + 8 * stack.len() as u64;
            for (c, (a, f)) in cycles.iter().enumerate() {
                let at = rec + if c == 0 { l.active } else { l.future + (c as u64 - 1) * l.cycle_size };
                put(h, at + l.allocs, *a);
                put(h, at + l.frees, *f);
                if let Some((ab, fb)) = l.bytes {
                    put(h, at + ab, a * size);
                    put(h, at + fb, f * size);
                }
            }
        }
        put(&mut globals, 0, addrs.first().copied().unwrap_or(0));
        Fake { ranges: BTreeMap::from([(0x1000, globals), (0x10000, heap)]) }
    }

    fn limits() -> Limits {
        Limits { max_buckets: 1000, max_bytes: 1 << 30, timeout: Duration::from_secs(10) }
    }

    #[test]
    fn folds_active_and_the_pending_future_cycle_like_memprofile() {
        for bytes in [true, false] {
            let l = layout(bytes);
            // cycle 4: slot 4 % 3 = 1 may still be pending; slots 0 and 2 are not yet complete.
            let m = memory(&l, 512 * 1024, 4, &[
                (64, vec![0x401000, 0x402000], [(10, 4), (100, 100), (3, 1), (100, 100)]),
                (1 << 20, vec![0x403000], [(2, 0), (0, 0), (1, 0), (0, 0)]),
            ]);
            let h = read(&m, &l, limits()).unwrap();
            assert_eq!((h.rate, h.cycle, h.buckets.len(), h.has_byte_counters), (512 * 1024, 4, 2, bytes));
            assert_eq!(h.buckets[0].stack, vec![0x401000, 0x402000]);
            assert_eq!((h.buckets[0].allocs, h.buckets[0].frees, h.buckets[0].alloc_bytes, h.buckets[0].free_bytes), (13, 5, 13 * 64, 5 * 64));
            assert_eq!((h.buckets[1].allocs, h.buckets[1].alloc_bytes), (3, 3 << 20));
        }
    }

    #[test]
    fn before_the_first_cycle_every_future_cycle_counts() {
        let l = layout(true);
        // Cycle 0: slot 0 is the pending one, and empty.
        let m = memory(&l, 1, 0, &[(32, vec![1], [(0, 0), (0, 0), (2, 0), (7, 1)])]);
        let h = read(&m, &l, limits()).unwrap();
        assert_eq!((h.buckets[0].allocs, h.buckets[0].frees, h.buckets[0].alloc_bytes), (9, 1, 9 * 32));
    }

    #[test]
    fn disabled_profiling_and_an_empty_list() {
        let l = layout(false);
        assert!(matches!(read(&memory(&l, 0, 0, &[(8, vec![1], [(1, 0); 4])]), &l, limits()), Err(HeapError::Disabled)));
        let h = read(&memory(&l, 4096, 0, &[]), &l, limits()).unwrap();
        assert!(h.buckets.is_empty());
    }

    #[test]
    fn caps_are_clean_errors() {
        let l = layout(true);
        let many: Vec<_> = (0..50).map(|i| (16u64, vec![0x400000 + i], [(1u64, 0u64); 4])).collect();
        let m = memory(&l, 512 * 1024, 1, &many);
        let lim = Limits { max_buckets: 49, ..limits() };
        assert!(matches!(read(&m, &l, lim), Err(HeapError::TooManyBuckets { cap: 49 })));
        assert_eq!(read(&m, &l, Limits { max_buckets: 50, ..limits() }).unwrap().buckets.len(), 50);
        assert!(matches!(read(&m, &l, Limits { max_bytes: 100, ..limits() }), Err(HeapError::TooManyBytes { cap: 100 })));
        assert!(matches!(read(&m, &l, Limits { timeout: Duration::ZERO, ..limits() }), Err(HeapError::Deadline { .. })));
    }

    #[test]
    fn a_cycle_in_the_list_hits_the_cap_and_garbage_is_implausible() {
        let l = layout(true);
        let mut m = memory(&l, 512 * 1024, 1, &[(16, vec![1], [(1, 0); 4]), (16, vec![2], [(1, 0); 4])]);
        // The second bucket points back at the first.
        let second = 0x10000 + l.bucket_size + 8 + l.record_size;
        let heap = m.ranges.get_mut(&0x10000).unwrap();
        put(heap, second - 0x10000 + l.allnext, 0x10000);
        assert!(matches!(read(&m, &l, limits()), Err(HeapError::TooManyBuckets { .. })));
        // A type word that is not a memory bucket, and a dangling pointer.
        let heap = m.ranges.get_mut(&0x10000).unwrap();
        put(heap, l.typ, 2);
        assert!(matches!(read(&m, &l, limits()), Err(HeapError::Implausible(_))));
        let heap = m.ranges.get_mut(&0x10000).unwrap();
        put(heap, l.typ, MEM_PROFILE);
        put(heap, l.allnext, 0x7000_0000);
        assert!(matches!(read(&m, &l, limits()), Err(HeapError::Implausible(w)) if w.contains("not readable")));
    }

    /// Memory that goes away after `reads` reads, as an exiting process's does.
    struct Exiting {
        inner: Fake,
        reads: std::cell::Cell<u32>,
    }

    impl Memory for Exiting {
        fn read(&self, addr: u64, buf: &mut [u8]) -> bool {
            self.reads.set(self.reads.get().saturating_sub(1));
            self.reads.get() > 0 && self.inner.read(addr, buf)
        }
        fn alive(&self) -> bool {
            self.reads.get() > 0
        }
    }

    #[test]
    fn a_process_that_exits_mid_walk_is_gone_not_garbage() {
        let l = layout(true);
        // Buckets 64 KiB apart: one window read each.
        let mut m = Fake::default();
        let mut globals = vec![0u8; 0x30];
        put(&mut globals, 0x20, 512 * 1024);
        put(&mut globals, 0, 0x100000);
        m.ranges.insert(0x1000, globals);
        for i in 0..20u64 {
            let mut b = vec![0u8; (l.bucket_size + 8 + l.record_size) as usize];
            put(&mut b, l.allnext, if i < 19 { 0x100000 + (i + 1) * WINDOW } else { 0 });
            put(&mut b, l.typ, MEM_PROFILE);
            put(&mut b, l.nstk, 1);
            m.ranges.insert(0x100000 + i * WINDOW, b);
        }
        assert_eq!(read(&m, &l, limits()).unwrap().buckets.len(), 20);
        for after in [1, 3, 5, 10, 15] {
            let e = Exiting { inner: Fake { ranges: m.ranges.clone() }, reads: std::cell::Cell::new(after) };
            assert!(matches!(read(&e, &l, limits()), Err(HeapError::Gone)), "gone after {after} reads");
        }
    }

    /// Memory whose profile cycle advances at every reading of it (GC cycles ending faster
    /// than the walk), or only at the first `advances`.
    struct Advancing {
        inner: Fake,
        cycle_reads: std::cell::Cell<u32>,
        advances: u32,
    }

    impl Memory for Advancing {
        fn read(&self, addr: u64, buf: &mut [u8]) -> bool {
            let ok = self.inner.read(addr, buf);
            let at = 0x1010u64;
            if ok && addr <= at && at + 4 <= addr + buf.len() as u64 {
                let n = self.cycle_reads.get();
                self.cycle_reads.set(n + 1);
                let cycle = 4 + n.min(self.advances);
                let o = (at - addr) as usize;
                buf[o..o + 4].copy_from_slice(&(cycle << 1).to_le_bytes());
            }
            ok
        }
    }

    #[test]
    fn a_gc_cycle_ending_during_the_walk_makes_it_read_again() {
        let l = layout(true);
        let fake = || memory(&l, 512 * 1024, 4, &[(16, vec![1], [(1, 0); 4])]);
        let always = Advancing { inner: fake(), cycle_reads: Default::default(), advances: u32::MAX };
        assert!(matches!(read(&always, &l, limits()), Err(HeapError::Changed { attempts: 3 })));
        let once = Advancing { inner: fake(), cycle_reads: Default::default(), advances: 1 };
        let h = read(&once, &l, limits()).unwrap();
        assert_eq!((h.attempts, h.cycle), (2, 5), "read again, consistent the second time");
    }

    #[test]
    fn arbitrary_memory_never_panics_and_work_is_bounded() {
        // xorshift: deterministic garbage, mapped at the addresses the layout reads.
        let mut s = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        let l = layout(true);
        for round in 0..300 {
            let mut globals = vec![0u8; 0x30];
            globals.iter_mut().for_each(|b| *b = next() as u8);
            let mut heap = vec![0u8; 1 << 16];
            heap.iter_mut().for_each(|b| *b = next() as u8);
            // Steer some heads into the mapped range so chains are followed.
            if round % 2 == 0 {
                put(&mut globals, 0, 0x10000 + (next() % 0x8000) * 8);
                put(&mut globals, 0x10, next() % 1000);
                put(&mut globals, 0x20, 512 * 1024);
            }
            let m = Fake { ranges: BTreeMap::from([(0x1000, globals), (0x10000, heap)]) };
            let lim = Limits { max_buckets: 1000, max_bytes: 8 << 20, timeout: Duration::from_secs(5) };
            let started = Instant::now();
            if let Ok(h) = read(&m, &l, lim) {
                assert!(h.buckets.len() <= 1000 && h.bytes_read <= 8 << 20);
            }
            assert!(started.elapsed() < Duration::from_secs(5));
        }
    }
}
