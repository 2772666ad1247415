//! Out-of-process heap profile: the runtime's memory-profile buckets (goinspect heap.rs) written as
//! the gzipped pprof profile Go's `/debug/pprof/heap` serves (runtime/pprof/protomem.go):
//! sample types alloc_objects/alloc_space/inuse_objects/inuse_space, period = MemProfileRate,
//! values unsampled with Go's `scaleHeapSample`, leading runtime frames hidden as Go hides them,
//! locations symbolized from the binary's pclntab (function, file, line; inlined calls expanded
//! into one location per physical frame, as Go's profile builder groups them) and the executable
//! mappings of the process with their build IDs.
use std::{collections::HashMap, time::Instant};

use serde::{Deserialize, Serialize};

use super::profile::{bytes, packed, uint, StringTable};
use goinspect::{
    heap::{self as reader, Bucket, HeapError, HeapLayout, HeapRead, Limits, Memory},
    pclntab::Symbolizer,
    GoBinary,
};

use crate::goruntime::ProcMem;

impl Memory for ProcMem {
    fn read(&self, addr: u64, buf: &mut [u8]) -> bool {
        let len = buf.len();
        match self.read_batch(&[(addr, len)]).pop().flatten() {
            Some(b) if b.len() == len => {
                buf.copy_from_slice(&b);
                true
            }
            _ => false,
        }
    }

    fn read_many(&self, addrs: &[u64], len: usize) -> (Vec<u8>, Vec<bool>) {
        self.read_same_len(addrs, len)
    }

    fn alive(&self) -> bool {
        live(self.pid())
    }
}

/// Whether process `pid` is alive and not exiting (PF_EXITING in the flags of /proc/PID/stat):
/// a read that fails while the process is being torn down is its exit, not a bad bucket list.
fn live(pid: u32) -> bool {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    let Some(rest) = s.rfind(')').map(|i| &s[i + 1..]) else { return false };
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the ")" closing the comm: state (field 3) first, flags (field 9) seventh.
    let running = f.first().is_some_and(|st| *st != "Z" && *st != "X");
    let flags = f.get(6).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
    const PF_EXITING: u64 = 0x4;
    running && flags & PF_EXITING == 0
}

/// The reader's layout for `bin` loaded with `bias`: data-symbol addresses (.symtab or code
/// references) and offsets (DWARF or the generated table of the binary's Go version).
pub fn layout(bin: &GoBinary, bias: u64) -> Result<HeapLayout, HeapError> {
    let why = || {
        bin.data_symbols_error
            .clone()
            .or_else(|| bin.offsets_error.clone())
            .unwrap_or_else(|| format!("{} has no DWARF and its offset table lacks it", bin.go_version))
    };
    let sym = |n: &str| bin.data_symbol(n).map(|a| a.wrapping_add(bias)).ok_or_else(|| HeapError::Layout(format!("{n} unknown: {}", why())));
    let off = |n: &str| bin.offset(n).ok_or_else(|| HeapError::Layout(format!("offset {n} unknown: {}", why())));
    let (record_size, future, cycle_size) = (off("sizeof(memRecord)")?, off("memRecord.future")?, off("sizeof(memRecordCycle)")?);
    let bytes = match (bin.offset("memRecordCycle.alloc_bytes"), bin.offset("memRecordCycle.free_bytes")) {
        (Some(a), Some(f)) => Some((a, f)),
        _ => None,
    };
    let l = HeapLayout {
        mbuckets: sym("runtime.mbuckets")?,
        mprof_cycle: sym("runtime.mProfCycle")?,
        mem_profile_rate: sym("runtime.MemProfileRate")?,
        cycle_value: off("mProfCycleHolder.value")?,
        bucket_size: off("sizeof(bucket)")?,
        allnext: off("bucket.allnext")?,
        typ: off("bucket.typ")?,
        size: off("bucket.size")?,
        nstk: off("bucket.nstk")?,
        record_size,
        active: off("memRecord.active")?,
        future,
        futures: record_size.saturating_sub(future).checked_div(cycle_size).unwrap_or(0),
        cycle_size,
        allocs: off("memRecordCycle.allocs")?,
        frees: off("memRecordCycle.frees")?,
        bytes,
    };
    l.check().map_err(HeapError::Layout)?;
    Ok(l)
}

/// What the summary says about a heap profile read out of process.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct HeapProfileInfo {
    /// Memory-profile buckets read (one sample each).
    pub buckets: u64,
    /// runtime.MemProfileRate at the read.
    pub memprofile_rate: i64,
    /// In-use bytes of the profile (unsampled, as `go tool pprof -sample_index=inuse_space` sums).
    pub inuse_space_bytes: i64,
    pub bytes_read: u64,
    /// Time to read the buckets and to write the profile.
    pub read_seconds: f64,
    pub write_seconds: f64,
    /// Why inlined frames are not expanded (they are unless this says why).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub inline_frames: Option<String>,
}

/// A heap profile captured out of process.
pub struct HeapCapture {
    pub profile_gz: Vec<u8>,
    pub info: HeapProfileInfo,
}

/// Reads the buckets of the process behind `mem` and writes the profile. `exe` is the
/// executable as the process maps it (the name in /proc/PID/maps), read through /proc/PID/exe.
pub fn capture(mem: &ProcMem, bin: &GoBinary, bias: u64, exe: &str, limits: Limits) -> Result<HeapCapture, HeapError> {
    let l = layout(bin, bias)?;
    let read = reader::read(mem, &l, limits).map_err(|e| match e {
        HeapError::Implausible(_) | HeapError::Changed { .. } if !live(mem.pid()) => HeapError::Gone,
        e => e,
    })?;
    tracing::debug!(pid = mem.pid(), cycle = read.cycle, reads = read.reads, attempts = read.attempts, bytes = read.bytes_read, "memory-profile buckets read");
    let started = Instant::now();
    let sym = Symbolizer::load(std::path::Path::new(&format!("/proc/{}/exe", mem.pid())), bin).map_err(|e| if mem.alive() { HeapError::Layout(format!("cannot symbolize: {e}")) } else { HeapError::Gone })?;
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", mem.pid())).map_err(|_| HeapError::Gone)?;
    let mappings = exec_mappings(&maps, &sym.build_id, exe);
    let now_ns = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0);
    let comment = format!(
        "chainprobe out-of-process heap profile of pid {} ({}): {} memory-profile buckets, MemProfileRate {}",
        mem.pid(),
        bin.go_version,
        read.buckets.len(),
        read.rate
    );
    let (profile, inuse) = write(&read, &|pc| sym.frames(pc.wrapping_sub(bias)).into_iter().map(Frame::from).collect(), bias, &mappings, now_ns, &comment);
    // gzip.BestSpeed, as Go's profile builder writes.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &profile).map_err(|e| HeapError::Layout(e.to_string()))?;
    let profile_gz = gz.finish().map_err(|e| HeapError::Layout(e.to_string()))?;
    Ok(HeapCapture {
        profile_gz,
        info: HeapProfileInfo {
            buckets: read.buckets.len() as u64,
            memprofile_rate: read.rate,
            inuse_space_bytes: inuse,
            bytes_read: read.bytes_read,
            read_seconds: read.seconds,
            write_seconds: started.elapsed().as_secs_f64(),
            inline_frames: sym.inline_error.clone(),
        },
    })
}

/// An executable mapping: start, limit, file offset, file, build ID.
pub type Mapping = (u64, u64, u64, String, String);

/// The executable mappings of /proc/PID/maps (as Go's profile builder lists its own), the main
/// executable's (`exe`) with `build_id`.
pub fn exec_mappings(maps: &str, build_id: &str, exe: &str) -> Vec<Mapping> {
    let exe = exe.trim_end_matches(" (deleted)");
    let mut out = Vec::new();
    for line in maps.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 5 || f[1].as_bytes().get(2) != Some(&b'x') {
            continue;
        }
        let mut r = f[0].split('-').map(|x| u64::from_str_radix(x, 16));
        let (Some(Ok(lo)), Some(Ok(hi)), Ok(off)) = (r.next(), r.next(), u64::from_str_radix(f[2], 16)) else { continue };
        let file = f.get(5..).map(|p| p.join(" ")).unwrap_or_default();
        let file = file.trim_end_matches(" (deleted)").to_string();
        let id = if file == exe { build_id.to_string() } else { String::new() };
        out.push((lo, hi, off, file, id));
    }
    out
}

/// One logical frame, owned.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Frame {
    pub function: String,
    pub file: String,
    pub line: i64,
    pub start_line: i64,
    /// Link-time entry of the physical function.
    pub entry: u64,
    pub inlined: bool,
}

impl From<goinspect::pclntab::SrcFrame<'_>> for Frame {
    fn from(f: goinspect::pclntab::SrcFrame<'_>) -> Frame {
        Frame { function: name_for_print(f.function), file: f.file.to_string(), line: f.line, start_line: f.start_line, entry: f.entry, inlined: f.inlined }
    }
}

/// As runtime.funcNameForPrint: a generic function's shape arguments print as "[...]".
fn name_for_print(name: &str) -> String {
    match (name.find('['), name.rfind(']')) {
        (Some(a), Some(b)) if a < b => format!("{}[...]{}", &name[..a], &name[b + 1..]),
        _ => name.to_string(),
    }
}

/// As runtime/pprof's scaleHeapSample. Before Go 1.27 it takes the bucket's byte total
/// (`size`); from 1.27 the object size (`count × size` bytes), which this covers with
/// `bytes = None`.
pub fn scale_heap_sample(count: i64, bytes: i64, rate: i64) -> (i64, i64) {
    if count == 0 || bytes == 0 {
        return (0, 0);
    }
    if rate <= 1 {
        return (count, bytes);
    }
    let avg = bytes as f64 / count as f64;
    let scale = 1.0 / (1.0 - (-avg / rate as f64).exp());
    ((count as f64 * scale) as i64, (bytes as f64 * scale) as i64)
}

/// Symbolizes a runtime PC: its logical frames at that address, innermost first.
pub type Symbolize<'a> = dyn Fn(u64) -> Vec<Frame> + 'a;

/// Maps keyed by PCs, hashed with a seeded multiply-xorshift: the per-PC lookups dominate the
/// writer's time with SipHash (~1.7 µs a bucket at 10k buckets), and the random seed keeps a
/// target from choosing colliding PCs ahead of time.
#[derive(Clone, Copy)]
struct PcHash(u64);

impl Default for PcHash {
    fn default() -> PcHash {
        use std::hash::BuildHasher;
        PcHash(std::collections::hash_map::RandomState::new().hash_one(0x5eed_u64) | 1)
    }
}

struct PcHasher(u64);

impl std::hash::Hasher for PcHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }
    fn write_u64(&mut self, v: u64) {
        let x = (self.0 ^ v).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        self.0 = x ^ (x >> 29);
    }
}

impl std::hash::BuildHasher for PcHash {
    type Hasher = PcHasher;
    fn build_hasher(&self) -> PcHasher {
        PcHasher(self.0)
    }
}

type PcMap<V> = HashMap<u64, V, PcHash>;

/// A resolved stack PC.
#[derive(Clone, Copy)]
struct Pc {
    /// FuncForPC(pc).Name() is a runtime function (the innermost function at the return address).
    runtime: bool,
    /// The logical frame CallersFrames reports for it (at pc - 1 inside a function), interned.
    frame: Option<usize>,
    /// The address of that frame (pc - 1 inside a function): a location's address.
    at: u64,
}

/// Interned frames, each with its profile function id.
#[derive(Default)]
struct Frames {
    list: Vec<(Frame, u64)>,
    ids: HashMap<Frame, usize>,
}

fn resolve(sym: &Symbolize<'_>, pc: u64, bias: u64, frames: &mut Frames, b: &mut Builder) -> Pc {
    let here = sym(pc);
    let entry = here.first().map(|f| f.entry.wrapping_add(bias));
    let at = match entry {
        Some(e) if pc > e => pc - 1,
        None => pc.wrapping_sub(1),
        _ => pc,
    };
    let runtime = here.first().is_some_and(|f| f.function.starts_with("runtime.") || f.function.starts_with("internal/runtime/"));
    let frame = if at == pc { here.into_iter().next() } else { sym(at).into_iter().next() };
    let frame = frame.map(|f| match frames.ids.get(&f) {
        Some(&i) => i,
        None => {
            let id = b.function(&f);
            frames.list.push((f.clone(), id));
            frames.ids.insert(f, frames.list.len() - 1);
            frames.list.len() - 1
        }
    });
    Pc { runtime, frame, at }
}

/// Encodes the profile (not gzipped); returns it and its total inuse_space.
pub fn write(read: &HeapRead, sym: &Symbolize<'_>, bias: u64, mappings: &[Mapping], time_nanos: i64, comment: &str) -> (Vec<u8>, i64) {
    let mut b = Builder::default();
    let types: Vec<(u64, u64)> =
        [("alloc_objects", "count"), ("alloc_space", "bytes"), ("inuse_objects", "count"), ("inuse_space", "bytes")].iter().map(|(t, u)| (b.string(t), b.string(u))).collect();
    let period_type = (b.string("space"), b.string("bytes"));
    let bytes_key = b.string("bytes");
    let mut pcs: PcMap<Pc> = PcMap::default();
    let mut frames = Frames::default();
    let mut out = Vec::new();
    for (t, u) in &types {
        let mut m = Vec::new();
        uint(&mut m, 1, *t);
        uint(&mut m, 2, *u);
        bytes(&mut out, 1, &m);
    }
    let mut inuse_total = 0i64;
    let (mut locs, mut m, mut vals) = (Vec::new(), Vec::new(), Vec::new());
    for bk in &read.buckets {
        for pc in &bk.stack {
            if !pcs.contains_key(pc) {
                let p = resolve(sym, *pc, bias, &mut frames, &mut b);
                pcs.insert(*pc, p);
            }
        }
        locs.clear();
        b.locations(&bk.stack, &pcs, &frames, mappings, &mut locs);
        let (values, label) = values(bk, read.rate, read.has_byte_counters);
        inuse_total = inuse_total.saturating_add(values[3]);
        m.clear();
        packed(&mut m, 1, &locs);
        vals.clear();
        vals.extend(values.iter().map(|v| *v as u64));
        packed(&mut m, 2, &vals);
        if let Some(n) = label {
            let mut l = Vec::with_capacity(8);
            uint(&mut l, 1, bytes_key);
            uint(&mut l, 3, n as u64);
            bytes(&mut m, 3, &l);
        }
        bytes(&mut out, 2, &m);
    }
    for (i, (lo, hi, off, file, id)) in mappings.iter().enumerate() {
        let (file, id) = (b.string(file), b.string(id));
        let mut m = Vec::new();
        uint(&mut m, 1, i as u64 + 1);
        uint(&mut m, 2, *lo);
        uint(&mut m, 3, *hi);
        uint(&mut m, 4, *off);
        uint(&mut m, 5, file);
        uint(&mut m, 6, id);
        if b.symbolized.contains(&(i as u64 + 1)) {
            for field in 7..=10 {
                uint(&mut m, field, 1); // has functions, filenames, line numbers, inline frames
            }
        }
        bytes(&mut out, 3, &m);
    }
    for (id, mapping, addr, lines) in &b.locs {
        let mut m = Vec::new();
        uint(&mut m, 1, *id);
        uint(&mut m, 2, *mapping);
        uint(&mut m, 3, *addr);
        for (f, line) in lines {
            let mut l = Vec::new();
            uint(&mut l, 1, *f);
            uint(&mut l, 2, *line as u64);
            bytes(&mut m, 4, &l);
        }
        bytes(&mut out, 4, &m);
    }
    for (id, name, file, start) in &b.funcs {
        let mut m = Vec::new();
        uint(&mut m, 1, *id);
        uint(&mut m, 2, *name);
        uint(&mut m, 3, *name);
        uint(&mut m, 4, *file);
        uint(&mut m, 5, *start as u64);
        bytes(&mut out, 5, &m);
    }
    let comment = b.string(comment);
    b.strings.encode(&mut out);
    uint(&mut out, 9, time_nanos as u64);
    let mut pt = Vec::new();
    uint(&mut pt, 1, period_type.0);
    uint(&mut pt, 2, period_type.1);
    bytes(&mut out, 11, &pt);
    uint(&mut out, 12, read.rate as u64);
    packed(&mut out, 13, &[comment]);
    (out, inuse_total)
}

/// The four values and the "bytes" label of a bucket, as writeHeapProto computes them.
fn values(bk: &Bucket, rate: i64, has_byte_counters: bool) -> ([i64; 4], Option<i64>) {
    let (allocs, frees) = (bk.allocs as i64, bk.frees as i64);
    let inuse = allocs.wrapping_sub(frees);
    if has_byte_counters {
        let (ab, fb) = (bk.alloc_bytes as i64, bk.free_bytes as i64);
        let (a0, a1) = scale_heap_sample(allocs, ab, rate);
        let (i0, i1) = scale_heap_sample(inuse, ab.wrapping_sub(fb), rate);
        let block = if allocs > 0 { ab / allocs } else { 0 };
        ([a0, a1, i0, i1], (block != 0).then_some(block))
    } else {
        // Go 1.27: scaleHeapSample(count, ObjectSize, rate), the label always.
        let size = bk.size as i64;
        let scale = |count: i64| if size == 0 { (0, 0) } else { scale_heap_sample(count, count.wrapping_mul(size), rate) };
        let ((a0, a1), (i0, i1)) = (scale(allocs), scale(inuse));
        ([a0, a1, i0, i1], Some(size))
    }
}

/// A location: id, mapping id, address, [(function id, line)] innermost first.
type Loc = (u64, u64, u64, Vec<(u64, i64)>);

/// Locations, functions and strings of the profile under construction.
#[derive(Default)]
struct Builder {
    strings: StringTable,
    /// (id, name, file, start line)
    funcs: Vec<(u64, u64, u64, i64)>,
    func_ids: HashMap<(String, String, i64), u64>,
    locs: Vec<Loc>,
    /// Locations by their first PC, with how many PCs they cover (as Go's profile builder
    /// caches them).
    loc_ids: PcMap<(u64, usize)>,
    /// Mappings with symbolized locations.
    symbolized: std::collections::BTreeSet<u64>,
    /// The deck: PCs of the location being built and their frames (reused buffers).
    deck: Vec<u64>,
    deck_frames: Vec<usize>,
}

impl Builder {
    fn string(&mut self, s: &str) -> u64 {
        self.strings.id(s)
    }

    fn function(&mut self, f: &Frame) -> u64 {
        let key = (f.function.clone(), f.file.clone(), f.start_line);
        if let Some(&id) = self.func_ids.get(&key) {
            return id;
        }
        let id = self.funcs.len() as u64 + 1;
        let (name, file) = (self.string(&f.function), self.string(&f.file));
        self.funcs.push((id, name, file, f.start_line));
        self.func_ids.insert(key, id);
        id
    }

    /// Whether frame `f` continues the deck: the deck's last frame is inlined into the same
    /// physical function, and not the same function (recursion), as pcDeck.tryAdd decides.
    fn joins(&self, frames: &Frames, f: usize) -> bool {
        let Some(&last) = self.deck_frames.last() else { return true };
        let (last, new) = (&frames.list[last].0, &frames.list[f].0);
        last.inlined && last.entry != 0 && last.entry == new.entry && last.function != new.function
    }

    /// The location ids of a bucket's stack (leaf first) appended to `out`, as runtime/pprof's
    /// appendLocsForStack builds them: leading runtime frames hidden; consecutive PCs of one
    /// physical frame (an inlined call, then its callers in the same function) one location with
    /// several lines; a location met before (by its first PC) reused.
    fn locations(&mut self, stack: &[u64], pcs: &PcMap<Pc>, frames: &Frames, mappings: &[Mapping], out: &mut Vec<u64>) {
        let stk = match stack.iter().position(|pc| !pcs.get(pc).is_some_and(|p| p.runtime)) {
            Some(i) => &stack[i..],
            None => stack,
        };
        let mut i = 0;
        while i < stk.len() {
            let pc = stk[i];
            let Some(p) = pcs.get(&pc) else {
                i += 1;
                continue;
            };
            if let Some(&(id, n)) = self.loc_ids.get(&pc) {
                if !self.deck.is_empty() && p.frame.is_some_and(|f| self.joins(frames, f)) {
                    self.deck.push(pc);
                    self.deck_frames.extend(p.frame);
                    i += 1;
                    continue;
                }
                self.emit(pcs, frames, mappings, out);
                out.push(id);
                i += n.max(1);
                continue;
            }
            if p.frame.is_some_and(|f| frames.list[f].0.function == "runtime.goexit") {
                self.emit(pcs, frames, mappings, out);
                i += 1;
                continue;
            }
            if !self.deck.is_empty() && !p.frame.is_some_and(|f| self.joins(frames, f)) {
                self.emit(pcs, frames, mappings, out);
                if let Some(&(id, n)) = self.loc_ids.get(&pc) {
                    out.push(id);
                    i += n.max(1);
                    continue;
                }
            }
            self.deck.push(pc);
            self.deck_frames.extend(p.frame);
            i += 1;
        }
        self.emit(pcs, frames, mappings, out);
    }

    fn emit(&mut self, pcs: &PcMap<Pc>, frames: &Frames, mappings: &[Mapping], out: &mut Vec<u64>) {
        let Some(&first) = self.deck.first() else { return };
        let addr = pcs.get(&first).map(|p| p.at).unwrap_or(first);
        let mapping = mappings.iter().position(|m| addr >= m.0 && addr < m.1).map(|i| i as u64 + 1).unwrap_or(0);
        if mapping != 0 && !self.deck_frames.is_empty() {
            self.symbolized.insert(mapping);
        }
        let lines = self.deck_frames.iter().map(|&f| (frames.list[f].1, frames.list[f].0.line)).collect();
        let id = self.locs.len() as u64 + 1;
        self.locs.push((id, mapping, addr, lines));
        self.loc_ids.insert(first, (id, self.deck.len()));
        out.push(id);
        self.deck.clear();
        self.deck_frames.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(function: &str, line: i64, entry: u64, inlined: bool) -> Frame {
        Frame { function: function.into(), file: "/src/main.go".into(), line, start_line: 1, entry, inlined }
    }

    #[test]
    fn liveness_from_proc_stat() {
        assert!(live(std::process::id()));
        assert!(!live(0x7fff_fff0), "beyond pid_max");
    }

    #[test]
    fn scaling_is_gos() {
        // A 48 MiB object sampled at 512 KiB: scale ≈ 1.
        let (c, b) = scale_heap_sample(1, 48 << 20, 512 * 1024);
        assert_eq!((c, b), (1, 48 << 20));
        // 1000 objects of 64 bytes at 512 KiB: each had 1 - e^(-64/524288) odds.
        let (c, b) = scale_heap_sample(1000, 64_000, 512 * 1024);
        let want = 1000.0 / (1.0 - (-64.0f64 / 524_288.0).exp());
        assert_eq!(c, want as i64);
        assert_eq!(b, (64_000.0 * want / 1000.0) as i64);
        assert_eq!(scale_heap_sample(5, 500, 1), (5, 500));
        assert_eq!(scale_heap_sample(0, 500, 512), (0, 0));
    }

    #[test]
    fn runtime_frames_hidden_and_inlined_calls_grouped() {
        // runtime.mallocgc ← main.alloc (inlined into main.work at 0x2000) ← main.work ← main.main
        let sym = |pc: u64| match pc {
            0x1000..=0x1fff => vec![frame("runtime.mallocgc", 10, 0x1000, false)],
            0x2000..=0x20ff => vec![frame("main.alloc", 20, 0x2000, true), frame("main.work", 30, 0x2000, false)],
            0x2100..=0x2fff => vec![frame("main.work", 31, 0x2000, false)],
            0x3000..=0x3fff => vec![frame("main.main", 40, 0x3000, false)],
            _ => vec![],
        };
        let read = HeapRead {
            rate: 512 * 1024,
            cycle: 1,
            buckets: vec![Bucket { size: 1 << 20, stack: vec![0x1010, 0x2011, 0x2101, 0x3001], allocs: 2, frees: 1, alloc_bytes: 2 << 20, free_bytes: 1 << 20 }],
            has_byte_counters: true,
            bytes_read: 0,
            reads: 0,
            attempts: 1,
            seconds: 0.0,
        };
        let (mut b, mut frames) = (Builder::default(), Frames::default());
        let pcs: PcMap<Pc> = read.buckets[0].stack.iter().map(|pc| (*pc, resolve(&sym, *pc, 0, &mut frames, &mut b))).collect();
        let mut locs = Vec::new();
        b.locations(&read.buckets[0].stack, &pcs, &frames, &[(0, 0x10000, 0, "/bin/x".into(), "id".into())], &mut locs);
        // runtime frame hidden; alloc+work one location; main another.
        assert_eq!(locs.len(), 2);
        assert_eq!(b.locs[0].2, 0x2010, "address of the call: pc - 1");
        assert_eq!(b.locs[0].3.len(), 2, "inlined call and its caller: one location, two lines");
        assert_eq!(b.locs[1].3.len(), 1);
        // The same stack again: the same locations, found by their first PC.
        let mut again = Vec::new();
        b.locations(&read.buckets[0].stack, &pcs, &frames, &[(0, 0x10000, 0, "/bin/x".into(), "id".into())], &mut again);
        assert_eq!(again, locs);
        assert_eq!(b.locs.len(), 2);
        let (enc, inuse) = write(&read, &sym, 0, &[(0, 0x10000, 0, "/bin/x".into(), "id".into())], 1, "c");
        assert!(!enc.is_empty());
        assert_eq!(inuse, scale_heap_sample(1, 1 << 20, 512 * 1024).1, "one 1 MiB object in use, unsampled");
    }
}
