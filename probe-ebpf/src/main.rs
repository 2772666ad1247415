//! chainprobe's kernel programs: one module per hook family. All of them attach to tracepoints
//! (stable across kernels, and the only choice on kernels without kprobes). Hot paths count in
//! per-CPU maps the daemon drains; rare events go through one ring buffer.
#![no_std]
#![no_main]

mod crash;
mod goruntime;
mod http2;
mod maps;
mod mmap;
mod process;
mod record;
mod tcp;
mod tls;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
