//! The BGP-4 message codec (RFC 4271 and the extensions felix speaks).
//!
//! Pure and synchronous: [`frame_len`] finds message boundaries in a byte
//! stream, [`decode`] turns one whole message into a [`Message`], and
//! [`Message::encode`] writes one back. Decoding takes the negotiated
//! [`SessionParams`] because the same bytes mean different things on different
//! sessions (2- or 4-octet AS numbers, ADD-PATH path identifiers, the 4096- or
//! 65535-byte length limit).
//!
//! Every malformation is a [`DecodeError`] carrying the NOTIFICATION
//! code/subcode/data RFC 4271 §6 prescribes and its RFC 7606 [`Disposition`].
//! Errors that leave the session up (treat-as-withdraw, attribute discard) do
//! not fail [`decode`]: they are listed in [`Update::faults`] and the UPDATE is
//! returned with the offending attributes removed.
//!
//! Nothing here panics on any input, and decoding allocates at most a small
//! multiple of the message's length (each output element consumes at least one
//! input byte).

mod as_path;
mod attribute;
mod capability;
pub mod error;
mod family;
pub mod hex;
mod nlri;
mod notification;
mod open;
mod route_refresh;
mod update;

pub use as_path::{AsPath, AsSegment, Asns, SegmentType, AS_TRANS};
pub use attribute::{
    attr_type, Aggregator, AttributeValue, Community, ExtendedCommunity, LargeCommunity, MpReach,
    MpUnreach, NextHop, Origin, PathAttribute,
};
pub use capability::{
    cap_code, AddPathDirection, Capability, GracefulRestart, GracefulRestartFamily,
};
pub use error::{DecodeError, Disposition, EncodeError, ErrorKind};
pub use family::{Afi, Family, Safi};
pub use nlri::{Nlri, Prefix};
pub use notification::Notification;
pub use open::{CapabilityLayout, Open};
pub use route_refresh::{RouteRefresh, RouteRefreshSubtype};
pub(crate) use update::decode_attribute_list;
pub use update::Update;

use bytes::{BufMut, Bytes, BytesMut};
use serde::Serialize;

/// Length of the fixed message header: marker (16), length (2), type (1).
pub const HEADER_LEN: usize = 19;
/// Largest message without the Extended Message capability (RFC 4271 §4.1).
pub const MAX_MESSAGE_LEN: usize = 4096;
/// Largest message with the Extended Message capability (RFC 8654).
pub const MAX_EXTENDED_MESSAGE_LEN: usize = 65535;

/// Message type codes (RFC 4271 §4.1, RFC 2918 §3).
pub mod msg_type {
    pub const OPEN: u8 = 1;
    pub const UPDATE: u8 = 2;
    pub const NOTIFICATION: u8 = 3;
    pub const KEEPALIVE: u8 = 4;
    pub const ROUTE_REFRESH: u8 = 5;
}

/// What the two speakers agreed on in their OPENs: the context every UPDATE
/// is decoded and encoded in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionParams {
    /// Both sides sent the 4-octet AS capability (RFC 6793): AS numbers in
    /// AS_PATH and AGGREGATOR are 4 bytes wide.
    pub four_octet_as: bool,
    /// Both sides sent the Extended Message capability (RFC 8654): UPDATEs
    /// and ROUTE-REFRESHes may be up to 65535 bytes.
    pub extended_message: bool,
    /// Families whose NLRI carry a path identifier in this direction (RFC 7911).
    pub add_path: AddPathFamilies,
}

/// The set of families that carry ADD-PATH path identifiers, in one
/// direction of a session. Only the families whose NLRI this codec decodes
/// (IPv4/IPv6, unicast/multicast) can be in it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AddPathFamilies(u8);

impl AddPathFamilies {
    /// No family carries path identifiers.
    pub const EMPTY: AddPathFamilies = AddPathFamilies(0);

    const fn bit(family: Family) -> Option<u8> {
        let afi = match family.afi.0 {
            1 => 0,
            2 => 1,
            _ => return None,
        };
        let safi = match family.safi.0 {
            1 => 0,
            2 => 1,
            _ => return None,
        };
        Some(1 << (afi * 2 + safi))
    }

    /// Adds a family; returns false if the codec cannot carry path ids for it.
    pub fn insert(&mut self, family: Family) -> bool {
        match Self::bit(family) {
            Some(b) => {
                self.0 |= b;
                true
            }
            None => false,
        }
    }

    pub fn contains(&self, family: Family) -> bool {
        Self::bit(family).is_some_and(|b| self.0 & b != 0)
    }

    /// This set plus `family` (unchanged if the codec cannot carry path ids
    /// for it).
    pub const fn with(self, family: Family) -> Self {
        match Self::bit(family) {
            Some(b) => AddPathFamilies(self.0 | b),
            None => self,
        }
    }
}

impl SessionParams {
    /// Parameters for the messages `local` receives from `remote`, given the
    /// two OPENs (RFC 6793 §3, RFC 8654 §3, RFC 7911 §4).
    pub fn negotiate_receive(local: &Open, remote: &Open) -> Self {
        let mut add_path = AddPathFamilies::default();
        for (family, local_dir) in local.add_path() {
            if !local_dir.receives() {
                continue;
            }
            if remote
                .add_path()
                .any(|(f, remote_dir)| f == family && remote_dir.sends())
            {
                add_path.insert(family);
            }
        }
        SessionParams {
            four_octet_as: local.four_octet_as().is_some() && remote.four_octet_as().is_some(),
            extended_message: local.extended_message() && remote.extended_message(),
            add_path,
        }
    }

    /// Parameters for the messages `local` sends to `remote`.
    pub fn negotiate_send(local: &Open, remote: &Open) -> Self {
        Self::negotiate_receive(remote, local)
    }

    /// Largest UPDATE or ROUTE-REFRESH this session allows.
    pub fn max_message_len(&self) -> usize {
        if self.extended_message {
            MAX_EXTENDED_MESSAGE_LEN
        } else {
            MAX_MESSAGE_LEN
        }
    }
}

/// One BGP message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "SCREAMING-KEBAB-CASE")]
pub enum Message {
    Open(Open),
    Update(Update),
    Notification(Notification),
    Keepalive,
    RouteRefresh(RouteRefresh),
}

impl Message {
    /// The type code this message goes on the wire with.
    pub fn type_code(&self) -> u8 {
        match self {
            Message::Open(_) => msg_type::OPEN,
            Message::Update(_) => msg_type::UPDATE,
            Message::Notification(_) => msg_type::NOTIFICATION,
            Message::Keepalive => msg_type::KEEPALIVE,
            Message::RouteRefresh(_) => msg_type::ROUTE_REFRESH,
        }
    }

    /// Appends the message, header included, to `out`.
    ///
    /// Fails without writing anything visible past `out`'s old length if the
    /// result would exceed the session's maximum message size.
    pub fn encode(&self, params: &SessionParams, out: &mut BytesMut) -> Result<(), EncodeError> {
        let start = out.len();
        out.put_slice(&[0xff; 16]);
        out.put_u16(0); // patched below
        out.put_u8(self.type_code());
        let body = match self {
            Message::Open(m) => m.encode_body(out),
            Message::Update(m) => m.encode_body(params, out),
            Message::Notification(m) => {
                m.encode_body(out);
                Ok(())
            }
            Message::Keepalive => Ok(()),
            Message::RouteRefresh(m) => {
                m.encode_body(out);
                Ok(())
            }
        };
        if let Err(e) = body {
            out.truncate(start);
            return Err(e);
        }
        let len = out.len() - start;
        let max = match self {
            // RFC 8654 §4: OPEN and KEEPALIVE never exceed 4096 bytes.
            Message::Open(_) | Message::Keepalive => MAX_MESSAGE_LEN,
            _ => params.max_message_len(),
        };
        if len > max {
            out.truncate(start);
            return Err(EncodeError::MessageTooLong { len, max });
        }
        out[start + 16..start + 18].copy_from_slice(&(len as u16).to_be_bytes());
        Ok(())
    }

    /// Encodes into a fresh buffer.
    pub fn to_bytes(&self, params: &SessionParams) -> Result<Bytes, EncodeError> {
        let mut out = BytesMut::with_capacity(64);
        self.encode(params, &mut out)?;
        Ok(out.freeze())
    }
}

/// Checks the header at the start of `buf` and returns the length of the
/// message it announces once the whole message is in `buf`, or `None` while
/// more bytes are needed. Errors are always session resets: a stream whose
/// framing is lost cannot be resynchronised (RFC 4271 §6.1).
pub fn frame_len(buf: &[u8], params: &SessionParams) -> Result<Option<usize>, DecodeError> {
    if buf.len() < HEADER_LEN {
        // Reject a bad marker as soon as it is visible.
        if buf.iter().any(|&b| b != 0xff) && buf.len() <= 16 {
            return Err(DecodeError::reset(ErrorKind::BadMarker, Bytes::new()));
        }
        return Ok(None);
    }
    let len = check_header(buf, params)?;
    Ok((buf.len() >= len).then_some(len))
}

/// Validates marker, length and type of the header at the start of `buf`
/// (which holds at least [`HEADER_LEN`] bytes); returns the message length.
fn check_header(buf: &[u8], params: &SessionParams) -> Result<usize, DecodeError> {
    let marker = buf.first_chunk::<16>().map(|m| u128::from_ne_bytes(*m));
    if marker != Some(u128::MAX) {
        return Err(DecodeError::reset(ErrorKind::BadMarker, Bytes::new()));
    }
    let len = u16::from_be_bytes([buf[16], buf[17]]);
    let ty = buf[18];
    let (min, max) = match ty {
        msg_type::OPEN => (29, MAX_MESSAGE_LEN),
        msg_type::UPDATE => (23, params.max_message_len()),
        msg_type::NOTIFICATION => (21, params.max_message_len()),
        msg_type::KEEPALIVE => (19, 19),
        msg_type::ROUTE_REFRESH => (23, params.max_message_len()),
        other => {
            return Err(DecodeError::reset(
                ErrorKind::BadType(other),
                Bytes::copy_from_slice(&[other]),
            ))
        }
    };
    if (len as usize) < min || (len as usize) > max {
        return Err(DecodeError::reset(
            ErrorKind::BadLength {
                len,
                min: min as u16,
                max: max as u16,
            },
            // RFC 4271 §6.1: the data is the erroneous Length field.
            Bytes::copy_from_slice(&len.to_be_bytes()),
        ));
    }
    Ok(len as usize)
}

/// Decodes exactly one whole message (header included) from `msg`.
///
/// Opaque parts of the result (unknown capabilities and attributes,
/// NOTIFICATION data) share `msg`'s storage rather than copying it.
pub fn decode(msg: &Bytes, params: &SessionParams) -> Result<Message, DecodeError> {
    if msg.len() < HEADER_LEN {
        return Err(DecodeError::reset(
            ErrorKind::Truncated {
                needed: HEADER_LEN,
                available: msg.len(),
            },
            Bytes::new(),
        ));
    }
    let len = check_header(msg, params)?;
    if msg.len() != len {
        return Err(DecodeError::reset(
            ErrorKind::Truncated {
                needed: len,
                available: msg.len(),
            },
            Bytes::copy_from_slice(&(len as u16).to_be_bytes()),
        ));
    }
    let body = || msg.slice(HEADER_LEN..);
    Ok(match msg[18] {
        msg_type::OPEN => Message::Open(Open::decode_body(&body())?),
        msg_type::UPDATE => Message::Update(Update::decode_body(msg, &msg[HEADER_LEN..], params)?),
        msg_type::NOTIFICATION => Message::Notification(Notification::decode_body(&body())?),
        msg_type::KEEPALIVE => Message::Keepalive,
        // check_header admits only the five types above.
        _ => Message::RouteRefresh(RouteRefresh::decode_body(&body())?),
    })
}

/// Splits a byte stream into messages: each item is one message's bytes or
/// the framing error that ends the stream. A trailing partial message is
/// reported as [`ErrorKind::Truncated`].
pub fn split_stream(
    mut stream: Bytes,
    params: SessionParams,
) -> impl Iterator<Item = Result<Bytes, DecodeError>> {
    let mut failed = false;
    std::iter::from_fn(move || {
        if failed || stream.is_empty() {
            return None;
        }
        match frame_len(&stream, &params) {
            Ok(Some(len)) => Some(Ok(stream.split_to(len))),
            Ok(None) => {
                failed = true;
                let needed = if stream.len() >= HEADER_LEN {
                    u16::from_be_bytes([stream[16], stream[17]]) as usize
                } else {
                    HEADER_LEN
                };
                Some(Err(DecodeError::reset(
                    ErrorKind::Truncated {
                        needed,
                        available: stream.len(),
                    },
                    Bytes::new(),
                )))
            }
            Err(e) => {
                failed = true;
                Some(Err(e))
            }
        }
    })
}

/// A nom input slice with the error type the codec uses internally; positions
/// are turned into [`DecodeError`]s by each caller, who knows the context.
pub(crate) type In<'a> = &'a [u8];
pub(crate) type NomResult<'a, T> = nom::IResult<In<'a>, T, ()>;
