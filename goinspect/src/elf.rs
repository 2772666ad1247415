//! ELF access for the inspector: sections, PT_LOAD mapping, symbols, dynamic RELATIVE relocations.
//! Every read is checked: malformed input yields `None`/errors, never a panic.

use std::collections::HashMap;
use std::path::Path;
use std::sync::OnceLock;

use object::elf;
use object::read::elf::{ElfFile64, FileHeader, ProgramHeader, SectionHeader, Sym};
use object::{Endianness, Object, ObjectSymbol};

use crate::error::GoInspectError;
use crate::Arch;

/// A PT_LOAD segment.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Segment {
    pub vaddr: u64,
    pub offset: u64,
    pub filesz: u64,
    pub memsz: u64,
    pub flags: u32,
}

/// A section header we care about.
#[derive(Debug, Clone)]
pub(crate) struct Section {
    pub name: String,
    pub addr: u64,
    pub offset: u64,
    pub size: u64,
    #[allow(dead_code)]
    pub alloc: bool,
    pub nobits: bool,
    #[allow(dead_code)]
    pub write: bool,
}

/// A symbol from `.symtab`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SymbolInfo {
    pub addr: u64,
    pub size: u64,
}

pub(crate) struct ElfImage<'a> {
    pub data: &'a [u8],
    pub file: ElfFile64<'a, Endianness>,
    pub arch: Arch,
    pub pie: bool,
    pub segments: Vec<Segment>,
    pub sections: Vec<Section>,
    pub has_symtab: bool,
    pub has_dwarf: bool,
    pub has_interp: bool,
    relocs: OnceLock<HashMap<u64, u64>>,
}

impl<'a> ElfImage<'a> {
    pub fn parse(path: &Path, data: &'a [u8]) -> Result<Self, GoInspectError> {
        if data.len() < 4 || &data[..4] != b"\x7fELF" {
            return Err(GoInspectError::NotElf {
                path: path.to_path_buf(),
                reason: "missing \\x7fELF magic".into(),
            });
        }
        if data.get(4) != Some(&2) {
            return Err(GoInspectError::UnsupportedElf {
                path: path.to_path_buf(),
                reason: "32-bit ELF".into(),
            });
        }
        if data.get(5) != Some(&1) {
            return Err(GoInspectError::UnsupportedElf {
                path: path.to_path_buf(),
                reason: "big-endian ELF".into(),
            });
        }
        let file = ElfFile64::<Endianness>::parse(data).map_err(|e| GoInspectError::NotElf {
            path: path.to_path_buf(),
            reason: format!("ELF header/section table: {e}"),
        })?;
        let endian = file.endian();
        let hdr = file.elf_header();
        let arch = match hdr.e_machine(endian) {
            elf::EM_X86_64 => Arch::Amd64,
            elf::EM_AARCH64 => Arch::Arm64,
            m => {
                return Err(GoInspectError::UnsupportedElf {
                    path: path.to_path_buf(),
                    reason: format!("machine type {m}"),
                })
            }
        };
        let pie = hdr.e_type(endian) == elf::ET_DYN;
        let mut segments = Vec::new();
        let mut has_interp = false;
        for ph in file.elf_program_headers() {
            match ph.p_type(endian) {
                elf::PT_LOAD => segments.push(Segment {
                    vaddr: ph.p_vaddr(endian),
                    offset: ph.p_offset(endian),
                    filesz: ph.p_filesz(endian),
                    memsz: ph.p_memsz(endian),
                    flags: ph.p_flags(endian),
                }),
                elf::PT_INTERP => has_interp = true,
                _ => {}
            }
        }
        let mut sections = Vec::new();
        let table = file.elf_section_table();
        for sh in table.iter() {
            let name = table
                .section_name(endian, sh)
                .map(|n| String::from_utf8_lossy(n).into_owned())
                .unwrap_or_default();
            let flags = sh.sh_flags(endian);
            sections.push(Section {
                name,
                addr: sh.sh_addr(endian),
                offset: sh.sh_offset(endian),
                size: sh.sh_size(endian),
                alloc: flags & u64::from(elf::SHF_ALLOC) != 0,
                write: flags & u64::from(elf::SHF_WRITE) != 0,
                nobits: sh.sh_type(endian) == elf::SHT_NOBITS,
            });
        }
        let has_symtab = sections.iter().any(|s| s.name == ".symtab" && s.size > 0);
        let has_dwarf = sections
            .iter()
            .any(|s| (s.name == ".debug_info" || s.name == ".zdebug_info") && s.size > 0);
        Ok(ElfImage {
            data,
            file,
            arch,
            pie,
            segments,
            sections,
            has_symtab,
            has_dwarf,
            has_interp,
            relocs: OnceLock::new(),
        })
    }

    pub fn section(&self, name: &str) -> Option<&Section> {
        self.sections.iter().find(|s| s.name == name)
    }

    /// File bytes of a section (empty for NOBITS).
    pub fn section_data(&self, s: &Section) -> Option<&'a [u8]> {
        if s.nobits {
            return Some(&[]);
        }
        let start = usize::try_from(s.offset).ok()?;
        let len = usize::try_from(s.size).ok()?;
        self.data.get(start..start.checked_add(len)?)
    }

    /// Virtual address → file offset through the PT_LOAD program headers (what uprobes need).
    pub fn vaddr_to_offset(&self, vaddr: u64) -> Option<u64> {
        self.segments.iter().find_map(|seg| {
            let end = seg.vaddr.checked_add(seg.filesz)?;
            if vaddr >= seg.vaddr && vaddr < end {
                seg.offset.checked_add(vaddr - seg.vaddr)
            } else {
                None
            }
        })
    }

    /// File offset → virtual address.
    pub fn offset_to_vaddr(&self, off: u64) -> Option<u64> {
        self.segments.iter().find_map(|seg| {
            let end = seg.offset.checked_add(seg.filesz)?;
            if off >= seg.offset && off < end {
                seg.vaddr.checked_add(off - seg.offset)
            } else {
                None
            }
        })
    }

    /// `len` bytes of file-backed memory at `vaddr`.
    pub fn bytes_at(&self, vaddr: u64, len: u64) -> Option<&'a [u8]> {
        let seg = self.segments.iter().find(|seg| {
            vaddr >= seg.vaddr && seg.vaddr.checked_add(seg.filesz).is_some_and(|e| vaddr < e)
        })?;
        let avail = seg.vaddr + seg.filesz - vaddr;
        if len > avail {
            return None;
        }
        let start = usize::try_from(seg.offset.checked_add(vaddr - seg.vaddr)?).ok()?;
        let end = start.checked_add(usize::try_from(len).ok()?)?;
        self.data.get(start..end)
    }

    /// Bytes from `vaddr` to the end of its segment's file-backed part.
    pub fn bytes_from(&self, vaddr: u64) -> Option<&'a [u8]> {
        let seg = self.segments.iter().find(|seg| {
            vaddr >= seg.vaddr && seg.vaddr.checked_add(seg.filesz).is_some_and(|e| vaddr < e)
        })?;
        self.bytes_at(vaddr, seg.vaddr + seg.filesz - vaddr)
    }

    /// RELATIVE dynamic relocations: place → addend (PIE data pointers live here, the file word may be 0).
    pub fn relative_relocs(&self) -> &HashMap<u64, u64> {
        self.relocs.get_or_init(|| {
            let mut map = HashMap::new();
            if !self.pie {
                return map;
            }
            let rel_type = match self.arch {
                Arch::Amd64 => elf::R_X86_64_RELATIVE,
                Arch::Arm64 => elf::R_AARCH64_RELATIVE,
            };
            if let Some(iter) = self.file.dynamic_relocations() {
                for (place, r) in iter {
                    if let object::RelocationFlags::Elf { r_type } = r.flags() {
                        if r_type == rel_type {
                            map.insert(place, r.addend() as u64);
                        }
                    }
                }
            }
            map
        })
    }

    /// Read a pointer stored in the file at `vaddr`, applying a RELATIVE relocation if there is one.
    pub fn read_ptr(&self, vaddr: u64) -> Option<u64> {
        if self.pie {
            if let Some(a) = self.relative_relocs().get(&vaddr) {
                return Some(*a);
            }
        }
        let b = self.bytes_at(vaddr, 8)?;
        Some(u64::from_le_bytes(b.try_into().ok()?))
    }

    /// Look up `.symtab` symbols by exact name. Only names in `wanted` are returned.
    pub fn symbols(&self, wanted: &[&str]) -> HashMap<String, SymbolInfo> {
        let mut out = HashMap::new();
        if !self.has_symtab {
            return out;
        }
        for sym in self.file.symbols() {
            let Ok(name) = sym.name() else { continue };
            if wanted.contains(&name) && !out.contains_key(name) {
                out.insert(
                    name.to_string(),
                    SymbolInfo {
                        addr: sym.address(),
                        size: sym.size(),
                    },
                );
            }
        }
        out
    }

    /// Whether a section named like a compiler comment exists (external linkers leave `.comment`).
    pub fn has_comment_section(&self) -> bool {
        self.section(".comment").is_some()
    }

    /// Raw `.symtab` symbol type check helper, used by tests.
    #[allow(dead_code)]
    pub fn symbol_count(&self) -> usize {
        self.file
            .elf_symbol_table()
            .symbols()
            .iter()
            .filter(|s| s.st_name(self.file.endian()) != 0)
            .count()
    }
}
