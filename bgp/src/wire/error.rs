//! Decode errors: what went wrong, the NOTIFICATION it calls for (RFC 4271 §6)
//! and how a speaker must react to it (RFC 7606 §2).

use bytes::Bytes;
use serde::Serialize;

/// NOTIFICATION error codes (RFC 4271 §4.5, RFC 7313 §5).
pub mod code {
    pub const MESSAGE_HEADER: u8 = 1;
    pub const OPEN_MESSAGE: u8 = 2;
    pub const UPDATE_MESSAGE: u8 = 3;
    pub const HOLD_TIMER_EXPIRED: u8 = 4;
    pub const FSM: u8 = 5;
    pub const CEASE: u8 = 6;
    pub const ROUTE_REFRESH_MESSAGE: u8 = 7;
}

/// Message Header Error subcodes (RFC 4271 §6.1).
pub mod header_subcode {
    pub const CONNECTION_NOT_SYNCHRONIZED: u8 = 1;
    pub const BAD_MESSAGE_LENGTH: u8 = 2;
    pub const BAD_MESSAGE_TYPE: u8 = 3;
}

/// OPEN Message Error subcodes (RFC 4271 §6.2, RFC 5492 §5).
pub mod open_subcode {
    pub const UNSUPPORTED_VERSION: u8 = 1;
    pub const BAD_PEER_AS: u8 = 2;
    pub const BAD_BGP_IDENTIFIER: u8 = 3;
    pub const UNSUPPORTED_OPTIONAL_PARAMETER: u8 = 4;
    pub const UNACCEPTABLE_HOLD_TIME: u8 = 6;
    pub const UNSUPPORTED_CAPABILITY: u8 = 7;
}

/// UPDATE Message Error subcodes (RFC 4271 §6.3).
pub mod update_subcode {
    pub const MALFORMED_ATTRIBUTE_LIST: u8 = 1;
    pub const UNRECOGNIZED_WELL_KNOWN_ATTRIBUTE: u8 = 2;
    pub const MISSING_WELL_KNOWN_ATTRIBUTE: u8 = 3;
    pub const ATTRIBUTE_FLAGS_ERROR: u8 = 4;
    pub const ATTRIBUTE_LENGTH_ERROR: u8 = 5;
    pub const INVALID_ORIGIN_ATTRIBUTE: u8 = 6;
    pub const INVALID_NEXT_HOP_ATTRIBUTE: u8 = 8;
    pub const OPTIONAL_ATTRIBUTE_ERROR: u8 = 9;
    pub const INVALID_NETWORK_FIELD: u8 = 10;
    pub const MALFORMED_AS_PATH: u8 = 11;
}

/// Cease subcodes (RFC 4486, RFC 8538).
pub mod cease_subcode {
    pub const MAX_PREFIXES_REACHED: u8 = 1;
    pub const ADMINISTRATIVE_SHUTDOWN: u8 = 2;
    pub const PEER_DECONFIGURED: u8 = 3;
    pub const ADMINISTRATIVE_RESET: u8 = 4;
    pub const CONNECTION_REJECTED: u8 = 5;
    pub const OTHER_CONFIGURATION_CHANGE: u8 = 6;
    pub const CONNECTION_COLLISION_RESOLUTION: u8 = 7;
    pub const OUT_OF_RESOURCES: u8 = 8;
    pub const HARD_RESET: u8 = 9;
}

/// ROUTE-REFRESH Message Error subcodes (RFC 7313 §5).
pub mod route_refresh_subcode {
    pub const INVALID_MESSAGE_LENGTH: u8 = 1;
}

/// How a speaker must react to a malformation (RFC 7606 §2), from most to
/// least severe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Disposition {
    /// Send the NOTIFICATION and close the session.
    SessionReset,
    /// Keep the session; every prefix the UPDATE carries (NLRI and
    /// MP_REACH_NLRI) is handled as if it had been withdrawn.
    TreatAsWithdraw,
    /// Keep the session; drop the offending attribute and use the rest.
    AttributeDiscard,
}

/// What was malformed. The variant fixes the NOTIFICATION code and subcode;
/// [`DecodeError::data`] carries the NOTIFICATION's data field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    #[error("marker is not all ones")]
    BadMarker,
    #[error("message length {len} outside {min}..={max}")]
    BadLength { len: u16, min: u16, max: u16 },
    #[error("unknown message type {0}")]
    BadType(u8),
    #[error("message truncated: needs {needed} bytes, has {available}")]
    Truncated { needed: usize, available: usize },

    #[error("unsupported BGP version {0} (only 4)")]
    UnsupportedVersion(u8),
    #[error("hold time {0} s is neither 0 nor at least 3 (RFC 4271 §4.2)")]
    UnacceptableHoldTime(u16),
    #[error("peer AS {0} is not acceptable")]
    BadPeerAs(u32),
    #[error("BGP identifier {0} is not a valid unicast host address")]
    BadBgpIdentifier(std::net::Ipv4Addr),
    #[error("unsupported optional parameter type {0}")]
    UnsupportedOptionalParameter(u8),
    #[error("optional parameters malformed: {0}")]
    MalformedOptionalParameters(&'static str),
    #[error("capability {code} malformed: {reason}")]
    MalformedCapability { code: u8, reason: &'static str },

    #[error("withdrawn routes / path attribute lengths overrun the UPDATE")]
    UpdateLengthsInconsistent,
    #[error("path attribute header or value overruns the attribute list")]
    AttributeOverrun,
    #[error("attribute {0} appears more than once")]
    DuplicateAttribute(u8),
    #[error("well-known attribute {0} is not recognised")]
    UnrecognizedWellKnown(u8),
    #[error("mandatory well-known attribute {0} is missing")]
    MissingWellKnown(u8),
    #[error("attribute {type_code} has flags {flags:#04x}, not what its type requires")]
    AttributeFlags { type_code: u8, flags: u8 },
    #[error("attribute {type_code} has length {len}, which its type does not allow")]
    AttributeLength { type_code: u8, len: usize },
    #[error("ORIGIN value {0} is undefined")]
    InvalidOrigin(u8),
    #[error("NEXT_HOP {0} is not a usable unicast address")]
    InvalidNextHop(std::net::Ipv4Addr),
    #[error("AS_PATH malformed: {0}")]
    MalformedAsPath(&'static str),
    #[error("attribute {type_code} malformed: {reason}")]
    OptionalAttribute { type_code: u8, reason: &'static str },
    #[error("NLRI malformed: {0}")]
    InvalidNetworkField(&'static str),

    #[error("NOTIFICATION shorter than its code and subcode")]
    NotificationTooShort,
    #[error("ROUTE-REFRESH of subtype {subtype} must have 4 bytes of body, has {len}")]
    RouteRefreshLength { subtype: u8, len: usize },
}

/// A malformed message: what was wrong, the NOTIFICATION to send for it, and
/// how to react (RFC 7606).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize)]
#[error("{kind} (NOTIFICATION {code}/{subcode}, {disposition:?})")]
pub struct DecodeError {
    pub kind: ErrorKind,
    pub code: u8,
    pub subcode: u8,
    /// The NOTIFICATION data field, as RFC 4271 §6 prescribes for this error.
    #[serde(serialize_with = "crate::wire::hex::serialize")]
    pub data: Bytes,
    pub disposition: Disposition,
}

impl DecodeError {
    /// Builds an error; the code and subcode follow from the kind.
    pub fn new(kind: ErrorKind, data: Bytes, disposition: Disposition) -> Self {
        let (code, subcode) = kind.notification();
        DecodeError {
            kind,
            code,
            subcode,
            data,
            disposition,
        }
    }

    /// An error that ends the session.
    pub fn reset(kind: ErrorKind, data: Bytes) -> Self {
        Self::new(kind, data, Disposition::SessionReset)
    }
}

impl ErrorKind {
    /// NOTIFICATION (code, subcode) for this malformation.
    pub fn notification(&self) -> (u8, u8) {
        use ErrorKind::*;
        match self {
            BadMarker => (
                code::MESSAGE_HEADER,
                header_subcode::CONNECTION_NOT_SYNCHRONIZED,
            ),
            BadLength { .. } | Truncated { .. } | NotificationTooShort => {
                (code::MESSAGE_HEADER, header_subcode::BAD_MESSAGE_LENGTH)
            }
            BadType(_) => (code::MESSAGE_HEADER, header_subcode::BAD_MESSAGE_TYPE),
            UnsupportedVersion(_) => (code::OPEN_MESSAGE, open_subcode::UNSUPPORTED_VERSION),
            UnacceptableHoldTime(_) => (code::OPEN_MESSAGE, open_subcode::UNACCEPTABLE_HOLD_TIME),
            BadBgpIdentifier(_) => (code::OPEN_MESSAGE, open_subcode::BAD_BGP_IDENTIFIER),
            BadPeerAs(_) => (code::OPEN_MESSAGE, open_subcode::BAD_PEER_AS),
            UnsupportedOptionalParameter(_) => (
                code::OPEN_MESSAGE,
                open_subcode::UNSUPPORTED_OPTIONAL_PARAMETER,
            ),
            // RFC 4271 §6.2: malformed optional parameters have no subcode of
            // their own; subcode 0 (unspecific) is what deployed speakers send.
            MalformedOptionalParameters(_) | MalformedCapability { .. } => (code::OPEN_MESSAGE, 0),
            UpdateLengthsInconsistent | AttributeOverrun | DuplicateAttribute(_) => (
                code::UPDATE_MESSAGE,
                update_subcode::MALFORMED_ATTRIBUTE_LIST,
            ),
            UnrecognizedWellKnown(_) => (
                code::UPDATE_MESSAGE,
                update_subcode::UNRECOGNIZED_WELL_KNOWN_ATTRIBUTE,
            ),
            MissingWellKnown(_) => (
                code::UPDATE_MESSAGE,
                update_subcode::MISSING_WELL_KNOWN_ATTRIBUTE,
            ),
            AttributeFlags { .. } => (code::UPDATE_MESSAGE, update_subcode::ATTRIBUTE_FLAGS_ERROR),
            AttributeLength { .. } => {
                (code::UPDATE_MESSAGE, update_subcode::ATTRIBUTE_LENGTH_ERROR)
            }
            InvalidOrigin(_) => (
                code::UPDATE_MESSAGE,
                update_subcode::INVALID_ORIGIN_ATTRIBUTE,
            ),
            InvalidNextHop(_) => (
                code::UPDATE_MESSAGE,
                update_subcode::INVALID_NEXT_HOP_ATTRIBUTE,
            ),
            MalformedAsPath(_) => (code::UPDATE_MESSAGE, update_subcode::MALFORMED_AS_PATH),
            OptionalAttribute { .. } => (
                code::UPDATE_MESSAGE,
                update_subcode::OPTIONAL_ATTRIBUTE_ERROR,
            ),
            InvalidNetworkField(_) => (code::UPDATE_MESSAGE, update_subcode::INVALID_NETWORK_FIELD),
            RouteRefreshLength { .. } => (
                code::ROUTE_REFRESH_MESSAGE,
                route_refresh_subcode::INVALID_MESSAGE_LENGTH,
            ),
        }
    }
}

/// Encoding failures: a message that cannot be put on this session's wire.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("message of {len} bytes exceeds the session's maximum of {max}")]
    MessageTooLong { len: usize, max: usize },
    #[error("attribute {type_code} value of {len} bytes exceeds 65535")]
    AttributeTooLong { type_code: u8, len: usize },
    #[error("{what} of {len} bytes exceeds its length field")]
    FieldTooLong { what: &'static str, len: usize },
}
