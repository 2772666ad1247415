use which::which;

/// Rebuild when bpf-linker changes (a new linker can produce different objects).
fn main() {
    match which("bpf-linker") {
        Ok(linker) => println!("cargo:rerun-if-changed={}", linker.display()),
        Err(e) => println!("cargo:warning=bpf-linker not found ({e}): install it with `cargo install bpf-linker`"),
    }
}
