#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(t) = goinspect::pclntab::PclnTab::parse(data) {
        for f in t.iter().take(100_000) {
            let _ = (f.entry, f.end, f.name.len(), f.func_id);
        }
        // File/line/inline lookups (heap profiles), the same bytes standing in for go:func.*.
        for pc in [0u64, 1, 0x40, 0x1000, u64::MAX] {
            for fr in t.frames(pc, Some(data)) {
                let _ = (fr.function.len(), fr.file.len(), fr.line);
            }
        }
    }
    // Disassemblers on the same bytes.
    for arch in [goinspect::Arch::Amd64, goinspect::Arch::Arm64] {
        let _ = goinspect::disasm::ret_offsets(arch, data, 0x401000);
        let _ = goinspect::disasm::pcrel_refs(arch, data, u64::MAX - 64);
    }
});
