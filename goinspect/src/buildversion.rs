//! The Go version of a binary that has no build info (some release builds drop the
//! `.go.buildinfo` section; `go version -m` cannot read them): the string the runtime's
//! `runtime.buildVersion` variable points at, found without symbols.
//!
//! `runtime.buildVersion` is a Go string header {ptr, len} in a writable data segment (the linker
//! fills it in; `runtime.schedinit` reads it, so it is always linked), pointing at "go1.N[.P]…" in
//! read-only data. Go strings are not terminated, so a "go1." in .rodata alone says nothing about
//! its length: the header does. The search: every "go1." in the file is a candidate address; a
//! pointer-aligned word of a writable segment (or, in a PIE, the addend of a RELATIVE relocation)
//! equal to a candidate, followed by a length that makes the bytes a Go version, is the header.

use std::collections::{BTreeSet, HashSet};

use crate::buildinfo::GoVersion;
use crate::elf::ElfImage;

/// Longest version string accepted ("go1.26.6 X:boringcrypto,nocoverageredesign" fits).
const MAX_LEN: u64 = 96;

/// Whether `s` reads as a Go release version string: "go1.N", "go1.N.P", "go1.NrcK", optionally
/// followed by " X:experiments".
fn is_version_string(s: &[u8]) -> bool {
    let Ok(s) = std::str::from_utf8(s) else { return false };
    let (head, rest) = s.split_once(' ').unwrap_or((s, ""));
    if !rest.is_empty() && !rest.starts_with("X:") {
        return false;
    }
    if !rest.bytes().all(|b| b.is_ascii_graphic()) {
        return false;
    }
    let Some(v) = head.strip_prefix("go1.") else { return false };
    let mut parts = v.splitn(2, |c: char| !c.is_ascii_digit());
    let minor = parts.next().unwrap_or("");
    if minor.is_empty() || minor.len() > 3 {
        return false;
    }
    let tail = &v[minor.len()..];
    // ".P", "rcK", "betaK" or nothing.
    let ok_tail = tail.is_empty()
        || tail.strip_prefix('.').is_some_and(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()))
        || ["rc", "beta"].iter().any(|pre| tail.strip_prefix(pre).is_some_and(|k| !k.is_empty() && k.bytes().all(|b| b.is_ascii_digit())));
    ok_tail && GoVersion::parse(head).is_some()
}

/// Finds the string `runtime.buildVersion` points at. Err says why none (or more than one
/// different one) was found.
pub(crate) fn find(img: &ElfImage<'_>) -> Result<String, String> {
    // Candidate string addresses.
    let mut cands: HashSet<u64> = HashSet::new();
    for pos in memchr::memmem::find_iter(img.data, b"go1.") {
        if let Some(va) = img.offset_to_vaddr(pos as u64) {
            cands.insert(va);
        }
    }
    if cands.is_empty() {
        return Err("no \"go1.\" string in the file".into());
    }
    let mut found: BTreeSet<String> = BTreeSet::new();
    let mut check = |ptr: u64, len_at: u64| {
        let Some(len) = img.bytes_at(len_at, 8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes) else { return };
        if !(5..=MAX_LEN).contains(&len) {
            return;
        }
        if let Some(s) = img.bytes_at(ptr, len) {
            if is_version_string(s) {
                found.insert(String::from_utf8_lossy(s).into_owned());
            }
        }
    };
    // Position-dependent (and PIE words the linker filled in): scan writable segments.
    for seg in img.segments.iter().filter(|s| s.flags & object::elf::PF_W != 0) {
        let Some(bytes) = img.bytes_at(seg.vaddr, seg.filesz) else { continue };
        let skip = (8 - (seg.vaddr % 8) as usize) % 8;
        let Some(aligned) = bytes.get(skip..) else { continue };
        for (i, w) in aligned.chunks_exact(8).enumerate() {
            let word = u64::from_le_bytes(w.try_into().unwrap_or([0; 8]));
            if cands.contains(&word) {
                let at = seg.vaddr + skip as u64 + 8 * i as u64;
                check(word, at + 8);
            }
        }
    }
    // PIE: the pointer is the addend of a RELATIVE relocation (the file word may be 0).
    if img.pie {
        for (place, addend) in img.relative_relocs() {
            if cands.contains(addend) {
                check(*addend, place.wrapping_add(8));
            }
        }
    }
    match found.len() {
        0 => Err("no Go string header points at a Go version string (runtime.buildVersion not found)".into()),
        1 => Ok(found.into_iter().next().unwrap_or_default()),
        _ => Err(format!("several Go version strings are referenced ({}): cannot tell which is runtime.buildVersion", found.into_iter().collect::<Vec<_>>().join(", "))),
    }
}

#[cfg(test)]
mod tests {
    use super::is_version_string;

    #[test]
    fn version_strings() {
        for ok in ["go1.26.6", "go1.21", "go1.27rc1", "go1.22beta2", "go1.26.6 X:boringcrypto", "go1.19.8"] {
            assert!(is_version_string(ok.as_bytes()), "{ok}");
        }
        for bad in ["go1.", "go1.x", "go1.26.", "go1.26.6junk", "go1.26.6 extra", "go1.26.6\n", "go2", "go1.2345"] {
            assert!(!is_version_string(bad.as_bytes()), "{bad}");
        }
    }
}
