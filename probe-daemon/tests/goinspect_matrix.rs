//! Go binary inspection against the real-toolchain fixture matrix.
//!
//! Build the fixtures first:  tests/fixtures/go/build.sh   (see that file; ~5 minutes on 2 cores)
//! The matrix lives in ${CHAINPROBE_FIXTURES:-<repo>/target/go-fixtures}/<go version>/<variant>/<program>.
//! Each stripped variant is compared with its unstripped twin (same layout) and with the ground truth
//! written by `go tool nm` / `go tool objdump` next to the twin. A missing matrix FAILS.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use goinspect::{self, Arch, GoBinary, GoInspectError, Inspector, LinkMode, Source};

const VARIANTS: &[&str] = &[
    "default",
    "stripped",
    "pie",
    "pie-stripped",
    "pie-ext",
    "pie-ext-stripped",
    "arm64-default",
    "arm64-stripped",
];

use test_support::fixtures_root;

fn variants() -> Vec<String> {
    match std::env::var("CHAINPROBE_GO_VARIANTS") {
        Ok(v) => v.split_whitespace().map(str::to_string).collect(),
        Err(_) => VARIANTS.iter().map(|s| s.to_string()).collect(),
    }
}

/// p_vaddr of the first writable PT_LOAD of a 64-bit little-endian ELF file.
fn rw_load_vaddr(path: &Path) -> u64 {
    let d = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let u16_at = |o: usize| u16::from_le_bytes([d[o], d[o + 1]]) as usize;
    let u32_at = |o: usize| u32::from_le_bytes(d[o..o + 4].try_into().unwrap());
    let u64_at = |o: usize| u64::from_le_bytes(d[o..o + 8].try_into().unwrap());
    let (phoff, phentsize, phnum) = (u64_at(0x20) as usize, u16_at(0x36), u16_at(0x38));
    (0..phnum)
        .map(|i| phoff + i * phentsize)
        .find(|&e| u32_at(e) == 1 && u32_at(e + 4) & 2 != 0)
        .map(|e| u64_at(e + 0x10))
        .unwrap_or_else(|| panic!("{}: no writable PT_LOAD", path.display()))
}

fn twin_of(variant: &str) -> &str {
    match variant {
        "stripped" => "default",
        "pie-stripped" => "pie",
        "pie-ext-stripped" => "pie-ext",
        "arm64-stripped" => "arm64-default",
        v => v,
    }
}

/// Every (version dir, variant, program binary). Panics (test failure) when the matrix is missing.
fn matrix() -> Vec<(String, String, PathBuf)> {
    let root = fixtures_root();
    let hint = "run `tests/fixtures/go/build.sh` (installs Go toolchains with tests/fixtures/go/install-go.sh \
                and builds the fixture matrix) or set CHAINPROBE_FIXTURES";
    let rd = std::fs::read_dir(&root).unwrap_or_else(|e| {
        panic!(
            "Go fixture matrix missing at {} ({e}): {hint}",
            root.display()
        )
    });
    let mut versions: Vec<String> = rd
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    versions.sort();
    assert!(
        !versions.is_empty(),
        "no Go versions under {}: {hint}",
        root.display()
    );
    // Every toolchain of the matrix must be there (a failed build must not shrink the matrix).
    let wanted = std::env::var("CHAINPROBE_GO_VERSIONS")
        .unwrap_or_else(|_| include_str!("../../tests/fixtures/go/versions").trim().into());
    for w in wanted.split_whitespace() {
        assert!(
            versions
                .iter()
                .any(|v| v == w || v.starts_with(&format!("{w}."))),
            "fixtures for Go {w} missing under {}: {hint}",
            root.display()
        );
    }
    // The programs of tests/fixtures/go/src (build.sh writes their ground truth); the GOPATH
    // fixtures (tests/fixtures/go/gopath, build-gopath.sh: gRPC) share the directories but not
    // the matrix.
    let programs: Vec<String> = std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/go/src"))
        .expect("tests/fixtures/go/src")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let mut out = Vec::new();
    for v in &versions {
        for variant in variants() {
            let dir = root.join(v).join(&variant);
            let rd = std::fs::read_dir(&dir)
                .unwrap_or_else(|e| panic!("fixture dir {} missing ({e}): {hint}", dir.display()));
            let mut n = 0;
            for e in rd.filter_map(|e| e.ok()) {
                let name = e.file_name().to_string_lossy().into_owned();
                if !name.contains('.') && e.path().is_file() && programs.contains(&name) {
                    out.push((v.clone(), variant.clone(), e.path()));
                    n += 1;
                }
            }
            assert!(n > 0, "no binaries in {}: {hint}", dir.display());
        }
    }
    out
}

struct Truth {
    version: String,
    /// name → (addr, size, type)
    nm: BTreeMap<String, (u64, u64, String)>,
    /// function → [(addr, bytes as printed, instruction)]
    objdump: BTreeMap<String, Vec<(u64, String, String)>>,
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p)
        .unwrap_or_else(|e| panic!("ground truth {} missing ({e}); rerun build.sh", p.display()))
}

fn truth(bin: &Path) -> Truth {
    let s = |ext: &str| PathBuf::from(format!("{}.{ext}", bin.display()));
    let version = read(&s("version.txt"))
        .split_whitespace()
        .nth(2)
        .expect("go version output")
        .to_string();
    let mut nm = BTreeMap::new();
    for line in read(&s("nm.txt")).lines() {
        let mut it = line.split_whitespace();
        let (Some(a), Some(sz), Some(t)) = (it.next(), it.next(), it.next()) else {
            continue;
        };
        let name = it.collect::<Vec<_>>().join(" ");
        let (Ok(a), Ok(sz)) = (u64::from_str_radix(a, 16), sz.parse::<u64>()) else {
            continue;
        };
        nm.entry(name).or_insert((a, sz, t.to_string()));
    }
    let mut objdump: BTreeMap<String, Vec<(u64, String, String)>> = BTreeMap::new();
    let mut cur = None;
    for line in read(&s("objdump.txt")).lines() {
        if let Some(rest) = line.strip_prefix("TEXT ") {
            let name = rest.split("(SB)").next().expect("TEXT line").to_string();
            objdump.insert(name.clone(), Vec::new());
            cur = Some(name);
            continue;
        }
        let f: Vec<&str> = line
            .split('\t')
            .map(str::trim)
            .filter(|x| !x.is_empty())
            .collect();
        if f.len() < 4 {
            continue;
        }
        let Some(addr) = f[1]
            .strip_prefix("0x")
            .and_then(|a| u64::from_str_radix(a, 16).ok())
        else {
            continue;
        };
        if let Some(c) = &cur {
            objdump
                .get_mut(c)
                .expect("current")
                .push((addr, f[2].to_string(), f[3].to_string()));
        }
    }
    Truth {
        version,
        nm,
        objdump,
    }
}

fn hex_at(data: &[u8], off: u64, len: usize, arch: Arch) -> String {
    let off = off as usize;
    let b = &data[off..off + len];
    match arch {
        Arch::Amd64 => b.iter().map(|x| format!("{x:02x}")).collect(),
        Arch::Arm64 => format!("{:08x}", u32::from_le_bytes([b[0], b[1], b[2], b[3]])),
    }
}

/// The TLS result site (amd64 binaries with crypto/tls) is a conditional jump of handshakeContext,
/// as `go tool objdump` prints it, shortly after an indirect CALL whose result (AX) is stored at
/// `Conn.handshakeErr`; elsewhere there is none.
fn check_tls_result_site(ctx: &str, b: &GoBinary, truth: &Truth, data: &[u8], arch: Arch, has_tls: bool, t: &mut Tally) {
    let name = goinspect::TLS_HANDSHAKE_CALLER;
    let site = b.tls_result_site.as_ref();
    if !(has_tls && arch == Arch::Amd64) {
        t.check(site.is_none(), || format!("{ctx}: TLS result site {site:?} without amd64 crypto/tls"));
        return;
    }
    let (Some(site), Some(f), Some(err)) = (site, b.function(name), b.offset("crypto/tls.Conn.handshakeErr")) else {
        t.check(false, || format!("{ctx}: no TLS result site ({:?})", b.warnings));
        return;
    };
    t.check(site.function == name && site.file_offset == f.file_offset + site.offset, || format!("{ctx}: TLS result site {site:?}"));
    let ins = truth.objdump.get(name).cloned().unwrap_or_default();
    let Some(i) = ins.iter().position(|(a, _, _)| *a == f.entry + site.offset) else {
        t.check(false, || format!("{ctx}: TLS result site +{:#x} is not an instruction of {name}", site.offset));
        return;
    };
    let (_, bytes, text) = &ins[i];
    t.check(text.starts_with('J'), || format!("{ctx}: TLS result site is `{text}`, not a jump"));
    t.check(&hex_at(data, site.file_offset, bytes.len() / 2, arch) == bytes, || format!("{ctx}: TLS result site bytes"));
    let before = &ins[i.saturating_sub(12)..i];
    let call = before.iter().rposition(|(_, _, x)| x.split_whitespace().collect::<Vec<_>>().len() == 2 && x.starts_with("CALL ") && !x.contains('('));
    let store = format!("MOVQ AX, {err:#x}(");
    t.check(
        call.is_some_and(|c| before[c + 1..].iter().any(|(_, _, x)| x.starts_with(&store)) && !before[c + 1..].iter().any(|(_, _, x)| x.starts_with('J') || x.starts_with("CALL"))),
        || format!("{ctx}: no `CALL reg … {store}…` right before the TLS result site: {before:?}"),
    );
}

#[derive(Default)]
struct Tally {
    checks: usize,
    failures: Vec<String>,
}

impl Tally {
    fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        self.checks += 1;
        if !ok {
            self.failures.push(what());
        }
    }
}

fn check_binary(version: &str, variant: &str, bin: &Path, t: &mut Tally) {
    let ctx = format!(
        "{version}/{variant}/{}",
        bin.file_name().unwrap_or_default().to_string_lossy()
    );
    let twin_path = bin
        .parent()
        .and_then(Path::parent)
        .expect("layout")
        .join(twin_of(variant))
        .join(bin.file_name().expect("name"));
    let truth = truth(&twin_path);
    let b: GoBinary = match goinspect::inspect_path(bin) {
        Ok(b) => b,
        Err(e) => {
            t.check(false, || format!("{ctx}: inspect failed: {e}"));
            return;
        }
    };
    let twin = goinspect::inspect_path(&twin_path).expect("twin inspects");
    let data = std::fs::read(bin).expect("read fixture");
    let arch = if variant.starts_with("arm64") {
        Arch::Arm64
    } else {
        Arch::Amd64
    };
    let stripped = variant.ends_with("stripped");

    t.check(b.go_version == truth.version, || {
        format!("{ctx}: version {} != {}", b.go_version, truth.version)
    });
    t.check(b.arch == arch, || format!("{ctx}: arch {:?}", b.arch));
    t.check(b.pie == variant.starts_with("pie"), || {
        format!("{ctx}: pie {}", b.pie)
    });
    t.check(b.stripped == stripped, || {
        format!("{ctx}: stripped {}", b.stripped)
    });
    t.check(b.has_dwarf != stripped, || {
        format!("{ctx}: has_dwarf {}", b.has_dwarf)
    });
    let want_link = if variant.contains("ext") {
        LinkMode::External
    } else {
        LinkMode::Internal
    };
    t.check(b.link_mode == want_link, || {
        format!("{ctx}: link mode {:?}", b.link_mode)
    });
    t.check(b.supported(), || format!("{ctx}: ABI {:?}", b.abi));
    t.check(b.module_path.as_deref() == Some("fixture"), || {
        format!("{ctx}: module {:?}", b.module_path)
    });

    // Functions: entry, file offset, RETs vs go tool nm / objdump of the twin.
    for &name in goinspect::PROBE_TARGETS {
        let in_nm = truth
            .nm
            .get(name)
            .filter(|(_, _, ty)| ty.eq_ignore_ascii_case("t"));
        match (b.function(name), in_nm) {
            (None, None) => {
                t.check(b.absent_functions.iter().any(|a| a == name), || {
                    format!("{ctx}: {name} neither found nor absent")
                });
            }
            (None, Some(_)) => t.check(false, || format!("{ctx}: {name} in nm but not found")),
            (Some(_), None) => t.check(false, || format!("{ctx}: {name} found but not in nm")),
            (Some(f), Some((addr, size, _))) => {
                t.check(f.entry == *addr, || {
                    format!("{ctx}: {name} entry {:#x} != nm {addr:#x}", f.entry)
                });
                t.check(f.size >= *size && f.size < size + 64, || {
                    format!("{ctx}: {name} size {} vs nm {size}", f.size)
                });
                let want_src = if stripped {
                    Source::Pclntab
                } else {
                    Source::Symtab
                };
                t.check(f.source == want_src, || {
                    format!("{ctx}: {name} source {:?}", f.source)
                });
                let ins = truth.objdump.get(name).cloned().unwrap_or_default();
                t.check(!ins.is_empty(), || {
                    format!("{ctx}: {name} missing from objdump truth")
                });
                let rets: Vec<u64> = ins
                    .iter()
                    .filter(|(_, _, i)| i.starts_with("RET"))
                    .map(|(a, _, _)| a - addr)
                    .collect();
                t.check(f.ret_offsets == rets, || {
                    format!(
                        "{ctx}: {name} RETs {:x?} != objdump {rets:x?}",
                        f.ret_offsets
                    )
                });
                t.check(!rets.is_empty(), || format!("{ctx}: {name} has no RET"));
                // The body's first instruction follows the stack check's conditional branch.
                let body = f.after_stack_check_file_offset - f.file_offset;
                let at = ins.iter().position(|(a, _, _)| *a == addr + body);
                let after_branch = at.is_some_and(|i| i > 0 && i < 6 && (ins[i - 1].2.starts_with("JBE") || ins[i - 1].2.starts_with("BLS")));
                t.check(body == 0 || after_branch, || format!("{ctx}: {name} body offset +{body:#x} is not after the stack check: {:?}", &ins[..ins.len().min(6)]));
                t.check(body != 0 || name != "runtime.gcMarkTermination", || format!("{ctx}: {name}: no stack check found"));
                // File offsets: the bytes at the reported offsets are what objdump printed.
                if let Some((_, first, _)) = ins.first() {
                    let n = if arch == Arch::Amd64 {
                        first.len() / 2
                    } else {
                        4
                    };
                    let got = hex_at(&data, f.file_offset, n, arch);
                    t.check(&got == first, || {
                        format!(
                            "{ctx}: {name} bytes at file offset {:#x}: {got} != {first}",
                            f.file_offset
                        )
                    });
                }
                for (fo, (_, bytes, _)) in f
                    .ret_file_offsets
                    .iter()
                    .zip(ins.iter().filter(|(_, _, i)| i.starts_with("RET")))
                {
                    let n = if arch == Arch::Amd64 {
                        bytes.len() / 2
                    } else {
                        4
                    };
                    let got = hex_at(&data, *fo, n, arch);
                    t.check(&got == bytes, || {
                        format!("{ctx}: {name} RET bytes at {fo:#x}: {got} != {bytes}")
                    });
                }
                t.check(
                    f.ret_file_offsets
                        .iter()
                        .zip(&f.ret_offsets)
                        .all(|(fo, o)| *fo == f.file_offset + o),
                    || format!("{ctx}: {name} ret file offsets inconsistent"),
                );
            }
        }
    }

    // Struct offsets: stripped → tables, must equal the twin's DWARF.
    for k in goinspect::REQUIRED_OFFSETS {
        t.check(b.offset(k).is_some(), || {
            format!("{ctx}: offset {k} missing ({:?})", b.offsets_error)
        });
    }
    for (k, o) in &twin.offsets {
        t.check(o.source == Source::Dwarf, || {
            format!("{ctx}: twin {k} not from DWARF")
        });
        let got = b.offsets.get(k);
        t.check(got.map(|g| g.value) == Some(o.value), || {
            format!("{ctx}: offset {k} {got:?} != DWARF {}", o.value)
        });
        let want_src = if stripped {
            Source::Table
        } else {
            Source::Dwarf
        };
        t.check(got.map(|g| g.source) == Some(want_src), || {
            format!("{ctx}: offset {k} source {got:?}")
        });
    }
    let complete = [
        "crypto/tls.Conn.isHandshakeComplete",
        "crypto/tls.Conn.handshakeStatus",
    ];
    let has_tls = b.functions.keys().any(|k| k.starts_with("crypto/tls."));
    if has_tls {
        t.check(complete.iter().any(|k| b.offset(k).is_some()), || {
            format!("{ctx}: no TLS handshake-complete field")
        });
    } else {
        t.check(
            !b.offsets.keys().any(|k| k.starts_with("crypto/tls.")),
            || format!("{ctx}: TLS offsets without crypto/tls"),
        );
    }
    check_tls_result_site(&ctx, &b, &truth, &data, arch, has_tls, t);

    // Where the offsets come from: the binary's DWARF, else its own minor's table.
    let minor = version.split('.').nth(1).unwrap_or("");
    let want_origin = if stripped { format!("table 1.{minor}/{}", arch.as_str()) } else { "DWARF".to_string() };
    t.check(goinspect::tables::Origin::describe(&b.offsets_origin).starts_with(&want_origin), || {
        format!("{ctx}: offsets from {:?}, want {want_origin}", b.offsets_origin)
    });
    t.check(b.version_from == "buildinfo", || format!("{ctx}: version from {}", b.version_from));

    // Data symbols vs go tool nm (code references in stripped builds, symtab otherwise). Stripping
    // can shrink the read-only segment across a page boundary, moving the writable segment (and
    // every data symbol) by a page relative to the twin: compare within that segment.
    let shift = rw_load_vaddr(bin).wrapping_sub(rw_load_vaddr(&twin_path));
    for &name in goinspect::DATA_SYMBOLS {
        let want = truth.nm.get(name).map(|(a, _, _)| a.wrapping_add(shift));
        t.check(want.is_some(), || format!("{ctx}: {name} not in nm truth"));
        let got = b.data_symbols.get(name);
        t.check(got.map(|d| d.vaddr) == want, || {
            format!("{ctx}: {name} {got:x?} != nm {want:x?}")
        });
        let want_src = if stripped {
            Source::CodeRef
        } else {
            Source::Symtab
        };
        t.check(got.map(|d| d.source) == Some(want_src), || {
            format!("{ctx}: {name} source {got:?}")
        });
    }
    // The code-reference method is verified against .symtab on unstripped builds.
    t.check(
        !b.warnings.iter().any(|w| w.contains("code reference")),
        || format!("{ctx}: warnings {:?}", b.warnings),
    );
    t.check(b.warnings.is_empty(), || {
        format!("{ctx}: unexpected warnings {:?}", b.warnings)
    });
    // JSON and text rendering work.
    t.check(serde_json::to_string(&b).is_ok(), || {
        format!("{ctx}: serde")
    });
    t.check(
        goinspect::render_text(&b).contains("runtime.gcStart"),
        || format!("{ctx}: render_text"),
    );
}

#[test]
fn fixture_matrix_matches_ground_truth() {
    let m = matrix();
    let mut t = Tally::default();
    for (v, variant, bin) in &m {
        check_binary(v, variant, bin, &mut t);
    }
    eprintln!(
        "goinspect matrix: {} fixtures, {} checks, {} failures",
        m.len(),
        t.checks,
        t.failures.len()
    );
    assert!(
        t.failures.is_empty(),
        "{} of {} checks failed:\n{}",
        t.failures.len(),
        t.checks,
        t.failures.join("\n")
    );
}

/// Release builds that drop the `.go.buildinfo` section: every stripped fixture, with the section
/// removed by objcopy, is still recognised, with its Go version (from runtime.buildVersion, checked
/// against the pclntab format), and inspects exactly like the original.
#[test]
fn binaries_without_build_info_are_recognised_with_their_version() {
    let dir = tmpdir("nobuildinfo");
    let mut t = Tally::default();
    let mut n = 0;
    for (v, variant, bin) in matrix() {
        if !variant.ends_with("stripped") {
            continue;
        }
        let ctx = format!("{v}/{variant}/{}", bin.file_name().unwrap_or_default().to_string_lossy());
        let out = dir.join(format!("{v}-{variant}-{}", bin.file_name().unwrap_or_default().to_string_lossy()));
        let objcopy = if variant.starts_with("arm64") { "aarch64-linux-gnu-objcopy" } else { "objcopy" };
        let st = std::process::Command::new(objcopy)
            .args(["--remove-section", ".go.buildinfo"])
            .arg(&bin)
            .arg(&out)
            .status()
            .unwrap_or_else(|e| panic!("{objcopy} (binutils; tests/tools/install.sh installs it): {e}"));
        assert!(st.success(), "{ctx}: objcopy failed");
        let data = std::fs::read(&out).expect("read");
        t.check(memchr_find(&data, goinspect::buildinfo::MAGIC_BYTES).is_none(), || format!("{ctx}: build info still there after objcopy"));
        let orig = goinspect::inspect_path(&bin).expect("original inspects");
        let b = match goinspect::inspect_path(&out) {
            Ok(b) => b,
            Err(e) => {
                t.check(false, || format!("{ctx}: not recognised without build info: {e}"));
                continue;
            }
        };
        n += 1;
        t.check(b.go_version == orig.go_version, || format!("{ctx}: version {} != {}", b.go_version, orig.go_version));
        t.check(b.version_from == "runtime.buildVersion", || format!("{ctx}: version from {}", b.version_from));
        t.check(b.module_path.is_none(), || format!("{ctx}: module {:?} without build info", b.module_path));
        t.check(b.offsets_origin == orig.offsets_origin, || format!("{ctx}: offsets from {:?} != {:?}", b.offsets_origin, orig.offsets_origin));
        t.check(b.offsets == orig.offsets, || format!("{ctx}: offsets differ"));
        t.check(b.data_symbols == orig.data_symbols, || format!("{ctx}: data symbols {:x?} != {:x?}", b.data_symbols, orig.data_symbols));
        t.check(b.functions == orig.functions, || format!("{ctx}: functions differ"));
        t.check(b.link_mode == orig.link_mode, || format!("{ctx}: link mode {:?} != {:?}", b.link_mode, orig.link_mode));
        t.check(goinspect::render_text(&b).contains("read from runtime.buildVersion"), || format!("{ctx}: render_text does not say where the version came from"));
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(n > 0, "no stripped fixture");
    assert!(t.failures.is_empty(), "{} of {} checks failed:\n{}", t.failures.len(), t.checks, t.failures.join("\n"));
}

fn memchr_find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The newest Go version's `hello` of `variant` (it runs until killed with the argument
/// `forever`; the other programs of a variant directory may not, and read_dir's order is the
/// file system's).
fn some_fixture(variant: &str) -> PathBuf {
    matrix()
        .into_iter()
        .rev()
        .find(|(_, v, p)| v == variant && p.file_name().is_some_and(|n| n == "hello"))
        .map(|(_, _, p)| p)
        .unwrap_or_else(|| panic!("no {variant} fixture: run tests/fixtures/go/build.sh"))
}

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("goinspect-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).expect("tmpdir");
    d
}

#[test]
fn non_go_and_bad_inputs_give_clear_errors() {
    // A non-Go ELF.
    let ls = Path::new("/bin/ls");
    if ls.exists() {
        let e = goinspect::inspect_path(ls).expect_err("ls is not Go");
        assert!(matches!(e, GoInspectError::NotGo { .. }), "{e}");
        assert!(e.to_string().contains("not a Go binary"), "{e}");
    }
    // A directory.
    let e = goinspect::inspect_path(Path::new("/tmp")).expect_err("dir");
    assert!(matches!(e, GoInspectError::NotAFile { .. }), "{e}");
    // Missing file.
    let e = goinspect::inspect_path(Path::new("/nonexistent/chainprobe")).expect_err("missing");
    assert!(matches!(e, GoInspectError::Io { .. }), "{e}");
    let d = tmpdir("bad");
    // Empty file.
    let empty = d.join("empty");
    std::fs::write(&empty, b"").expect("write");
    let e = goinspect::inspect_path(&empty).expect_err("empty");
    assert!(matches!(e, GoInspectError::Empty { .. }), "{e}");
    // Text file.
    let txt = d.join("script");
    std::fs::write(&txt, b"#!/bin/sh\necho hello\n").expect("write");
    assert!(matches!(
        goinspect::inspect_path(&txt),
        Err(GoInspectError::NotElf { .. })
    ));
    // Truncated Go binaries: an error (never a panic, never a bogus success without targets).
    let src = std::fs::read(some_fixture("stripped")).expect("read");
    for frac in [0.0001, 0.01, 0.1, 0.3, 0.5, 0.7, 0.9, 0.99] {
        let n = ((src.len() as f64) * frac) as usize;
        let p = d.join(format!("trunc-{n}"));
        std::fs::write(&p, &src[..n]).expect("write");
        match goinspect::inspect_path(&p) {
            Err(e) => assert!(!e.to_string().is_empty()),
            Ok(b) => panic!(
                "truncated to {n} bytes yet inspected: {} functions",
                b.functions.len()
            ),
        }
    }
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn corrupted_binaries_never_panic() {
    let src = std::fs::read(some_fixture("pie-stripped")).expect("read");
    let mut rng: u64 = 0x9e37_79b9_7f4a_7c15;
    for round in 0..40 {
        let mut d = src.clone();
        for _ in 0..(1 + round * 50) {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let i = (rng as usize) % d.len();
            d[i] = (rng >> 32) as u8;
        }
        let _ = goinspect::inspect_bytes(Path::new("corrupt"), &d);
    }
}

#[test]
fn inspector_caches_by_file_identity() {
    let d = tmpdir("cache");
    let p = d.join("hello");
    std::fs::copy(some_fixture("stripped"), &p).expect("copy");
    let insp = Inspector::new();
    let a = insp.inspect_path(&p).expect("inspect");
    let b = insp.inspect_path(&p).expect("inspect");
    assert!(
        std::sync::Arc::ptr_eq(&a, &b),
        "second inspection must hit the cache"
    );
    assert_eq!(insp.cached(), 1);
    // A changed file (new content, size, mtime) is inspected again.
    std::fs::copy(some_fixture("default"), &p).expect("copy");
    let c = insp.inspect_path(&p).expect("inspect");
    assert!(!std::sync::Arc::ptr_eq(&a, &c));
    assert!(!c.stripped);
    assert_eq!(insp.cached(), 2);
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn inspect_running_process_by_pid() {
    let bin = some_fixture("pie-stripped");
    let mut child = std::process::Command::new(&bin)
        .arg("forever")
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn fixture");
    let insp = Inspector::new();
    let r = insp.inspect_pid(child.id());
    let direct = goinspect::inspect_path(&bin);
    child.kill().ok();
    child.wait().ok();
    let r = r.expect("inspect_pid");
    let direct = direct.expect("inspect_path");
    assert_eq!(r.go_version, direct.go_version);
    assert_eq!(r.functions, direct.functions);
    assert_eq!(r.data_symbols, direct.data_symbols);
    let e = insp.inspect_pid(u32::MAX - 1).expect_err("no such pid");
    assert!(matches!(e, GoInspectError::Process { .. }), "{e}");
}
