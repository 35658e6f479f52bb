//! Capabilities advertised in OPEN (RFC 5492) and the ones felix understands.

use super::error::{DecodeError, ErrorKind};
use super::family::{Afi, Family, Safi};
use bytes::{BufMut, Bytes, BytesMut};
use serde::Serialize;

/// Capability codes (IANA "Capability Codes" registry).
pub mod cap_code {
    pub const MULTIPROTOCOL: u8 = 1;
    pub const ROUTE_REFRESH: u8 = 2;
    pub const EXTENDED_NEXT_HOP: u8 = 5;
    pub const EXTENDED_MESSAGE: u8 = 6;
    pub const GRACEFUL_RESTART: u8 = 64;
    pub const FOUR_OCTET_AS: u8 = 65;
    pub const ADD_PATH: u8 = 69;
    pub const ENHANCED_ROUTE_REFRESH: u8 = 70;
    pub const FQDN: u8 = 73;
}

/// One capability. Unknown codes, and known codes whose content this codec
/// does not accept but the RFC says to ignore rather than reject, are kept
/// as [`Capability::Unknown`] so they can be shown and passed on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "capability", rename_all = "kebab-case")]
pub enum Capability {
    /// RFC 4760 §8.
    Multiprotocol { family: Family },
    /// RFC 2918.
    RouteRefresh,
    /// RFC 8950 §3: NLRI of `family` may carry a next hop of `next_hop_afi`.
    ExtendedNextHop { entries: Vec<(Family, Afi)> },
    /// RFC 8654.
    ExtendedMessage,
    /// RFC 4724 §3 (with the N bit of RFC 8538).
    GracefulRestart(GracefulRestart),
    /// RFC 6793 §3.
    FourOctetAs { asn: u32 },
    /// RFC 7911 §4.
    AddPath {
        entries: Vec<(Family, AddPathDirection)>,
    },
    /// RFC 7313 §3.
    EnhancedRouteRefresh,
    /// draft-walton-bgp-hostname-capability: the speaker's host and domain name.
    Fqdn { hostname: String, domain: String },
    Unknown {
        code: u8,
        #[serde(serialize_with = "super::hex::serialize")]
        data: Bytes,
    },
}

/// Graceful restart parameters (RFC 4724 §3).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GracefulRestart {
    /// R bit: the sender has restarted.
    pub restarting: bool,
    /// N bit (RFC 8538): the sender supports graceful NOTIFICATION.
    pub notification: bool,
    /// Seconds the peer should keep our routes after the session drops (12 bits).
    pub restart_time: u16,
    pub families: Vec<GracefulRestartFamily>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GracefulRestartFamily {
    pub family: Family,
    /// F bit: forwarding state was kept across the restart.
    pub forwarding_preserved: bool,
}

/// ADD-PATH Send/Receive field (RFC 7911 §4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AddPathDirection {
    Receive,
    Send,
    Both,
}

impl AddPathDirection {
    pub fn receives(self) -> bool {
        matches!(self, Self::Receive | Self::Both)
    }
    pub fn sends(self) -> bool {
        matches!(self, Self::Send | Self::Both)
    }
    fn from_wire(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::Receive),
            2 => Some(Self::Send),
            3 => Some(Self::Both),
            _ => None,
        }
    }
    fn to_wire(self) -> u8 {
        match self {
            Self::Receive => 1,
            Self::Send => 2,
            Self::Both => 3,
        }
    }
}

fn malformed(code: u8, reason: &'static str, raw: &[u8]) -> DecodeError {
    DecodeError::reset(
        ErrorKind::MalformedCapability { code, reason },
        Bytes::copy_from_slice(raw),
    )
}

impl Capability {
    /// The capability code it is sent with.
    pub fn code(&self) -> u8 {
        use cap_code::*;
        match self {
            Capability::Multiprotocol { .. } => MULTIPROTOCOL,
            Capability::RouteRefresh => ROUTE_REFRESH,
            Capability::ExtendedNextHop { .. } => EXTENDED_NEXT_HOP,
            Capability::ExtendedMessage => EXTENDED_MESSAGE,
            Capability::GracefulRestart(_) => GRACEFUL_RESTART,
            Capability::FourOctetAs { .. } => FOUR_OCTET_AS,
            Capability::AddPath { .. } => ADD_PATH,
            Capability::EnhancedRouteRefresh => ENHANCED_ROUTE_REFRESH,
            Capability::Fqdn { .. } => FQDN,
            Capability::Unknown { code, .. } => *code,
        }
    }

    /// Decodes one capability value. `raw` is the whole TLV, for error data.
    pub(crate) fn decode(code: u8, value: &Bytes, raw: &[u8]) -> Result<Self, DecodeError> {
        use cap_code::*;
        let v = &value[..];
        let unknown = || Capability::Unknown {
            code,
            data: value.clone(),
        };
        Ok(match code {
            MULTIPROTOCOL => {
                if v.len() != 4 {
                    return Err(malformed(code, "length is not 4", raw));
                }
                Capability::Multiprotocol {
                    family: Family::new(Afi(u16::from_be_bytes([v[0], v[1]])), Safi(v[3])),
                }
            }
            ROUTE_REFRESH | EXTENDED_MESSAGE | ENHANCED_ROUTE_REFRESH => {
                if !v.is_empty() {
                    return Err(malformed(code, "length is not 0", raw));
                }
                match code {
                    ROUTE_REFRESH => Capability::RouteRefresh,
                    EXTENDED_MESSAGE => Capability::ExtendedMessage,
                    _ => Capability::EnhancedRouteRefresh,
                }
            }
            EXTENDED_NEXT_HOP => {
                if !v.len().is_multiple_of(6) {
                    return Err(malformed(code, "length is not a multiple of 6", raw));
                }
                let entries = v
                    .chunks_exact(6)
                    .map(|c| {
                        (
                            // RFC 8950 §3: the NLRI SAFI is two octets here.
                            Family::new(
                                Afi(u16::from_be_bytes([c[0], c[1]])),
                                Safi(u16::from_be_bytes([c[2], c[3]]).min(255) as u8),
                            ),
                            Afi(u16::from_be_bytes([c[4], c[5]])),
                        )
                    })
                    .collect::<Vec<_>>();
                // A SAFI above 255 cannot exist; keep such an entry opaque.
                if v.chunks_exact(6).any(|c| c[2] != 0) {
                    return Ok(unknown());
                }
                Capability::ExtendedNextHop { entries }
            }
            GRACEFUL_RESTART => {
                if v.len() < 2 || !(v.len() - 2).is_multiple_of(4) {
                    return Err(malformed(code, "length is not 2 + 4n", raw));
                }
                let flags = v[0] >> 4;
                let families = v[2..]
                    .chunks_exact(4)
                    .map(|c| GracefulRestartFamily {
                        family: Family::new(Afi(u16::from_be_bytes([c[0], c[1]])), Safi(c[2])),
                        forwarding_preserved: c[3] & 0x80 != 0,
                    })
                    .collect();
                // Reserved bits are kept by falling back to opaque form.
                if v[0] & 0x30 != 0 || v[2..].chunks_exact(4).any(|c| c[3] & 0x7f != 0) {
                    return Ok(unknown());
                }
                Capability::GracefulRestart(GracefulRestart {
                    restarting: flags & 0x8 != 0,
                    notification: flags & 0x4 != 0,
                    restart_time: u16::from_be_bytes([v[0] & 0x0f, v[1]]),
                    families,
                })
            }
            FOUR_OCTET_AS => {
                if v.len() != 4 {
                    return Err(malformed(code, "length is not 4", raw));
                }
                Capability::FourOctetAs {
                    asn: u32::from_be_bytes([v[0], v[1], v[2], v[3]]),
                }
            }
            ADD_PATH => {
                if !v.len().is_multiple_of(4) {
                    return Err(malformed(code, "length is not a multiple of 4", raw));
                }
                let mut entries = Vec::with_capacity(v.len() / 4);
                for c in v.chunks_exact(4) {
                    match AddPathDirection::from_wire(c[3]) {
                        Some(dir) => entries.push((
                            Family::new(Afi(u16::from_be_bytes([c[0], c[1]])), Safi(c[2])),
                            dir,
                        )),
                        // RFC 7911 §4: other values: treat as not understood.
                        None => return Ok(unknown()),
                    }
                }
                Capability::AddPath { entries }
            }
            FQDN => {
                let parsed = (|| {
                    let hl = *v.first()? as usize;
                    let host = v.get(1..1 + hl)?;
                    let dl = *v.get(1 + hl)? as usize;
                    let dom = v.get(2 + hl..2 + hl + dl)?;
                    if 2 + hl + dl != v.len() {
                        return None;
                    }
                    Some((
                        String::from_utf8(host.to_vec()).ok()?,
                        String::from_utf8(dom.to_vec()).ok()?,
                    ))
                })();
                match parsed {
                    Some((hostname, domain)) => Capability::Fqdn { hostname, domain },
                    None => unknown(),
                }
            }
            _ => unknown(),
        })
    }

    /// Length of the capability value.
    fn value_len(&self) -> usize {
        match self {
            Capability::Multiprotocol { .. } | Capability::FourOctetAs { .. } => 4,
            Capability::RouteRefresh
            | Capability::ExtendedMessage
            | Capability::EnhancedRouteRefresh => 0,
            Capability::ExtendedNextHop { entries } => entries.len() * 6,
            Capability::GracefulRestart(gr) => 2 + gr.families.len() * 4,
            Capability::AddPath { entries } => entries.len() * 4,
            Capability::Fqdn { hostname, domain } => 2 + hostname.len() + domain.len(),
            Capability::Unknown { data, .. } => data.len(),
        }
    }

    /// Appends the capability TLV (code, length, value).
    pub(crate) fn encode(&self, out: &mut BytesMut) -> Result<(), super::EncodeError> {
        let len = self.value_len();
        if len > 255 {
            return Err(super::EncodeError::FieldTooLong {
                what: "capability",
                len,
            });
        }
        out.put_u8(self.code());
        out.put_u8(len as u8);
        match self {
            Capability::Multiprotocol { family } => {
                out.put_u16(family.afi.0);
                out.put_u8(0);
                out.put_u8(family.safi.0);
            }
            Capability::RouteRefresh
            | Capability::ExtendedMessage
            | Capability::EnhancedRouteRefresh => {}
            Capability::ExtendedNextHop { entries } => {
                for (family, nh_afi) in entries {
                    out.put_u16(family.afi.0);
                    out.put_u16(family.safi.0 as u16);
                    out.put_u16(nh_afi.0);
                }
            }
            Capability::GracefulRestart(gr) => {
                let flags = (u16::from(gr.restarting) << 15)
                    | (u16::from(gr.notification) << 14)
                    | (gr.restart_time & 0x0fff);
                out.put_u16(flags);
                for f in &gr.families {
                    out.put_u16(f.family.afi.0);
                    out.put_u8(f.family.safi.0);
                    out.put_u8(if f.forwarding_preserved { 0x80 } else { 0 });
                }
            }
            Capability::FourOctetAs { asn } => out.put_u32(*asn),
            Capability::AddPath { entries } => {
                for (family, dir) in entries {
                    out.put_u16(family.afi.0);
                    out.put_u8(family.safi.0);
                    out.put_u8(dir.to_wire());
                }
            }
            Capability::Fqdn { hostname, domain } => {
                out.put_u8(hostname.len() as u8);
                out.put_slice(hostname.as_bytes());
                out.put_u8(domain.len() as u8);
                out.put_slice(domain.as_bytes());
            }
            Capability::Unknown { data, .. } => out.put_slice(data),
        }
        Ok(())
    }
}
