//! UPDATE (RFC 4271 §4.3) with RFC 7606 revised error handling.

use super::as_path::{AsPath, AS_TRANS};
use super::attribute::{
    attr_type, flag, Aggregator, AttributeValue, MpReach, MpUnreach, PathAttribute,
};
use super::error::{DecodeError, Disposition, ErrorKind};
use super::family::Family;
use super::nlri::{self, Nlri};
use super::{EncodeError, SessionParams};
use super::{In, NomResult};
use bytes::{BufMut, Bytes, BytesMut};
use nom::bytes::complete::take;
use nom::multi::length_data;
use nom::number::complete::{be_u16, be_u8};
use serde::Serialize;
use std::net::Ipv4Addr;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Update {
    /// IPv4 unicast prefixes in the Withdrawn Routes field.
    pub withdrawn: Vec<Nlri>,
    pub attributes: Vec<PathAttribute>,
    /// IPv4 unicast prefixes in the NLRI field.
    pub nlri: Vec<Nlri>,
    /// Malformations that did not end the session (RFC 7606): the
    /// attributes they concern are not in `attributes`. If any has
    /// [`Disposition::TreatAsWithdraw`], every prefix this UPDATE announces
    /// must be handled as withdrawn (see [`Update::treat_as_withdraw`]).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub faults: Vec<DecodeError>,
}

/// Bitmap of attribute type codes seen.
#[derive(Default)]
struct TypeSet([u64; 4]);

impl TypeSet {
    /// Marks `t`; returns whether it was already marked.
    fn insert(&mut self, t: u8) -> bool {
        let (w, b) = ((t >> 6) as usize, 1u64 << (t & 63));
        let seen = self.0[w] & b != 0;
        self.0[w] |= b;
        seen
    }
    fn contains(&self, t: u8) -> bool {
        self.0[(t >> 6) as usize] & (1u64 << (t & 63)) != 0
    }
}

impl Update {
    /// The End-of-RIB marker for `family` (RFC 4724 §2).
    pub fn end_of_rib(family: Family) -> Self {
        if family == Family::IPV4_UNICAST {
            return Update::default();
        }
        Update {
            attributes: vec![PathAttribute::new(AttributeValue::MpUnreach(Box::new(
                MpUnreach {
                    family,
                    withdrawn: Vec::new(),
                    unparsed: Bytes::new(),
                },
            )))],
            ..Update::default()
        }
    }

    /// If this UPDATE is an End-of-RIB marker, its family (RFC 4724 §2).
    pub fn is_end_of_rib(&self) -> Option<Family> {
        if !self.withdrawn.is_empty() || !self.nlri.is_empty() {
            return None;
        }
        match self.attributes.as_slice() {
            [] if self.faults.is_empty() => Some(Family::IPV4_UNICAST),
            [PathAttribute {
                value: AttributeValue::MpUnreach(u),
                ..
            }] if u.withdrawn.is_empty() && u.unparsed.is_empty() => Some(u.family),
            _ => None,
        }
    }

    /// Whether RFC 7606 says to handle every announced prefix as withdrawn.
    pub fn treat_as_withdraw(&self) -> bool {
        self.faults
            .iter()
            .any(|f| f.disposition == Disposition::TreatAsWithdraw)
    }

    pub fn attribute(&self, type_code: u8) -> Option<&AttributeValue> {
        self.attributes
            .iter()
            .find(|a| a.type_code() == type_code)
            .map(|a| &a.value)
    }

    pub fn as_path(&self) -> Option<&AsPath> {
        match self.attribute(attr_type::AS_PATH)? {
            AttributeValue::AsPath(p) => Some(p),
            _ => None,
        }
    }

    pub fn next_hop(&self) -> Option<Ipv4Addr> {
        match self.attribute(attr_type::NEXT_HOP)? {
            AttributeValue::NextHop(a) => Some(*a),
            _ => None,
        }
    }

    pub fn mp_reach(&self) -> Option<&MpReach> {
        match self.attribute(attr_type::MP_REACH_NLRI)? {
            AttributeValue::MpReach(r) => Some(r),
            _ => None,
        }
    }

    pub fn mp_unreach(&self) -> Option<&MpUnreach> {
        match self.attribute(attr_type::MP_UNREACH_NLRI)? {
            AttributeValue::MpUnreach(u) => Some(u),
            _ => None,
        }
    }

    /// Number of prefixes announced (NLRI field and MP_REACH_NLRI).
    pub fn announced_count(&self) -> usize {
        self.nlri.len() + self.mp_reach().map_or(0, |r| r.nlri.len())
    }

    /// Number of prefixes withdrawn (Withdrawn Routes and MP_UNREACH_NLRI).
    pub fn withdrawn_count(&self) -> usize {
        self.withdrawn.len() + self.mp_unreach().map_or(0, |u| u.withdrawn.len())
    }

    /// The real AS path and aggregator, as RFC 6793 §4.2.3 rebuilds them
    /// from AS4_PATH / AS4_AGGREGATOR on a session without 4-octet AS
    /// support. On a 4-octet session AS4_* are ignored (RFC 6793 §4.1).
    pub fn effective_as_path(
        &self,
        params: &SessionParams,
    ) -> (Option<AsPath>, Option<Aggregator>) {
        let path = self.as_path().cloned();
        let agg = match self.attribute(attr_type::AGGREGATOR) {
            Some(AttributeValue::Aggregator(a)) => Some(*a),
            _ => None,
        };
        if params.four_octet_as {
            return (path, agg);
        }
        let as4_agg = match self.attribute(attr_type::AS4_AGGREGATOR) {
            Some(AttributeValue::As4Aggregator(a)) => Some(*a),
            _ => None,
        };
        // An AGGREGATOR not holding AS_TRANS means AS4_* came from elsewhere
        // and both are ignored.
        if let Some(a) = agg {
            if a.asn != u32::from(AS_TRANS) {
                return (path, agg);
            }
        }
        let agg = as4_agg.or(agg);
        let as4 = match self.attribute(attr_type::AS4_PATH) {
            Some(AttributeValue::As4Path(p)) => Some(p),
            _ => None,
        };
        match (path, as4) {
            (Some(p), Some(p4)) => (Some(p.merge_as4(p4)), agg),
            (p, _) => (p, agg),
        }
    }

    pub(crate) fn decode_body(
        msg: &Bytes,
        body: &[u8],
        params: &SessionParams,
    ) -> Result<Self, DecodeError> {
        let (withdrawn_field, attr_field, nlri_field) = update_sections(body)
            .map(|(_, s)| s)
            .map_err(|_| DecodeError::reset(ErrorKind::UpdateLengthsInconsistent, Bytes::new()))?;
        let network_error =
            |reason| DecodeError::reset(ErrorKind::InvalidNetworkField(reason), Bytes::new());

        let v4_add_path = params.add_path.contains(Family::IPV4_UNICAST);
        let mut withdrawn = Vec::new();
        nlri::decode_prefixes(withdrawn_field, false, v4_add_path, &mut withdrawn)
            .map_err(network_error)?;

        let mut attributes = Vec::with_capacity(8);
        let mut faults = Vec::new();
        let mut seen = TypeSet::default();
        let mut duplicated = TypeSet::default();
        let mut rest = attr_field;
        while !rest.is_empty() {
            let Ok((after, (flags, type_code, hdr_len, value))) = attribute_tlv(rest) else {
                // RFC 7606 §4: treat-as-withdraw, unless MP_REACH/MP_UNREACH
                // was seen: its NLRI can then not be trusted to be complete.
                let mp = seen.contains(attr_type::MP_REACH_NLRI)
                    || seen.contains(attr_type::MP_UNREACH_NLRI);
                let d = if mp {
                    Disposition::SessionReset
                } else {
                    Disposition::TreatAsWithdraw
                };
                let e = DecodeError::new(ErrorKind::AttributeOverrun, Bytes::new(), d);
                if mp {
                    return Err(e);
                }
                faults.push(e);
                break;
            };
            let src = super::attribute::AttrSrc {
                owner: msg,
                raw: &rest[..hdr_len + value.len()],
                value,
            };
            rest = after;
            if seen.insert(type_code) {
                // One fault per repeated type is enough to report it, and
                // keeps a message of repeated 3-byte attributes from growing
                // the fault list with its length.
                if duplicated.insert(type_code) {
                    continue;
                }
                let mp = type_code == attr_type::MP_REACH_NLRI
                    || type_code == attr_type::MP_UNREACH_NLRI;
                // RFC 7606 §3 g: repeated MP_* resets; others: keep the first.
                let e = DecodeError::new(
                    ErrorKind::DuplicateAttribute(type_code),
                    Bytes::new(),
                    if mp {
                        Disposition::SessionReset
                    } else {
                        Disposition::AttributeDiscard
                    },
                );
                if mp {
                    return Err(e);
                }
                faults.push(e);
                continue;
            }
            match PathAttribute::decode_value(flags, type_code, &src, params) {
                Ok(value) => attributes.push(PathAttribute {
                    flags: flags & 0xf0,
                    value,
                }),
                Err(e) if e.disposition == Disposition::SessionReset => return Err(*e),
                Err(e) => faults.push(*e),
            }
        }

        let mut nlri = Vec::new();
        nlri::decode_prefixes(nlri_field, false, v4_add_path, &mut nlri).map_err(network_error)?;

        // RFC 4271 §6.3 / RFC 7606 §3 d: an UPDATE that announces routes must
        // carry ORIGIN and AS_PATH, and NEXT_HOP when the NLRI field is used
        // (RFC 4760 §3 makes it optional for MP_REACH_NLRI-only UPDATEs).
        let announces = !nlri.is_empty()
            || attributes
                .iter()
                .any(|a| matches!(&a.value, AttributeValue::MpReach(r) if !r.nlri.is_empty() || !r.unparsed.is_empty()));
        if announces {
            let mut required = [attr_type::ORIGIN, attr_type::AS_PATH, 0];
            if !nlri.is_empty() {
                required[2] = attr_type::NEXT_HOP;
            }
            for t in required.into_iter().filter(|&t| t != 0) {
                if !seen.contains(t) {
                    faults.push(DecodeError::new(
                        ErrorKind::MissingWellKnown(t),
                        Bytes::copy_from_slice(&[t]),
                        Disposition::TreatAsWithdraw,
                    ));
                }
            }
        }
        Ok(Update {
            withdrawn,
            attributes,
            nlri,
            faults,
        })
    }

    pub(crate) fn encode_body(
        &self,
        params: &SessionParams,
        out: &mut BytesMut,
    ) -> Result<(), EncodeError> {
        let v4_add_path = params.add_path.contains(Family::IPV4_UNICAST);
        let wpos = out.len();
        out.put_u16(0);
        for n in &self.withdrawn {
            n.encode(v4_add_path, out);
        }
        let wlen = out.len() - wpos - 2;
        let apos = out.len();
        out.put_u16(0);
        for a in &self.attributes {
            a.encode(params, out)?;
        }
        let alen = out.len() - apos - 2;
        for n in &self.nlri {
            n.encode(v4_add_path, out);
        }
        // Lengths past 65535 make the message too long anyway; the caller's
        // size check reports it.
        out[wpos..wpos + 2].copy_from_slice(&(wlen.min(0xffff) as u16).to_be_bytes());
        out[apos..apos + 2].copy_from_slice(&(alen.min(0xffff) as u16).to_be_bytes());
        Ok(())
    }
}

/// Decodes a run of path attributes that this process encoded itself
/// (e.g. a packer's stored attribute set) under `params`. Strict: any
/// fault, repeated type or trailing garbage is an error, never skipped.
pub(crate) fn decode_attribute_list(
    owner: &Bytes,
    params: &SessionParams,
) -> Result<Vec<PathAttribute>, DecodeError> {
    let mut attributes = Vec::with_capacity(8);
    let mut seen = TypeSet::default();
    let mut rest: &[u8] = owner;
    while !rest.is_empty() {
        let Ok((after, (flags, type_code, hdr_len, value))) = attribute_tlv(rest) else {
            return Err(DecodeError::reset(
                ErrorKind::AttributeOverrun,
                Bytes::new(),
            ));
        };
        let src = super::attribute::AttrSrc {
            owner,
            raw: &rest[..hdr_len + value.len()],
            value,
        };
        rest = after;
        if seen.insert(type_code) {
            return Err(DecodeError::reset(
                ErrorKind::DuplicateAttribute(type_code),
                Bytes::new(),
            ));
        }
        let value = PathAttribute::decode_value(flags, type_code, &src, params).map_err(|e| *e)?;
        attributes.push(PathAttribute {
            flags: flags & 0xf0,
            value,
        });
    }
    Ok(attributes)
}

/// The three variable parts of an UPDATE body: Withdrawn Routes, Path
/// Attributes (each behind its 2-octet length) and the NLRI that fill the
/// rest (RFC 4271 §4.3). A length that overruns the body fails.
fn update_sections(i: In<'_>) -> NomResult<'_, (&[u8], &[u8], &[u8])> {
    let (i, withdrawn) = length_data(be_u16)(i)?;
    let (nlri, attributes) = length_data(be_u16)(i)?;
    Ok((&[], (withdrawn, attributes, nlri)))
}

/// One path attribute: flags, type, header length and value. The length
/// field is two octets when the Extended Length flag is set (RFC 4271 §4.3).
fn attribute_tlv(i: In<'_>) -> NomResult<'_, (u8, u8, usize, &[u8])> {
    let (i, flags) = be_u8(i)?;
    let (i, type_code) = be_u8(i)?;
    let (i, len, hdr_len) = if flags & flag::EXTENDED_LENGTH != 0 {
        let (i, l) = be_u16(i)?;
        (i, usize::from(l), 4)
    } else {
        let (i, l) = be_u8(i)?;
        (i, usize::from(l), 3)
    };
    let (i, value) = take(len)(i)?;
    Ok((i, (flags, type_code, hdr_len, value)))
}
