//! A blocking rtnetlink socket: one request, its acknowledgement or its
//! dump, over the message types of `netlink-packet-route` (the crates
//! `rtnetlink` is built on, without its async runtime).
//!
//! A netlink socket stays in the network namespace it was opened in, so the
//! plugin opens one in the node's namespace and one inside the pod's
//! ([`crate::netns::NetNs::route_socket`]) and never moves a thread back.

use std::io;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_ECHO, NLM_F_REQUEST,
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

    /// Like [`RouteSocket::execute`], with `NLM_F_ECHO`: the kernel also
    /// sends back what it made (Linux ≥ 6.3 does so for a new link; older
    /// kernels send only the ACK, and the answer is empty).
    pub fn execute_echo(
        &mut self,
        message: RouteNetlinkMessage,
        flags: u16,
        what: impl FnOnce() -> String,
    ) -> Result<Vec<RouteNetlinkMessage>, NetlinkError> {
        self.exchange(
            message,
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_ECHO | flags,
            what,
        )
    }

    /// Sends several change requests (each with its own flags added to
    /// `NLM_F_REQUEST | NLM_F_ACK`) in one `sendmsg` and waits for every
    /// ACK. The kernel handles them in order and goes on after a refusal,
    /// so all are tried; the first refusal is returned, described by
    /// `what(index)`. One system call each way instead of one per request:
    /// the RTNL lock is still taken once per request.
    pub fn execute_all(
        &mut self,
        requests: Vec<(RouteNetlinkMessage, u16)>,
        what: impl Fn(usize) -> String,
    ) -> Result<(), NetlinkError> {
        if requests.is_empty() {
            return Ok(());
        }
        let first = self.sequence.wrapping_add(1);
        let mut bytes = Vec::new();
        for (message, flags) in requests {
            self.sequence = self.sequence.wrapping_add(1);
            append(
                &mut bytes,
                message,
                NLM_F_REQUEST | NLM_F_ACK | flags,
                self.sequence,
            );
        }
        let count = self.sequence.wrapping_sub(first).wrapping_add(1) as usize;
        self.socket.send(&bytes, 0)?;
        let mut acked = vec![false; count];
        let mut refusal: Option<(usize, i32)> = None;
        while acked.iter().any(|a| !a) {
            self.buffer.clear();
            self.socket.recv(&mut self.buffer, 0)?;
            for parsed in Messages::new(&self.buffer) {
                let parsed = parsed?;
                let index = parsed.header.sequence_number.wrapping_sub(first) as usize;
                if index >= count {
                    continue; // a late answer to an earlier request
                }
                if let NetlinkPayload::Error(e) = parsed.payload {
                    acked[index] = true;
                    if let Some(code) = e.code {
                        let errno = -code.get();
                        if refusal.is_none_or(|(i, _)| index < i) {
                            refusal = Some((index, errno));
                        }
                    }
                }
            }
        }
        match refusal {
            None => Ok(()),
            Some((index, errno)) => Err(NetlinkError::Kernel {
                what: what(index),
                errno,
                source: io::Error::from_raw_os_error(errno),
            }),
        }
    }

    fn exchange(
        &mut self,
        message: RouteNetlinkMessage,
        flags: u16,
        what: impl FnOnce() -> String,
    ) -> Result<Vec<RouteNetlinkMessage>, NetlinkError> {
        self.sequence = self.sequence.wrapping_add(1);
        let sequence = self.sequence;
        let mut bytes = Vec::new();
        append(&mut bytes, message, flags, sequence);
        self.socket.send(&bytes, 0)?;

        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut answers = Vec::new();
        loop {
            self.buffer.clear();
            self.socket.recv(&mut self.buffer, 0)?;
            for parsed in Messages::new(&self.buffer) {
                let parsed = parsed?;
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

/// Appends one request, padded to the 4-byte alignment netlink expects
/// between messages (`NLMSG_ALIGN`).
fn append(bytes: &mut Vec<u8>, message: RouteNetlinkMessage, flags: u16, sequence: u32) {
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    header.sequence_number = sequence;
    let mut request = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(message));
    request.finalize();
    let start = bytes.len();
    let length = request.buffer_len();
    bytes.resize(start + ((length + 3) & !3), 0);
    request.serialize(&mut bytes[start..start + length]);
}

/// The messages of one received datagram.
struct Messages<'a> {
    buffer: &'a [u8],
    offset: usize,
}

impl<'a> Messages<'a> {
    fn new(buffer: &'a [u8]) -> Self {
        Messages { buffer, offset: 0 }
    }
}

impl Iterator for Messages<'_> {
    type Item = Result<NetlinkMessage<RouteNetlinkMessage>, NetlinkError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.offset >= self.buffer.len() {
            return None;
        }
        let bytes = &self.buffer[self.offset..];
        let parsed = match NetlinkMessage::<RouteNetlinkMessage>::deserialize(bytes) {
            Ok(parsed) => parsed,
            Err(e) => {
                self.offset = self.buffer.len();
                return Some(Err(NetlinkError::Decode(e.to_string())));
            }
        };
        let length = parsed.header.length as usize;
        if length == 0 {
            self.offset = self.buffer.len();
            return Some(Err(NetlinkError::Decode("zero-length message".into())));
        }
        self.offset += (length + 3) & !3;
        Some(Ok(parsed))
    }
}
