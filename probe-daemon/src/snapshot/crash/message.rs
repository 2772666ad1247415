//! A crash's message from what the kernel copied at the crash (pure: no I/O). Fatal errors carry
//! their string. A panic carries its value, an `any`; by the time runtime.fatalpanic runs, the
//! runtime (preprintpanics) has replaced error and Stringer values with their Error()/String()
//! text, so for those the copied string is exactly what Go prints after "panic: ". Other values
//! keep their type, which is named from the binary's type
//! metadata, and its message is read the way Go's own printpanicval would print the common
//! values — strings, `errors.New` and `fmt.Errorf` errors (the message is their first field),
//! runtime errors (with Go's "runtime error: " prefix; bounds errors formatted as the runtime
//! does) — else a struct's first string field, else the type name and address.
use goinspect::types::{kind, TypeDesc};
use probe_common::{GoCrashEvent, CRASH_EXIT, CRASH_FATAL, CRASH_PANIC, CRASH_THROW};
use serde::{Deserialize, Serialize};

/// Longest message kept.
pub const MAX_MESSAGE: usize = 1024;

/// What a capsule says the process died of.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// "chainprobe fixture: boom", "runtime error: index out of range [5] with length 3",
    /// "concurrent map writes", "os.Exit(1)".
    pub text: String,
    /// A panic value's dynamic type ("string", "*errors.errorString", "*main.ConfigError").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value_type: Option<String>,
    /// Where the text comes from when it is not the value's whole message (e.g. "field Reason of
    /// *main.ConfigError": its Error() method may say more).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The message was longer than what was copied.
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    pub truncated: bool,
}

/// The text the kernel copied (at most `CRASH_TEXT_LEN` bytes).
pub fn copied_text(e: &GoCrashEvent) -> String {
    let n = usize::from(e.text_len).min(e.text.len());
    String::from_utf8_lossy(&e.text[..n]).into_owned()
}

fn word(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8).and_then(|s| s.try_into().ok()).map(u64::from_le_bytes).unwrap_or(0)
}

/// `runtime.boundsError` (x int64, y int, signed bool, code uint8), formatted as its Error().
/// `at` gives the offsets of x, y, signed and code.
pub fn bounds_error(head: &[u8], at: [usize; 4]) -> Option<String> {
    let x = word(head, at[0]) as i64;
    let y = word(head, at[1]) as i64;
    let signed = *head.get(at[2])? != 0;
    let code = *head.get(at[3])?;
    const FMT: [&str; 9] = [
        "index out of range [%x] with length %y",
        "slice bounds out of range [:%x] with length %y",
        "slice bounds out of range [:%x] with capacity %y",
        "slice bounds out of range [%x:%y]",
        "slice bounds out of range [::%x] with length %y",
        "slice bounds out of range [::%x] with capacity %y",
        "slice bounds out of range [:%x:%y]",
        "slice bounds out of range [%x:%y:]",
        "cannot convert slice with length %x to array or pointer to array with length %y",
    ];
    const NEG: [&str; 8] = [
        "index out of range [%x]",
        "slice bounds out of range [:%x]",
        "slice bounds out of range [:%x]",
        "slice bounds out of range [%x:]",
        "slice bounds out of range [::%x]",
        "slice bounds out of range [::%x]",
        "slice bounds out of range [:%x:]",
        "slice bounds out of range [%x::]",
    ];
    let fmt = if signed && x < 0 { NEG.get(usize::from(code))? } else { FMT.get(usize::from(code))? };
    let xs = if signed { x.to_string() } else { (x as u64).to_string() };
    Some(format!("runtime error: {}", fmt.replace("%x", &xs).replace("%y", &y.to_string())))
}

/// The message of crash event `e`. `ty` describes the panic value's type (None when it could not
/// be read); `bounds` the offsets of runtime.boundsError's fields for this binary; `read_field`
/// reads a string field at an offset of the value when the process can still be read (paused).
pub fn message(e: &GoCrashEvent, ty: Option<&TypeDesc>, bounds: Option<[usize; 4]>, read_field: &mut dyn FnMut(u64) -> Option<String>) -> Message {
    let text = copied_text(e);
    let truncated = e.text_truncated != 0;
    let m = match e.kind {
        CRASH_THROW | CRASH_FATAL => Message { text, truncated, ..Default::default() },
        CRASH_EXIT => Message { text: format!("os.Exit({})", e.code), ..Default::default() },
        CRASH_PANIC => panic_message(e, text, truncated, ty, bounds, read_field),
        k => Message { text: format!("unknown crash kind {k}"), ..Default::default() },
    };
    Message { text: cap(m.text), ..m }
}

fn cap(mut s: String) -> String {
    if s.len() > MAX_MESSAGE {
        let mut end = MAX_MESSAGE;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

fn panic_message(e: &GoCrashEvent, text: String, truncated: bool, ty: Option<&TypeDesc>, bounds: Option<[usize; 4]>, read_field: &mut dyn FnMut(u64) -> Option<String>) -> Message {
    if e.value_type == 0 {
        return Message { text: "panic value unknown (no offsets for _panic.arg)".into(), ..Default::default() };
    }
    let Some(ty) = ty else {
        return Message { text: format!("(type at {:#x}) {text}", e.value_type), source: Some("the value's type could not be named; the text is what its first word points at".into()), truncated, ..Default::default() };
    };
    let name = ty.name.clone();
    let with = |text: String, source: Option<String>| Message { text, value_type: Some(name.clone()), source, truncated };
    match name.as_str() {
        "string" | "*errors.errorString" | "*fmt.wrapError" | "*fmt.wrapErrors" | "runtime.plainError" => return with(text, None),
        "runtime.errorString" => return with(format!("runtime error: {text}"), None),
        "runtime.boundsError" => {
            if let Some(m) = bounds.and_then(|at| bounds_error(&e.head, at)) {
                return with(m, None);
            }
        }
        _ => {}
    }
    match ty.kind {
        kind::STRING => return with(text, None),
        kind::BOOL => return with((e.head[0] != 0).to_string(), None),
        kind::INT..=kind::INT64 => return with((word(&e.head, 0) as i64).to_string(), None),
        kind::UINT..=kind::UINTPTR => return with(word(&e.head, 0).to_string(), None),
        kind::FLOAT64 => return with(f64::from_bits(word(&e.head, 0)).to_string(), None),
        _ => {}
    }
    // A struct (or pointer to one) with a string field: the first one at offset 0 was copied by the
    // kernel; others are read from the paused process.
    if let Some((field, off)) = ty.string_fields.first() {
        let source = Some(format!("field {field} of {name} (its Error or String method may say more)"));
        if *off == 0 {
            return with(text, source);
        }
        if let Some(t) = read_field(*off) {
            return Message { truncated: false, ..with(t, source) };
        }
    }
    Message { text: format!("({name}) {:#x}", e.value_data), value_type: Some(name.clone()), source: Some("not a string or error Go's value printer knows; the type and address".into()), truncated: false }
}

#[cfg(test)]
mod tests {
    use super::*;
    use probe_common::{EventHeader, EventKind, CRASH_HEAD_LEN, CRASH_MAX_PCS, CRASH_TEXT_LEN};

    fn event(kind: u32, text: &str, head: &[u8]) -> GoCrashEvent {
        let mut e = GoCrashEvent {
            header: EventHeader { kind: EventKind::GoCrash as u32, tgid: 1, ktime_ns: 0 },
            kind,
            tid: 1,
            code: 0,
            g: 0,
            goid: 1,
            pc: 0,
            sp: 0,
            fp: 0,
            value_type: 0x1000,
            value_data: 0x2000,
            head: [0; CRASH_HEAD_LEN],
            paused: 0,
            text_len: text.len() as u16,
            text_truncated: 0,
            text: [0; CRASH_TEXT_LEN],
            npcs: 0,
            system_pcs: 0,
            pcs: [0; CRASH_MAX_PCS],
        };
        e.text[..text.len()].copy_from_slice(text.as_bytes());
        e.head[..head.len()].copy_from_slice(head);
        e
    }

    fn ty(name: &str, k: u8, fields: &[(&str, u64)]) -> TypeDesc {
        TypeDesc { name: name.into(), kind: k, string_fields: fields.iter().map(|(n, o)| (n.to_string(), *o)).collect() }
    }

    fn none(_: u64) -> Option<String> {
        None
    }

    #[test]
    fn fatal_errors_and_exits() {
        assert_eq!(message(&event(CRASH_FATAL, "concurrent map writes", &[]), None, None, &mut none).text, "concurrent map writes");
        let mut e = event(CRASH_EXIT, "", &[]);
        e.code = 1;
        assert_eq!(message(&e, None, None, &mut none).text, "os.Exit(1)");
    }

    #[test]
    fn panic_values_as_go_prints_them() {
        let e = event(CRASH_PANIC, "boom", &[]);
        assert_eq!(message(&e, Some(&ty("string", kind::STRING, &[])), None, &mut none).text, "boom");
        let m = message(&e, Some(&ty("*errors.errorString", kind::PTR, &[("s", 0)])), None, &mut none);
        assert_eq!((m.text.as_str(), m.value_type.as_deref(), m.source), ("boom", Some("*errors.errorString"), None));
        let nil = event(CRASH_PANIC, "invalid memory address or nil pointer dereference", &[]);
        assert_eq!(message(&nil, Some(&ty("runtime.errorString", kind::STRING, &[])), None, &mut none).text, "runtime error: invalid memory address or nil pointer dereference");
        let custom = message(&e, Some(&ty("*main.ConfigError", kind::PTR, &[("Reason", 0)])), None, &mut none);
        assert_eq!(custom.text, "boom");
        assert!(custom.source.unwrap().contains("field Reason"));
        let later = message(&e, Some(&ty("*main.E", kind::PTR, &[("Msg", 16)])), None, &mut |off| (off == 16).then(|| "read later".to_string()));
        assert_eq!(later.text, "read later");
        let int = event(CRASH_PANIC, "", &42i64.to_le_bytes());
        assert_eq!(message(&int, Some(&ty("int", kind::INT, &[])), None, &mut none).text, "42");
        let other = message(&e, Some(&ty("main.T", kind::STRUCT, &[])), None, &mut none);
        assert_eq!(other.text, "(main.T) 0x2000");
    }

    #[test]
    fn bounds_errors_as_the_runtime_formats_them() {
        let mut head = [0u8; 32];
        head[..8].copy_from_slice(&5i64.to_le_bytes());
        head[8..16].copy_from_slice(&3i64.to_le_bytes());
        head[16] = 1;
        head[17] = 0;
        let at = [0, 8, 16, 17];
        assert_eq!(bounds_error(&head, at).as_deref(), Some("runtime error: index out of range [5] with length 3"));
        head[..8].copy_from_slice(&(-1i64).to_le_bytes());
        assert_eq!(bounds_error(&head, at).as_deref(), Some("runtime error: index out of range [-1]"));
        head[17] = 3;
        head[..8].copy_from_slice(&4i64.to_le_bytes());
        assert_eq!(bounds_error(&head, at).as_deref(), Some("runtime error: slice bounds out of range [4:3]"));
        head[17] = 40;
        assert_eq!(bounds_error(&head, at), None);
    }

    #[test]
    fn long_messages_are_capped_on_a_char_boundary() {
        let s = "é".repeat(MAX_MESSAGE);
        let c = cap(s);
        assert!(c.len() <= MAX_MESSAGE && c.is_char_boundary(c.len()));
    }
}
