//! Disassembly helpers: RET instructions of a function (uretprobes crash Go, so we place uprobes on
//! every RET) and PC-relative data references (RIP-relative on amd64, ADRP+ADD/LDR/STR on arm64),
//! used to find data symbols in stripped binaries.

use iced_x86::{Code, Decoder, DecoderOptions, Mnemonic};
use yaxpeax_arch::{Decoder as _, U8Reader};
use yaxpeax_arm::armv8::a64::{InstDecoder, Opcode};

use crate::Arch;

/// Offsets (relative to `ip`) of the RET instructions in `code` that starts at address `ip`.
pub fn ret_offsets(arch: Arch, code: &[u8], ip: u64) -> Vec<u64> {
    match arch {
        Arch::Amd64 => {
            let mut out = Vec::new();
            let mut dec = Decoder::with_ip(64, code, ip, DecoderOptions::NONE);
            while dec.can_decode() {
                let ins = dec.decode();
                if ins.code() != Code::INVALID && ins.mnemonic() == Mnemonic::Ret {
                    out.push(ins.ip().wrapping_sub(ip));
                }
            }
            out
        }
        Arch::Arm64 => {
            let dec = InstDecoder::default();
            let mut out = Vec::new();
            for (i, w) in code.chunks_exact(4).enumerate() {
                let mut r = U8Reader::new(w);
                if let Ok(ins) = dec.decode(&mut r) {
                    if matches!(ins.opcode, Opcode::RET | Opcode::RETAA | Opcode::RETAB) {
                        out.push(i as u64 * 4);
                    }
                }
            }
            out
        }
    }
}

/// Where an entry uprobe costs least, as an offset from the entry: the conditional jump of Go's
/// stack-bound check (`CMPQ SP, 16(R14); JBE morestack`, or `LEAQ -N(SP), R12; CMPQ R12,
/// 16(R14); JBE` for large frames). The kernel emulates a conditional jump but single-steps a CMP
/// (a second trap: measured 1.2 µs against 4.7 µs a hit on these VMs), and the instructions
/// before it write only flags and R12, which is no argument register of Go's ABI, so the probe
/// sees the arguments as at the entry. 0 (the entry) for any other prologue, and on arm64.
pub fn cheap_entry_offset(arch: Arch, code: &[u8], ip: u64) -> u64 {
    use iced_x86::{OpKind, Register};
    if arch != Arch::Amd64 {
        return 0;
    }
    let mut dec = Decoder::with_ip(64, code, ip, DecoderOptions::NONE);
    let mut ins = Vec::new();
    while dec.can_decode() && ins.len() < 3 {
        let i = dec.decode();
        if i.code() == Code::INVALID {
            return 0;
        }
        ins.push(i);
    }
    let stack_check = |i: &iced_x86::Instruction, reg: Register| {
        i.mnemonic() == Mnemonic::Cmp && i.op0_kind() == OpKind::Register && i.op0_register() == reg && i.op1_kind() == OpKind::Memory && i.memory_base() == Register::R14
    };
    let at = |i: &iced_x86::Instruction| i.ip().wrapping_sub(ip);
    let jcc = |i: &iced_x86::Instruction| i.mnemonic() != Mnemonic::Jmp && emulated_jump(code, at(i) as usize, i.len());
    match ins.as_slice() {
        [a, b, ..] if stack_check(a, Register::RSP) && jcc(b) => at(b),
        [a, b, c] if a.mnemonic() == Mnemonic::Lea && a.op0_register() == Register::R12 && stack_check(b, Register::R12) && jcc(c) => at(c),
        _ => 0,
    }
}

/// The first instruction of the body, after Go's stack-bound check (`…; JBE morestack` on amd64,
/// `…; CMP; B.LS` on arm64), as an offset from the entry; 0 where there is no such check. When the
/// check fails, morestack grows the stack and runs the function again from its entry, so a probe
/// at the entry or at the check's jump fires twice for one call: a probe that must count calls
/// exactly (one GC cycle a call of gcMarkTermination, whose 1 KiB frame often needs a new stack)
/// goes here. The instruction there is single-stepped (~4.7 µs a hit here): for rare calls only.
pub fn after_stack_check_offset(arch: Arch, code: &[u8], ip: u64) -> u64 {
    match arch {
        Arch::Amd64 => {
            let jcc = cheap_entry_offset(arch, code, ip);
            if jcc == 0 {
                return 0;
            }
            let at = jcc as usize;
            let len = match code.get(at) {
                Some(0x70..=0x7f) => 2,
                Some(0x0f) => 6,
                _ => return 0,
            };
            jcc + len
        }
        Arch::Arm64 => {
            // MOVD 16(g), R16 [; SUB $n, RSP, R17]; CMP R16, RSP|R17; BLS morestack
            let dec = InstDecoder::default();
            for (i, w) in code.chunks_exact(4).take(5).enumerate() {
                let mut r = U8Reader::new(w);
                match dec.decode(&mut r) {
                    Ok(ins) if matches!(ins.opcode, Opcode::Bcc(_)) => return (i as u64 + 1) * 4,
                    Ok(_) => {}
                    Err(_) => return 0,
                }
            }
            0
        }
    }
}

/// The opcodes the kernel's x86 uprobes emulate as jumps (one trap, no single step): Jcc rel8
/// (0x70–0x7f), Jcc rel32 (0x0f 0x80–0x8f) and JMP rel8/rel32 (0xeb, 0xe9), without prefixes.
fn emulated_jump(code: &[u8], at: usize, len: usize) -> bool {
    match (code.get(at), code.get(at + 1)) {
        (Some(0x70..=0x7f), _) | (Some(0xeb), _) => len == 2,
        (Some(0x0f), Some(0x80..=0x8f)) => len == 6,
        (Some(0xe9), _) => len == 5,
        _ => false,
    }
}

/// Where a probe sees, cheaply, what an indirect call returned (amd64 only).
///
/// `handshakeContext` runs each real TLS handshake as `c.handshakeErr = c.handshakeFn(ctx)`: an
/// indirect CALL whose error result (RAX, RBX) is then stored at `result_field` (the offset of
/// `Conn.handshakeErr`) of the receiver. The return path of that one call is reached once per
/// handshake, client or server, whatever RET of the callee returned. Its first instruction is a
/// load the kernel would single-step (two traps, ~4.7 µs a hit here), but within a few
/// instructions comes the write barrier's conditional jump, which the kernel emulates (~1.2 µs).
///
/// Returns the offset (relative to `ip`) of that jump, provided that between the call and the
/// jump every instruction is straight-line code that writes none of RAX and RBX (the result),
/// RSP, or R14 (the current g, which keys the handshake by goroutine), and that exactly one
/// indirect call in `code` has such a path storing RAX at `[reg + result_field]`. Anything else
/// (an unexpected compiler's code, arm64 — whose uprobes emulate RET itself) gives an error
/// saying why, and the caller keeps the callee's RET sites.
pub fn call_result_probe_offset(arch: Arch, code: &[u8], ip: u64, result_field: u64) -> Result<u64, &'static str> {
    use iced_x86::{FlowControl, InstructionInfoFactory, OpAccess, OpKind, Register};
    if arch != Arch::Amd64 {
        return Err("only amd64 needs it (arm64 uprobes emulate RET)");
    }
    const WINDOW: usize = 12;
    let mut dec = Decoder::with_ip(64, code, ip, DecoderOptions::NONE);
    let mut all = Vec::new();
    while dec.can_decode() {
        all.push(dec.decode());
    }
    let mut info = InstructionInfoFactory::new();
    let kept = [Register::RAX, Register::RBX, Register::RSP, Register::R14];
    let mut found = Vec::new();
    for (i, call) in all.iter().enumerate() {
        let indirect = call.mnemonic() == Mnemonic::Call && matches!(call.op0_kind(), OpKind::Register | OpKind::Memory);
        if !indirect {
            continue;
        }
        let mut stored = false;
        for ins in all.iter().skip(i + 1).take(WINDOW) {
            if ins.code() == Code::INVALID {
                break;
            }
            let at = ins.ip().wrapping_sub(ip) as usize;
            if emulated_jump(code, at, ins.len()) {
                if stored {
                    found.push(at as u64);
                }
                break;
            }
            if ins.flow_control() != FlowControl::Next {
                break;
            }
            let writes_kept = info.info(ins).used_registers().iter().any(|u| {
                matches!(u.access(), OpAccess::Write | OpAccess::ReadWrite | OpAccess::CondWrite | OpAccess::ReadCondWrite)
                    && kept.contains(&u.register().full_register())
            });
            if writes_kept {
                break;
            }
            stored |= ins.mnemonic() == Mnemonic::Mov
                && ins.op0_kind() == OpKind::Memory
                && ins.op1_kind() == OpKind::Register
                && ins.op1_register() == Register::RAX
                && !matches!(ins.memory_base(), Register::None | Register::RSP | Register::RIP)
                && ins.memory_index() == Register::None
                && ins.memory_displacement64() == result_field;
        }
    }
    match found.as_slice() {
        [one] => Ok(*one),
        [] => Err("no indirect call whose result is stored in the handshake error field and stays in registers up to an emulated jump"),
        _ => Err("more than one indirect call stores its result in the handshake error field"),
    }
}

/// Targets of the PC-relative data references in `code` (in instruction order).
pub fn pcrel_refs(arch: Arch, code: &[u8], ip: u64) -> Vec<u64> {
    match arch {
        Arch::Amd64 => {
            let mut out = Vec::new();
            let mut dec = Decoder::with_ip(64, code, ip, DecoderOptions::NONE);
            while dec.can_decode() {
                let ins = dec.decode();
                if ins.code() != Code::INVALID && ins.is_ip_rel_memory_operand() {
                    out.push(ins.ip_rel_memory_address());
                }
            }
            out
        }
        Arch::Arm64 => arm64_refs(code, ip),
    }
}

fn sign_extend(v: u64, bits: u32) -> i64 {
    let shift = 64 - bits;
    ((v << shift) as i64) >> shift
}

/// ADRP Xd, page immediately followed by ADD Xd', Xd, #imm or LDR/STR [Xd, #imm].
fn arm64_refs(code: &[u8], ip: u64) -> Vec<u64> {
    let words: Vec<u32> = code
        .chunks_exact(4)
        .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
        .collect();
    let mut out = Vec::new();
    for (i, pair) in words.windows(2).enumerate() {
        let (w, next) = (pair[0], pair[1]);
        if w & 0x9f00_0000 != 0x9000_0000 {
            continue; // not ADRP
        }
        let pc = ip.wrapping_add(i as u64 * 4);
        let rd = w & 0x1f;
        let immlo = u64::from((w >> 29) & 3);
        let immhi = u64::from((w >> 5) & 0x7_ffff);
        let page_off = sign_extend((immhi << 2) | immlo, 21) << 12;
        let page = (pc & !0xfff).wrapping_add(page_off as u64);
        let rn = (next >> 5) & 0x1f;
        if rn != rd {
            continue;
        }
        if next & 0xff00_0000 == 0x9100_0000 {
            // ADD (immediate), 64-bit
            let sh = (next >> 22) & 1;
            let imm = u64::from((next >> 10) & 0xfff) << (12 * sh);
            out.push(page.wrapping_add(imm));
        } else if next & 0x3b00_0000 == 0x3900_0000 {
            // LDR/STR (unsigned immediate), any size
            let size = next >> 30;
            let v = (next >> 26) & 1;
            let opc = (next >> 22) & 3;
            let scale = if v == 1 && size == 0 && opc & 2 != 0 {
                4
            } else {
                size
            };
            let imm = u64::from((next >> 10) & 0xfff) << scale;
            out.push(page.wrapping_add(imm));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cheap_entry_after_the_stack_check() {
        // CMPQ SP, 0x10(R14); JBE +0x493; PUSHQ BP (runtime.newproc1, Go 1.27)
        let small = [0x49, 0x3b, 0x66, 0x10, 0x0f, 0x86, 0x93, 0x04, 0x00, 0x00, 0x55];
        assert_eq!(cheap_entry_offset(Arch::Amd64, &small, 0x451720), 4);
        // LEAQ -0x98(SP), R12; CMPQ R12, 0x10(R14); JBE ...
        let large = [0x4c, 0x8d, 0xa4, 0x24, 0x68, 0xff, 0xff, 0xff, 0x4d, 0x3b, 0x66, 0x10, 0x0f, 0x86, 0x10, 0x00, 0x00, 0x00];
        assert_eq!(cheap_entry_offset(Arch::Amd64, &large, 0x1000), 12);
        // MOVQ AX, BX first: keep the entry.
        assert_eq!(cheap_entry_offset(Arch::Amd64, &[0x48, 0x89, 0xc3, 0xc3], 0x1000), 0);
        assert_eq!(cheap_entry_offset(Arch::Amd64, &[], 0x1000), 0);
        assert_eq!(cheap_entry_offset(Arch::Arm64, &small, 0x1000), 0);
    }

    /// `c.handshakeErr = c.handshakeFn(ctx)` in handshakeContext, Go 1.27 (handshakeErr at 0x38):
    /// MOVQ 0x18(CX), DX; MOVQ 0(DX), CX; MOVQ 0x108(SP), AX; MOVQ 0x1a8(SP), BX; CALL CX;
    /// MOVQ 0x1c0(SP), CX; MOVQ AX, 0x38(CX); CMPL runtime.writeBarrier(SB), $0; JE +0x10.
    const HANDSHAKE_FN_127: &[u8] = &[
        0x48, 0x8b, 0x51, 0x18, 0x48, 0x8b, 0x0a, 0x48, 0x8b, 0x84, 0x24, 0x08, 0x01, 0x00, 0x00, 0x48, 0x8b, 0x9c, 0x24, 0xa8, 0x01, 0x00, 0x00,
        0xff, 0xd1, // CALL CX (+0x17)
        0x48, 0x8b, 0x8c, 0x24, 0xc0, 0x01, 0x00, 0x00, 0x48, 0x89, 0x41, 0x38, 0x83, 0x3d, 0xcf, 0xac, 0x35, 0x00, 0x00,
        0x74, 0x10, // JE (+0x2c)
        0x48, 0x8b, 0x51, 0x40,
    ];
    /// A decoy before it (Go 1.23, `<-ctx.Done()` style): CALL CX; TESTQ AX, AX; JE: the result is
    /// tested, not stored in the error field.
    const DECOY: &[u8] = &[0xff, 0xd1, 0x48, 0x85, 0xc0, 0x0f, 0x84, 0x32, 0x01, 0x00, 0x00];

    #[test]
    fn handshake_result_probe_at_the_write_barrier_jump() {
        assert_eq!(call_result_probe_offset(Arch::Amd64, HANDSHAKE_FN_127, 0x59acb5, 0x38), Ok(0x2c));
        let code = [DECOY, HANDSHAKE_FN_127].concat();
        assert_eq!(call_result_probe_offset(Arch::Amd64, &code, 0x1000, 0x38), Ok(DECOY.len() as u64 + 0x2c));
        // Go 1.19 (handshakeErr at 0x30): CALL SI; MOVQ 0x1c8(SP), DI; MOVQ AX, 0x30(DI);
        // LEAQ 0x38(DI), CX; CMPL $0, runtime.writeBarrier(SB); JNE +6.
        let go119 = [
            0xff, 0xd6, 0x48, 0x8b, 0xbc, 0x24, 0xc8, 0x01, 0x00, 0x00, 0x48, 0x89, 0x47, 0x30, 0x48, 0x8d, 0x4f, 0x38, 0x83, 0x3d, 0x1a, 0x9e, 0x22, 0x00,
            0x00, 0x75, 0x06,
        ];
        assert_eq!(call_result_probe_offset(Arch::Amd64, &go119, 0x597f0d, 0x30), Ok(0x19));
        // Another field offset: nothing stores there.
        assert!(call_result_probe_offset(Arch::Amd64, HANDSHAKE_FN_127, 0x1000, 0x30).is_err());
        assert!(call_result_probe_offset(Arch::Amd64, DECOY, 0x1000, 0x38).is_err());
        // Two such calls: ambiguous.
        let twice = [HANDSHAKE_FN_127, HANDSHAKE_FN_127].concat();
        assert!(call_result_probe_offset(Arch::Amd64, &twice, 0x1000, 0x38).is_err());
        // RBX (the error's data word) overwritten before the jump: not there.
        let mut clobbered = HANDSHAKE_FN_127.to_vec();
        assert_eq!(clobbered[0x1b], 0x8c);
        clobbered[0x1b] = 0x9c; // ModRM: MOVQ 0x1c0(SP), CX -> MOVQ 0x1c0(SP), BX
        assert!(call_result_probe_offset(Arch::Amd64, &clobbered, 0x1000, 0x38).is_err());
        assert!(call_result_probe_offset(Arch::Arm64, HANDSHAKE_FN_127, 0x1000, 0x38).is_err());
        assert!(call_result_probe_offset(Arch::Amd64, &[], 0x1000, 0x38).is_err());
    }

    #[test]
    fn amd64_rets_and_riprel() {
        // lea rax,[rip+0x10]; nop; ret; int3; mov rcx,[rip-8]; ret
        let code = [
            0x48, 0x8d, 0x05, 0x10, 0, 0, 0,    // lea rax,[rip+0x10]
            0x90, // nop
            0xc3, // ret
            0xcc, // int3
            0x48, 0x8b, 0x0d, 0xf8, 0xff, 0xff, 0xff, // mov rcx,[rip-8]
            0xc3,
        ];
        let ip = 0x401000;
        assert_eq!(ret_offsets(Arch::Amd64, &code, ip), vec![8, 17]);
        assert_eq!(
            pcrel_refs(Arch::Amd64, &code, ip),
            vec![ip + 7 + 0x10, ip + 17 - 8]
        );
        // A C3 byte inside an immediate is not a RET.
        let code2 = [0xb8, 0xc3, 0xc3, 0xc3, 0xc3, 0xc3];
        assert_eq!(ret_offsets(Arch::Amd64, &code2, 0), vec![5]);
    }

    #[test]
    fn arm64_rets_and_adrp() {
        let mut code = Vec::new();
        // adrp x0, #+0x8000 (immhi=2, immlo=0 → 8 pages), add x0, x0, #0x18
        let adrp = 0x9000_0000u32 | (2 << 5);
        let add = 0x9100_0000u32 | (0x18 << 10);
        // adrp x27, page; ldr x1, [x27, #16]  (size=3 → scale 8: imm12 = 2)
        let adrp27 = 0x9000_0000u32 | (1 << 5) | 27;
        let ldr = 0xf940_0000u32 | (2 << 10) | (27 << 5) | 1;
        for w in [
            adrp,
            add,
            0xd503_201f, /* nop */
            0xd65f_03c0, /* ret */
            adrp27,
            ldr,
            0xd65f_03c0,
        ] {
            code.extend_from_slice(&w.to_le_bytes());
        }
        let ip = 0x10_0000;
        assert_eq!(ret_offsets(Arch::Arm64, &code, ip), vec![12, 24]);
        assert_eq!(
            pcrel_refs(Arch::Arm64, &code, ip),
            vec![ip + 0x8000 + 0x18, ((ip + 16) & !0xfff) + 0x4000 + 16]
        );
    }

    #[test]
    fn garbage_does_not_panic() {
        let junk: Vec<u8> = (0..4099u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        for arch in [Arch::Amd64, Arch::Arm64] {
            let _ = ret_offsets(arch, &junk, u64::MAX - 10);
            let _ = pcrel_refs(arch, &junk, u64::MAX - 10);
            let _ = call_result_probe_offset(arch, &junk, u64::MAX - 10, 0x38);
        }
    }
}
