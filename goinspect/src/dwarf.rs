//! Struct field offsets from DWARF (gimli). Only the compile units of the packages that define the
//! wanted structs are walked, so this stays fast on large binaries.

use std::borrow::Cow;
use std::collections::BTreeMap;

use object::{Object, ObjectSection};

use crate::elf::ElfImage;

/// (DWARF struct name, key prefix, fields). Keys are "<prefix>.<field>" plus "sizeof(<prefix>)".
/// A dotted field ("gFree.n") names a member of a member's type, followed through the type
/// references (named or anonymous struct types, typedefs); its key holds the offset from the start
/// of the outer struct.
pub(crate) const STRUCTS: &[(&str, &str, &[&str])] = &[
    (
        "runtime.g",
        "g",
        &[
            "stack",
            "m",
            "sched",
            "atomicstatus",
            "goid",
            "waitreason",
            "parentGoid",
            "gopc",
            "startpc",
            "labels",
        ],
    ),
    ("runtime.stack", "stack", &["lo", "hi"]),
    ("runtime.gobuf", "gobuf", &["sp", "pc", "bp"]),
    (
        "runtime.schedt",
        "schedt",
        &[
            "goidgen",
            "ngsys",
            "gFree",
            "gcwaiting",
            "stopwait",
            // runtime.gcount's free-list counts: Go ≤ 1.24 keeps one count (gFree.n), 1.25+ one
            // per list (gList.size).
            "gFree.n",
            "gFree.stack.size",
            "gFree.noStack.size",
        ],
    ),
    // Each P's free g list (gcount subtracts its count too): struct { gList; n int32 } up to Go
    // 1.24, a gList with a size from 1.25.
    ("runtime.p", "p", &["gFree", "gFree.n", "gFree.size"]),
    (
        "runtime.mstats",
        "mstats",
        &[
            "numgc",
            "pause_ns",
            "pause_total_ns",
            "pause_end",
            "last_gc_unix",
            "numforcedgc",
            "gc_cpu_fraction",
        ],
    ),
    (
        "runtime.gcControllerState",
        "gcControllerState",
        &[
            "heapLive",
            "gcPercentHeapGoal",
            "heapInUse",
            "heapMarked",
            "memoryLimit",
            "gcPercent",
            "heapMinimum",
            "lastHeapGoal",
        ],
    ),
    (
        "crypto/tls.Conn",
        "crypto/tls.Conn",
        &[
            "conn",
            "isClient",
            "vers",
            "haveVers",
            "cipherSuite",
            "clientProtocol",
            "handshakeErr",
            "isHandshakeComplete",
            "handshakeStatus",
            "didResume",
            "serverName",
            "in",
            "out",
        ],
    ),
    // TLS handshake failure classification: the alert a side sent (c.out.err) or received
    // (c.in.err) is a *net.OpError{Op: "local error"|"remote error", Err: alert}.
    // halfConn.setErrorLocked wraps net.Errors (OpError is one) in a *permanentError{err}.
    ("crypto/tls.halfConn", "crypto/tls.halfConn", &["err"]),
    ("crypto/tls.permanentError", "crypto/tls.permanentError", &["err"]),
    ("net.OpError", "net.OpError", &["Op", "Err"]),
    // Heap profiles read out of process (goinspect heap.rs): the memory-profile bucket list
    // (runtime.mbuckets), each bucket's memRecord (whose byte counters Go 1.27 dropped), the
    // profile cycle, and where moduledata keeps go:func.* (the base of funcdata: inline trees).
    ("runtime.bucket", "bucket", &["next", "allnext", "typ", "hash", "size", "nstk"]),
    ("runtime.memRecord", "memRecord", &["active", "future"]),
    ("runtime.memRecordCycle", "memRecordCycle", &["allocs", "frees", "alloc_bytes", "free_bytes"]),
    ("runtime.mProfCycleHolder", "mProfCycleHolder", &["value"]),
    ("runtime.moduledata", "moduledata", &["pcHeader", "text", "gofunc", "types", "etypes"]),
    // Crash capsules: the panic value (`_panic.arg`), the user goroutine of a thread on its system
    // stack (`m.curg`), and enough of the type metadata to name a panic value's type and find an
    // error's message field. Go 1.21 moved the runtime's _type family to internal/abi (and
    // capitalised the fields): both spellings map to the same keys' prefixes.
    ("runtime._panic", "_panic", &["arg"]),
    ("runtime.boundsError", "boundsError", &["x", "y", "signed", "code"]),
    ("runtime.m", "m", &["curg"]),
    ("internal/abi.Type", "abi.Type", &["TFlag", "Kind_", "Str"]),
    ("runtime._type", "abi.Type", &["tflag", "kind", "str"]),
    ("internal/abi.PtrType", "abi.PtrType", &["Elem"]),
    ("runtime.ptrtype", "abi.PtrType", &["elem"]),
    ("internal/abi.StructType", "abi.StructType", &["Fields"]),
    ("runtime.structtype", "abi.StructType", &["fields"]),
    ("internal/abi.StructField", "abi.StructField", &["Name", "Typ", "Offset"]),
    ("runtime.structfield", "abi.StructField", &["name", "typ", "offset"]),
];

fn package_of(struct_name: &str) -> &str {
    match struct_name.rfind('.') {
        Some(i) => &struct_name[..i],
        None => struct_name,
    }
}

/// Read the wanted struct offsets. Returns an empty map when there is no DWARF.
type Slice<'a> = gimli::EndianSlice<'a, gimli::LittleEndian>;

/// The DW_AT_name of a DWARF entry, if it has one.
fn entry_name(
    dwarf: &gimli::Dwarf<Slice<'_>>,
    unit: &gimli::Unit<Slice<'_>>,
    e: &gimli::DebuggingInformationEntry<'_, '_, Slice<'_>>,
) -> Option<String> {
    let v = e.attr_value(gimli::DW_AT_name).ok().flatten()?;
    dwarf.attr_string(unit, v).ok().map(|s| s.to_string_lossy().into_owned())
}

/// Where the DW_AT_type of `e` points, as a .debug_info offset (Go's linker refers to types in
/// other units too).
fn type_ref(unit: &gimli::Unit<Slice<'_>>, e: &gimli::DebuggingInformationEntry<'_, '_, Slice<'_>>) -> Option<gimli::DebugInfoOffset> {
    match e.attr_value(gimli::DW_AT_type).ok().flatten()? {
        gimli::AttributeValue::UnitRef(o) => o.to_debug_info_offset(&unit.header),
        gimli::AttributeValue::DebugInfoRef(o) => Some(o),
        _ => None,
    }
}

/// A struct member: name, offset, type.
type Member = (String, u64, Option<gimli::DebugInfoOffset>);

/// The members of the struct type at `at` (typedefs followed).
fn struct_members(dwarf: &gimli::Dwarf<Slice<'_>>, mut at: gimli::DebugInfoOffset) -> Result<Vec<Member>, String> {
    for _ in 0..8 {
        let mut headers = dwarf.units();
        let mut found = None;
        while let Some(h) = headers.next().map_err(|e| format!("DWARF unit header: {e}"))? {
            if let Some(o) = at.to_unit_offset(&h) {
                found = Some((h, o));
                break;
            }
        }
        let (header, offset) = found.ok_or_else(|| format!("DWARF type at {:#x} is in no unit", at.0))?;
        let unit = dwarf.unit(header).map_err(|e| format!("DWARF unit: {e}"))?;
        let mut tree = unit.entries_tree(Some(offset)).map_err(|e| format!("DWARF tree: {e}"))?;
        let root = tree.root().map_err(|e| format!("DWARF type entry: {e}"))?;
        let e = root.entry();
        match e.tag() {
            gimli::DW_TAG_typedef => {
                at = type_ref(&unit, e).ok_or_else(|| format!("DWARF typedef at {:#x} has no type", at.0))?;
            }
            gimli::DW_TAG_structure_type => {
                let mut out = Vec::new();
                let mut members = root.children();
                while let Some(m) = members.next().map_err(|e| format!("DWARF member: {e}"))? {
                    let me = m.entry();
                    if me.tag() != gimli::DW_TAG_member {
                        continue;
                    }
                    let off = me.attr_value(gimli::DW_AT_data_member_location).ok().flatten().and_then(|v| v.udata_value());
                    if let (Some(name), Some(off)) = (entry_name(dwarf, &unit, me), off) {
                        out.push((name, off, type_ref(&unit, me)));
                    }
                }
                return Ok(out);
            }
            // Not a struct (a pointer, an integer): it has no members to follow.
            _ => return Ok(Vec::new()),
        }
    }
    Err(format!("DWARF typedef chain at {:#x} too long", at.0))
}

pub(crate) fn struct_offsets(img: &ElfImage<'_>) -> Result<BTreeMap<String, u64>, String> {
    let load = |id: gimli::SectionId| -> Result<Cow<'_, [u8]>, gimli::Error> {
        let name = id.name();
        let sec = img.file.section_by_name(name).or_else(|| {
            img.file
                .section_by_name(&format!(".zdebug_{}", name.trim_start_matches(".debug_")))
        });
        match sec {
            Some(s) => s.uncompressed_data().map_err(|_| gimli::Error::Io),
            None => Ok(Cow::Borrowed(&[][..])),
        }
    };
    let owned =
        gimli::DwarfSections::load(load).map_err(|e| format!("loading DWARF sections: {e}"))?;
    let dwarf = owned.borrow(|s| gimli::EndianSlice::new(s, gimli::LittleEndian));
    let packages: Vec<&str> = STRUCTS.iter().map(|(n, _, _)| package_of(n)).collect();
    let mut out = BTreeMap::new();
    // (key, offset of the outer member, its type, the path inside that type) of dotted fields.
    let mut nested: Vec<(String, u64, gimli::DebugInfoOffset, &str)> = Vec::new();
    let mut units = dwarf.units();
    while let Some(header) = units
        .next()
        .map_err(|e| format!("DWARF unit header: {e}"))?
    {
        let unit = dwarf.unit(header).map_err(|e| format!("DWARF unit: {e}"))?;
        let mut tree = unit
            .entries_tree(None)
            .map_err(|e| format!("DWARF tree: {e}"))?;
        let root = tree.root().map_err(|e| format!("DWARF root: {e}"))?;
        let cu_name = match root.entry().attr_value(gimli::DW_AT_name).ok().flatten() {
            Some(v) => dwarf
                .attr_string(&unit, v)
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default(),
            None => String::new(),
        };
        if !packages.contains(&cu_name.as_str()) {
            continue;
        }
        let mut children = root.children();
        while let Some(child) = children.next().map_err(|e| format!("DWARF entry: {e}"))? {
            let e = child.entry();
            if e.tag() != gimli::DW_TAG_structure_type {
                continue;
            }
            let Some(name) = entry_name(&dwarf, &unit, e) else {
                continue;
            };
            let Some((_, prefix, fields)) = STRUCTS.iter().find(|(n, _, _)| *n == name) else {
                continue;
            };
            if out.contains_key(&format!("sizeof({prefix})")) || out.contains_key(&format!("{prefix}.{}", fields[0])) {
                continue;
            }
            // runtime.m grows within patch releases (1.24.3 → 1.24.11: 1808 → 1832 bytes) and its
            // size is used nowhere: recorded, it would split the tables for nothing.
            if let Some(sz) = e
                .attr_value(gimli::DW_AT_byte_size)
                .ok()
                .flatten()
                .and_then(|v| v.udata_value())
            {
                if *prefix != "m" {
                    out.insert(format!("sizeof({prefix})"), sz);
                }
            }
            let mut members = child.children();
            while let Some(m) = members.next().map_err(|e| format!("DWARF member: {e}"))? {
                let me = m.entry();
                if me.tag() != gimli::DW_TAG_member {
                    continue;
                }
                let Some(mname) = entry_name(&dwarf, &unit, me) else {
                    continue;
                };
                let inner: Vec<&str> = fields.iter().filter_map(|f| f.strip_prefix(mname.as_str())?.strip_prefix('.')).collect();
                if !fields.contains(&mname.as_str()) && inner.is_empty() {
                    continue;
                }
                let off = me
                    .attr_value(gimli::DW_AT_data_member_location)
                    .ok()
                    .flatten()
                    .and_then(|v| v.udata_value());
                if let Some(off) = off {
                    if fields.contains(&mname.as_str()) {
                        out.insert(format!("{prefix}.{mname}"), off);
                    }
                    if let Some(ty) = type_ref(&unit, me) {
                        for rest in inner {
                            nested.push((format!("{prefix}.{mname}.{rest}"), off, ty, rest));
                        }
                    }
                }
            }
        }
    }
    // Dotted fields: through the member's type, one component at a time. A path a release does
    // not have (gFree.n from Go 1.25 on) is simply absent.
    for (key, base, ty, rest) in nested {
        let (mut off, mut ty) = (base, Some(ty));
        let mut found = true;
        for part in rest.split('.') {
            let members = match ty {
                Some(t) => struct_members(&dwarf, t)?,
                None => Vec::new(),
            };
            match members.into_iter().find(|(n, _, _)| n == part) {
                Some((_, o, t)) => {
                    off += o;
                    ty = t;
                }
                None => {
                    found = false;
                    break;
                }
            }
        }
        if found {
            out.insert(key, off);
        }
    }
    Ok(out)
}
