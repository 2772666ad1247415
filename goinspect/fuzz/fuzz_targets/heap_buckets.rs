#![no_main]
//! The memory-profile bucket reader over arbitrary memory contents: never a panic, work bounded
//! by the caps (buckets, bytes, deadline) whatever the bytes say.
use goinspect::heap;

use libfuzzer_sys::fuzz_target;
use std::time::Duration;

/// The fuzzer's bytes mapped at 0x10000; the globals (head, cycle, rate) at 0x1000 from its first
/// 48 bytes.
struct Mem<'a>(&'a [u8]);

impl heap::Memory for Mem<'_> {
    fn read(&self, addr: u64, buf: &mut [u8]) -> bool {
        let (base, data) = if addr < 0x10000 { (0x1000u64, self.0.get(..48).unwrap_or(&[])) } else { (0x10000, self.0) };
        let Some(at) = addr.checked_sub(base).and_then(|a| usize::try_from(a).ok()) else { return false };
        match at.checked_add(buf.len()).and_then(|end| data.get(at..end)) {
            Some(s) => {
                buf.copy_from_slice(s);
                true
            }
            None => false,
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else { return };
    // Go 1.19–1.26 (byte counters) or 1.27 layouts.
    let bytes = sel & 1 == 0;
    let l = heap::HeapLayout {
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
    };
    let limits = heap::Limits { max_buckets: 10_000, max_bytes: 16 << 20, timeout: Duration::from_secs(2) };
    if let Ok(h) = heap::read(&Mem(rest), &l, limits) {
        assert!(h.buckets.len() <= 10_000 && h.bytes_read <= 16 << 20);
    }
});
