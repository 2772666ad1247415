//! HTTP/2 control frames of Go processes: GOAWAY and RST_STREAM, sent and received, by error code.
//!
//! - [`attach_binary`] puts the four programs of `probe_common::HTTP2_FUNCTIONS` on each Go binary
//!   that links Go's HTTP/2 (std's bundled copy up to Go 1.26, net/http/internal/http2 from 1.27,
//!   golang.org/x/net/http2 — gRPC-go's — in any combination): the framer's writers and the frame
//!   parsers, after their stack check (once per call). They read no struct field, so stripped
//!   binaries of any Go version and any x/net version are covered without offset tables (see
//!   probe-ebpf/src/http2.rs).
//! - [`Http2State`] is what one process sent and received (metrics, health, `GET /api/v1/targets`).
use std::collections::{BTreeMap, VecDeque};

use aya::programs::uprobe::UProbeLinkId;
use goinspect::{GoBinary, HTTP2_TARGETS};
use probe_common::{ProgId, HTTP2_FRAME_GOAWAY, HTTP2_FUNCTIONS, HTTP2_RECEIVED};
use serde::Serialize;

use crate::attach::{attach_sites, ProbeState, Probes};

/// The name of an HTTP/2 error code (RFC 9113 §7), `other` for codes outside it.
pub fn code_name(code: u32) -> &'static str {
    match code {
        0x0 => "NO_ERROR",
        0x1 => "PROTOCOL_ERROR",
        0x2 => "INTERNAL_ERROR",
        0x3 => "FLOW_CONTROL_ERROR",
        0x4 => "SETTINGS_TIMEOUT",
        0x5 => "STREAM_CLOSED",
        0x6 => "FRAME_SIZE_ERROR",
        0x7 => "REFUSED_STREAM",
        0x8 => "CANCEL",
        0x9 => "COMPRESSION_ERROR",
        0xa => "CONNECT_ERROR",
        0xb => "ENHANCE_YOUR_CALM",
        0xc => "INADEQUATE_SECURITY",
        0xd => "HTTP_1_1_REQUIRED",
        _ => "other",
    }
}

/// The program of an HTTP2_TARGETS function (by its method or function name).
pub fn program_of(function: &str) -> Option<ProgId> {
    HTTP2_FUNCTIONS.iter().find_map(|(prog, recv, name)| {
        let suffix = match recv {
            Some(r) => format!("{r}).{name}"),
            None => (*name).to_string(),
        };
        function.ends_with(&suffix).then_some(*prog)
    })
}

/// Attaches the HTTP/2 programs to every writer and parser `bin` links (for every process of the
/// file). A binary without Go's HTTP/2 gets one "absent" state per program.
pub fn attach_binary(probes: &mut Probes, pid: u32, bin: &GoBinary, links: &mut Vec<(ProgId, UProbeLinkId)>) -> Vec<ProbeState> {
    let mut states = Vec::new();
    for (prog, _, name) in HTTP2_FUNCTIONS {
        let present: Vec<(&'static str, u64)> = HTTP2_TARGETS
            .iter()
            .filter(|f| program_of(f) == Some(prog))
            .filter_map(|f| bin.function(f).map(|x| (*f, x.after_stack_check_file_offset)))
            .collect();
        if present.is_empty() {
            states.push(ProbeState { name: prog.program_name(), function: name, state: "absent", sites: 0, error: None });
        }
        for (function, off) in present {
            states.push(attach_sites(probes, pid, prog, function, vec![off], links));
        }
    }
    states
}

/// "goaway" or "rst_stream".
pub fn frame_label(frame: u8) -> &'static str {
    if frame == HTTP2_FRAME_GOAWAY {
        "goaway"
    } else {
        "rst_stream"
    }
}

/// "sent" or "received".
pub fn direction_label(direction: u8) -> &'static str {
    if direction == HTTP2_RECEIVED {
        "received"
    } else {
        "sent"
    }
}

/// GOAWAY frames remembered per process with their debug data (the latest ones).
pub const RECENT_GOAWAYS: usize = 8;

/// One GOAWAY as `GET /api/v1/targets` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GoAwayRecord {
    pub direction: &'static str,
    pub code: &'static str,
    /// The raw code (for `other`).
    pub code_value: u32,
    pub last_stream_id: u32,
    /// The debug data's length on the wire, and its first bytes (lossy UTF-8; non-printable
    /// bytes escaped).
    pub debug_len: u32,
    pub debug_data: String,
    /// Seconds since the daemon's clock began (CLOCK_MONOTONIC, as the kernel stamped it).
    pub monotonic_seconds: f64,
}

/// What one process's HTTP/2 sent and received since chainprobe began seeing it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Http2State {
    /// Frames by (frame, direction, code): only codes seen (no zero series).
    pub frames: BTreeMap<(&'static str, &'static str, &'static str), u64>,
    /// The latest GOAWAYs (at most [`RECENT_GOAWAYS`]), oldest first.
    pub recent_goaways: VecDeque<GoAwayRecord>,
}

/// Cumulative totals the health signals take windows of.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Http2Totals {
    /// GOAWAYs received with a code other than NO_ERROR.
    pub goaways_received_error: u64,
    /// RST_STREAMs sent and received.
    pub stream_resets: u64,
}

impl Http2Totals {
    pub fn since(&self, earlier: &Http2Totals) -> Http2Totals {
        Http2Totals {
            goaways_received_error: self.goaways_received_error.saturating_sub(earlier.goaways_received_error),
            stream_resets: self.stream_resets.saturating_sub(earlier.stream_resets),
        }
    }
}

/// Printable text of the first bytes of GOAWAY debug data.
pub fn debug_text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).chars().map(|c| if c.is_control() { char::REPLACEMENT_CHARACTER } else { c }).collect()
}

impl Http2State {
    /// Records one frame.
    pub fn record(&mut self, e: &probe_common::Http2Event) {
        let frame = frame_label(e.frame);
        let direction = direction_label(e.direction);
        let code = code_name(e.code);
        *self.frames.entry((frame, direction, code)).or_insert(0) += 1;
        if e.frame == HTTP2_FRAME_GOAWAY {
            let n = (e.debug_copied as usize).min(e.debug.len());
            if self.recent_goaways.len() >= RECENT_GOAWAYS {
                self.recent_goaways.pop_front();
            }
            self.recent_goaways.push_back(GoAwayRecord {
                direction,
                code,
                code_value: e.code,
                last_stream_id: e.stream_id,
                debug_len: e.debug_len,
                debug_data: debug_text(&e.debug[..n]),
                monotonic_seconds: e.header.ktime_ns as f64 / 1e9,
            });
        }
    }

    /// Adds `other`'s counts (processes folded into one series set).
    pub fn merge(&mut self, other: &Http2State) {
        for (k, n) in &other.frames {
            *self.frames.entry(*k).or_insert(0) += n;
        }
    }

    pub fn totals(&self) -> Http2Totals {
        let mut t = Http2Totals::default();
        for ((frame, direction, code), n) in &self.frames {
            if *frame == "goaway" && *direction == "received" && *code != "NO_ERROR" {
                t.goaways_received_error += n;
            }
            if *frame == "rst_stream" {
                t.stream_resets += n;
            }
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use probe_common::{EventHeader, EventKind, Http2Event, HTTP2_DEBUG_LEN, HTTP2_FRAME_RST_STREAM, HTTP2_PACKAGES, HTTP2_SENT};

    #[test]
    fn every_package_and_function_is_a_goinspect_target() {
        let mut expect = Vec::new();
        for (pkg, prefix) in HTTP2_PACKAGES {
            for (prog, recv, name) in HTTP2_FUNCTIONS {
                let f = match recv {
                    Some(r) => format!("{pkg}.(*{prefix}{r}).{name}"),
                    None => format!("{pkg}.{prefix}{name}"),
                };
                assert_eq!(program_of(&f), Some(prog), "{f}");
                expect.push(f);
            }
        }
        let mut got: Vec<String> = HTTP2_TARGETS.iter().map(|s| s.to_string()).collect();
        got.sort();
        expect.sort();
        assert_eq!(got, expect);
        assert_eq!(program_of("net/http.(*http2Framer).WriteData"), None);
    }

    #[test]
    fn codes_by_name() {
        assert_eq!(code_name(0), "NO_ERROR");
        assert_eq!(code_name(7), "REFUSED_STREAM");
        assert_eq!(code_name(8), "CANCEL");
        assert_eq!(code_name(0xb), "ENHANCE_YOUR_CALM");
        assert_eq!(code_name(0xd), "HTTP_1_1_REQUIRED");
        assert_eq!(code_name(0xe), "other");
        assert_eq!(code_name(u32::MAX), "other");
    }

    fn ev(frame: u8, direction: u8, code: u32, debug: &[u8]) -> Http2Event {
        let mut d = [0u8; HTTP2_DEBUG_LEN];
        d[..debug.len()].copy_from_slice(debug);
        Http2Event {
            header: EventHeader { kind: EventKind::Http2 as u32, tgid: 1, ktime_ns: 2_000_000_000 },
            code,
            stream_id: 5,
            frame,
            direction,
            debug_copied: debug.len() as u16,
            debug_len: 100,
            debug: d,
        }
    }

    #[test]
    fn counts_totals_and_recent_goaways() {
        let mut s = Http2State::default();
        s.record(&ev(HTTP2_FRAME_GOAWAY, HTTP2_RECEIVED, 0xb, b"calm\ndown"));
        s.record(&ev(HTTP2_FRAME_GOAWAY, HTTP2_RECEIVED, 0, b""));
        s.record(&ev(HTTP2_FRAME_GOAWAY, HTTP2_SENT, 1, b""));
        for _ in 0..3 {
            s.record(&ev(HTTP2_FRAME_RST_STREAM, HTTP2_SENT, 8, b""));
        }
        s.record(&ev(HTTP2_FRAME_RST_STREAM, HTTP2_RECEIVED, 99, b""));
        assert_eq!(s.frames.get(&("rst_stream", "sent", "CANCEL")), Some(&3));
        assert_eq!(s.frames.get(&("rst_stream", "received", "other")), Some(&1));
        assert_eq!(s.frames.len(), 5, "only codes seen: {:?}", s.frames);
        let t = s.totals();
        assert_eq!(t, Http2Totals { goaways_received_error: 1, stream_resets: 4 });
        assert_eq!(t.since(&Http2Totals { goaways_received_error: 1, stream_resets: 1 }), Http2Totals { goaways_received_error: 0, stream_resets: 3 });
        let g = &s.recent_goaways[0];
        assert_eq!((g.direction, g.code, g.debug_len, g.last_stream_id), ("received", "ENHANCE_YOUR_CALM", 100, 5));
        assert_eq!(g.debug_data, "calm\u{fffd}down");
        for _ in 0..20 {
            s.record(&ev(HTTP2_FRAME_GOAWAY, HTTP2_SENT, 0, b"x"));
        }
        assert_eq!(s.recent_goaways.len(), RECENT_GOAWAYS);
        let mut folded = Http2State::default();
        folded.merge(&s);
        folded.merge(&s);
        assert_eq!(folded.frames.get(&("rst_stream", "sent", "CANCEL")), Some(&6));
    }
}
