//! Go register ABI (ABIInternal) facts per architecture, as data.
//!
//! Go ≥ 1.17 on amd64 and ≥ 1.18 on arm64 pass integer arguments and results in registers;
//! older toolchains use the stack ABI (ABI0), which chainprobe does not support for probing.

use serde::Serialize;

use crate::buildinfo::GoVersion;
use crate::Arch;

/// Calling convention of Go functions in a binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Abi {
    /// ABIInternal: arguments and results in registers (supported).
    Register,
    /// ABI0: everything on the stack (too old; unsupported for probing).
    Stack,
}

/// Register assignment of the Go register ABI on one architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RegisterAbi {
    /// Integer argument registers, in order (the i-th integer word of the arguments).
    pub int_args: &'static [&'static str],
    /// Integer result registers, in order (same sequence as the arguments).
    pub int_results: &'static [&'static str],
    /// Closure context register.
    pub closure_context: &'static str,
    /// Register holding the current goroutine (g).
    pub current_g: &'static str,
}

const AMD64_INT: &[&str] = &["rax", "rbx", "rcx", "rdi", "rsi", "r8", "r9", "r10", "r11"];
const ARM64_INT: &[&str] = &[
    "x0", "x1", "x2", "x3", "x4", "x5", "x6", "x7", "x8", "x9", "x10", "x11", "x12", "x13", "x14",
    "x15",
];

/// Register mapping for `arch`.
pub fn register_abi(arch: Arch) -> RegisterAbi {
    match arch {
        Arch::Amd64 => RegisterAbi {
            int_args: AMD64_INT,
            int_results: AMD64_INT,
            closure_context: "rdx",
            current_g: "r14",
        },
        Arch::Arm64 => RegisterAbi {
            int_args: ARM64_INT,
            int_results: ARM64_INT,
            closure_context: "x26",
            current_g: "x28",
        },
    }
}

/// Which ABI a Go toolchain uses on `arch`.
pub fn detect_abi(arch: Arch, v: GoVersion) -> Abi {
    let first = match arch {
        Arch::Amd64 => (1, 17),
        Arch::Arm64 => (1, 18),
    };
    if v.at_least(first.0, first.1) {
        Abi::Register
    } else {
        Abi::Stack
    }
}

/// Register holding the `n`-th (0-based) integer argument word, if it is passed in a register.
pub fn int_arg_register(arch: Arch, n: usize) -> Option<&'static str> {
    register_abi(arch).int_args.get(n).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(minor: u32) -> GoVersion {
        GoVersion {
            major: 1,
            minor,
            patch: 0,
        }
    }

    #[test]
    fn abi_by_version() {
        assert_eq!(detect_abi(Arch::Amd64, v(16)), Abi::Stack);
        assert_eq!(detect_abi(Arch::Amd64, v(17)), Abi::Register);
        assert_eq!(detect_abi(Arch::Arm64, v(17)), Abi::Stack);
        assert_eq!(detect_abi(Arch::Arm64, v(18)), Abi::Register);
        assert_eq!(detect_abi(Arch::Arm64, v(27)), Abi::Register);
    }

    #[test]
    fn register_maps() {
        let a = register_abi(Arch::Amd64);
        assert_eq!(
            a.int_args,
            ["rax", "rbx", "rcx", "rdi", "rsi", "r8", "r9", "r10", "r11"]
        );
        assert_eq!(a.int_results.len(), 9);
        assert_eq!(a.current_g, "r14");
        assert_eq!(int_arg_register(Arch::Amd64, 1), Some("rbx")); // newproc1 callergp
        assert_eq!(int_arg_register(Arch::Amd64, 9), None);
        let b = register_abi(Arch::Arm64);
        assert_eq!(b.int_args.len(), 16);
        assert_eq!(b.int_args[15], "x15");
        assert_eq!(int_arg_register(Arch::Arm64, 1), Some("x1"));
        assert_eq!(b.current_g, "x28");
        assert_eq!(b.closure_context, "x26");
    }
}
