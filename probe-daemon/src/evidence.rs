//! What evidence a snapshot holds. A leaf: health rules name the kinds they want, the snapshotter
//! takes them, the API parses them.
use serde::{Deserialize, Serialize};

/// The profiles a snapshot can hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Heap,
    Goroutine,
}

impl Kind {
    pub const ALL: [Kind; 2] = [Kind::Heap, Kind::Goroutine];
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Heap => "heap",
            Kind::Goroutine => "goroutine",
        }
    }
    pub fn parse(s: &str) -> Option<Kind> {
        match s {
            "heap" => Some(Kind::Heap),
            "goroutine" => Some(Kind::Goroutine),
            _ => None,
        }
    }
}

