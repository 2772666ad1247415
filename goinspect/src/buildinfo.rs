//! `.go.buildinfo` parser (Go 1.13+ pointer format and 1.18+ inline varint format).
//!
//! Header (32 bytes): "\xff Go buildinf:" (14 bytes), ptrSize (u8), flags (u8; bit 0 big endian,
//! bit 1 inline strings). Inline: two uvarint-length-prefixed strings at +32 (version, modinfo).
//! Pointer format: at +16 and +16+ptrSize pointers to Go string headers {ptr, len}.
//! modinfo is wrapped in 16-byte sentinels which are removed.

use serde::Serialize;

pub(crate) const MAGIC: &[u8; 14] = b"\xff Go buildinf:";
/// The build-info magic (public for fuzzers and tests).
pub const MAGIC_BYTES: &[u8; 14] = MAGIC;

/// Parsed build information.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct BuildInfo {
    /// e.g. "go1.21.13"
    pub go_version: String,
    /// main module path ("path" line, falling back to the "mod" line)
    pub path: Option<String>,
    pub main_module: Option<String>,
    pub main_version: Option<String>,
    /// `build` lines, in order: ("-ldflags", "-s -w"), ("CGO_ENABLED", "1"), ...
    pub settings: Vec<(String, String)>,
}

impl BuildInfo {
    pub fn setting(&self, key: &str) -> Option<&str> {
        self.settings
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Errors of the pure parser (mapped to `GoInspectError::Malformed` by the caller).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError(pub String);

fn uvarint(b: &[u8]) -> Option<(u64, usize)> {
    let mut x: u64 = 0;
    let mut s = 0u32;
    for (i, &c) in b.iter().enumerate().take(10) {
        if c < 0x80 {
            if i == 9 && c > 1 {
                return None;
            }
            return Some((x | (u64::from(c) << s), i + 1));
        }
        x |= u64::from(c & 0x7f) << s;
        s += 7;
    }
    None
}

fn read_inline_string(b: &[u8]) -> Result<(String, usize), ParseError> {
    let (len, n) = uvarint(b).ok_or_else(|| ParseError("bad varint string length".into()))?;
    let len = usize::try_from(len).map_err(|_| ParseError("string length overflow".into()))?;
    let end = n
        .checked_add(len)
        .ok_or_else(|| ParseError("string length overflow".into()))?;
    let s = b.get(n..end).ok_or_else(|| {
        ParseError(format!(
            "string of {len} bytes runs past the end of the data"
        ))
    })?;
    Ok((String::from_utf8_lossy(s).into_owned(), end))
}

/// Parse the header and contents. `read_string(ptr)` resolves a pointer to a Go string header
/// (pointer format only); `data` starts at the magic.
pub fn parse(
    data: &[u8],
    read_string: &dyn Fn(u64, u8) -> Option<String>,
) -> Result<BuildInfo, ParseError> {
    if data.len() < 32 {
        return Err(ParseError(format!(
            "header is {} bytes, need 32",
            data.len()
        )));
    }
    if &data[..14] != MAGIC {
        return Err(ParseError("missing \"\\xff Go buildinf:\" magic".into()));
    }
    let ptr_size = data[14];
    let flags = data[15];
    let big_endian = flags & 1 != 0;
    let (version, modinfo) = if flags & 2 != 0 {
        let (v, n) = read_inline_string(&data[32..])?;
        let (m, _) = read_inline_string(data.get(32 + n..).unwrap_or(&[]))?;
        (v, m)
    } else {
        if ptr_size != 4 && ptr_size != 8 {
            return Err(ParseError(format!("bad pointer size {ptr_size}")));
        }
        let ps = usize::from(ptr_size);
        let rd = |off: usize| -> Option<u64> {
            let b = data.get(off..off + ps)?;
            Some(match (ps, big_endian) {
                (8, false) => u64::from_le_bytes(b.try_into().ok()?),
                (8, true) => u64::from_be_bytes(b.try_into().ok()?),
                (_, false) => u64::from(u32::from_le_bytes(b.try_into().ok()?)),
                (_, true) => u64::from(u32::from_be_bytes(b.try_into().ok()?)),
            })
        };
        let vp = rd(16).ok_or_else(|| ParseError("truncated version pointer".into()))?;
        let mp = rd(16 + ps).ok_or_else(|| ParseError("truncated modinfo pointer".into()))?;
        let v = read_string(vp, ptr_size)
            .ok_or_else(|| ParseError(format!("version string pointer {vp:#x} is unreadable")))?;
        let m = read_string(mp, ptr_size).unwrap_or_default();
        (v, m)
    };
    if !version.starts_with("go") && !version.starts_with("devel") {
        return Err(ParseError(format!(
            "implausible Go version string {version:?}"
        )));
    }
    let mut bi = BuildInfo {
        go_version: version,
        ..Default::default()
    };
    parse_modinfo(&strip_sentinels(&modinfo), &mut bi);
    Ok(bi)
}

fn strip_sentinels(m: &str) -> String {
    let b = m.as_bytes();
    if b.len() >= 33 && b[b.len() - 17] == b'\n' {
        String::from_utf8_lossy(&b[16..b.len() - 16]).into_owned()
    } else {
        m.to_string()
    }
}

fn parse_modinfo(m: &str, bi: &mut BuildInfo) {
    for line in m.lines() {
        let mut it = line.splitn(2, '\t');
        let (Some(kind), Some(rest)) = (it.next(), it.next()) else {
            continue;
        };
        match kind {
            "path" => bi.path = Some(rest.to_string()),
            "mod" => {
                let mut f = rest.split('\t');
                bi.main_module = f.next().map(str::to_string);
                bi.main_version = f.next().map(str::to_string);
            }
            "build" => {
                if let Some((k, v)) = rest.split_once('=') {
                    let v = v
                        .strip_prefix('"')
                        .and_then(|v| v.strip_suffix('"'))
                        .unwrap_or(v);
                    bi.settings.push((k.to_string(), v.replace("\\\"", "\"")));
                }
            }
            _ => {}
        }
    }
}

/// A parsed Go version: go1.21.13 → (1, 21, 13).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct GoVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl GoVersion {
    pub fn parse(s: &str) -> Option<GoVersion> {
        let s = s.strip_prefix("go")?;
        let s = s.split([' ', '-']).next()?;
        let mut parts = s.split('.');
        let major = num_prefix(parts.next()?)?;
        let minor = num_prefix(parts.next()?)?;
        let patch = parts.next().and_then(num_prefix).unwrap_or(0);
        Some(GoVersion {
            major,
            minor,
            patch,
        })
    }
    pub fn at_least(&self, major: u32, minor: u32) -> bool {
        (self.major, self.minor) >= (major, minor)
    }
}

fn num_prefix(s: &str) -> Option<u32> {
    let d: String = s.chars().take_while(|c| c.is_ascii_digit()).collect();
    d.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inline(version: &str, modinfo: &str) -> Vec<u8> {
        let mut d = MAGIC.to_vec();
        d.push(8);
        d.push(2);
        d.resize(32, 0);
        for s in [version, modinfo] {
            let mut n = s.len();
            while n >= 0x80 {
                d.push((n as u8) | 0x80);
                n >>= 7;
            }
            d.push(n as u8);
            d.extend_from_slice(s.as_bytes());
        }
        d
    }

    fn wrap(m: &str) -> String {
        format!("0123456789abcdef{m}\n0123456789abcde")
    }

    #[test]
    fn inline_format() {
        let mi = wrap("path\tfixture\nmod\tfixture\t(devel)\t\nbuild\t-ldflags=\"-s -w\"\nbuild\tCGO_ENABLED=0\nbuild\tGOARCH=amd64\n");
        let d = inline("go1.21.13", &mi);
        let bi = parse(&d, &|_, _| None).expect("parse");
        assert_eq!(bi.go_version, "go1.21.13");
        assert_eq!(bi.path.as_deref(), Some("fixture"));
        assert_eq!(bi.main_module.as_deref(), Some("fixture"));
        assert_eq!(bi.main_version.as_deref(), Some("(devel)"));
        assert_eq!(bi.setting("-ldflags"), Some("-s -w"));
        assert_eq!(bi.setting("CGO_ENABLED"), Some("0"));
    }

    #[test]
    fn long_modinfo_varint() {
        let long = "x".repeat(300);
        let d = inline("go1.27.3", &wrap(&format!("path\t{long}\n")));
        let bi = parse(&d, &|_, _| None).expect("parse");
        assert_eq!(bi.path.as_deref(), Some(long.as_str()));
    }

    #[test]
    fn pointer_format() {
        let mut d = MAGIC.to_vec();
        d.push(8);
        d.push(0);
        d.extend_from_slice(&0x1000u64.to_le_bytes());
        d.extend_from_slice(&0x2000u64.to_le_bytes());
        d.resize(32, 0);
        let rs = |p: u64, _ps: u8| match p {
            0x1000 => Some("go1.16.15".to_string()),
            0x2000 => Some(wrap("path\tex\nmod\tex\tv1.2.3\th1:abc\n")),
            _ => None,
        };
        let bi = parse(&d, &rs).expect("parse");
        assert_eq!(bi.go_version, "go1.16.15");
        assert_eq!(bi.main_version.as_deref(), Some("v1.2.3"));
    }

    #[test]
    fn truncated_and_garbage() {
        let d = inline("go1.21.13", "");
        for n in 0..d.len() - 1 {
            assert!(
                parse(&d[..n], &|_, _| None).is_err(),
                "truncated to {n} bytes must fail"
            );
        }
        let mut bad = d.clone();
        bad[32] = 0xff; // unterminated varint / huge length
        assert!(parse(&bad, &|_, _| None).is_err());
        assert!(parse(b"not a header at all, definitely not", &|_, _| None).is_err());
    }

    #[test]
    fn versions() {
        assert_eq!(
            GoVersion::parse("go1.21.13"),
            Some(GoVersion {
                major: 1,
                minor: 21,
                patch: 13
            })
        );
        assert_eq!(GoVersion::parse("go1.19").map(|v| v.minor), Some(19));
        assert_eq!(GoVersion::parse("go1.22rc1").map(|v| v.minor), Some(22));
        assert_eq!(
            GoVersion::parse("go1.27.3 X:nocoverageredesign").map(|v| v.patch),
            Some(3)
        );
        assert_eq!(GoVersion::parse("devel +abc"), None);
        assert!(GoVersion::parse("go1.17.1").is_some_and(|v| v.at_least(1, 17)));
    }
}
