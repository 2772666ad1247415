//! A writer for pprof's profile.proto (the format `go tool pprof` reads), gzipped.
//!
//! Only what a goroutine profile needs: sample types, samples with string labels, locations with
//! one line each, functions and one mapping.
use std::{collections::HashMap, io::Write};

pub(super) fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

pub(super) fn key(out: &mut Vec<u8>, field: u32, wire: u8) {
    varint(out, (u64::from(field) << 3) | u64::from(wire));
}

pub(super) fn uint(out: &mut Vec<u8>, field: u32, v: u64) {
    if v != 0 {
        key(out, field, 0);
        varint(out, v);
    }
}

pub(super) fn bytes(out: &mut Vec<u8>, field: u32, b: &[u8]) {
    key(out, field, 2);
    varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

pub(super) fn packed(out: &mut Vec<u8>, field: u32, vs: &[u64]) {
    if vs.is_empty() {
        return;
    }
    let mut b = Vec::new();
    for v in vs {
        varint(&mut b, *v);
    }
    bytes(out, field, &b);
}

/// Location ids (leaf first), values, labels as (key, value) string ids.
type Sample = (Vec<u64>, Vec<i64>, Vec<(u64, u64)>);

/// A pprof string table under construction: index 0 is the empty string, as the format wants.
pub(super) struct StringTable {
    strings: Vec<String>,
    ids: HashMap<String, u64>,
}

impl Default for StringTable {
    fn default() -> Self {
        StringTable { strings: vec![String::new()], ids: HashMap::from([(String::new(), 0)]) }
    }
}

impl StringTable {
    /// The id of `s`, added on first use.
    pub(super) fn id(&mut self, s: &str) -> u64 {
        if let Some(&i) = self.ids.get(s) {
            return i;
        }
        let i = self.strings.len() as u64;
        self.strings.push(s.to_string());
        self.ids.insert(s.to_string(), i);
        i
    }

    /// Profile.string_table (field 6), every string in id order.
    pub(super) fn encode(&self, out: &mut Vec<u8>) {
        for s in &self.strings {
            bytes(out, 6, s.as_bytes());
        }
    }
}

/// A profile under construction.
pub struct Profile {
    strings: StringTable,
    functions: HashMap<String, u64>,
    function_list: Vec<u64>,
    /// (address, function id) → location id
    locations: HashMap<(u64, u64), u64>,
    location_list: Vec<(u64, u64, u64)>,
    samples: Vec<Sample>,
    sample_types: Vec<(u64, u64)>,
    period_type: (u64, u64),
    period: i64,
    time_nanos: i64,
    mapping: Option<(u64, u64, u64, u64)>,
    comments: Vec<u64>,
}

impl Profile {
    /// A profile whose samples have values of `sample_types` ((type, unit) pairs).
    pub fn new(sample_types: &[(&str, &str)], period_type: (&str, &str), period: i64, time_nanos: i64) -> Profile {
        let mut p = Profile {
            strings: StringTable::default(),
            functions: HashMap::new(),
            function_list: Vec::new(),
            locations: HashMap::new(),
            location_list: Vec::new(),
            samples: Vec::new(),
            sample_types: Vec::new(),
            period_type: (0, 0),
            period,
            time_nanos,
            mapping: None,
            comments: Vec::new(),
        };
        p.sample_types = sample_types.iter().map(|(t, u)| (p.string(t), p.string(u))).collect();
        p.period_type = (p.string(period_type.0), p.string(period_type.1));
        p
    }

    fn string(&mut self, s: &str) -> u64 {
        self.strings.id(s)
    }

    /// The executable the addresses belong to (memory start, limit, file offset, file name).
    pub fn set_mapping(&mut self, start: u64, limit: u64, offset: u64, file: &str) {
        let f = self.string(file);
        self.mapping = Some((start, limit, offset, f));
    }

    pub fn comment(&mut self, c: &str) {
        let i = self.string(c);
        self.comments.push(i);
    }

    /// The location of `address` in function `name`.
    pub fn location(&mut self, address: u64, name: &str) -> u64 {
        let f = match self.functions.get(name) {
            Some(&f) => f,
            None => {
                let id = self.function_list.len() as u64 + 1;
                let s = self.string(name);
                self.functions.insert(name.to_string(), id);
                self.function_list.push(s);
                id
            }
        };
        if let Some(&l) = self.locations.get(&(address, f)) {
            return l;
        }
        let id = self.location_list.len() as u64 + 1;
        self.locations.insert((address, f), id);
        self.location_list.push((id, address, f));
        id
    }

    /// A sample: locations leaf first, values, string labels.
    pub fn sample(&mut self, locations: Vec<u64>, values: Vec<i64>, labels: &[(&str, &str)]) {
        let labels = labels.iter().map(|(k, v)| (self.string(k), self.string(v))).collect();
        self.samples.push((locations, values, labels));
    }

    /// The encoded profile.proto message.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (t, u) in &self.sample_types {
            let mut m = Vec::new();
            uint(&mut m, 1, *t);
            uint(&mut m, 2, *u);
            bytes(&mut out, 1, &m);
        }
        for (locs, vals, labels) in &self.samples {
            let mut m = Vec::new();
            packed(&mut m, 1, locs);
            packed(&mut m, 2, &vals.iter().map(|v| *v as u64).collect::<Vec<_>>());
            for (k, v) in labels {
                let mut l = Vec::new();
                uint(&mut l, 1, *k);
                uint(&mut l, 2, *v);
                bytes(&mut m, 3, &l);
            }
            bytes(&mut out, 2, &m);
        }
        if let Some((start, limit, offset, file)) = self.mapping {
            let mut m = Vec::new();
            uint(&mut m, 1, 1);
            uint(&mut m, 2, start);
            uint(&mut m, 3, limit);
            uint(&mut m, 4, offset);
            uint(&mut m, 5, file);
            uint(&mut m, 7, 1); // has_functions: nothing left to symbolize
            bytes(&mut out, 3, &m);
        }
        for (id, addr, f) in &self.location_list {
            let mut m = Vec::new();
            uint(&mut m, 1, *id);
            if self.mapping.is_some() {
                uint(&mut m, 2, 1);
            }
            uint(&mut m, 3, *addr);
            let mut line = Vec::new();
            uint(&mut line, 1, *f);
            bytes(&mut m, 4, &line);
            bytes(&mut out, 4, &m);
        }
        for (i, name) in self.function_list.iter().enumerate() {
            let mut m = Vec::new();
            uint(&mut m, 1, i as u64 + 1);
            uint(&mut m, 2, *name);
            uint(&mut m, 3, *name);
            bytes(&mut out, 5, &m);
        }
        self.strings.encode(&mut out);
        uint(&mut out, 9, self.time_nanos as u64);
        let mut pt = Vec::new();
        uint(&mut pt, 1, self.period_type.0);
        uint(&mut pt, 2, self.period_type.1);
        bytes(&mut out, 11, &pt);
        uint(&mut out, 12, self.period as u64);
        if !self.comments.is_empty() {
            packed(&mut out, 13, &self.comments);
        }
        out
    }

    /// The gzipped profile, as Go's /debug/pprof endpoints serve it.
    pub fn gzipped(&self) -> Vec<u8> {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        // Writing to a Vec cannot fail.
        let _ = gz.write_all(&self.encode());
        gz.finish().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_and_layout() {
        let mut v = Vec::new();
        varint(&mut v, 300);
        assert_eq!(v, [0xac, 0x02]);
        let mut p = Profile::new(&[("goroutine", "count")], ("goroutine", "count"), 1, 0);
        let a = p.location(0x1000, "main.f");
        let b = p.location(0x1000, "main.f");
        assert_eq!(a, b);
        p.sample(vec![a], vec![3], &[("state", "waiting")]);
        let enc = p.encode();
        // First field: sample_type (field 1, length-delimited).
        assert_eq!(enc[0], 0x0a);
        let gz = p.gzipped();
        assert_eq!(&gz[..2], &[0x1f, 0x8b]);
    }
}
