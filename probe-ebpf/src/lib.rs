#![no_std]
// The kernel programs live in the `probe-ebpf` binary target (src/main.rs); this empty library lets
// probe-daemon name the crate as a build dependency so cargo rebuilds the daemon when it changes.
