//! Where a libssl build keeps the negotiated version, the selected ALPN protocol and the server
//! flag of an `SSL`: learned from that build's own accessor functions, never assumed.
//!
//! OpenSSL's `struct ssl_st` is private and its layout changes between releases and builds, but
//! the exported accessors read the fields: `SSL_version(s)`, `SSL_is_server(s)` and
//! `SSL_get0_alpn_selected(s, &data, &len)`. Each accessor is followed (amd64) along the path a
//! plain TLS connection takes, and the loads it returns or stores through its out-parameters are
//! the offsets:
//! - OpenSSL 3.0 (Debian 12): straight loads, `mov eax, [rdi+V]; ret`;
//! - 1.1.1: the same for version and role; ALPN one pointer further, `s->s3->alpn_selected`
//!   (`mov rax, [rdi+S3]; mov rcx, [rax+P]; … mov eax, [rax+L]`);
//! - 3.2+ (3.5 in Debian 13): `SSL_CONNECTION_FROM_SSL`: a NULL check, then the object's `type`
//!   (`mov eax, [rdi]; test eax, eax; je`) — 0 is a TLS connection (whose fields are then read
//!   from the same pointer), anything else QUIC, which goes through a call. The path with type 0
//!   is followed, and the kernel checks the type before reading anything.
//!
//! Branches are decided only where the path is clear (the argument or a loaded pointer is not
//! NULL; the type is 0); a call, an unknown condition or anything else leaves the field unknown
//! (`unknown` in the metrics) rather than guessed. arm64 is not learned.
use std::collections::HashMap;

use iced_x86::{Code, Decoder, DecoderOptions, Mnemonic, OpKind, Register};
use object::{Object, ObjectSegment, ObjectSymbol};
use probe_common::{SslLibConfig, OFFSET_NONE};

/// Longest accessor body examined, bytes, and instructions followed.
const MAX_BODY: usize = 256;
const MAX_STEPS: usize = 64;

/// The field offsets of the libssl file at `path` (OFFSET_NONE where not learned), and a note
/// for each one that could not be learned.
pub fn learn(path: &std::path::Path) -> (SslLibConfig, Vec<String>) {
    let cfg = unknown();
    let mut notes = Vec::new();
    let data = match std::fs::read(path) {
        Ok(d) => d,
        Err(e) => {
            notes.push(format!("cannot read {}: {e}", path.display()));
            return (cfg, notes);
        }
    };
    let file = match object::File::parse(&*data) {
        Ok(f) => f,
        Err(e) => {
            notes.push(format!("{} is not a readable ELF file: {e}", path.display()));
            return (cfg, notes);
        }
    };
    if file.architecture() != object::Architecture::X86_64 {
        notes.push(format!("version/ALPN offsets are learned on x86_64 only (this libssl is {:?})", file.architecture()));
        return (cfg, notes);
    }
    let body = |name: &str| -> Option<(u64, Vec<u8>)> {
        let sym = file.dynamic_symbols().find(|s| s.name().is_ok_and(|n| n == name) && s.is_definition())?;
        let addr = sym.address();
        let seg = file.segments().find(|s| s.address() <= addr && addr < s.address() + s.size())?;
        let (seg_off, _) = seg.file_range();
        let off = (addr - seg.address() + seg_off) as usize;
        let end = (off + MAX_BODY).min(data.len());
        Some((addr, data.get(off..end)?.to_vec()))
    };
    learn_from(body)
}

fn unknown() -> SslLibConfig {
    SslLibConfig {
        version: OFFSET_NONE,
        is_server: OFFSET_NONE,
        alpn_ptr: OFFSET_NONE,
        alpn_len: OFFSET_NONE,
        alpn_base: OFFSET_NONE,
        type_off: OFFSET_NONE,
        flags: 0,
        _pad: 0,
    }
}

/// The offsets from the accessors' code (`body(name)` → (address, bytes)).
fn learn_from(body: impl Fn(&str) -> Option<(u64, Vec<u8>)>) -> (SslLibConfig, Vec<String>) {
    let mut cfg = unknown();
    let mut notes = Vec::new();
    // One type check for all accessors: they use the same macro.
    let mut type_off: Option<u32> = None;
    let mut agree = |t: Option<u32>, notes: &mut Vec<String>, what: &str| -> bool {
        match (type_off, t) {
            (_, None) => true,
            (None, Some(t)) => {
                type_off = Some(t);
                true
            }
            (Some(a), Some(b)) if a == b => true,
            _ => {
                notes.push(format!("{what} checks the object type at another offset: not read"));
                false
            }
        }
    };
    if let Some((v, t)) = body("SSL_version").and_then(|(ip, b)| field_load(ip, &b)) {
        if agree(t, &mut notes, "SSL_version") {
            cfg.version = v;
        }
    } else {
        notes.push("SSL_version is not a plain field load: version not read".into());
    }
    if let Some((v, t)) = body("SSL_is_server").and_then(|(ip, b)| field_load(ip, &b)) {
        if agree(t, &mut notes, "SSL_is_server") {
            cfg.is_server = v;
        }
    } else {
        notes.push("SSL_is_server is not a plain field load: role from the calling function only".into());
    }
    if let Some((a, t)) = body("SSL_get0_alpn_selected").and_then(|(ip, b)| alpn_loads(ip, &b)) {
        if agree(t, &mut notes, "SSL_get0_alpn_selected") {
            cfg.alpn_ptr = a.ptr;
            cfg.alpn_len = a.len;
            cfg.alpn_base = a.base.unwrap_or(OFFSET_NONE);
        }
    } else {
        notes.push("SSL_get0_alpn_selected has an unexpected shape: ALPN not read".into());
    }
    cfg.type_off = type_off.unwrap_or(OFFSET_NONE);
    (cfg, notes)
}

/// What a register holds along the path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Val {
    /// The SSL pointer (first argument).
    Ssl,
    /// The out-parameters of SSL_get0_alpn_selected (second and third argument).
    Out1,
    Out2,
    Zero,
    /// A load of `wide` (8 bytes, else 4) at `disp` from the SSL (`base` None) or from the
    /// pointer loaded at `[ssl + base]`.
    Load { base: Option<u32>, disp: u32, wide: bool },
}

/// The state at the RET of the path followed.
#[derive(Debug, Default)]
struct End {
    rax: Option<Val>,
    /// The last values stored through Out1 / Out2.
    out1: Option<Val>,
    out2: Option<Val>,
    /// The offset of the type field the path assumed to be 0.
    type_off: Option<u32>,
}

fn full(r: Register) -> Register {
    r.full_register()
}

/// Follows the accessor at `ip` from its entry to its RET (see the module's doc).
fn walk(ip: u64, code: &[u8]) -> Option<End> {
    let mut regs: HashMap<Register, Val> = HashMap::from([(Register::RDI, Val::Ssl), (Register::RSI, Val::Out1), (Register::RDX, Val::Out2)]);
    let mut end = End::default();
    // The value last tested against itself (`test r, r`), for the next conditional jump.
    let mut tested: Option<Option<Val>> = None;
    let mut at = ip;
    for _ in 0..MAX_STEPS {
        let off = at.checked_sub(ip)? as usize;
        let mut dec = Decoder::with_ip(64, code.get(off..)?, at, DecoderOptions::NONE);
        let ins = dec.decode();
        if ins.code() == Code::INVALID {
            return None;
        }
        let next = ins.next_ip();
        let reg_op = |i: u32| -> Option<Register> {
            let k = match i {
                0 => ins.op0_kind(),
                _ => ins.op1_kind(),
            };
            (k == OpKind::Register).then(|| full(if i == 0 { ins.op0_register() } else { ins.op1_register() }))
        };
        match ins.mnemonic() {
            Mnemonic::Endbr64 | Mnemonic::Nop => {}
            Mnemonic::Ret => {
                end.rax = regs.get(&Register::RAX).copied();
                return Some(end);
            }
            Mnemonic::Xor if ins.op_count() == 2 && reg_op(0).is_some() && reg_op(0) == reg_op(1) => {
                regs.insert(reg_op(0)?, Val::Zero);
            }
            Mnemonic::Mov if ins.op0_kind() == OpKind::Register && ins.op1_kind() == OpKind::Register => {
                let (d, s) = (reg_op(0)?, reg_op(1)?);
                match regs.get(&s).copied() {
                    Some(v) => regs.insert(d, v),
                    None => regs.remove(&d),
                };
            }
            Mnemonic::Mov if ins.op0_kind() == OpKind::Register && ins.op1_kind() == OpKind::Memory => {
                let d = reg_op(0)?;
                let wide = ins.op0_register().size() == 8;
                let v = if ins.memory_index() == Register::None && ins.memory_displacement64() < 1 << 20 {
                    let disp = ins.memory_displacement64() as u32;
                    match regs.get(&full(ins.memory_base())) {
                        Some(Val::Ssl) => Some(Val::Load { base: None, disp, wide }),
                        Some(Val::Load { base: None, disp: b, wide: true }) => Some(Val::Load { base: Some(*b), disp, wide }),
                        _ => None,
                    }
                } else {
                    None
                };
                match v {
                    Some(v) => regs.insert(d, v),
                    None => regs.remove(&d),
                };
            }
            Mnemonic::Mov if ins.op0_kind() == OpKind::Memory => {
                let src = if ins.op1_kind() == OpKind::Register {
                    regs.get(&reg_op(1)?).copied()
                } else if matches!(ins.op1_kind(), OpKind::Immediate8 | OpKind::Immediate16 | OpKind::Immediate32 | OpKind::Immediate8to64 | OpKind::Immediate32to64)
                    && ins.immediate(1) == 0
                {
                    Some(Val::Zero)
                } else {
                    None
                };
                match (ins.memory_index(), regs.get(&full(ins.memory_base()))) {
                    (Register::None, Some(Val::Out1)) if ins.memory_displacement64() == 0 => end.out1 = src,
                    (Register::None, Some(Val::Out2)) if ins.memory_displacement64() == 0 => end.out2 = src,
                    // A spill to the stack, or a store elsewhere: not an output.
                    _ => {}
                }
            }
            Mnemonic::Test if reg_op(0).is_some() && reg_op(0) == reg_op(1) => {
                tested = Some(regs.get(&reg_op(0)?).copied());
            }
            Mnemonic::Je | Mnemonic::Jne => {
                // Taken when the tested value is zero (je) / not zero (jne).
                let zero = match tested.take()? {
                    // The argument and loaded pointers are not NULL on the path followed.
                    Some(Val::Ssl) | Some(Val::Load { wide: true, .. }) => false,
                    // A 4-byte field of the SSL tested for 0: the object type (3.2+).
                    Some(Val::Load { base: None, disp, wide: false }) => {
                        if end.type_off.is_some_and(|t| t != disp) {
                            return None;
                        }
                        end.type_off = Some(disp);
                        true
                    }
                    _ => return None,
                };
                let taken = zero == (ins.mnemonic() == Mnemonic::Je);
                at = if taken { ins.near_branch_target() } else { next };
                continue;
            }
            Mnemonic::Jmp if ins.op0_kind() == OpKind::NearBranch64 => {
                at = ins.near_branch_target();
                continue;
            }
            Mnemonic::Push => {}
            Mnemonic::Pop => {
                regs.remove(&reg_op(0)?);
            }
            Mnemonic::Sub | Mnemonic::Add if reg_op(0) == Some(Register::RSP) => {}
            // Calls, other branches and anything that may change what is tracked: give up.
            _ if ins.flow_control() != iced_x86::FlowControl::Next => return None,
            _ => {
                // Any other instruction: what it writes is no longer known.
                if let Some(r) = reg_op(0) {
                    regs.remove(&r);
                }
                tested = None;
            }
        }
        at = next;
    }
    None
}

/// An accessor returning one 4-byte field of the SSL: (offset, type check offset).
fn field_load(ip: u64, code: &[u8]) -> Option<(u32, Option<u32>)> {
    let end = walk(ip, code)?;
    match end.rax? {
        Val::Load { base: None, disp, wide: false } if end.type_off != Some(disp) => Some((disp, end.type_off)),
        _ => None,
    }
}

/// Where SSL_get0_alpn_selected finds the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AlpnAt {
    /// Offset of the pointer to the struct holding the fields (1.1.1's `s3`); None: the SSL.
    pub base: Option<u32>,
    pub ptr: u32,
    pub len: u32,
}

/// `*data = [B+P]` (8 bytes) and `*len = [B+L]` (4 bytes) on the path followed.
fn alpn_loads(ip: u64, code: &[u8]) -> Option<(AlpnAt, Option<u32>)> {
    let end = walk(ip, code)?;
    match (end.out1?, end.out2?) {
        (Val::Load { base: b1, disp: ptr, wide: true }, Val::Load { base: b2, disp: len, wide: false }) if b1 == b2 => {
            Some((AlpnAt { base: b1, ptr, len }, end.type_off))
        }
        _ => None,
    }
}

/// libssl's PLT stubs of the libcrypto functions its errors go through: (file offset, the
/// function, cookie: which argument is the reason). 3.x: `ERR_set_error(lib, reason, …)`
/// (ERR_raise) and `ERR_vset_error(lib, reason, …)` (SSLfatal); 1.1.1: `ERR_put_error(lib,
/// func, reason, …)`. A uprobe there sees only libssl's own errors (a probe on libcrypto's
/// functions would also trap on the hundreds of errors OpenSSL 3 raises and clears while it
/// starts up, in every process using it). Each stub is found by decoding the PLT: the entry
/// whose indirect jump goes through the function's GOT slot (its JUMP_SLOT relocation).
pub fn err_stubs(path: &std::path::Path) -> Vec<(u64, &'static str, u64)> {
    use object::{ObjectSection, RelocationTarget};
    let Ok(data) = std::fs::read(path) else { return Vec::new() };
    let Ok(file) = object::File::parse(&*data) else { return Vec::new() };
    if file.architecture() != object::Architecture::X86_64 {
        return Vec::new();
    }
    const WANTED: [(&str, u64); 3] = [("ERR_set_error", 1), ("ERR_vset_error", 1), ("ERR_put_error", 2)];
    // GOT slot address → function.
    let mut slots: HashMap<u64, (&'static str, u64)> = HashMap::new();
    let Some(relocs) = file.dynamic_relocations() else { return Vec::new() };
    let syms: Vec<_> = file.dynamic_symbols().collect();
    for (addr, r) in relocs {
        let RelocationTarget::Symbol(idx) = r.target() else { continue };
        let Some(sym) = syms.iter().find(|s| s.index() == idx) else { continue };
        let Ok(name) = sym.name() else { continue };
        let name = name.split('@').next().unwrap_or(name);
        if let Some(&(n, cookie)) = WANTED.iter().find(|(n, _)| *n == name) {
            slots.insert(addr, (n, cookie));
        }
    }
    let mut out = Vec::new();
    for sec in file.sections().filter(|s| matches!(s.name(), Ok(".plt") | Ok(".plt.sec"))) {
        let (Ok(code), Some((file_off, _))) = (sec.data(), sec.file_range()) else { continue };
        let mut dec = Decoder::with_ip(64, code, sec.address(), DecoderOptions::NONE);
        while dec.can_decode() {
            let ins = dec.decode();
            if ins.mnemonic() == Mnemonic::Jmp && ins.op0_kind() == OpKind::Memory && ins.is_ip_rel_memory_operand() {
                if let Some(&(name, cookie)) = slots.get(&ins.ip_rel_memory_address()) {
                    // The stub's first instruction: the 16-byte entry the jump is in.
                    let entry = ins.ip() & !0xf;
                    out.push((entry - sec.address() + file_off, name, cookie));
                }
            }
        }
    }
    // .plt.sec (IBT) and .plt both jump through the slot: the stub called is the .plt.sec one.
    out.sort();
    out.dedup_by_key(|e| e.1);
    if file.section_by_name(".plt.sec").is_some() {
        let sec = file.section_by_name(".plt.sec").and_then(|s| s.file_range());
        out.retain(|e| sec.is_some_and(|(o, n)| e.0 >= o && e.0 < o + n));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The accessors of three real builds (bytes from their libssl files; Debian packages).
    fn build(version: &[u8], is_server: &[u8], alpn: &[u8]) -> impl Fn(&str) -> Option<(u64, Vec<u8>)> {
        let (v, s, a) = (version.to_vec(), is_server.to_vec(), alpn.to_vec());
        move |name: &str| match name {
            "SSL_version" => Some((0x1000, v.clone())),
            "SSL_is_server" => Some((0x2000, s.clone())),
            "SSL_get0_alpn_selected" => Some((0x3000, a.clone())),
            _ => None,
        }
    }

    #[test]
    fn openssl_3_0_debian_12() {
        // 3.0.19-1~deb12u2: mov eax,[rdi]; xor edi,edi; ret / mov eax,[rdi+0x38]; … /
        // mov rax,[rdi+0x488]; xor ecx,ecx; mov [rsi],rax; test rax,rax; je; mov ecx,[rdi+0x490]; mov [rdx],ecx; xors; ret
        let (cfg, notes) = learn_from(build(
            &[0x8b, 0x07, 0x31, 0xff, 0xc3],
            &[0x8b, 0x47, 0x38, 0x31, 0xff, 0xc3],
            &[
                0x48, 0x8b, 0x87, 0x88, 0x04, 0x00, 0x00, 0x31, 0xc9, 0x48, 0x89, 0x06, 0x48, 0x85, 0xc0, 0x74, 0x06, 0x8b, 0x8f, 0x90,
                0x04, 0x00, 0x00, 0x89, 0x0a, 0x31, 0xc0, 0x31, 0xd2, 0x31, 0xc9, 0x31, 0xf6, 0x31, 0xff, 0xc3,
            ],
        ));
        assert!(notes.is_empty(), "{notes:?}");
        assert_eq!((cfg.version, cfg.is_server, cfg.alpn_ptr, cfg.alpn_len), (0, 0x38, 0x488, 0x490));
        assert_eq!((cfg.alpn_base, cfg.type_off), (OFFSET_NONE, OFFSET_NONE));
    }

    #[test]
    fn openssl_1_1_1_debian_11() {
        // 1.1.1w-0+deb11u1: ALPN through s->s3 (the pointer at 0xa8).
        let (cfg, notes) = learn_from(build(
            &[0x8b, 0x07, 0xc3],
            &[0x8b, 0x47, 0x38, 0xc3],
            &[
                0x48, 0x8b, 0x87, 0xa8, 0x00, 0x00, 0x00, 0x48, 0xc7, 0x06, 0x00, 0x00, 0x00, 0x00, 0x48, 0x85, 0xc0, 0x74, 0x1d, 0x48,
                0x8b, 0x88, 0xe0, 0x03, 0x00, 0x00, 0x48, 0x89, 0x0e, 0x48, 0x85, 0xc9, 0x74, 0x0e, 0x8b, 0x80, 0xe8, 0x03, 0x00, 0x00,
                0x89, 0x02, 0xc3, 0x0f, 0x1f, 0x44, 0x00, 0x00, 0x31, 0xc0, 0x89, 0x02, 0xc3,
            ],
        ));
        assert!(notes.is_empty(), "{notes:?}");
        assert_eq!((cfg.version, cfg.is_server), (0, 0x38));
        assert_eq!((cfg.alpn_base, cfg.alpn_ptr, cfg.alpn_len, cfg.type_off), (0xa8, 0x3e0, 0x3e8, OFFSET_NONE));
    }

    #[test]
    fn openssl_3_5_debian_13() {
        // 3.5.9-1~deb13u1: SSL_CONNECTION_FROM_SSL: NULL check, type at [rdi] (0 = TLS), QUIC
        // through a call; the fields on the type-0 path.
        let (cfg, notes) = learn_from(build(
            &[
                0xf3, 0x0f, 0x1e, 0xfa, 0x48, 0x85, 0xff, 0x74, 0x27, 0x8b, 0x07, 0x85, 0xc0, 0x74, 0x11, 0xa8, 0x80, 0x75, 0x2d, 0x31,
                0xc0, 0x31, 0xd2, 0x31, 0xc9, 0x31, 0xff, 0xc3, 0x0f, 0x1f, 0x40, 0x00, 0x8b, 0x47, 0x48, 0x31, 0xd2, 0x31, 0xc9, 0x31,
                0xff, 0xc3, 0x66, 0x0f, 0x1f, 0x44, 0x00, 0x00, 0x8b, 0x04, 0x25, 0x00, 0x00, 0x00, 0x00, 0x0f, 0x0b,
            ],
            &[
                0xf3, 0x0f, 0x1e, 0xfa, 0x48, 0x85, 0xff, 0x74, 0x47, 0x8b, 0x07, 0x85, 0xc0, 0x74, 0x21, 0xa8, 0x80, 0x74, 0x3d, 0x48,
                0x83, 0xec, 0x08, 0xe8, 0xf4, 0x63, 0x03, 0x00, 0x48, 0x85, 0xc0, 0x74, 0x1f, 0x8b, 0x40, 0x78, 0x48, 0x83, 0xc4, 0x08,
                0x31, 0xff, 0xc3, 0x0f, 0x1f, 0x44, 0x00, 0x00, 0x8b, 0x47, 0x78, 0x31, 0xff, 0xc3,
            ],
            &[
                0xf3, 0x0f, 0x1e, 0xfa, 0x53, 0x48, 0x89, 0xd3, 0x48, 0x83, 0xec, 0x10, 0x48, 0x85, 0xff, 0x74, 0x4f, 0x8b, 0x07, 0x85,
                0xc0, 0x74, 0x1b, 0xa8, 0x80, 0x74, 0x45, 0x48, 0x89, 0x74, 0x24, 0x08, 0xe8, 0xdb, 0x99, 0x03, 0x00, 0x48, 0x8b, 0x74,
                0x24, 0x08, 0x48, 0x85, 0xc0, 0x48, 0x89, 0xc7, 0x74, 0x2e, 0x48, 0x8b, 0x87, 0xb8, 0x04, 0x00, 0x00, 0x48, 0x89, 0x06,
                0x48, 0x85, 0xc0, 0x74, 0x26, 0x8b, 0x87, 0xc0, 0x04, 0x00, 0x00, 0x89, 0x03, 0x48, 0x83, 0xc4, 0x10, 0x5b, 0x31, 0xc0,
                0x31, 0xd2, 0x31, 0xf6, 0x31, 0xff, 0xc3,
            ],
        ));
        assert!(notes.is_empty(), "{notes:?}");
        assert_eq!((cfg.version, cfg.is_server, cfg.alpn_ptr, cfg.alpn_len), (0x48, 0x78, 0x4b8, 0x4c0));
        assert_eq!((cfg.alpn_base, cfg.type_off), (OFFSET_NONE, 0));
    }

    #[test]
    fn anything_else_is_not_guessed() {
        // A load through a pointer is not the SSL's own field.
        assert_eq!(field_load(0x1000, &[0x48, 0x8b, 0x47, 0x38, 0x8b, 0x00, 0xc3]), None);
        // A computed result.
        assert_eq!(field_load(0x1000, &[0x8b, 0x47, 0x38, 0x83, 0xc0, 0x01, 0xc3]), None);
        // A call on the path.
        assert_eq!(field_load(0x1000, &[0xe8, 0x00, 0x00, 0x00, 0x00, 0x8b, 0x47, 0x38, 0xc3]), None);
        // A condition that is not a NULL or type check (cmp eax, 0x300; jg).
        assert_eq!(field_load(0x1000, &[0x8b, 0x07, 0x3d, 0x00, 0x03, 0x00, 0x00, 0x7f, 0x01, 0xc3, 0x8b, 0x47, 0x38, 0xc3]), None);
        // No RET within the bytes.
        assert_eq!(field_load(0x1000, &[0x8b, 0x47, 0x38]), None);
        // Missing accessors: explained.
        let (cfg, notes) = learn_from(|_: &str| None);
        assert_eq!((cfg.version, cfg.alpn_ptr, cfg.is_server), (OFFSET_NONE, OFFSET_NONE, OFFSET_NONE));
        assert_eq!(notes.len(), 3, "{notes:?}");
    }

    #[test]
    fn error_stubs_of_the_installed_libssl() {
        let p = std::path::Path::new("/usr/lib/x86_64-linux-gnu/libssl.so.3");
        if !p.exists() {
            return;
        }
        let stubs = err_stubs(p);
        let names: Vec<&str> = stubs.iter().map(|s| s.1).collect();
        assert_eq!(names.len(), 2, "{stubs:x?}");
        assert!(names.contains(&"ERR_set_error") && names.contains(&"ERR_vset_error"), "{stubs:x?}");
        // Each is a PLT entry: an indirect jump (ff 25) at the entry or after an endbr64.
        let data = std::fs::read(p).unwrap();
        for (off, name, cookie) in stubs {
            assert_eq!(cookie, 1, "{name}");
            let b = &data[off as usize..off as usize + 6];
            assert!(b[..2] == [0xff, 0x25] || b[..4] == [0xf3, 0x0f, 0x1e, 0xfa], "{name} at {off:#x}: {b:x?}");
        }
    }

    #[test]
    fn learns_from_the_installed_libssl_when_present() {
        let p = std::path::Path::new("/usr/lib/x86_64-linux-gnu/libssl.so.3");
        if !p.exists() {
            return;
        }
        let (cfg, notes) = learn(p);
        // Whatever the build, a learned offset is plausible and an unlearned one is explained.
        for (v, what) in [(cfg.version, "SSL_version"), (cfg.alpn_ptr, "SSL_get0_alpn_selected")] {
            assert!(v == OFFSET_NONE || v < 1 << 20, "{what}");
            if v == OFFSET_NONE {
                assert!(notes.iter().any(|n| n.contains(what)), "{notes:?}");
            }
        }
    }
}
