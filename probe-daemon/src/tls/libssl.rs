//! Where a libssl build keeps the negotiated version, the selected ALPN protocol and the server
//! flag of an `SSL`: learned from that build's own accessor functions, never assumed.
//!
//! OpenSSL's `struct ssl_st` is private and its layout changes between releases and builds, but
//! the exported accessors read the fields directly: on amd64, OpenSSL 3.0's
//! `SSL_version(s)` is `mov eax, [rdi+V]; ret`, `SSL_is_server(s)` is `mov eax, [rdi+S]; ret` and
//! `SSL_get0_alpn_selected(s, &data, &len)` loads `[rdi+P]` (pointer) and `[rdi+L]` (length). The
//! offsets are taken only when the code has exactly that shape (register-clearing `xor`s, as
//! Debian's `-fzero-call-used-regs` adds, allowed); anything else (OpenSSL 3.2+ `SSL_CONNECTION`
//! indirection, 1.1.1's `s->s3->...`, another architecture) leaves the field unknown, and the
//! metrics say `unknown` rather than guess.
use iced_x86::{Code, Decoder, DecoderOptions, Instruction, Mnemonic, OpKind, Register};
use object::{Object, ObjectSegment, ObjectSymbol};
use probe_common::{SslLibConfig, OFFSET_NONE};

/// Longest accessor body examined, bytes.
const MAX_BODY: usize = 64;

/// The field offsets of the libssl file at `path` (OFFSET_NONE where not learned), and a note
/// for each one that could not be learned.
pub fn learn(path: &std::path::Path) -> (SslLibConfig, Vec<String>) {
    let mut cfg = SslLibConfig { version: OFFSET_NONE, is_server: OFFSET_NONE, alpn_ptr: OFFSET_NONE, alpn_len: OFFSET_NONE };
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
    match body("SSL_version").and_then(|(ip, b)| single_load(ip, &b)) {
        Some(v) => cfg.version = v,
        None => notes.push("SSL_version is not a plain field load: version not read".into()),
    }
    match body("SSL_is_server").and_then(|(ip, b)| single_load(ip, &b)) {
        Some(v) => cfg.is_server = v,
        None => notes.push("SSL_is_server is not a plain field load: role from the calling function only".into()),
    }
    match body("SSL_get0_alpn_selected").and_then(|(ip, b)| alpn_loads(ip, &b)) {
        Some((p, l)) => {
            cfg.alpn_ptr = p;
            cfg.alpn_len = l;
        }
        None => notes.push("SSL_get0_alpn_selected has an unexpected shape: ALPN not read".into()),
    }
    (cfg, notes)
}

fn decode(ip: u64, code: &[u8]) -> Vec<Instruction> {
    let mut dec = Decoder::with_ip(64, code, ip, DecoderOptions::NONE);
    let mut out = Vec::new();
    while dec.can_decode() {
        let ins = dec.decode();
        if ins.code() == Code::INVALID {
            break;
        }
        let ret = ins.mnemonic() == Mnemonic::Ret;
        out.push(ins);
        if ret {
            break;
        }
    }
    out
}

/// `xor r, r` (clearing a register) or an endbr64.
fn is_filler(ins: &Instruction) -> bool {
    (ins.mnemonic() == Mnemonic::Xor && ins.op_count() == 2 && ins.op0_kind() == OpKind::Register && ins.op1_kind() == OpKind::Register && ins.op0_register() == ins.op1_register())
        || ins.mnemonic() == Mnemonic::Endbr64
}

/// `[rdi + disp]` memory operand with no index: the displacement.
fn rdi_disp(ins: &Instruction, op: u32) -> Option<u32> {
    let kind = match op {
        0 => ins.op0_kind(),
        _ => ins.op1_kind(),
    };
    (kind == OpKind::Memory && ins.memory_base() == Register::RDI && ins.memory_index() == Register::None)
        .then(|| ins.memory_displacement64())
        .filter(|d| *d < 1 << 20)
        .map(|d| d as u32)
}

/// `mov eax, dword [rdi+D]` (then only fillers) `ret` → D.
fn single_load(ip: u64, code: &[u8]) -> Option<u32> {
    let ins = decode(ip, code);
    let mut it = ins.iter().filter(|i| i.mnemonic() != Mnemonic::Endbr64);
    let first = it.next()?;
    if first.code() != Code::Mov_r32_rm32 || first.op0_register() != Register::EAX {
        return None;
    }
    let d = rdi_disp(first, 1)?;
    let rest: Vec<&Instruction> = it.collect();
    let (last, mid) = rest.split_last()?;
    (last.mnemonic() == Mnemonic::Ret && mid.iter().all(|i| is_filler(i))).then_some(d)
}

/// `mov rax, [rdi+P]; … mov [rsi], rax; … mov ecx, [rdi+L]; … mov [rdx], ecx; … ret` → (P, L).
fn alpn_loads(ip: u64, code: &[u8]) -> Option<(u32, u32)> {
    let ins = decode(ip, code);
    if ins.last()?.mnemonic() != Mnemonic::Ret {
        return None;
    }
    let loads: Vec<(u32, u32)> = ins
        .iter()
        .filter(|i| i.mnemonic() == Mnemonic::Mov && i.op0_kind() == OpKind::Register)
        .filter_map(|i| rdi_disp(i, 1).map(|d| (d, i.code() as u32)))
        .collect();
    let stores_rsi = ins.iter().any(|i| i.mnemonic() == Mnemonic::Mov && i.op0_kind() == OpKind::Memory && i.memory_base() == Register::RSI);
    let stores_rdx = ins.iter().any(|i| i.mnemonic() == Mnemonic::Mov && i.op0_kind() == OpKind::Memory && i.memory_base() == Register::RDX);
    match loads.as_slice() {
        [(p, c1), (l, c2)] if *c1 == Code::Mov_r64_rm64 as u32 && *c2 == Code::Mov_r32_rm32 as u32 && stores_rsi && stores_rdx => Some((*p, *l)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openssl_3_0_debian_accessors() {
        // SSL_version: mov eax,[rdi]; xor edi,edi; ret
        assert_eq!(single_load(0x1000, &[0x8b, 0x07, 0x31, 0xff, 0xc3]), Some(0));
        // SSL_is_server: mov eax,[rdi+0x38]; xor edi,edi; ret
        assert_eq!(single_load(0x1000, &[0x8b, 0x47, 0x38, 0x31, 0xff, 0xc3]), Some(0x38));
        // A call or a second load is not a plain accessor.
        assert_eq!(single_load(0x1000, &[0x48, 0x8b, 0x47, 0x38, 0x8b, 0x00, 0xc3]), None);
        // SSL_get0_alpn_selected (OpenSSL 3.0.19, Debian 12).
        let code = [
            0x48, 0x8b, 0x87, 0x88, 0x04, 0x00, 0x00, // mov rax,[rdi+0x488]
            0x31, 0xc9, // xor ecx,ecx
            0x48, 0x89, 0x06, // mov [rsi],rax
            0x48, 0x85, 0xc0, // test rax,rax
            0x74, 0x06, // je +6
            0x8b, 0x8f, 0x90, 0x04, 0x00, 0x00, // mov ecx,[rdi+0x490]
            0x89, 0x0a, // mov [rdx],ecx
            0x31, 0xc0, 0x31, 0xd2, 0x31, 0xc9, 0x31, 0xf6, 0x31, 0xff, // xors
            0xc3,
        ];
        assert_eq!(alpn_loads(0x1000, &code), Some((0x488, 0x490)));
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
