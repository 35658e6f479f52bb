//! `felix bgp decode`: BGP messages rendered as JSON lines, one object per
//! message, so that `jq`/`grep` work on what a peer sent.
//!
//! A decoded message is `{..., "length": N, "message": {...}}` where
//! `message` is the serde form of [`Message`]. A message that failed to
//! decode is `{..., "length": N, "error": {...}, "reason": "...", "raw":
//! "hex"}`: `error` is the serde form of [`DecodeError`] (kind, NOTIFICATION
//! code/subcode/data, RFC 7606 disposition), `reason` its text, `raw` the
//! bytes concerned. Lines from a capture start with `frame`, `time`, `src`
//! and `dst`; lines from a raw stream with the byte `offset` in the stream.

use crate::pcap::CapturedMessage;
use bgp::wire::{self, hex, DecodeError, Family, Message, SessionParams};
use bytes::Bytes;
use serde::Serialize;
use std::io::{self, Write};
use std::net::SocketAddr;

/// What a decode run found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub messages: usize,
    /// Messages that failed to decode, plus decoded UPDATEs carrying
    /// RFC 7606 faults (malformations that leave the session up).
    pub errors: usize,
}

impl Tally {
    fn count(&mut self, message: &Result<Message, DecodeError>) {
        self.messages += 1;
        let faulty = match message {
            Ok(Message::Update(update)) => !update.faults.is_empty(),
            Ok(_) => false,
            Err(_) => true,
        };
        if faulty {
            self.errors += 1;
        }
    }
}

/// One output line.
#[derive(Serialize)]
struct JsonLine<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    frame: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    time: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    src: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dst: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    offset: Option<usize>,
    length: usize,
    #[serde(flatten)]
    body: Body<'a>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Body<'a> {
    Decoded {
        message: &'a Message,
    },
    Failed {
        error: &'a DecodeError,
        reason: String,
        raw: String,
    },
}

impl<'a> Body<'a> {
    fn new(message: &'a Result<Message, DecodeError>, bytes: &[u8]) -> Self {
        match message {
            Ok(message) => Body::Decoded { message },
            Err(error) => Body::Failed {
                error,
                reason: error.to_string(),
                raw: hex::encode(bytes),
            },
        }
    }
}

fn write_line(out: &mut impl Write, line: &JsonLine<'_>) -> io::Result<()> {
    serde_json::to_writer(&mut *out, line)?;
    out.write_all(b"\n")
}

/// Decodes `stream`, raw concatenated BGP messages, with `params`, writing one
/// JSON line per message. A framing error ends the stream (its framing
/// cannot be recovered): it is written as one last error line whose `raw`
/// holds the rest of the stream, up to the largest possible message.
pub fn write_stream_json(
    stream: Bytes,
    params: SessionParams,
    out: &mut impl Write,
) -> io::Result<Tally> {
    let mut tally = Tally::default();
    let mut offset = 0;
    for framed in wire::split_stream(stream.clone(), params) {
        let (bytes, message) = match framed {
            Ok(bytes) => {
                let message = wire::decode(&bytes, &params);
                (bytes, message)
            }
            Err(error) => {
                let end = stream.len().min(offset + wire::MAX_EXTENDED_MESSAGE_LEN);
                (stream.slice(offset..end), Err(error))
            }
        };
        tally.count(&message);
        let line = JsonLine {
            frame: None,
            time: None,
            src: None,
            dst: None,
            offset: Some(offset),
            length: bytes.len(),
            body: Body::new(&message, &bytes),
        };
        write_line(out, &line)?;
        offset += bytes.len();
    }
    Ok(tally)
}

/// Writes one JSON line per message found in a capture.
pub fn write_captured_json(
    messages: &[CapturedMessage],
    out: &mut impl Write,
) -> io::Result<Tally> {
    let mut tally = Tally::default();
    for captured in messages {
        write_captured_line(captured, &mut tally, out)?;
    }
    Ok(tally)
}

/// Writes the JSON line of one message found in a capture, counting it in
/// `tally`.
pub fn write_captured_line(
    captured: &CapturedMessage,
    tally: &mut Tally,
    out: &mut impl Write,
) -> io::Result<()> {
    tally.count(&captured.message);
    let line = JsonLine {
        frame: Some(captured.frame),
        time: Some(captured.timestamp),
        src: Some(captured.src),
        dst: Some(captured.dst),
        offset: None,
        length: captured.bytes.len(),
        body: Body::new(&captured.message, &captured.bytes),
    };
    write_line(out, &line)
}

/// The families whose ADD-PATH path identifiers the codec can carry, by the
/// names [`Family`]'s `Display` gives them.
pub const ADD_PATH_FAMILIES: [Family; 4] = [
    Family::IPV4_UNICAST,
    Family::IPV6_UNICAST,
    Family::new(wire::Afi::IPV4, wire::Safi::MULTICAST),
    Family::new(wire::Afi::IPV6, wire::Safi::MULTICAST),
];

/// Parses an ADD-PATH family name such as `ipv4-unicast`.
pub fn parse_add_path_family(name: &str) -> Result<Family, String> {
    ADD_PATH_FAMILIES
        .into_iter()
        .find(|f| f.to_string() == name)
        .ok_or_else(|| {
            let known: Vec<String> = ADD_PATH_FAMILIES.iter().map(|f| f.to_string()).collect();
            format!(
                "unknown family {name:?}; expected one of {}",
                known.join(", ")
            )
        })
}
