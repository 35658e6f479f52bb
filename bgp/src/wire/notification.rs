//! NOTIFICATION (RFC 4271 §4.5), with the shutdown communication of
//! RFC 9003.

use super::error::{cease_subcode, code, DecodeError, ErrorKind};
use bytes::{BufMut, Bytes, BytesMut};
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Notification {
    pub code: u8,
    pub subcode: u8,
    #[serde(serialize_with = "super::hex::serialize")]
    pub data: Bytes,
}

impl Notification {
    pub fn new(code: u8, subcode: u8, data: impl Into<Bytes>) -> Self {
        Notification {
            code,
            subcode,
            data: data.into(),
        }
    }

    /// The NOTIFICATION a decode error calls for.
    pub fn from_error(e: &DecodeError) -> Self {
        Notification::new(e.code, e.subcode, e.data.clone())
    }

    /// Cease / Administrative Shutdown or Reset with a message (RFC 9003
    /// §2): one length octet, then at most 255 bytes of UTF-8, cut on a
    /// character boundary.
    pub fn shutdown(subcode: u8, message: &str) -> Self {
        let mut end = message.len().min(255);
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        let mut data = BytesMut::with_capacity(1 + end);
        data.put_u8(end as u8);
        data.put_slice(&message.as_bytes()[..end]);
        Notification::new(code::CEASE, subcode, data.freeze())
    }

    /// The shutdown communication, if this is a Cease that carries one.
    pub fn shutdown_message(&self) -> Option<&str> {
        if self.code != code::CEASE
            || !matches!(
                self.subcode,
                cease_subcode::ADMINISTRATIVE_SHUTDOWN | cease_subcode::ADMINISTRATIVE_RESET
            )
        {
            return None;
        }
        let len = *self.data.first()? as usize;
        std::str::from_utf8(self.data.get(1..1 + len)?).ok()
    }

    /// A readable name for the code/subcode pair.
    pub fn describe(&self) -> String {
        let c = match self.code {
            code::MESSAGE_HEADER => "Message Header Error",
            code::OPEN_MESSAGE => "OPEN Message Error",
            code::UPDATE_MESSAGE => "UPDATE Message Error",
            code::HOLD_TIMER_EXPIRED => "Hold Timer Expired",
            code::FSM => "Finite State Machine Error",
            code::CEASE => "Cease",
            code::ROUTE_REFRESH_MESSAGE => "ROUTE-REFRESH Message Error",
            _ => "Unknown error",
        };
        // Cease subcodes have names operators search for (RFC 4486, 8538).
        let sub = match (self.code, self.subcode) {
            (code::CEASE, cease_subcode::MAX_PREFIXES_REACHED) => {
                "Maximum Number of Prefixes Reached".to_string()
            }
            (code::CEASE, cease_subcode::ADMINISTRATIVE_SHUTDOWN) => {
                "Administrative Shutdown".into()
            }
            (code::CEASE, cease_subcode::PEER_DECONFIGURED) => "Peer De-configured".into(),
            (code::CEASE, cease_subcode::ADMINISTRATIVE_RESET) => "Administrative Reset".into(),
            (code::CEASE, cease_subcode::CONNECTION_REJECTED) => "Connection Rejected".into(),
            (code::CEASE, cease_subcode::OTHER_CONFIGURATION_CHANGE) => {
                "Other Configuration Change".into()
            }
            (code::CEASE, cease_subcode::CONNECTION_COLLISION_RESOLUTION) => {
                "Connection Collision Resolution".into()
            }
            (code::CEASE, cease_subcode::OUT_OF_RESOURCES) => "Out of Resources".into(),
            (code::CEASE, cease_subcode::HARD_RESET) => "Hard Reset".into(),
            (_, n) => format!("subcode {n}"),
        };
        match self.shutdown_message() {
            Some(m) => format!("{c} / {sub}: \"{m}\""),
            None => format!("{c} / {sub}"),
        }
    }

    pub(crate) fn decode_body(body: &Bytes) -> Result<Self, DecodeError> {
        if body.len() < 2 {
            return Err(DecodeError::reset(
                ErrorKind::NotificationTooShort,
                Bytes::new(),
            ));
        }
        Ok(Notification {
            code: body[0],
            subcode: body[1],
            data: body.slice(2..),
        })
    }

    pub(crate) fn encode_body(&self, out: &mut BytesMut) {
        out.put_u8(self.code);
        out.put_u8(self.subcode);
        out.put_slice(&self.data);
    }
}
