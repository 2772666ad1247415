#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Pointer-format strings resolve into the input itself.
    let rs = |p: u64, _ps: u8| -> Option<String> {
        let p = usize::try_from(p).ok()?;
        let len = *data.get(p)? as usize;
        Some(String::from_utf8_lossy(data.get(p + 1..p + 1 + len)?).into_owned())
    };
    let mut buf = goinspect::buildinfo::MAGIC_BYTES.to_vec();
    buf.extend_from_slice(data);
    let _ = goinspect::buildinfo::parse(&buf, &rs);
    let _ = goinspect::buildinfo::parse(data, &rs);
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = goinspect::buildinfo::GoVersion::parse(s);
    }
});
