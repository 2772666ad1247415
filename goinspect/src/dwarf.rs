//! Struct field offsets from DWARF (gimli). Only the compile units of the packages that define the
//! wanted structs are walked, so this stays fast on large binaries.

use std::borrow::Cow;
use std::collections::BTreeMap;

use object::{Object, ObjectSection};

use crate::elf::ElfImage;

/// (DWARF struct name, key prefix, fields). Keys are "<prefix>.<field>" plus "sizeof(<prefix>)".
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
        &["goidgen", "ngsys", "gFree", "gcwaiting", "stopwait"],
    ),
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
            if out.contains_key(&format!("sizeof({prefix})")) {
                continue;
            }
            if let Some(sz) = e
                .attr_value(gimli::DW_AT_byte_size)
                .ok()
                .flatten()
                .and_then(|v| v.udata_value())
            {
                out.insert(format!("sizeof({prefix})"), sz);
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
                if !fields.contains(&mname.as_str()) {
                    continue;
                }
                let off = me
                    .attr_value(gimli::DW_AT_data_member_location)
                    .ok()
                    .flatten()
                    .and_then(|v| v.udata_value());
                if let Some(off) = off {
                    out.insert(format!("{prefix}.{mname}"), off);
                }
            }
        }
    }
    Ok(out)
}
