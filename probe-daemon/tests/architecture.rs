//! The module graph is the one docs/ARCHITECTURE.md draws: every module imports only modules
//! earlier in [`LAYERS`] (so there is no cycle and no upward edge), and the pure core does no I/O.
//! Reads the sources; needs no root.
use std::{collections::BTreeMap, path::Path};

/// The daemon's modules, upstream first (docs/ARCHITECTURE.md explains each).
const LAYERS: &[&str] = &[
    // leaves
    "sync", "procfs", "kernel", "evidence", "decode", "hist",
    // kernel I/O, then the per-domain trackers
    "attach", "k8s", "tls", "http2", "goruntime",
    // the pure core
    "aggregate", "health",
    // outputs
    "snapshot", "metrics",
    // the threads that own state, then the HTTP edge
    "discovery", "collector", "api",
    // settings and wiring
    "config", "daemon",
];

/// Modules that must stay pure: no kernel maps, no async runtime, no /proc or file reads.
const PURE: &[&str] = &["decode", "evidence", "hist", "aggregate", "health", "metrics"];
const IMPURE_MARKERS: &[&str] = &["aya::", "tokio", "procfs::", "std::fs", "File::open", "\"/proc", "process_vm_readv"];

fn sources(module: &str) -> Vec<(String, String)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = Vec::new();
    let file = src.join(format!("{module}.rs"));
    if file.is_file() {
        out.push((file.display().to_string(), std::fs::read_to_string(&file).unwrap()));
    }
    let dir = src.join(module);
    if dir.is_dir() {
        let mut stack = vec![dir];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap().flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.extension().is_some_and(|x| x == "rs") {
                    out.push((p.display().to_string(), std::fs::read_to_string(&p).unwrap()));
                }
            }
        }
    }
    assert!(!out.is_empty(), "module {module} has no source file");
    out
}

/// The code of a file without comments and without its `#[cfg(test)]` module (tests may reach
/// anywhere).
fn code(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => text,
    };
    text.lines().filter(|l| !l.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n")
}

/// The crate modules `code` names: `crate::x` paths and the `x` of `use crate::{x, y::…}` groups.
fn imports(code: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // Top-level names of the group (skip nested braces).
            let (mut depth, mut name, mut names) = (0, String::new(), Vec::new());
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => names.push(std::mem::take(&mut name)),
                    c if depth == 0 => name.push(c),
                    _ => {}
                }
            }
            names.push(name);
            found.extend(names.iter().filter_map(|n| n.trim().split("::").next().map(str::to_string)).filter(|n| !n.is_empty()));
        } else {
            let name: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            found.push(name);
        }
    }
    found
}

#[test]
fn every_module_is_in_a_layer() {
    let lib = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/lib.rs")).unwrap();
    let declared: Vec<&str> = lib.lines().filter_map(|l| l.strip_prefix("pub mod ").or_else(|| l.strip_prefix("mod "))?.strip_suffix(';')).collect();
    let mut missing: Vec<&&str> = declared.iter().filter(|m| !LAYERS.contains(m)).collect();
    missing.sort();
    assert!(missing.is_empty(), "modules without a layer (add them to LAYERS and docs/ARCHITECTURE.md): {missing:?}");
    for m in LAYERS {
        assert!(declared.contains(m), "LAYERS names {m}, which lib.rs does not declare");
    }
}

#[test]
fn modules_import_only_upstream() {
    let rank: BTreeMap<&str, usize> = LAYERS.iter().enumerate().map(|(i, m)| (*m, i)).collect();
    let mut violations = Vec::new();
    for (i, m) in LAYERS.iter().enumerate() {
        for (file, text) in sources(m) {
            for dep in imports(&code(&text)) {
                let Some(&j) = rank.get(dep.as_str()) else { continue };
                if j >= i && dep != *m {
                    violations.push(format!("{file}: {m} imports {dep}, which is not upstream of it"));
                }
            }
        }
    }
    violations.sort();
    violations.dedup();
    assert!(violations.is_empty(), "upward or sideways imports:\n{}", violations.join("\n"));
}

#[test]
fn the_core_does_no_io() {
    let mut violations = Vec::new();
    for m in PURE {
        for (file, text) in sources(m) {
            let code = code(&text);
            for marker in IMPURE_MARKERS {
                if code.contains(marker) {
                    violations.push(format!("{file}: {marker}"));
                }
            }
        }
    }
    assert!(violations.is_empty(), "I/O in the pure core (move it to the collector or a tracker):\n{}", violations.join("\n"));
}

#[test]
fn the_import_scanner_sees_groups_and_paths() {
    let found = imports("use crate::{aggregate::{A, B}, health::Health};\nlet x = crate::procfs::comm(1);");
    assert_eq!(found, ["aggregate", "health", "procfs"]);
}
