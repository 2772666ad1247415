#![no_main]
//! Whole-binary entry point (ELF → buildinfo → pclntab → moduledata → DWARF → disassembly).
//! Without CHAINPROBE_FUZZ_BASE the input is the file. With CHAINPROBE_FUZZ_BASE=<Go binary> the
//! input is a patch list applied to that binary (so mutations reach the deep parsers):
//! [u32 truncate-to (0 = keep)] then repeated [u32 offset][u8 value].

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

fn base() -> Option<&'static [u8]> {
    static B: OnceLock<Option<Vec<u8>>> = OnceLock::new();
    B.get_or_init(|| std::env::var_os("CHAINPROBE_FUZZ_BASE").and_then(|p| std::fs::read(p).ok()))
        .as_deref()
}

fuzz_target!(|data: &[u8]| {
    let path = std::path::Path::new("fuzz");
    let Some(base) = base() else {
        let _ = goinspect::inspect_bytes(path, data);
        return;
    };
    if data.len() < 4 {
        return;
    }
    let mut img = base.to_vec();
    let trunc = u32::from_le_bytes([data[0], data[1], data[2], data[3]]) as usize;
    for p in data[4..].chunks_exact(5) {
        let off = u32::from_le_bytes([p[0], p[1], p[2], p[3]]) as usize % img.len();
        img[off] = p[4];
    }
    if trunc != 0 && trunc < img.len() {
        img.truncate(trunc);
    }
    if let Ok(b) = goinspect::inspect_bytes(path, &img) {
        let _ = goinspect::render_text(&b);
    }
});
