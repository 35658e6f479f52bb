//! A blocking rtnetlink socket: one request, its acknowledgement or its
//! dump, over the message types of `netlink-packet-route` (the crates
//! `rtnetlink` is built on, without its async runtime).
//!
//! A netlink socket stays in the network namespace it was opened in, so the
//! plugin opens one in the node's namespace and one inside the pod's
//! ([`crate::netns::NetNs::route_socket`]) and never moves a thread back.

use std::io;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use nix::libc;

/// What a netlink request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// The kernel refused the request: `errno` is positive (`libc::EEXIST`…).
    #[error("{what}: {source}")]
    Kernel {
        what: String,
        errno: i32,
        source: io::Error,
    },
    #[error("netlink socket: {0}")]
    Io(#[from] io::Error),
    #[error("netlink answer cannot be decoded: {0}")]
    Decode(String),
}

impl NetlinkError {
    /// The kernel's errno, if the kernel refused.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Kernel { errno, .. } => Some(*errno),
            _ => None,
        }
    }
}

/// One rtnetlink socket, bound to the namespace it was opened in.
pub struct RouteSocket {
    socket: Socket,
    sequence: u32,
    buffer: Vec<u8>,
}

impl RouteSocket {
    /// Opens a socket in the calling thread's network namespace.
    pub fn open() -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        Ok(RouteSocket {
            socket,
            sequence: 0,
            buffer: Vec::with_capacity(64 * 1024),
        })
    }

    /// Sends a request that changes something and waits for its ACK.
    /// `flags` adds to `NLM_F_REQUEST | NLM_F_ACK` (`NLM_F_CREATE`, …).
    pub fn execute(
        &mut self,
        message: RouteNetlinkMessage,
        flags: u16,
        what: impl FnOnce() -> String,
    ) -> Result<(), NetlinkError> {
        self.exchange(message, NLM_F_REQUEST | NLM_F_ACK | flags, what)
            .map(drop)
    }

    /// Sends a GET for one object; `Ok(None)` when the kernel says it does
    /// not exist (`ENODEV`, `ENOENT`, `ESRCH`).
    pub fn get(
        &mut self,
        message: RouteNetlinkMessage,
        what: impl FnOnce() -> String,
    ) -> Result<Option<RouteNetlinkMessage>, NetlinkError> {
        match self.exchange(message, NLM_F_REQUEST | NLM_F_ACK, what) {
            Ok(mut answers) => Ok(answers.pop()),
            Err(e) if matches!(e.errno(), Some(libc::ENODEV | libc::ENOENT | libc::ESRCH)) => {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Sends a dump request and collects every answer.
    pub fn dump(
        &mut self,
        message: RouteNetlinkMessage,
        what: impl FnOnce() -> String,
    ) -> Result<Vec<RouteNetlinkMessage>, NetlinkError> {
        self.exchange(message, NLM_F_REQUEST | NLM_F_DUMP, what)
    }

    fn exchange(
        &mut self,
        message: RouteNetlinkMessage,
        flags: u16,
        what: impl FnOnce() -> String,
    ) -> Result<Vec<RouteNetlinkMessage>, NetlinkError> {
        self.sequence = self.sequence.wrapping_add(1);
        let sequence = self.sequence;
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = sequence;
        let mut request = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(message));
        request.finalize();
        let mut bytes = vec![0u8; request.buffer_len()];
        request.serialize(&mut bytes);
        self.socket.send(&bytes, 0)?;

        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut answers = Vec::new();
        loop {
            self.buffer.clear();
            self.socket.recv(&mut self.buffer, 0)?;
            let mut offset = 0;
            while offset < self.buffer.len() {
                let bytes = &self.buffer[offset..];
                let parsed = NetlinkMessage::<RouteNetlinkMessage>::deserialize(bytes)
                    .map_err(|e| NetlinkError::Decode(e.to_string()))?;
                let length = parsed.header.length as usize;
                if length == 0 {
                    return Err(NetlinkError::Decode("zero-length message".into()));
                }
                offset += (length + 3) & !3;
                if parsed.header.sequence_number != sequence {
                    continue; // a late answer to an earlier request
                }
                match parsed.payload {
                    NetlinkPayload::Error(e) => match e.code {
                        None => return Ok(answers),
                        Some(code) => {
                            let errno = -code.get();
                            return Err(NetlinkError::Kernel {
                                what: what(),
                                errno,
                                source: io::Error::from_raw_os_error(errno),
                            });
                        }
                    },
                    NetlinkPayload::Done(_) => return Ok(answers),
                    NetlinkPayload::InnerMessage(inner) => {
                        answers.push(inner);
                        if !dump && flags & NLM_F_ACK == 0 {
                            return Ok(answers);
                        }
                    }
                    _ => {}
                }
            }
        }
    }
}
