//! Prefixes as NLRI (RFC 4271 §4.3, RFC 4760 §5) with optional ADD-PATH
//! path identifiers (RFC 7911 §3).

use super::{In, NomResult};
use bytes::BufMut;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use nom::bytes::complete::take;
use nom::combinator::cond;
use nom::number::complete::{be_u32, be_u8};
use serde::Serialize;
use std::net::{Ipv4Addr, Ipv6Addr};

/// An IPv4 or IPv6 prefix; host bits beyond the length are always zero.
pub type Prefix = IpNet;

/// One reachable or withdrawn prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Nlri {
    pub prefix: Prefix,
    /// ADD-PATH path identifier, present iff negotiated for the family.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path_id: Option<u32>,
}

impl Nlri {
    pub fn new(prefix: Prefix) -> Self {
        Nlri {
            prefix: prefix.trunc(),
            path_id: None,
        }
    }
    pub fn with_path_id(prefix: Prefix, path_id: u32) -> Self {
        Nlri {
            prefix: prefix.trunc(),
            path_id: Some(path_id),
        }
    }

    /// Bytes this NLRI takes on the wire.
    pub fn encoded_len(&self) -> usize {
        let id = if self.path_id.is_some() { 4 } else { 0 };
        id + 1 + usize::from(self.prefix.prefix_len()).div_ceil(8)
    }

    /// Writes the NLRI; the path id is written only when `add_path` is set
    /// (a missing id is then sent as 0).
    pub fn encode(&self, add_path: bool, out: &mut impl BufMut) {
        if add_path {
            out.put_u32(self.path_id.unwrap_or(0));
        }
        let len = self.prefix.prefix_len();
        let n = usize::from(len).div_ceil(8);
        out.put_u8(len);
        match self.prefix {
            IpNet::V4(p) => out.put_slice(&p.network().octets()[..n]),
            IpNet::V6(p) => out.put_slice(&p.network().octets()[..n]),
        }
    }
}

/// One NLRI: optional 4-byte path id, prefix length, then the prefix's
/// significant octets (RFC 4271 §4.3, RFC 7911 §3).
#[inline(always)]
fn raw_nlri<const ADD_PATH: bool>(i: In<'_>) -> NomResult<'_, (Option<u32>, u8, &[u8])> {
    let (i, path_id) = cond(ADD_PATH, be_u32)(i)?;
    let (i, len) = be_u8(i)?;
    let (i, bytes) = take(usize::from(len).div_ceil(8))(i)?;
    Ok((i, (path_id, len, bytes)))
}

/// Decodes a run of prefixes of one address family, appending to `out`.
/// `Err` carries the reason; the caller makes the typed error.
pub(crate) fn decode_prefixes(
    v: &[u8],
    ipv6: bool,
    add_path: bool,
    out: &mut Vec<Nlri>,
) -> Result<(), &'static str> {
    // One loop per (family, ADD-PATH) pair, so neither is tested per prefix.
    match (ipv6, add_path) {
        (false, false) => decode_run::<false, false>(v, out),
        (false, true) => decode_run::<false, true>(v, out),
        (true, false) => decode_run::<true, false>(v, out),
        (true, true) => decode_run::<true, true>(v, out),
    }
}

fn decode_run<const IPV6: bool, const ADD_PATH: bool>(
    mut v: &[u8],
    out: &mut Vec<Nlri>,
) -> Result<(), &'static str> {
    const TOO_LONG: &str = "prefix length exceeds the address size";
    // Counted first so the vector is exact: decoded UPDATEs are kept (RIB),
    // and a field of one-byte /0 prefixes must not regrow repeatedly.
    out.reserve_exact(count(v, ADD_PATH));
    while !v.is_empty() {
        let (rest, (path_id, len, bytes)) =
            raw_nlri::<ADD_PATH>(v).map_err(|_| "prefix overruns its field")?;
        let prefix = if IPV6 {
            if len > 128 {
                return Err(TOO_LONG);
            }
            let mut a = [0u8; 16];
            a[..bytes.len()].copy_from_slice(bytes);
            let bits =
                u128::from_be_bytes(a) & u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            IpNet::V6(Ipv6Net::new(Ipv6Addr::from(bits), len).map_err(|_| TOO_LONG)?)
        } else {
            if len > 32 {
                return Err(TOO_LONG);
            }
            let mut a = [0u8; 4];
            a[..bytes.len()].copy_from_slice(bytes);
            // Host bits are "irrelevant" (RFC 4271 §4.3): clear them so
            // equal prefixes compare equal.
            let bits =
                u32::from_be_bytes(a) & u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            IpNet::V4(Ipv4Net::new(Ipv4Addr::from(bits), len).map_err(|_| TOO_LONG)?)
        };
        out.push(Nlri { prefix, path_id });
        v = rest;
    }
    Ok(())
}

/// How many NLRI the field holds (stopping where it stops parsing), so the
/// vector is allocated once at its exact size: a field of many one-byte /0
/// prefixes must not trigger repeated regrowth.
pub(crate) fn count(mut v: &[u8], add_path: bool) -> usize {
    let skip = if add_path { 4 } else { 0 };
    let mut n = 0;
    while let Some(&len) = v.get(skip) {
        let step = skip + 1 + usize::from(len).div_ceil(8);
        if step > v.len() {
            break;
        }
        v = &v[step..];
        n += 1;
    }
    n
}
