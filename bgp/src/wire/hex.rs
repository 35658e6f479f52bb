//! Opaque bytes shown as lowercase hex in JSON output.

use bytes::Bytes;
use std::fmt::Write;

pub fn encode(data: &[u8]) -> String {
    let mut s = String::with_capacity(data.len() * 2);
    for b in data {
        // Writing to a String cannot fail.
        let _ = write!(s, "{b:02x}");
    }
    s
}

pub fn serialize<S: serde::Serializer>(data: &Bytes, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&encode(data))
}
