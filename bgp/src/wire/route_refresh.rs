//! ROUTE-REFRESH (RFC 2918) and its enhanced subtypes (RFC 7313).

use super::error::{DecodeError, ErrorKind};
use super::family::{Afi, Family, Safi};
use bytes::{BufMut, Bytes, BytesMut};
use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RouteRefreshSubtype {
    /// A plain request (RFC 2918).
    Request,
    /// Beginning of Route Refresh (RFC 7313 §3).
    BeginningOfRefresh,
    /// End of Route Refresh.
    EndOfRefresh,
    /// A subtype without meaning yet; RFC 7313 §5 says to ignore the message.
    Other(u8),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RouteRefresh {
    pub family: Family,
    pub subtype: RouteRefreshSubtype,
    /// Outbound route filter entries (RFC 5291) of a plain request, kept opaque.
    #[serde(
        skip_serializing_if = "Bytes::is_empty",
        serialize_with = "super::hex::serialize"
    )]
    pub orf: Bytes,
}

impl RouteRefresh {
    pub fn new(family: Family, subtype: RouteRefreshSubtype) -> Self {
        RouteRefresh {
            family,
            subtype,
            orf: Bytes::new(),
        }
    }

    pub(crate) fn decode_body(body: &Bytes) -> Result<Self, DecodeError> {
        // The header check guarantees 4 bytes.
        if body.len() < 4 {
            return Err(DecodeError::reset(
                ErrorKind::RouteRefreshLength {
                    subtype: 0,
                    len: body.len(),
                },
                body.clone(),
            ));
        }
        let subtype = match body[2] {
            0 => RouteRefreshSubtype::Request,
            1 => RouteRefreshSubtype::BeginningOfRefresh,
            2 => RouteRefreshSubtype::EndOfRefresh,
            n => RouteRefreshSubtype::Other(n),
        };
        // RFC 7313 §5: BoRR/EoRR must be exactly 4 bytes of body; the data is
        // the whole message body.
        if body.len() != 4 && matches!(body[2], 1 | 2) {
            return Err(DecodeError::reset(
                ErrorKind::RouteRefreshLength {
                    subtype: body[2],
                    len: body.len(),
                },
                body.clone(),
            ));
        }
        Ok(RouteRefresh {
            family: Family::new(Afi(u16::from_be_bytes([body[0], body[1]])), Safi(body[3])),
            subtype,
            orf: body.slice(4..),
        })
    }

    pub(crate) fn encode_body(&self, out: &mut BytesMut) {
        out.put_u16(self.family.afi.0);
        out.put_u8(match self.subtype {
            RouteRefreshSubtype::Request => 0,
            RouteRefreshSubtype::BeginningOfRefresh => 1,
            RouteRefreshSubtype::EndOfRefresh => 2,
            RouteRefreshSubtype::Other(n) => n,
        });
        out.put_u8(self.family.safi.0);
        out.put_slice(&self.orf);
    }
}
