//! HTTP/2 control frames of Go programs: GOAWAY and RST_STREAM, written and read.
//!
//! Uprobes (after the stack check: once per call) on the framer's writers `WriteGoAway` /
//! `WriteRSTStream` (server and client write every such frame through them) and on the parsers
//! `parseGoAwayFrame` / `parseRSTStreamFrame` (the framer calls the one of each frame read), in
//! std's HTTP/2 (bundled in net/http up to Go 1.26, net/http/internal/http2 from 1.27) and in
//! golang.org/x/net/http2. Nothing runs per DATA or HEADERS frame.
//!
//! No struct offsets: the writers get the code (and GOAWAY's debug data) as arguments, and the
//! parsers get the frame's payload, whose layout is the wire format (RFC 9113 §6.4, §6.8). The
//! register ABI places the arguments: writers `(f, streamID uint32, code ErrCode, debugData
//! []byte)`; parsers `(fc *frameCache, fh FrameHeader{valid, Type, Flags, Length, StreamID},
//! countError func(string), p []byte)` — on amd64 `p` no longer fits the nine integer registers
//! and is passed on the stack (8(SP) at the entry), on arm64 it is in X7/X8.
use aya_ebpf::{
    helpers::{bpf_ktime_get_ns, bpf_probe_read_user},
    macros::uprobe,
    programs::ProbeContext,
};
use probe_common::{
    EventHeader, EventKind, Http2Event, ProgId, BPF_RB_NO_WAKEUP, HTTP2_DEBUG_LEN, HTTP2_FRAME_GOAWAY, HTTP2_FRAME_RST_STREAM,
    HTTP2_RECEIVED, HTTP2_SENT,
};

use crate::{
    goruntime::{go_arg, go_reg, GoReg},
    maps::{config, count_event, count_lost_ringbuf, current_tgid, EVENTS},
};

#[inline(always)]
fn event(tgid: u32, frame: u8, direction: u8, code: u32, stream_id: u32) -> Http2Event {
    Http2Event {
        header: EventHeader { kind: EventKind::Http2 as u32, tgid, ktime_ns: unsafe { bpf_ktime_get_ns() } },
        code,
        stream_id,
        frame,
        direction,
        debug_copied: 0,
        debug_len: 0,
        debug: [0; HTTP2_DEBUG_LEN],
    }
}

/// The first bytes of the `len` bytes at `ptr` into the event's debug data.
#[inline(always)]
fn copy_debug(ev: &mut Http2Event, ptr: u64, len: u64) {
    ev.debug_len = if len > u32::MAX as u64 { u32::MAX } else { len as u32 };
    let n = if len > HTTP2_DEBUG_LEN as u64 { HTTP2_DEBUG_LEN as u32 } else { len as u32 };
    if n > 0 && ptr >= 4096 {
        // SAFETY: n <= HTTP2_DEBUG_LEN, the size of the destination on this program's stack; the
        // kernel checks the user address.
        let r = unsafe { aya_ebpf::helpers::generated::bpf_probe_read_user(ev.debug.as_mut_ptr() as *mut _, n, ptr as *const _) };
        if r == 0 {
            ev.debug_copied = n as u16;
        }
    }
}

#[inline(always)]
fn submit(prog: ProgId, ev: &Http2Event) {
    if EVENTS.output::<Http2Event>(ev, BPF_RB_NO_WAKEUP).is_err() {
        count_lost_ringbuf(prog);
    }
}

/// Whether this process is chainprobe itself (never the case for a Go program, but cheap).
#[inline(always)]
fn is_self(tgid: u32) -> bool {
    tgid == config().self_tgid
}

/// `(*Framer).WriteGoAway(maxStreamID uint32, code ErrCode, debugData []byte)`.
#[uprobe]
pub fn go_http2_goaway_sent(ctx: ProbeContext) -> u32 {
    let prog = ProgId::Http2GoAwaySent;
    count_event(prog);
    let tgid = current_tgid();
    if is_self(tgid) {
        return 0;
    }
    let mut ev = event(tgid, HTTP2_FRAME_GOAWAY, HTTP2_SENT, go_arg(&ctx, 2) as u32, (go_arg(&ctx, 1) as u32) & 0x7fff_ffff);
    copy_debug(&mut ev, go_arg(&ctx, 3), go_arg(&ctx, 4));
    submit(prog, &ev);
    0
}

/// `(*Framer).WriteRSTStream(streamID uint32, code ErrCode)`.
#[uprobe]
pub fn go_http2_rst_sent(ctx: ProbeContext) -> u32 {
    let prog = ProgId::Http2RstSent;
    count_event(prog);
    let tgid = current_tgid();
    if is_self(tgid) {
        return 0;
    }
    let ev = event(tgid, HTTP2_FRAME_RST_STREAM, HTTP2_SENT, go_arg(&ctx, 2) as u32, go_arg(&ctx, 1) as u32);
    submit(prog, &ev);
    0
}

/// The parsers' payload `p []byte`: (pointer, length).
#[inline(always)]
fn parser_payload(ctx: &ProbeContext) -> (u64, u64) {
    #[cfg(bpf_target_arch = "x86_64")]
    {
        let sp = go_reg(ctx, GoReg::Sp);
        let words: [u64; 2] = unsafe { bpf_probe_read_user((sp + 8) as *const [u64; 2]) }.unwrap_or([0, 0]);
        (words[0], words[1])
    }
    #[cfg(not(bpf_target_arch = "x86_64"))]
    {
        let _ = go_reg(ctx, GoReg::Sp);
        (go_arg(ctx, 7), go_arg(ctx, 8))
    }
}

/// The frame header's StreamID (the fifth word of the flattened FrameHeader, after fc).
#[inline(always)]
fn parser_stream_id(ctx: &ProbeContext) -> u32 {
    go_arg(ctx, 5) as u32
}

#[inline(always)]
fn be32(b: &[u8], i: usize) -> u32 {
    if i + 4 > b.len() {
        return 0;
    }
    u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

/// `parseGoAwayFrame(fc, fh, countError, p)`: counted when the parser will accept it (stream 0,
/// 8 bytes or more), as it does: last stream id, code, then the debug data.
#[uprobe]
pub fn go_http2_goaway_received(ctx: ProbeContext) -> u32 {
    let prog = ProgId::Http2GoAwayReceived;
    count_event(prog);
    let tgid = current_tgid();
    if is_self(tgid) || parser_stream_id(&ctx) != 0 {
        return 0;
    }
    let (p, len) = parser_payload(&ctx);
    if len < 8 || p < 4096 {
        return 0;
    }
    let Ok(head) = (unsafe { bpf_probe_read_user(p as *const [u8; 8]) }) else { return 0 };
    let mut ev = event(tgid, HTTP2_FRAME_GOAWAY, HTTP2_RECEIVED, be32(&head, 4), be32(&head, 0) & 0x7fff_ffff);
    copy_debug(&mut ev, p + 8, len - 8);
    submit(prog, &ev);
    0
}

/// `parseRSTStreamFrame(fc, fh, countError, p)`: counted when the parser will accept it (4 bytes,
/// a stream other than 0).
#[uprobe]
pub fn go_http2_rst_received(ctx: ProbeContext) -> u32 {
    let prog = ProgId::Http2RstReceived;
    count_event(prog);
    let tgid = current_tgid();
    let stream = parser_stream_id(&ctx);
    if is_self(tgid) || stream == 0 {
        return 0;
    }
    let (p, len) = parser_payload(&ctx);
    if len != 4 || p < 4096 {
        return 0;
    }
    let Ok(head) = (unsafe { bpf_probe_read_user(p as *const [u8; 4]) }) else { return 0 };
    let ev = event(tgid, HTTP2_FRAME_RST_STREAM, HTTP2_RECEIVED, be32(&head, 0), stream);
    submit(prog, &ev);
    0
}
