//! Go pclntab parser (formats of Go 1.16–1.17, 1.18–1.19 and 1.20+) and firstmoduledata search.
//!
//! Header: magic u32, 2 zero bytes, minLC u8, ptrSize u8, nfunc uintptr, nfiles uintptr,
//! [textStart uintptr, 1.18+], funcnameOffset, cuOffset, filetabOffset, pctabOffset, pclnOffset.
//! functab at pclnOffset: 1.18+ {entryOff u32, funcOff u32} × (nfunc+1); 1.16 {entry, funcOff} uintptrs.
//! _func at pclnOffset+funcOff: 1.18+ entryOff u32, nameOff i32, 7×u32, [startLine i32 1.20+],
//! funcID u8, ...; 1.16 entry uintptr, nameOff i32, 7×u32, funcID u8.

use crate::elf::ElfImage;

pub(crate) const MAGIC_116: u32 = 0xffff_fffa;
pub(crate) const MAGIC_118: u32 = 0xffff_fff0;
pub(crate) const MAGIC_120: u32 = 0xffff_fff1;
pub(crate) const MAGIC_12: u32 = 0xffff_fffb;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PclnVersion {
    V116,
    V118,
    V120,
}

/// A parsed pclntab (a view over the bytes; nothing is copied).
#[derive(Debug, Clone)]
pub struct PclnTab<'a> {
    pub data: &'a [u8],
    pub version: PclnVersion,
    pub min_lc: u8,
    pub ptr_size: u8,
    pub nfunc: usize,
    /// textStart from the header (1.18+; 0 in Go 1.27 and in 1.16).
    pub text_start: u64,
    pub funcname_offset: u64,
    pcln_offset: usize,
    funcname_start: usize,
    /// cutab, filetab and pctab offsets (file names and pc-value tables: see [`PclnTab::frames`]).
    cu_offset: usize,
    filetab_offset: usize,
    pctab_offset: usize,
}

/// One function table entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FuncEntry<'a> {
    /// entryOff relative to the text base (1.18+) or the absolute entry (1.16).
    pub entry: u64,
    /// entry of the next function (end bound, includes padding)
    pub end: u64,
    pub name: &'a str,
    pub func_id: u8,
}

fn u32_at(d: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        d.get(off..off.checked_add(4)?)?.try_into().ok()?,
    ))
}
fn u64_at(d: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        d.get(off..off.checked_add(8)?)?.try_into().ok()?,
    ))
}

impl<'a> PclnTab<'a> {
    /// Parse the header. `data` starts at the magic and may extend past the table.
    pub fn parse(data: &'a [u8]) -> Result<Self, String> {
        let magic = u32_at(data, 0).ok_or("pclntab header truncated")?;
        let version = match magic {
            MAGIC_116 => PclnVersion::V116,
            MAGIC_118 => PclnVersion::V118,
            MAGIC_120 => PclnVersion::V120,
            MAGIC_12 => {
                return Err("pclntab of Go 1.2–1.15 (magic 0xfffffffb) is not supported".into())
            }
            m => return Err(format!("bad pclntab magic {m:#x}")),
        };
        if data.get(4) != Some(&0) || data.get(5) != Some(&0) {
            return Err("pclntab header padding is not zero".into());
        }
        let min_lc = *data.get(6).ok_or("pclntab header truncated")?;
        let ptr_size = *data.get(7).ok_or("pclntab header truncated")?;
        if !matches!(min_lc, 1 | 2 | 4) || ptr_size != 8 {
            return Err(format!(
                "unsupported pclntab quantum {min_lc} / pointer size {ptr_size}"
            ));
        }
        let word = |i: usize| u64_at(data, 8 + 8 * i).ok_or("pclntab header truncated");
        let nfunc = word(0)?;
        let (text_start, base) = match version {
            PclnVersion::V116 => (0, 2),
            _ => (word(2)?, 3),
        };
        let funcname_offset = word(base)?;
        let pcln_offset = word(base + 4)?;
        let small = |w: u64| usize::try_from(w).ok().filter(|w| *w < data.len()).unwrap_or(usize::MAX);
        let (cu_offset, filetab_offset, pctab_offset) = (small(word(base + 1)?), small(word(base + 2)?), small(word(base + 3)?));
        let nfunc = usize::try_from(nfunc).map_err(|_| "nfunc overflow")?;
        let pcln_offset = usize::try_from(pcln_offset).map_err(|_| "pclnOffset overflow")?;
        let funcname_start =
            usize::try_from(funcname_offset).map_err(|_| "funcnameOffset overflow")?;
        if nfunc == 0 || nfunc > 10_000_000 {
            return Err(format!("implausible function count {nfunc}"));
        }
        let entry_size = if version == PclnVersion::V116 { 16 } else { 8 };
        let ftab_end = nfunc
            .checked_add(1)
            .and_then(|n| n.checked_mul(entry_size))
            .and_then(|n| n.checked_add(pcln_offset))
            .ok_or("functab size overflow")?;
        if ftab_end > data.len() || funcname_start >= data.len() {
            return Err(format!(
                "function table ({nfunc} entries) runs past the end of the data ({} bytes)",
                data.len()
            ));
        }
        Ok(PclnTab {
            data,
            version,
            min_lc,
            ptr_size,
            nfunc,
            text_start,
            funcname_offset,
            pcln_offset,
            funcname_start,
            cu_offset,
            filetab_offset,
            pctab_offset,
        })
    }

    fn functab(&self, i: usize) -> Option<(u64, usize)> {
        match self.version {
            PclnVersion::V116 => {
                let off = self.pcln_offset.checked_add(i.checked_mul(16)?)?;
                let e = u64_at(self.data, off)?;
                let f = u64_at(self.data, off.checked_add(8)?)?;
                Some((e, usize::try_from(f).ok()?))
            }
            _ => {
                let off = self.pcln_offset.checked_add(i.checked_mul(8)?)?;
                let e = u32_at(self.data, off)?;
                let f = u32_at(self.data, off.checked_add(4)?)?;
                Some((u64::from(e), f as usize))
            }
        }
    }

    fn cstr(&self, off: usize) -> Option<&'a str> {
        let d = self.data.get(off..)?;
        let n = memchr::memchr(0, d)?;
        std::str::from_utf8(d.get(..n)?).ok()
    }

    /// Function `i` (0 ≤ i < nfunc).
    pub fn func(&self, i: usize) -> Option<FuncEntry<'a>> {
        if i >= self.nfunc {
            return None;
        }
        let (entry, funcoff) = self.functab(i)?;
        let (end, _) = self.functab(i + 1)?;
        let f = self.pcln_offset.checked_add(funcoff)?;
        let (name_off, id_off) = match self.version {
            PclnVersion::V116 => (f.checked_add(8)?, f.checked_add(8 + 32)?),
            PclnVersion::V118 => (f.checked_add(4)?, f.checked_add(36)?),
            PclnVersion::V120 => (f.checked_add(4)?, f.checked_add(40)?),
        };
        let name_off = u32_at(self.data, name_off)? as usize;
        let func_id = *self.data.get(id_off)?;
        let name = self.cstr(self.funcname_start.checked_add(name_off)?)?;
        Some(FuncEntry {
            entry,
            end,
            name,
            func_id,
        })
    }

    pub fn iter(&self) -> impl Iterator<Item = FuncEntry<'a>> + '_ {
        (0..self.nfunc).filter_map(move |i| self.func(i))
    }

    /// Entry addresses are relative to the text base (1.18+) rather than absolute (1.16).
    pub fn relative_entries(&self) -> bool {
        self.version != PclnVersion::V116
    }
}

/// `PCDATA_InlTreeIndex` and `FUNCDATA_InlTree` (runtime/funcdata.h, the same 1.16–1.27).
const PCDATA_INL_TREE_INDEX: usize = 2;
const FUNCDATA_INL_TREE: usize = 3;
/// Steps of one pc-value table decoded at most (a function's table has one per line change).
const MAX_PCVALUE_STEPS: usize = 1 << 20;
/// Inline levels followed at most at one PC.
const MAX_INLINE_DEPTH: usize = 64;

/// One logical frame at a PC, as runtime.CallersFrames reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrcFrame<'a> {
    pub function: &'a str,
    pub file: &'a str,
    pub line: i64,
    /// Line of the function's `func` keyword (0 where the format does not say: before 1.20).
    pub start_line: i64,
    /// Entry of the physical function (as in the functab: relative to the text base from 1.18).
    pub entry: u64,
    /// Inlined into the physical function (or into another inlined call).
    pub inlined: bool,
}

impl<'a> PclnTab<'a> {
    /// Index of the function holding `pc` (in functab terms: relative to the text base from 1.18).
    pub fn find(&self, pc: u64) -> Option<usize> {
        let (first, _) = self.functab(0)?;
        let (end, _) = self.functab(self.nfunc)?;
        if pc < first || pc >= end {
            return None;
        }
        // Largest i with entry(i) <= pc.
        let (mut lo, mut hi) = (0usize, self.nfunc);
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if self.functab(mid)?.0 <= pc {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        Some(lo)
    }

    /// Offset in `data` of function `i`'s _func and its entry.
    fn func_at(&self, i: usize) -> Option<(usize, u64)> {
        let (entry, funcoff) = self.functab(i)?;
        Some((self.pcln_offset.checked_add(funcoff)?, entry))
    }

    /// (pcfile, pcln, npcdata, cuOffset, startLine, pcdata start, nfuncdata) of the _func at `f`.
    fn func_fields(&self, f: usize) -> Option<(u32, u32, u32, u32, i64, usize, u8)> {
        let at = |o: usize| u32_at(self.data, f.checked_add(o)?);
        let (base, start_line, pcdata, nfd) = match self.version {
            PclnVersion::V116 => (24, 0, 44, 43),
            PclnVersion::V118 => (20, 0, 40, 39),
            PclnVersion::V120 => (20, i64::from(at(36)? as i32), 44, 43),
        };
        Some((at(base)?, at(base + 4)?, at(base + 8)?, at(base + 12)?, start_line, f.checked_add(pcdata)?, *self.data.get(f.checked_add(nfd)?)?))
    }

    /// The value of pc-value table `off` at `target` for a function starting at `entry` (-1 where
    /// the table has none), decoded as runtime.pcvalue does.
    fn pcvalue(&self, off: u32, entry: u64, target: u64) -> i64 {
        if off == 0 {
            return -1;
        }
        let Some(mut p) = self.pctab_offset.checked_add(off as usize).and_then(|o| self.data.get(o..)) else { return -1 };
        let (mut pc, mut val) = (entry, -1i64);
        for step in 0..MAX_PCVALUE_STEPS {
            let Some((uv, n)) = uvarint(p) else { return -1 };
            if uv == 0 && step > 0 {
                return -1;
            }
            p = &p[n..];
            let uv = uv as u32;
            val = val.wrapping_add(i64::from((-((uv & 1) as i32)) ^ ((uv >> 1) as i32)));
            let Some((pcd, n)) = uvarint(p) else { return -1 };
            p = &p[n..];
            pc = pc.wrapping_add(pcd.wrapping_mul(u64::from(self.min_lc)));
            if target < pc {
                return val;
            }
        }
        -1
    }

    fn file_name(&self, cu: u32, fileno: i64) -> &'a str {
        let name = (|| {
            let idx = usize::try_from(i64::from(cu).checked_add(fileno)?).ok()?;
            let off = u32_at(self.data, self.cu_offset.checked_add(idx.checked_mul(4)?)?)?;
            if off == u32::MAX {
                return None;
            }
            self.cstr(self.filetab_offset.checked_add(off as usize)?)
        })();
        name.unwrap_or("?")
    }

    /// Every logical frame at `pc` (functab terms), innermost first: the inlined calls (from the
    /// inline tree of `gofunc`, the bytes of go:func.* the funcdata offsets are relative to; 1.18+)
    /// then the physical function, each with its file and line, as runtime.CallersFrames expands a
    /// PC. Empty when no function holds `pc`.
    pub fn frames(&self, pc: u64, gofunc: Option<&'a [u8]>) -> Vec<SrcFrame<'a>> {
        let mut out = Vec::new();
        let Some(i) = self.find(pc) else { return out };
        let (Some((f, entry)), Some(phys)) = (self.func_at(i), self.func(i)) else { return out };
        let Some((pcfile, pcln, npcdata, cu, start_line, pcdata, nfuncdata)) = self.func_fields(f) else { return out };
        let inl_pcdata = (npcdata as usize > PCDATA_INL_TREE_INDEX).then(|| u32_at(self.data, pcdata + 4 * PCDATA_INL_TREE_INDEX)).flatten();
        // The inline tree: 1.20+ inlinedCall {funcID u8, _ [3]u8, nameOff i32, parentPc i32,
        // startLine i32}; 1.18–1.19 {parent i16, funcID u8, _ u8, file i32, line i32, func_ i32,
        // parentPc i32}. Before 1.18 funcdata are pointers (not followed here).
        let tree = match (self.version, gofunc) {
            (PclnVersion::V116, _) | (_, None) => None,
            (_, Some(g)) if (nfuncdata as usize) > FUNCDATA_INL_TREE => {
                let at = pcdata.checked_add(4 * npcdata as usize).and_then(|o| o.checked_add(4 * FUNCDATA_INL_TREE));
                at.and_then(|o| u32_at(self.data, o)).filter(|o| *o != u32::MAX).and_then(|o| g.get(o as usize..))
            }
            _ => None,
        };
        let (entry_size, name_at, parent_at, start_at) = match self.version {
            PclnVersion::V120 => (16usize, 4usize, 8usize, Some(12usize)),
            _ => (20, 12, 16, None),
        };
        let mut at = pc;
        for _ in 0..MAX_INLINE_DEPTH {
            let file = self.file_name(cu, self.pcvalue(pcfile, entry, at));
            let line = self.pcvalue(pcln, entry, at);
            let ix = match (inl_pcdata, tree) {
                (Some(t), Some(_)) => self.pcvalue(t, entry, at),
                _ => -1,
            };
            let call = usize::try_from(ix).ok().and_then(|ix| tree?.get(ix.checked_mul(entry_size)?..)?.get(..entry_size));
            let Some(call) = call else {
                out.push(SrcFrame { function: phys.name, file, line, start_line, entry, inlined: false });
                return out;
            };
            let word = |o: usize| u32_at(call, o).map(|v| v as i32);
            let name = word(name_at).and_then(|n| self.cstr(self.funcname_start.checked_add(usize::try_from(n).ok()?)?)).unwrap_or("?");
            let start = start_at.and_then(word).map(i64::from).unwrap_or(0);
            out.push(SrcFrame { function: name, file, line, start_line: start, entry, inlined: true });
            let Some(parent) = word(parent_at).and_then(|p| u64::try_from(p).ok()) else { return out };
            at = entry.wrapping_add(parent);
        }
        out
    }
}

fn uvarint(p: &[u8]) -> Option<(u64, usize)> {
    let mut v = 0u64;
    for (i, b) in p.iter().enumerate().take(10) {
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

/// File, line and inlining of a Go binary's code addresses, from its own pclntab (stripped and PIE
/// binaries too): what a profile's locations need. Owns the file's bytes.
pub struct Symbolizer {
    data: Vec<u8>,
    /// Range of `data` holding the pclntab (to the end of its segment).
    pcln: std::ops::Range<usize>,
    /// Range of `data` from go:func.* (the base of funcdata offsets) to the end of its segment.
    gofunc: Option<std::ops::Range<usize>>,
    /// Added to functab entries (the text base; 0 for the absolute entries of 1.16).
    base: u64,
    /// Why inlined frames are not expanded, when they are not.
    pub inline_error: Option<String>,
    /// The GNU build ID (hex) when the linker wrote one, else the Go build ID.
    pub build_id: String,
}

impl Symbolizer {
    /// Reads the binary at `path`, inspected as `bin` (its pclntab, firstmoduledata and, for the
    /// inline trees, moduledata.gofunc at the offset DWARF or the generated table gives).
    pub fn load(path: &std::path::Path, bin: &super::GoBinary) -> Result<Symbolizer, super::GoInspectError> {
        let data = std::fs::read(path).map_err(|source| super::GoInspectError::Io { path: path.to_path_buf(), source })?;
        let img = ElfImage::parse(path, &data)?;
        let located = locate(&img).map_err(|e| super::GoInspectError::malformed(path, "pclntab", e))?;
        let range_of = |s: &[u8]| {
            let start = s.as_ptr() as usize - data.as_ptr() as usize;
            start..start + s.len()
        };
        let pcln = range_of(located.tab.data);
        let base = if located.tab.relative_entries() { bin.pclntab.text } else { 0 };
        let gofunc = match (bin.pclntab.moduledata, bin.offset("moduledata.gofunc")) {
            (Some(md), Some(off)) => match img.read_ptr(md.wrapping_add(off)).and_then(|a| img.bytes_from(a)) {
                Some(g) => Ok(range_of(g)),
                None => Err("moduledata.gofunc does not point into the file".to_string()),
            },
            (None, _) => Err("firstmoduledata not found".into()),
            (_, None) => Err(format!("no offset of moduledata.gofunc for {}", bin.go_version)),
        };
        let build_id = build_id(&data).unwrap_or_default();
        let (gofunc, inline_error) = match gofunc {
            Ok(g) => (Some(g), None),
            Err(e) => (None, Some(e)),
        };
        Ok(Symbolizer { pcln, gofunc, base, inline_error, build_id, data })
    }

    fn tab(&self) -> Option<PclnTab<'_>> {
        PclnTab::parse(self.data.get(self.pcln.clone())?).ok()
    }

    /// The logical frames at link-time address `pc`, innermost first (see [`PclnTab::frames`]);
    /// entries are link-time addresses.
    pub fn frames(&self, pc: u64) -> Vec<SrcFrame<'_>> {
        let Some(tab) = self.tab() else { return Vec::new() };
        let gofunc = self.gofunc.clone().and_then(|r| self.data.get(r));
        let mut f = tab.frames(pc.wrapping_sub(self.base), gofunc);
        for x in &mut f {
            x.entry = x.entry.wrapping_add(self.base);
        }
        f
    }
}

/// The GNU build ID note (hex), else the Go build ID (`.note.go.buildid`), of an ELF file.
fn build_id(data: &[u8]) -> Option<String> {
    use object::{Object, ObjectSection};
    let file = object::File::parse(data).ok()?;
    if let Ok(Some(id)) = file.build_id() {
        return Some(id.iter().map(|b| format!("{b:02x}")).collect());
    }
    // Note: namesz u32, descsz u32, type u32 (4), "Go\0\0", then the ID.
    let note = file.section_by_name(".note.go.buildid")?.data().ok()?;
    let descsz = u32_at(note, 4)? as usize;
    let desc = note.get(16..16usize.checked_add(descsz)?)?;
    std::str::from_utf8(desc).ok().map(str::to_string)
}

/// Where the pclntab is and how it was found.
pub(crate) struct Located<'a> {
    pub tab: PclnTab<'a>,
    pub vaddr: u64,
    pub how: &'static str,
}

/// Find the pclntab: by section name, by `runtime.pclntab` symbol, or by scanning for the magic.
pub(crate) fn locate<'a>(img: &ElfImage<'a>) -> Result<Located<'a>, String> {
    let mut last_err = None;
    for name in [".gopclntab", ".data.rel.ro.gopclntab"] {
        if let Some(s) = img.section(name) {
            let Some(d) = img.bytes_from(s.addr) else {
                last_err = Some(format!("section {name} is not inside a PT_LOAD segment"));
                continue;
            };
            match PclnTab::parse(d) {
                Ok(tab) => {
                    return Ok(Located {
                        tab,
                        vaddr: s.addr,
                        how: "section",
                    })
                }
                Err(e) => last_err = Some(format!("section {name}: {e}")),
            }
        }
    }
    if let Some(sym) = img.symbols(&["runtime.pclntab"]).get("runtime.pclntab") {
        if let Some(d) = img.bytes_from(sym.addr) {
            if let Ok(tab) = PclnTab::parse(d) {
                return Ok(Located {
                    tab,
                    vaddr: sym.addr,
                    how: "symtab",
                });
            }
        }
    }
    // Scan for the magic (externally linked PIEs have no pclntab section).
    for magic in [MAGIC_120, MAGIC_118, MAGIC_116] {
        let pat = magic.to_le_bytes();
        let pat = [pat[0], pat[1], pat[2], pat[3], 0, 0];
        for pos in memchr::memmem::find_iter(img.data, &pat) {
            if pos % 4 != 0 {
                continue;
            }
            let Some(vaddr) = img.offset_to_vaddr(pos as u64) else {
                continue;
            };
            let Some(d) = img.bytes_from(vaddr) else {
                continue;
            };
            let Ok(tab) = PclnTab::parse(d) else { continue };
            // Validate through firstmoduledata, which must point at this table.
            if find_moduledata(img, vaddr, &tab).is_some() {
                return Ok(Located {
                    tab,
                    vaddr,
                    how: "magic scan",
                });
            }
            // Also accept a table whose first entries are sane when no moduledata can be found.
            if last_err.is_none() && tab.func(0).is_some() && tab.func(tab.nfunc - 1).is_some() {
                last_err = Some("pclntab candidate without moduledata".into());
            }
        }
    }
    Err(last_err.unwrap_or_else(|| "no pclntab found (no section, no symbol, no magic)".into()))
}

/// firstmoduledata: text/etext and its address.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ModuleData {
    pub vaddr: u64,
    pub text: u64,
    #[allow(dead_code)]
    pub etext: u64,
}

/// Search writable segments for moduledata: its first word points at the pclntab and its
/// funcnametab slice points at pclntab + funcnameOffset. Layout (words): pcHeader, funcnametab[3],
/// cutab[3], filetab[3], pctab[3], pclntable[3], ftab[3], findfunctab, minpc, maxpc, text, etext.
pub(crate) fn find_moduledata(
    img: &ElfImage<'_>,
    pcln_vaddr: u64,
    tab: &PclnTab<'_>,
) -> Option<ModuleData> {
    let validate = |md: u64| -> Option<ModuleData> {
        if img.read_ptr(md)? != pcln_vaddr {
            return None;
        }
        let word = |i: u64| img.read_ptr(md.checked_add(i * 8)?);
        if word(1)? != pcln_vaddr.checked_add(tab.funcname_offset)? {
            return None;
        }
        let text = word(22)?;
        let etext = word(23)?;
        let minpc = word(20)?;
        if text == 0 || etext < text || minpc < text {
            return None;
        }
        Some(ModuleData {
            vaddr: md,
            text,
            etext,
        })
    };
    if img.pie {
        let mut cands: Vec<u64> = img
            .relative_relocs()
            .iter()
            .filter(|(_, a)| **a == pcln_vaddr)
            .map(|(p, _)| *p)
            .collect();
        cands.sort_unstable();
        for c in cands {
            if let Some(m) = validate(c) {
                return Some(m);
            }
        }
    }
    let needle = pcln_vaddr.to_le_bytes();
    for seg in img
        .segments
        .iter()
        .filter(|s| s.flags & object::elf::PF_W != 0)
    {
        let start = usize::try_from(seg.offset).ok()?;
        let end = start.checked_add(usize::try_from(seg.filesz).ok()?)?;
        let Some(d) = img.data.get(start..end) else {
            continue;
        };
        for pos in memchr::memmem::find_iter(d, &needle) {
            let Some(at) = seg.vaddr.checked_add(pos as u64) else {
                continue;
            };
            if !at.is_multiple_of(8) {
                continue;
            }
            if let Some(m) = validate(at) {
                return Some(m);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Build a tiny synthetic 1.20-format table with the given (entryOff, name, funcID) entries.
    pub(crate) fn synth(funcs: &[(u32, &str, u8)], end: u32) -> Vec<u8> {
        let mut names = Vec::new();
        let mut name_offs = Vec::new();
        for (_, n, _) in funcs {
            name_offs.push(names.len() as u32);
            names.extend_from_slice(n.as_bytes());
            names.push(0);
        }
        let header_len = 8 + 8 * 8;
        let funcname_off = header_len;
        let pcln_off = funcname_off + names.len().next_multiple_of(8);
        let ftab_len = (funcs.len() + 1) * 8;
        let mut d = Vec::new();
        d.extend_from_slice(&MAGIC_120.to_le_bytes());
        d.extend_from_slice(&[0, 0, 1, 8]);
        for w in [
            funcs.len() as u64,
            0,
            0x401000,
            funcname_off as u64,
            0,
            0,
            0,
            pcln_off as u64,
        ] {
            d.extend_from_slice(&w.to_le_bytes());
        }
        d.extend_from_slice(&names);
        d.resize(pcln_off, 0);
        for (i, (e, _, _)) in funcs.iter().enumerate() {
            d.extend_from_slice(&e.to_le_bytes());
            d.extend_from_slice(&((ftab_len + i * 48) as u32).to_le_bytes());
        }
        d.extend_from_slice(&end.to_le_bytes());
        d.extend_from_slice(&0u32.to_le_bytes());
        for (i, (e, _, id)) in funcs.iter().enumerate() {
            let mut f = vec![0u8; 48];
            f[0..4].copy_from_slice(&e.to_le_bytes());
            f[4..8].copy_from_slice(&name_offs[i].to_le_bytes());
            f[40] = *id;
            d.extend_from_slice(&f);
        }
        d
    }

    #[test]
    fn parses_synthetic_120() {
        let d = synth(
            &[
                (0, "runtime.a", 0),
                (0x40, "runtime.b", 21),
                (0x80, "runtime.b", 0),
            ],
            0x100,
        );
        let t = PclnTab::parse(&d).expect("parse");
        assert_eq!(t.version, PclnVersion::V120);
        assert_eq!(t.nfunc, 3);
        assert_eq!(t.text_start, 0x401000);
        let all: Vec<_> = t.iter().collect();
        assert_eq!(all.len(), 3);
        assert_eq!(all[1].name, "runtime.b");
        assert_eq!(all[1].func_id, 21);
        assert_eq!((all[2].entry, all[2].end), (0x80, 0x100));
    }

    /// Go 1.16 layout: no textStart, functab of {entry uintptr, funcoff uintptr}, absolute entries.
    fn synth116(funcs: &[(u64, &str)], end: u64) -> Vec<u8> {
        let mut names = Vec::new();
        let mut name_offs = Vec::new();
        for (_, n) in funcs {
            name_offs.push(names.len() as u32);
            names.extend_from_slice(n.as_bytes());
            names.push(0);
        }
        let funcname_off = 8 + 7 * 8;
        let pcln_off = funcname_off + names.len().next_multiple_of(8);
        let ftab_len = (funcs.len() + 1) * 16;
        let mut d = Vec::new();
        d.extend_from_slice(&MAGIC_116.to_le_bytes());
        d.extend_from_slice(&[0, 0, 1, 8]);
        for w in [
            funcs.len() as u64,
            0,
            funcname_off as u64,
            0,
            0,
            0,
            pcln_off as u64,
        ] {
            d.extend_from_slice(&w.to_le_bytes());
        }
        d.extend_from_slice(&names);
        d.resize(pcln_off, 0);
        for (i, (e, _)) in funcs.iter().enumerate() {
            d.extend_from_slice(&e.to_le_bytes());
            d.extend_from_slice(&((ftab_len + i * 48) as u64).to_le_bytes());
        }
        d.extend_from_slice(&end.to_le_bytes());
        d.extend_from_slice(&0u64.to_le_bytes());
        for (i, (e, _)) in funcs.iter().enumerate() {
            let mut f = vec![0u8; 48];
            f[0..8].copy_from_slice(&e.to_le_bytes());
            f[8..12].copy_from_slice(&name_offs[i].to_le_bytes());
            d.extend_from_slice(&f);
        }
        d
    }

    #[test]
    fn parses_synthetic_116() {
        let d = synth116(
            &[(0x401000, "runtime.gcStart"), (0x401200, "main.main")],
            0x401400,
        );
        let t = PclnTab::parse(&d).expect("parse");
        assert_eq!(t.version, PclnVersion::V116);
        assert!(!t.relative_entries());
        let all: Vec<_> = t.iter().collect();
        assert_eq!(all.len(), 2);
        assert_eq!(
            (all[0].name, all[0].entry, all[0].end),
            ("runtime.gcStart", 0x401000, 0x401200)
        );
        assert_eq!((all[1].name, all[1].end), ("main.main", 0x401400));
    }

    #[test]
    fn truncation_never_panics() {
        let d = synth(&[(0, "runtime.a", 0), (0x40, "main.main", 0)], 0x100);
        for n in 0..d.len() {
            if let Ok(t) = PclnTab::parse(&d[..n]) {
                let _ = t.iter().count();
            }
        }
        let mut bad = d.clone();
        bad[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(PclnTab::parse(&bad).is_err());
        bad = d.clone();
        bad[0] = 0xfb;
        assert!(PclnTab::parse(&bad).is_err());
    }
}
