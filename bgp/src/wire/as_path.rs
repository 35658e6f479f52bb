//! AS_PATH and AS4_PATH (RFC 4271 §4.3, RFC 5065 §3, RFC 6793).

use super::{In, NomResult};
use bytes::BufMut;
use nom::bytes::complete::take;
use nom::number::complete::be_u8;
use nom::sequence::pair;
use serde::Serialize;
use smallvec::SmallVec;

/// The 2-octet stand-in for a 4-octet AS number (RFC 6793 §2).
pub const AS_TRANS: u16 = 23456;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SegmentType {
    Set,
    Sequence,
    /// RFC 5065 §3.
    ConfedSequence,
    ConfedSet,
}

impl SegmentType {
    fn from_wire(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::Set),
            2 => Some(Self::Sequence),
            3 => Some(Self::ConfedSequence),
            4 => Some(Self::ConfedSet),
            _ => None,
        }
    }
    fn to_wire(self) -> u8 {
        match self {
            Self::Set => 1,
            Self::Sequence => 2,
            Self::ConfedSequence => 3,
            Self::ConfedSet => 4,
        }
    }
    fn is_confed(self) -> bool {
        matches!(self, Self::ConfedSequence | Self::ConfedSet)
    }
}

/// AS numbers of one segment. Inline up to six: most paths fit, and a
/// full-table decode then allocates nothing for AS paths.
pub type Asns = SmallVec<[u32; 6]>;

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct AsSegment {
    #[serde(rename = "type")]
    pub kind: SegmentType,
    pub asns: Asns,
}

/// An AS path: segments in wire order, AS numbers always held as 32 bits.
/// One segment is held inline (the common case).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct AsPath {
    pub segments: SmallVec<[AsSegment; 1]>,
}

impl AsPath {
    /// A path of one AS_SEQUENCE.
    pub fn sequence(asns: impl IntoIterator<Item = u32>) -> Self {
        let asns: Asns = asns.into_iter().collect();
        if asns.is_empty() {
            return AsPath::default();
        }
        AsPath {
            segments: smallvec::smallvec![AsSegment {
                kind: SegmentType::Sequence,
                asns,
            }],
        }
    }

    /// Path length for the decision process (RFC 4271 §9.1.2.2 a): each AS
    /// in a sequence counts one, a set counts one, confederation segments
    /// count nothing (RFC 5065 §5.3).
    pub fn len(&self) -> usize {
        self.segments
            .iter()
            .map(|s| match s.kind {
                SegmentType::Sequence => s.asns.len(),
                SegmentType::Set => 1,
                _ => 0,
            })
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }

    /// The AS that originated the route: the last AS of the path when it is
    /// in a sequence.
    pub fn origin_as(&self) -> Option<u32> {
        let last = self.segments.last()?;
        match last.kind {
            SegmentType::Sequence => last.asns.last().copied(),
            _ => None,
        }
    }

    /// The first AS of the path: the neighbour AS for MED comparison.
    pub fn first_as(&self) -> Option<u32> {
        self.segments
            .iter()
            .find(|s| !s.kind.is_confed())
            .filter(|s| s.kind == SegmentType::Sequence)
            .and_then(|s| s.asns.first().copied())
    }

    /// Whether `asn` appears anywhere in the path (loop detection).
    pub fn contains(&self, asn: u32) -> bool {
        self.segments.iter().any(|s| s.asns.contains(&asn))
    }

    /// Whether any AS number needs four octets.
    pub fn needs_four_octets(&self) -> bool {
        self.segments
            .iter()
            .any(|s| s.asns.iter().any(|&a| a > u32::from(u16::MAX)))
    }

    /// Parses a path whose AS numbers are `width` (2 or 4) bytes wide.
    /// `Err` carries the reason; the caller makes the typed error.
    pub(crate) fn decode(mut v: &[u8], width: usize) -> Result<Self, &'static str> {
        let mut segments = SmallVec::new();
        while !v.is_empty() {
            let (rest, (kind, count)) =
                segment_header(v).map_err(|_| "segment header truncated")?;
            let kind = SegmentType::from_wire(kind).ok_or("unknown segment type")?;
            if count == 0 {
                // RFC 7606 §7.2: a zero-length segment is malformed.
                return Err("segment of zero AS numbers");
            }
            let (rest, body) = take::<_, _, ()>(usize::from(count) * width)(rest)
                .map_err(|_| "segment overruns the attribute")?;
            let asns = if width == 4 {
                body.chunks_exact(4)
                    .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
                    .collect()
            } else {
                body.chunks_exact(2)
                    .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
                    .collect()
            };
            segments.push(AsSegment { kind, asns });
            v = rest;
        }
        Ok(AsPath { segments })
    }

    /// Encoded length with `width`-byte AS numbers (segments over 255 ASes
    /// are split).
    pub(crate) fn encoded_len(&self, width: usize) -> usize {
        self.segments
            .iter()
            .map(|s| s.asns.len().div_ceil(255) * 2 + s.asns.len() * width)
            .sum()
    }

    /// Writes the path; in the 2-byte form, AS numbers above 65535 become
    /// AS_TRANS (the caller adds AS4_PATH, see [`AsPath::split_for_two_octet`]).
    pub(crate) fn encode(&self, width: usize, out: &mut impl BufMut) {
        for s in &self.segments {
            for chunk in s.asns.chunks(255) {
                out.put_u8(s.kind.to_wire());
                out.put_u8(chunk.len() as u8);
                for &a in chunk {
                    if width == 4 {
                        out.put_u32(a);
                    } else {
                        out.put_u16(u16::try_from(a).unwrap_or(AS_TRANS));
                    }
                }
            }
        }
    }

    /// For a peer without 4-octet AS support (RFC 6793 §4.2.2): the AS_PATH
    /// to send (large AS numbers become AS_TRANS when encoded) and, when any
    /// AS number needs four octets, the AS4_PATH to send beside it (the path
    /// without confederation segments, which AS4_PATH must not carry).
    pub fn split_for_two_octet(&self) -> (AsPath, Option<AsPath>) {
        if !self.needs_four_octets() {
            return (self.clone(), None);
        }
        let as4 = AsPath {
            segments: self
                .segments
                .iter()
                .filter(|s| !s.kind.is_confed())
                .cloned()
                .collect(),
        };
        (self.clone(), Some(as4))
    }

    /// Rebuilds the real path from a 2-octet AS_PATH (`self`) and the
    /// AS4_PATH received beside it (RFC 6793 §4.2.3): the AS_PATH's leading
    /// part that AS4_PATH does not cover, followed by AS4_PATH. If AS4_PATH
    /// is longer than AS_PATH it is ignored.
    pub fn merge_as4(&self, as4: &AsPath) -> AsPath {
        let (n, n4) = (self.len(), as4.len());
        if n < n4 {
            return self.clone();
        }
        let mut keep = n - n4;
        let mut segments: SmallVec<[AsSegment; 1]> =
            SmallVec::with_capacity(self.segments.len() + as4.segments.len());
        for s in &self.segments {
            match s.kind {
                // Confederation segments count nothing; keep them while we
                // are still in the leading part.
                k if k.is_confed() => {
                    if keep > 0 {
                        segments.push(s.clone());
                    }
                }
                SegmentType::Set => {
                    if keep == 0 {
                        break;
                    }
                    segments.push(s.clone());
                    keep -= 1;
                }
                _ => {
                    if keep == 0 {
                        break;
                    }
                    let take = keep.min(s.asns.len());
                    segments.push(AsSegment {
                        kind: s.kind,
                        asns: s.asns[..take].iter().copied().collect(),
                    });
                    keep -= take;
                }
            }
        }
        for s in &as4.segments {
            // Where the kept part ends in a sequence and AS4_PATH starts with
            // one, they are one sequence on the real path.
            match segments.last_mut() {
                Some(last)
                    if last.kind == SegmentType::Sequence && s.kind == SegmentType::Sequence =>
                {
                    last.asns.extend_from_slice(&s.asns)
                }
                _ => segments.push(s.clone()),
            }
        }
        AsPath { segments }
    }
}

/// Segment type and AS count (RFC 4271 §4.3 b).
fn segment_header(i: In<'_>) -> NomResult<'_, (u8, u8)> {
    pair(be_u8, be_u8)(i)
}
