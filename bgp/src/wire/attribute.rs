//! Path attributes (RFC 4271 §4.3 / §5 and the RFCs named per attribute),
//! each decoded with its RFC 7606 §7 error handling.

use super::as_path::{AsPath, AS_TRANS};
use super::error::{DecodeError, Disposition, ErrorKind};
use super::family::{Afi, Family, Safi};
use super::nlri::{self, Nlri};
use super::SessionParams;
use bytes::{BufMut, Bytes};
use serde::Serialize;
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

/// Attribute type codes (IANA "BGP Path Attributes").
pub mod attr_type {
    pub const ORIGIN: u8 = 1;
    pub const AS_PATH: u8 = 2;
    pub const NEXT_HOP: u8 = 3;
    pub const MULTI_EXIT_DISC: u8 = 4;
    pub const LOCAL_PREF: u8 = 5;
    pub const ATOMIC_AGGREGATE: u8 = 6;
    pub const AGGREGATOR: u8 = 7;
    pub const COMMUNITIES: u8 = 8;
    pub const ORIGINATOR_ID: u8 = 9;
    pub const CLUSTER_LIST: u8 = 10;
    pub const MP_REACH_NLRI: u8 = 14;
    pub const MP_UNREACH_NLRI: u8 = 15;
    pub const EXTENDED_COMMUNITIES: u8 = 16;
    pub const AS4_PATH: u8 = 17;
    pub const AS4_AGGREGATOR: u8 = 18;
    pub const LARGE_COMMUNITY: u8 = 32;
}

/// Attribute flag bits (RFC 4271 §4.3).
pub mod flag {
    pub const OPTIONAL: u8 = 0x80;
    pub const TRANSITIVE: u8 = 0x40;
    pub const PARTIAL: u8 = 0x20;
    pub const EXTENDED_LENGTH: u8 = 0x10;
}

const WELL_KNOWN: u8 = flag::TRANSITIVE;
const OPT_NON_TRANSITIVE: u8 = flag::OPTIONAL;
const OPT_TRANSITIVE: u8 = flag::OPTIONAL | flag::TRANSITIVE;

/// One path attribute: its flags as received (the four unused low bits
/// cleared) and its value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PathAttribute {
    pub flags: u8,
    #[serde(flatten)]
    pub value: AttributeValue,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    Igp,
    Egp,
    Incomplete,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Aggregator {
    pub asn: u32,
    pub address: Ipv4Addr,
}

/// A standard community (RFC 1997), shown as `high:low`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Community(pub u32);

impl Community {
    pub const NO_EXPORT: Community = Community(0xFFFF_FF01);
    pub const NO_ADVERTISE: Community = Community(0xFFFF_FF02);
    pub const NO_EXPORT_SUBCONFED: Community = Community(0xFFFF_FF03);
}

/// An extended community (RFC 4360), 8 opaque bytes; shown as `rt:AS:N` /
/// `ro:AS:N` for route targets and origins, hex otherwise.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ExtendedCommunity(pub [u8; 8]);

/// A large community (RFC 8092), shown as `global:local1:local2`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LargeCommunity {
    pub global: u32,
    pub local1: u32,
    pub local2: u32,
}

/// Next hop in MP_REACH_NLRI (RFC 4760 §3, RFC 2545 §3, RFC 8950 §3).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum NextHop {
    Ipv4(Ipv4Addr),
    Ipv6 {
        global: Ipv6Addr,
        #[serde(skip_serializing_if = "Option::is_none")]
        link_local: Option<Ipv6Addr>,
    },
    /// Next hop of a family this codec does not decode.
    Other(#[serde(serialize_with = "super::hex::serialize")] Bytes),
}

/// MP_REACH_NLRI (RFC 4760 §3). For families whose NLRI this codec does
/// not decode, `nlri` is empty and the raw NLRI bytes are in `unparsed`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MpReach {
    pub family: Family,
    pub next_hop: NextHop,
    pub nlri: Vec<Nlri>,
    #[serde(
        skip_serializing_if = "Bytes::is_empty",
        serialize_with = "super::hex::serialize"
    )]
    pub unparsed: Bytes,
}

/// MP_UNREACH_NLRI (RFC 4760 §4); `unparsed` as in [`MpReach`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MpUnreach {
    pub family: Family,
    pub withdrawn: Vec<Nlri>,
    #[serde(
        skip_serializing_if = "Bytes::is_empty",
        serialize_with = "super::hex::serialize"
    )]
    pub unparsed: Bytes,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AttributeValue {
    Origin(Origin),
    AsPath(AsPath),
    NextHop(Ipv4Addr),
    MultiExitDisc(u32),
    LocalPref(u32),
    AtomicAggregate,
    /// AGGREGATOR (RFC 4271 §5.1.7); 2- or 4-octet AS per session.
    Aggregator(Aggregator),
    Communities(Vec<Community>),
    /// RFC 4456 §8.
    OriginatorId(Ipv4Addr),
    ClusterList(Vec<Ipv4Addr>),
    MpReach(Box<MpReach>),
    MpUnreach(Box<MpUnreach>),
    ExtendedCommunities(Vec<ExtendedCommunity>),
    /// RFC 6793 §3: the real path beside a 2-octet AS_PATH.
    As4Path(AsPath),
    As4Aggregator(Aggregator),
    LargeCommunities(Vec<LargeCommunity>),
    /// An optional attribute this codec does not know, kept for passing on.
    Unknown {
        type_code: u8,
        #[serde(serialize_with = "super::hex::serialize")]
        data: Bytes,
    },
}

/// Families whose NLRI this codec decodes into prefixes.
fn decodes_prefixes(family: Family) -> bool {
    matches!(family.afi, Afi::IPV4 | Afi::IPV6)
        && matches!(family.safi, Safi::UNICAST | Safi::MULTICAST)
}

impl AttributeValue {
    pub fn type_code(&self) -> u8 {
        use attr_type::*;
        match self {
            AttributeValue::Origin(_) => ORIGIN,
            AttributeValue::AsPath(_) => AS_PATH,
            AttributeValue::NextHop(_) => NEXT_HOP,
            AttributeValue::MultiExitDisc(_) => MULTI_EXIT_DISC,
            AttributeValue::LocalPref(_) => LOCAL_PREF,
            AttributeValue::AtomicAggregate => ATOMIC_AGGREGATE,
            AttributeValue::Aggregator(_) => AGGREGATOR,
            AttributeValue::Communities(_) => COMMUNITIES,
            AttributeValue::OriginatorId(_) => ORIGINATOR_ID,
            AttributeValue::ClusterList(_) => CLUSTER_LIST,
            AttributeValue::MpReach(_) => MP_REACH_NLRI,
            AttributeValue::MpUnreach(_) => MP_UNREACH_NLRI,
            AttributeValue::ExtendedCommunities(_) => EXTENDED_COMMUNITIES,
            AttributeValue::As4Path(_) => AS4_PATH,
            AttributeValue::As4Aggregator(_) => AS4_AGGREGATOR,
            AttributeValue::LargeCommunities(_) => LARGE_COMMUNITY,
            AttributeValue::Unknown { type_code, .. } => *type_code,
        }
    }
}

/// The Optional/Transitive bits a known attribute type must carry, or `None`
/// for types this codec does not know.
fn category(type_code: u8) -> Option<u8> {
    use attr_type::*;
    Some(match type_code {
        ORIGIN | AS_PATH | NEXT_HOP | LOCAL_PREF | ATOMIC_AGGREGATE => WELL_KNOWN,
        MULTI_EXIT_DISC | ORIGINATOR_ID | CLUSTER_LIST | MP_REACH_NLRI | MP_UNREACH_NLRI => {
            OPT_NON_TRANSITIVE
        }
        AGGREGATOR | COMMUNITIES | EXTENDED_COMMUNITIES | AS4_PATH | AS4_AGGREGATOR
        | LARGE_COMMUNITY => OPT_TRANSITIVE,
        _ => return None,
    })
}

/// How a malformed instance of a known attribute is handled (RFC 7606 §7,
/// RFC 6793 §6 for AS4_*).
fn disposition_of(type_code: u8) -> Disposition {
    use attr_type::*;
    match type_code {
        ATOMIC_AGGREGATE | AGGREGATOR | AS4_PATH | AS4_AGGREGATOR => Disposition::AttributeDiscard,
        MP_REACH_NLRI | MP_UNREACH_NLRI => Disposition::SessionReset,
        _ => Disposition::TreatAsWithdraw,
    }
}

impl PathAttribute {
    /// An attribute with the flags its type calls for (no Partial, length
    /// field as short as the value allows).
    pub fn new(value: AttributeValue) -> Self {
        let flags = category(value.type_code()).unwrap_or(OPT_TRANSITIVE);
        PathAttribute { flags, value }
    }

    pub fn type_code(&self) -> u8 {
        self.value.type_code()
    }
    pub fn is_optional(&self) -> bool {
        self.flags & flag::OPTIONAL != 0
    }
    pub fn is_transitive(&self) -> bool {
        self.flags & flag::TRANSITIVE != 0
    }
    pub fn is_partial(&self) -> bool {
        self.flags & flag::PARTIAL != 0
    }

    /// The attribute as it must be passed on to another peer (RFC 4271
    /// §5): an unrecognised optional transitive attribute goes on with the
    /// Partial bit set; an unrecognised non-transitive one is dropped.
    pub fn readvertised(&self) -> Option<PathAttribute> {
        match &self.value {
            AttributeValue::Unknown { .. } if !self.is_transitive() => None,
            AttributeValue::Unknown { .. } => Some(PathAttribute {
                flags: self.flags | flag::PARTIAL,
                value: self.value.clone(),
            }),
            _ => Some(self.clone()),
        }
    }

    /// Length of the value on the wire under `params`.
    pub fn value_len(&self, params: &SessionParams) -> usize {
        let asw = if params.four_octet_as { 4 } else { 2 };
        match &self.value {
            AttributeValue::Origin(_) => 1,
            AttributeValue::AsPath(p) => p.encoded_len(asw),
            AttributeValue::NextHop(_)
            | AttributeValue::MultiExitDisc(_)
            | AttributeValue::LocalPref(_)
            | AttributeValue::OriginatorId(_) => 4,
            AttributeValue::AtomicAggregate => 0,
            AttributeValue::Aggregator(_) => asw + 4,
            AttributeValue::Communities(c) => c.len() * 4,
            AttributeValue::ClusterList(c) => c.len() * 4,
            AttributeValue::MpReach(r) => {
                let add_path = params.add_path.contains(r.family);
                5 + next_hop_len(&r.next_hop)
                    + r.nlri.iter().map(|n| nlri_len(n, add_path)).sum::<usize>()
                    + r.unparsed.len()
            }
            AttributeValue::MpUnreach(u) => {
                let add_path = params.add_path.contains(u.family);
                3 + u
                    .withdrawn
                    .iter()
                    .map(|n| nlri_len(n, add_path))
                    .sum::<usize>()
                    + u.unparsed.len()
            }
            AttributeValue::ExtendedCommunities(c) => c.len() * 8,
            AttributeValue::As4Path(p) => p.encoded_len(4),
            AttributeValue::As4Aggregator(_) => 8,
            AttributeValue::LargeCommunities(c) => c.len() * 12,
            AttributeValue::Unknown { data, .. } => data.len(),
        }
    }

    /// Writes flags, type, length and value. The Extended Length bit is set
    /// when the value needs it or the attribute was received with it.
    pub fn encode(
        &self,
        params: &SessionParams,
        out: &mut impl BufMut,
    ) -> Result<(), super::EncodeError> {
        let len = self.value_len(params);
        let type_code = self.type_code();
        if len > u16::MAX as usize {
            return Err(super::EncodeError::AttributeTooLong { type_code, len });
        }
        if let AttributeValue::MpReach(r) = &self.value {
            // Its length field is one octet (RFC 4760 §3).
            let nh = next_hop_len(&r.next_hop);
            if nh > 255 {
                return Err(super::EncodeError::FieldTooLong {
                    what: "MP_REACH_NLRI next hop",
                    len: nh,
                });
            }
        }
        let base = match category(type_code) {
            Some(c) if !matches!(self.value, AttributeValue::Unknown { .. }) => {
                c | (self.flags & flag::PARTIAL)
            }
            _ => self.flags & (flag::OPTIONAL | flag::TRANSITIVE | flag::PARTIAL),
        };
        let extended = len > 255 || self.flags & flag::EXTENDED_LENGTH != 0;
        out.put_u8(base | if extended { flag::EXTENDED_LENGTH } else { 0 });
        out.put_u8(type_code);
        if extended {
            out.put_u16(len as u16);
        } else {
            out.put_u8(len as u8);
        }
        let asw = if params.four_octet_as { 4 } else { 2 };
        match &self.value {
            AttributeValue::Origin(o) => out.put_u8(match o {
                Origin::Igp => 0,
                Origin::Egp => 1,
                Origin::Incomplete => 2,
            }),
            AttributeValue::AsPath(p) => p.encode(asw, out),
            AttributeValue::NextHop(a) | AttributeValue::OriginatorId(a) => {
                out.put_slice(&a.octets())
            }
            AttributeValue::MultiExitDisc(v) | AttributeValue::LocalPref(v) => out.put_u32(*v),
            AttributeValue::AtomicAggregate => {}
            AttributeValue::Aggregator(a) => {
                if asw == 4 {
                    out.put_u32(a.asn);
                } else {
                    out.put_u16(u16::try_from(a.asn).unwrap_or(AS_TRANS));
                }
                out.put_slice(&a.address.octets());
            }
            AttributeValue::Communities(c) => c.iter().for_each(|c| out.put_u32(c.0)),
            AttributeValue::ClusterList(c) => c.iter().for_each(|a| out.put_slice(&a.octets())),
            AttributeValue::MpReach(r) => {
                let add_path = params.add_path.contains(r.family);
                out.put_u16(r.family.afi.0);
                out.put_u8(r.family.safi.0);
                out.put_u8(next_hop_len(&r.next_hop) as u8);
                match &r.next_hop {
                    NextHop::Ipv4(a) => out.put_slice(&a.octets()),
                    NextHop::Ipv6 { global, link_local } => {
                        out.put_slice(&global.octets());
                        if let Some(ll) = link_local {
                            out.put_slice(&ll.octets());
                        }
                    }
                    NextHop::Other(b) => out.put_slice(b),
                }
                out.put_u8(0); // Reserved (RFC 4760 §3)
                r.nlri.iter().for_each(|n| n.encode(add_path, out));
                out.put_slice(&r.unparsed);
            }
            AttributeValue::MpUnreach(u) => {
                let add_path = params.add_path.contains(u.family);
                out.put_u16(u.family.afi.0);
                out.put_u8(u.family.safi.0);
                u.withdrawn.iter().for_each(|n| n.encode(add_path, out));
                out.put_slice(&u.unparsed);
            }
            AttributeValue::ExtendedCommunities(c) => c.iter().for_each(|c| out.put_slice(&c.0)),
            AttributeValue::As4Path(p) => p.encode(4, out),
            AttributeValue::As4Aggregator(a) => {
                out.put_u32(a.asn);
                out.put_slice(&a.address.octets());
            }
            AttributeValue::LargeCommunities(c) => c.iter().for_each(|c| {
                out.put_u32(c.global);
                out.put_u32(c.local1);
                out.put_u32(c.local2);
            }),
            AttributeValue::Unknown { data, .. } => out.put_slice(data),
        }
        Ok(())
    }

    /// Decodes one attribute. `raw` is the whole attribute (header
    /// included), which is the NOTIFICATION data for most errors (RFC 4271
    /// §6.3); `value` is its value part.
    #[inline]
    ///
    /// Returns the value only (the caller pairs it with the flags, writing
    /// the attribute once), and boxes the rare error so the common result
    /// stays small.
    pub(crate) fn decode_value(
        flags: u8,
        type_code: u8,
        src: &AttrSrc<'_>,
        params: &SessionParams,
    ) -> Result<AttributeValue, Box<DecodeError>> {
        use attr_type::*;
        let Some(expected) = category(type_code) else {
            if flags & flag::OPTIONAL == 0 {
                return Err(Box::new(DecodeError::reset(
                    ErrorKind::UnrecognizedWellKnown(type_code),
                    src.raw_bytes(),
                )));
            }
            return Ok(AttributeValue::Unknown {
                type_code,
                data: src.value_bytes(),
            });
        };
        let disposition = disposition_of(type_code);
        let fail = |kind: ErrorKind| Err(malformed(kind, src, disposition));
        let optional_error = |reason: &'static str| {
            malformed(
                ErrorKind::OptionalAttribute { type_code, reason },
                src,
                disposition,
            )
        };
        let partial_ok = expected == OPT_TRANSITIVE;
        if flags & (flag::OPTIONAL | flag::TRANSITIVE) != expected
            || (!partial_ok && flags & flag::PARTIAL != 0)
        {
            return fail(ErrorKind::AttributeFlags { type_code, flags });
        }
        let v = src.value;
        let len = v.len();
        let bad_len = || ErrorKind::AttributeLength { type_code, len };
        let fixed = |n: usize| if len == n { Ok(()) } else { Err(bad_len()) };
        let multiple = |n: usize| {
            if len > 0 && len.is_multiple_of(n) {
                Ok(())
            } else {
                Err(bad_len())
            }
        };
        let u32_at = |i: usize| u32::from_be_bytes([v[i], v[i + 1], v[i + 2], v[i + 3]]);
        let ip_at = |i: usize| Ipv4Addr::new(v[i], v[i + 1], v[i + 2], v[i + 3]);
        let value = match type_code {
            ORIGIN => {
                if let Err(k) = fixed(1) {
                    return fail(k);
                }
                AttributeValue::Origin(match v[0] {
                    0 => Origin::Igp,
                    1 => Origin::Egp,
                    2 => Origin::Incomplete,
                    other => return fail(ErrorKind::InvalidOrigin(other)),
                })
            }
            AS_PATH | AS4_PATH => {
                let width = if type_code == AS4_PATH || params.four_octet_as {
                    4
                } else {
                    2
                };
                let path = match AsPath::decode(v, width) {
                    Ok(p) => p,
                    Err(reason) if type_code == AS_PATH => {
                        return fail(ErrorKind::MalformedAsPath(reason))
                    }
                    Err(reason) => return Err(optional_error(reason)),
                };
                if type_code == AS_PATH {
                    AttributeValue::AsPath(path)
                } else {
                    // RFC 6793 §6: AS4_PATH must not carry confederation segments.
                    if path.segments.iter().any(|s| {
                        matches!(
                            s.kind,
                            super::SegmentType::ConfedSequence | super::SegmentType::ConfedSet
                        )
                    }) {
                        return Err(optional_error("confederation segment in AS4_PATH"));
                    }
                    AttributeValue::As4Path(path)
                }
            }
            NEXT_HOP => {
                if let Err(k) = fixed(4) {
                    return fail(k);
                }
                let a = ip_at(0);
                // RFC 4271 §6.3 / RFC 7606 §7.3: not a usable host address.
                if a.is_unspecified() || a.is_multicast() || a.octets()[0] >= 240 {
                    return fail(ErrorKind::InvalidNextHop(a));
                }
                AttributeValue::NextHop(a)
            }
            MULTI_EXIT_DISC | LOCAL_PREF | ORIGINATOR_ID => {
                if let Err(k) = fixed(4) {
                    return fail(k);
                }
                match type_code {
                    MULTI_EXIT_DISC => AttributeValue::MultiExitDisc(u32_at(0)),
                    LOCAL_PREF => AttributeValue::LocalPref(u32_at(0)),
                    _ => AttributeValue::OriginatorId(ip_at(0)),
                }
            }
            ATOMIC_AGGREGATE => {
                if let Err(k) = fixed(0) {
                    return fail(k);
                }
                AttributeValue::AtomicAggregate
            }
            AGGREGATOR | AS4_AGGREGATOR => {
                let width = if type_code == AS4_AGGREGATOR || params.four_octet_as {
                    4
                } else {
                    2
                };
                if let Err(k) = fixed(width + 4) {
                    return fail(k);
                }
                let asn = if width == 4 {
                    u32_at(0)
                } else {
                    u32::from(u16::from_be_bytes([v[0], v[1]]))
                };
                let agg = Aggregator {
                    asn,
                    address: ip_at(width),
                };
                if type_code == AGGREGATOR {
                    AttributeValue::Aggregator(agg)
                } else {
                    AttributeValue::As4Aggregator(agg)
                }
            }
            COMMUNITIES => {
                if let Err(k) = multiple(4) {
                    return fail(k);
                }
                AttributeValue::Communities(
                    v.chunks_exact(4)
                        .map(|c| Community(u32::from_be_bytes([c[0], c[1], c[2], c[3]])))
                        .collect(),
                )
            }
            CLUSTER_LIST => {
                if let Err(k) = multiple(4) {
                    return fail(k);
                }
                AttributeValue::ClusterList(
                    v.chunks_exact(4)
                        .map(|c| Ipv4Addr::new(c[0], c[1], c[2], c[3]))
                        .collect(),
                )
            }
            EXTENDED_COMMUNITIES => {
                if let Err(k) = multiple(8) {
                    return fail(k);
                }
                AttributeValue::ExtendedCommunities(
                    v.chunks_exact(8)
                        .map(|c| {
                            let mut a = [0u8; 8];
                            a.copy_from_slice(c);
                            ExtendedCommunity(a)
                        })
                        .collect(),
                )
            }
            LARGE_COMMUNITY => {
                if let Err(k) = multiple(12) {
                    return fail(k);
                }
                AttributeValue::LargeCommunities(
                    v.chunks_exact(12)
                        .map(|c| LargeCommunity {
                            global: u32::from_be_bytes([c[0], c[1], c[2], c[3]]),
                            local1: u32::from_be_bytes([c[4], c[5], c[6], c[7]]),
                            local2: u32::from_be_bytes([c[8], c[9], c[10], c[11]]),
                        })
                        .collect(),
                )
            }
            MP_REACH_NLRI => AttributeValue::MpReach(Box::new(
                decode_mp_reach(src, params).map_err(optional_error)?,
            )),
            MP_UNREACH_NLRI => AttributeValue::MpUnreach(Box::new(
                decode_mp_unreach(src, params).map_err(optional_error)?,
            )),
            // `category` knows no other types.
            _ => AttributeValue::Unknown {
                type_code,
                data: src.value_bytes(),
            },
        };
        Ok(value)
    }
}

/// The error for a malformed attribute; its data is the whole attribute
/// (RFC 4271 §6.3). Out of line: errors are rare.
#[cold]
#[inline(never)]
fn malformed(kind: ErrorKind, src: &AttrSrc<'_>, disposition: Disposition) -> Box<DecodeError> {
    Box::new(DecodeError::new(kind, src.raw_bytes(), disposition))
}

fn next_hop_len(nh: &NextHop) -> usize {
    match nh {
        NextHop::Ipv4(_) => 4,
        NextHop::Ipv6 { link_local, .. } => 16 + if link_local.is_some() { 16 } else { 0 },
        NextHop::Other(b) => b.len(),
    }
}

fn nlri_len(n: &Nlri, add_path: bool) -> usize {
    (if add_path { 4 } else { 0 }) + 1 + usize::from(n.prefix.prefix_len()).div_ceil(8)
}

fn decode_mp_reach(src: &AttrSrc<'_>, params: &SessionParams) -> Result<MpReach, &'static str> {
    let v = src.value;
    if v.len() < 5 {
        return Err("shorter than AFI, SAFI and next-hop length");
    }
    let family = Family::new(Afi(u16::from_be_bytes([v[0], v[1]])), Safi(v[2]));
    let nh_len = v[3] as usize;
    let nh = v
        .get(4..4 + nh_len)
        .ok_or("next hop overruns the attribute")?;
    // One reserved octet follows the next hop (RFC 4760 §3); its value is ignored.
    if v.len() < 5 + nh_len {
        return Err("reserved octet missing");
    }
    let nlri_bytes = &v[5 + nh_len..];
    if !decodes_prefixes(family) {
        return Ok(MpReach {
            family,
            next_hop: NextHop::Other(src.value_bytes().slice(4..4 + nh_len)),
            nlri: Vec::new(),
            unparsed: src.value_bytes().slice(5 + nh_len..),
        });
    }
    let v6 = |b: &[u8]| {
        let mut a = [0u8; 16];
        a.copy_from_slice(b);
        Ipv6Addr::from(a)
    };
    let next_hop = match (family.afi, nh_len) {
        (Afi::IPV4, 4) => NextHop::Ipv4(Ipv4Addr::new(nh[0], nh[1], nh[2], nh[3])),
        // IPv6 next hop for IPv6 NLRI (RFC 2545 §3) or, with the extended
        // next hop capability, for IPv4 NLRI (RFC 8950 §3).
        (_, 16) => NextHop::Ipv6 {
            global: v6(nh),
            link_local: None,
        },
        (_, 32) => NextHop::Ipv6 {
            global: v6(&nh[..16]),
            link_local: Some(v6(&nh[16..])),
        },
        _ => return Err("next-hop length does not fit the address family"),
    };
    let add_path = params.add_path.contains(family);
    let ipv6 = family.afi == Afi::IPV6;
    let mut nlri = Vec::new();
    nlri::decode_prefixes(nlri_bytes, ipv6, add_path, &mut nlri)?;
    Ok(MpReach {
        family,
        next_hop,
        nlri,
        unparsed: Bytes::new(),
    })
}

fn decode_mp_unreach(src: &AttrSrc<'_>, params: &SessionParams) -> Result<MpUnreach, &'static str> {
    let v = src.value;
    if v.len() < 3 {
        return Err("shorter than AFI and SAFI");
    }
    let family = Family::new(Afi(u16::from_be_bytes([v[0], v[1]])), Safi(v[2]));
    if !decodes_prefixes(family) {
        return Ok(MpUnreach {
            family,
            withdrawn: Vec::new(),
            unparsed: src.value_bytes().slice(3..),
        });
    }
    let add_path = params.add_path.contains(family);
    let ipv6 = family.afi == Afi::IPV6;
    let mut withdrawn = Vec::new();
    nlri::decode_prefixes(&v[3..], ipv6, add_path, &mut withdrawn)?;
    Ok(MpUnreach {
        family,
        withdrawn,
        unparsed: Bytes::new(),
    })
}

impl fmt::Display for Community {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.0 >> 16, self.0 & 0xffff)
    }
}

impl fmt::Display for LargeCommunity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.global, self.local1, self.local2)
    }
}

impl fmt::Display for ExtendedCommunity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        let kind = match b[1] {
            0x02 => "rt",
            0x03 => "ro",
            _ => "",
        };
        match (b[0], kind) {
            // Two-octet AS specific (RFC 4360 §3.1).
            (0x00, k) if !k.is_empty() => write!(
                f,
                "{k}:{}:{}",
                u16::from_be_bytes([b[2], b[3]]),
                u32::from_be_bytes([b[4], b[5], b[6], b[7]])
            ),
            // IPv4 address specific (RFC 4360 §3.2).
            (0x01, k) if !k.is_empty() => write!(
                f,
                "{k}:{}:{}",
                Ipv4Addr::new(b[2], b[3], b[4], b[5]),
                u16::from_be_bytes([b[6], b[7]])
            ),
            // Four-octet AS specific (RFC 5668).
            (0x02, k) if !k.is_empty() => write!(
                f,
                "{k}:{}:{}",
                u32::from_be_bytes([b[2], b[3], b[4], b[5]]),
                u16::from_be_bytes([b[6], b[7]])
            ),
            _ => f.write_str(&super::hex::encode(&b)),
        }
    }
}

macro_rules! display_serialize {
    ($($t:ty),*) => {$(
        impl Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
    )*};
}
display_serialize!(Community, LargeCommunity, ExtendedCommunity);

/// Where an attribute sits: plain slices for decoding, and the message's
/// `Bytes` to make owned views from only when one is kept (unknown
/// attributes, opaque next hops) or reported (error data).
pub(crate) struct AttrSrc<'a> {
    pub(crate) owner: &'a Bytes,
    pub(crate) raw: &'a [u8],
    pub(crate) value: &'a [u8],
}

impl AttrSrc<'_> {
    fn raw_bytes(&self) -> Bytes {
        self.owner.slice_ref(self.raw)
    }
    fn value_bytes(&self) -> Bytes {
        self.owner.slice_ref(self.value)
    }
}
