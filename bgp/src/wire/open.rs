//! OPEN (RFC 4271 §4.2), with capabilities in optional parameters (RFC 5492)
//! and the extended optional parameters length (RFC 9072).

use super::capability::{AddPathDirection, Capability, GracefulRestart};
use super::error::{DecodeError, ErrorKind};
use super::family::Family;
use super::{EncodeError, AS_TRANS};
use super::{In, NomResult};
use bytes::{BufMut, Bytes, BytesMut};
use nom::multi::length_data;
use nom::number::complete::be_u8;
use nom::sequence::pair;
use serde::Serialize;
use std::net::Ipv4Addr;

/// Optional parameter type carrying capabilities (RFC 5492 §4).
const PARAM_CAPABILITIES: u8 = 2;
/// Marker of the extended optional parameters form (RFC 9072 §2).
const PARAM_EXTENDED: u8 = 255;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Open {
    pub version: u8,
    /// "My Autonomous System": AS_TRANS when the real AS needs 4 octets.
    pub my_as: u16,
    pub hold_time: u16,
    pub bgp_id: Ipv4Addr,
    pub capabilities: Vec<Capability>,
    /// How the capabilities were packed into optional parameters, so that a
    /// decoded OPEN re-encodes byte for byte.
    #[serde(skip_serializing_if = "CapabilityLayout::is_grouped")]
    pub capability_layout: CapabilityLayout,
}

/// RFC 5492 §4 allows all capabilities in one optional parameter (what felix
/// and BIRD send) or several; FRR and ExaBGP send one per parameter. Any
/// other split decodes as `Grouped` and re-encodes in that form.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CapabilityLayout {
    #[default]
    Grouped,
    OnePerParameter,
}

impl CapabilityLayout {
    fn is_grouped(&self) -> bool {
        *self == CapabilityLayout::Grouped
    }
}

impl Open {
    /// An OPEN for `asn`, putting AS_TRANS in the 2-octet field when needed
    /// and always sending the 4-octet AS capability (RFC 6793 §3).
    pub fn new(
        asn: u32,
        hold_time: u16,
        bgp_id: Ipv4Addr,
        mut capabilities: Vec<Capability>,
    ) -> Self {
        if !capabilities
            .iter()
            .any(|c| matches!(c, Capability::FourOctetAs { .. }))
        {
            capabilities.push(Capability::FourOctetAs { asn });
        }
        Open {
            version: 4,
            my_as: u16::try_from(asn).unwrap_or(AS_TRANS),
            hold_time,
            bgp_id,
            capabilities,
            capability_layout: CapabilityLayout::Grouped,
        }
    }

    /// The 4-octet AS capability's value, if sent.
    pub fn four_octet_as(&self) -> Option<u32> {
        self.capabilities.iter().find_map(|c| match c {
            Capability::FourOctetAs { asn } => Some(*asn),
            _ => None,
        })
    }

    /// The sender's AS: from the 4-octet capability if present.
    pub fn asn(&self) -> u32 {
        self.four_octet_as().unwrap_or(u32::from(self.my_as))
    }

    pub fn extended_message(&self) -> bool {
        self.capabilities
            .iter()
            .any(|c| matches!(c, Capability::ExtendedMessage))
    }

    /// Families announced with the multiprotocol capability.
    pub fn families(&self) -> impl Iterator<Item = Family> + '_ {
        self.capabilities.iter().filter_map(|c| match c {
            Capability::Multiprotocol { family } => Some(*family),
            _ => None,
        })
    }

    /// ADD-PATH entries, from every ADD-PATH capability sent.
    pub fn add_path(&self) -> impl Iterator<Item = (Family, AddPathDirection)> + '_ {
        self.capabilities
            .iter()
            .filter_map(|c| match c {
                Capability::AddPath { entries } => Some(entries.iter().copied()),
                _ => None,
            })
            .flatten()
    }

    pub fn graceful_restart(&self) -> Option<&GracefulRestart> {
        self.capabilities.iter().find_map(|c| match c {
            Capability::GracefulRestart(gr) => Some(gr),
            _ => None,
        })
    }

    pub(crate) fn decode_body(body: &Bytes) -> Result<Self, DecodeError> {
        let b = &body[..];
        // The header check guarantees at least 10 bytes of body.
        if b.len() < 10 {
            return Err(DecodeError::reset(
                ErrorKind::Truncated {
                    needed: 10,
                    available: b.len(),
                },
                Bytes::new(),
            ));
        }
        let version = b[0];
        if version != 4 {
            // RFC 4271 §6.2: data is the largest supported version, 2 octets.
            return Err(DecodeError::reset(
                ErrorKind::UnsupportedVersion(version),
                Bytes::from_static(&[0, 4]),
            ));
        }
        let my_as = u16::from_be_bytes([b[1], b[2]]);
        let hold_time = u16::from_be_bytes([b[3], b[4]]);
        let bgp_id = Ipv4Addr::new(b[5], b[6], b[7], b[8]);
        if my_as == 0 {
            // RFC 7607 §3: AS 0 in OPEN is a Bad Peer AS.
            return Err(DecodeError::reset(
                ErrorKind::BadPeerAs(0),
                Bytes::copy_from_slice(&b[1..3]),
            ));
        }
        if hold_time == 1 || hold_time == 2 {
            return Err(DecodeError::reset(
                ErrorKind::UnacceptableHoldTime(hold_time),
                Bytes::new(),
            ));
        }
        // RFC 6286 §2.1: any non-zero 32-bit value is a valid identifier.
        if bgp_id.is_unspecified() {
            return Err(DecodeError::reset(
                ErrorKind::BadBgpIdentifier(bgp_id),
                Bytes::new(),
            ));
        }
        let mut opt_len = b[9] as usize;
        let mut pos = 10;
        let mut extended = false;
        if opt_len == 255 && b.get(10) == Some(&PARAM_EXTENDED) {
            // RFC 9072 §2: non-extended type 255, then a 2-octet length.
            let l = b
                .get(11..13)
                .ok_or_else(|| params_error("extended length missing"))?;
            opt_len = u16::from_be_bytes([l[0], l[1]]) as usize;
            pos = 13;
            extended = true;
        }
        if pos + opt_len != b.len() {
            return Err(params_error(
                "optional parameters length disagrees with message length",
            ));
        }
        let mut capabilities = Vec::new();
        let mut params = 0usize;
        let mut one_each = true;
        while pos < b.len() {
            let hdr = if extended { 3 } else { 2 };
            let h = b
                .get(pos..pos + hdr)
                .ok_or_else(|| params_error("parameter header overruns"))?;
            let ptype = h[0];
            let plen = if extended {
                u16::from_be_bytes([h[1], h[2]]) as usize
            } else {
                h[1] as usize
            };
            let start = pos + hdr;
            let end = start + plen;
            if end > b.len() {
                return Err(params_error("parameter value overruns"));
            }
            if ptype != PARAM_CAPABILITIES {
                return Err(DecodeError::reset(
                    ErrorKind::UnsupportedOptionalParameter(ptype),
                    Bytes::new(),
                ));
            }
            params += 1;
            let before = capabilities.len();
            let mut caps = &b[start..end];
            while !caps.is_empty() {
                let (after, (ccode, cvalue)) = capability_tlv(caps)
                    .map_err(|_| params_error("capability overruns its parameter"))?;
                let raw = &caps[..caps.len() - after.len()];
                let value = body.slice_ref(cvalue);
                capabilities.push(Capability::decode(ccode, &value, raw)?);
                caps = after;
            }
            one_each &= capabilities.len() == before + 1;
            pos = end;
        }
        let capability_layout = if params > 1 && one_each {
            CapabilityLayout::OnePerParameter
        } else {
            CapabilityLayout::Grouped
        };
        Ok(Open {
            version,
            my_as,
            hold_time,
            bgp_id,
            capabilities,
            capability_layout,
        })
    }

    pub(crate) fn encode_body(&self, out: &mut BytesMut) -> Result<(), EncodeError> {
        out.put_u8(self.version);
        out.put_u16(self.my_as);
        out.put_u16(self.hold_time);
        out.put_slice(&self.bgp_id.octets());
        // Each group of capabilities goes in one optional parameter: one
        // group of all of them, or one group per capability.
        let mut groups: Vec<BytesMut> = Vec::new();
        for c in &self.capabilities {
            if groups.is_empty() || self.capability_layout == CapabilityLayout::OnePerParameter {
                groups.push(BytesMut::new());
            }
            if let Some(g) = groups.last_mut() {
                c.encode(g)?;
            }
        }
        let short = groups.iter().all(|g| g.len() <= 255)
            && groups.iter().map(|g| g.len() + 2).sum::<usize>() <= 255;
        if short {
            out.put_u8(groups.iter().map(|g| g.len() + 2).sum::<usize>() as u8);
            for g in &groups {
                out.put_u8(PARAM_CAPABILITIES);
                out.put_u8(g.len() as u8);
                out.put_slice(g);
            }
        } else {
            // RFC 9072: extended form, 2-octet parameter lengths.
            let total: usize = groups.iter().map(|g| g.len() + 3).sum();
            if total > u16::MAX as usize {
                return Err(EncodeError::FieldTooLong {
                    what: "optional parameters",
                    len: total,
                });
            }
            out.put_u8(255);
            out.put_u8(PARAM_EXTENDED);
            out.put_u16(total as u16);
            for g in &groups {
                out.put_u8(PARAM_CAPABILITIES);
                out.put_u16(g.len() as u16);
                out.put_slice(g);
            }
        }
        Ok(())
    }
}

fn params_error(reason: &'static str) -> DecodeError {
    DecodeError::reset(ErrorKind::MalformedOptionalParameters(reason), Bytes::new())
}

/// One capability: code, then its value behind a 1-octet length (RFC 5492 §4).
fn capability_tlv(i: In<'_>) -> NomResult<'_, (u8, &[u8])> {
    pair(be_u8, length_data(be_u8))(i)
}
