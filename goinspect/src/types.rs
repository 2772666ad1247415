//! Go type metadata (`runtime._type`, `internal/abi.Type` from Go 1.21) read from the executable
//! file, not the process: the name and kind of a value's dynamic type, and the string fields of a
//! struct — what a crash message needs to say what a panic value was after the process is gone.
//! Field offsets come from DWARF or the generated tables (keys `abi.Type.*`, both spellings).
use std::path::Path;

use crate::{elf::ElfImage, GoBinary, GoInspectError};

/// `abi.Kind` values used here (the low 5 bits of `Type.Kind_`).
pub mod kind {
    pub const BOOL: u8 = 1;
    pub const INT: u8 = 2;
    pub const INT64: u8 = 6;
    pub const UINT: u8 = 7;
    pub const UINTPTR: u8 = 12;
    pub const FLOAT64: u8 = 14;
    pub const PTR: u8 = 22;
    pub const STRING: u8 = 24;
    pub const STRUCT: u8 = 25;
}

/// `TFlagExtraStar`: the stored name has a leading '*' to drop.
const TFLAG_EXTRA_STAR: u8 = 1 << 1;
const KIND_MASK: u8 = (1 << 5) - 1;

/// What the crash message needs of one type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeDesc {
    /// As Go prints it: "*main.ConfigError", "string", "runtime.boundsError".
    pub name: String,
    pub kind: u8,
    /// For a pointer to a struct, or a struct: its string fields (name, offset in the struct).
    pub string_fields: Vec<(String, u64)>,
}

/// Offsets into the type structures for one binary.
struct Offsets {
    tflag: u64,
    kind: u64,
    str: u64,
    ptr_elem: u64,
    struct_fields: u64,
    field_name: u64,
    field_typ: u64,
    field_offset: u64,
    field_size: u64,
    types: u64,
}

fn offsets(bin: &GoBinary) -> Result<Offsets, String> {
    let either = |a: &str, b: &str| bin.offset(a).or_else(|| bin.offset(b)).ok_or_else(|| format!("no offset of {a} for {}", bin.go_version));
    Ok(Offsets {
        tflag: either("abi.Type.TFlag", "abi.Type.tflag")?,
        kind: either("abi.Type.Kind_", "abi.Type.kind")?,
        str: either("abi.Type.Str", "abi.Type.str")?,
        ptr_elem: either("abi.PtrType.Elem", "abi.PtrType.elem")?,
        struct_fields: either("abi.StructType.Fields", "abi.StructType.fields")?,
        field_name: either("abi.StructField.Name", "abi.StructField.name")?,
        field_typ: either("abi.StructField.Typ", "abi.StructField.typ")?,
        field_offset: either("abi.StructField.Offset", "abi.StructField.offset")?,
        field_size: bin.offset("sizeof(abi.StructField)").unwrap_or(24),
        types: bin.offset("moduledata.types").ok_or_else(|| format!("no offset of moduledata.types for {}", bin.go_version))?,
    })
}

/// Names the dynamic type at link-time address `addr` of the binary `bin` read from `path`.
pub fn describe(path: &Path, bin: &GoBinary, addr: u64) -> Result<TypeDesc, GoInspectError> {
    let data = std::fs::read(path).map_err(|source| GoInspectError::Io { path: path.to_path_buf(), source })?;
    describe_bytes(path, &data, bin, addr)
}

/// [`describe`] on the file's bytes.
pub fn describe_bytes(path: &Path, data: &[u8], bin: &GoBinary, addr: u64) -> Result<TypeDesc, GoInspectError> {
    let bad = |what: String| GoInspectError::malformed(path, "type metadata", what);
    let img = ElfImage::parse(path, data)?;
    let o = offsets(bin).map_err(bad)?;
    let md = bin.pclntab.moduledata.ok_or_else(|| bad("firstmoduledata not found".into()))?;
    let types = img.read_ptr(md + o.types).ok_or_else(|| bad("moduledata.types is not in the file".into()))?;
    let r = Reader { img: &img, o: &o, types };
    let t = r.ty(addr).ok_or_else(|| bad(format!("no type at {addr:#x}")))?;
    let mut desc = TypeDesc { name: t.0, kind: t.1, string_fields: Vec::new() };
    let strukt = match desc.kind {
        kind::PTR => r.img.read_ptr(addr + o.ptr_elem).filter(|e| r.ty(*e).is_some_and(|t| t.1 == kind::STRUCT)),
        kind::STRUCT => Some(addr),
        _ => None,
    };
    if let Some(s) = strukt {
        desc.string_fields = r.string_fields(s);
    }
    Ok(desc)
}

struct Reader<'a> {
    img: &'a ElfImage<'a>,
    o: &'a Offsets,
    types: u64,
}

impl Reader<'_> {
    fn u8_at(&self, a: u64) -> Option<u8> {
        self.img.bytes_at(a, 1).map(|b| b[0])
    }

    fn u32_at(&self, a: u64) -> Option<u32> {
        self.img.bytes_at(a, 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A `name` (flags byte, varint length, bytes) at `a`.
    fn name(&self, a: u64) -> Option<String> {
        let b = self.img.bytes_from(a)?;
        let (mut len, mut shift, mut i) = (0usize, 0u32, 1usize);
        loop {
            let x = *b.get(i)?;
            len |= usize::from(x & 0x7f) << shift;
            i += 1;
            if x & 0x80 == 0 {
                break;
            }
            shift += 7;
            if shift > 28 {
                return None;
            }
        }
        let s = b.get(i..i.checked_add(len)?)?;
        Some(String::from_utf8_lossy(s).into_owned())
    }

    /// (name, kind) of the type at `a`.
    fn ty(&self, a: u64) -> Option<(String, u8)> {
        let kind = self.u8_at(a + self.o.kind)? & KIND_MASK;
        let tflag = self.u8_at(a + self.o.tflag)?;
        let off = self.u32_at(a + self.o.str)? as i32;
        let mut name = self.name(self.types.checked_add_signed(i64::from(off))?)?;
        if tflag & TFLAG_EXTRA_STAR != 0 && name.starts_with('*') {
            name.remove(0);
        }
        Some((name, kind))
    }

    fn string_fields(&self, s: u64) -> Vec<(String, u64)> {
        let f = s + self.o.struct_fields;
        let (Some(ptr), Some(len)) = (self.img.read_ptr(f), self.img.bytes_at(f + 8, 8).map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))) else { return Vec::new() };
        (0..len.min(64))
            .filter_map(|i| {
                let at = ptr + i * self.o.field_size;
                let name = self.name(self.img.read_ptr(at + self.o.field_name)?)?;
                let typ = self.img.read_ptr(at + self.o.field_typ)?;
                let off = self.img.bytes_at(at + self.o.field_offset, 8).map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))?;
                (self.ty(typ)?.1 == kind::STRING).then_some((name, off))
            })
            .collect()
    }
}
