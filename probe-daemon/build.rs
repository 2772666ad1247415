//! Builds the kernel programs (probe-ebpf) for the BPF target the standard aya way: nightly cargo,
//! `-Z build-std=core`, bpf-linker. The object lands in OUT_DIR and is embedded in the daemon.
fn main() -> anyhow::Result<()> {
    aya_build::build_ebpf(
        [aya_build::Package { name: "probe-ebpf", root_dir: "../probe-ebpf", ..Default::default() }],
        aya_build::Toolchain::default(),
    )
}
