//! BGP conversations in packet captures: reading them out of pcap/pcapng
//! files, and writing synthetic captures that Wireshark understands.
//!
//! Reading goes capture file → link layer → IPv4/IPv6 → TCP → per-direction
//! stream reassembly → BGP framing → [`wire::decode`]. Only TCP segments to or
//! from port 179 are looked at.
//!
//! What the reader does with imperfect captures (it never panics):
//!
//! - **Retransmissions, duplicates, overlaps** are trimmed to the bytes not
//!   yet seen; the first copy of a byte wins.
//! - **Out-of-order segments** are held until the bytes before them arrive.
//! - **Holes** (bytes the capture never saw) are only known to be holes when
//!   the capture ends. The message the hole cuts is reported as an
//!   [`ErrorKind::Truncated`] entry, and decoding resumes at the first
//!   plausible BGP header after the hole (16 `0xff` bytes followed by a
//!   length and type [`wire::frame_len`] accepts).
//! - **Framing errors** (bad marker, length or type) are reported as an entry
//!   holding the offending header, then the same resynchronisation applies.
//! - **Capture started mid-connection** (no SYN seen): the first segment seen
//!   sets the stream's start and decoding begins at the first plausible
//!   header; segments before that one are ignored.
//! - **Capture ended mid-message**: the partial message is reported as an
//!   [`ErrorKind::Truncated`] entry.
//! - IP fragments are skipped (BGP speakers set DF), checksums are not
//!   verified (offloading makes captured checksums unreliable), and a file
//!   cut short inside a packet record is a [`PcapError::Truncated`] error.
//!
//! Session parameters follow the OPENs: once both sides' OPENs have been
//! decoded, messages from A to B are decoded with
//! `SessionParams::negotiate_receive(B's OPEN, A's OPEN)`; before that, with
//! the caller's assumed parameters ([`SessionParams::default`] for
//! [`read_bgp_messages`]).

use bgp::wire::{self, DecodeError, ErrorKind, Message, Open, SessionParams, HEADER_LEN};
use bytes::Bytes;
use pcap_parser::nom;
use pcap_parser::pcapng::Block;
use pcap_parser::traits::PcapNGPacketBlock;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

/// The TCP port BGP listens on (RFC 4271 §8.2.1).
pub const BGP_PORT: u16 = 179;

/// One BGP message found in a capture.
#[derive(Clone, Debug, PartialEq)]
pub struct CapturedMessage {
    /// 1-based frame number (as tshark counts) of the packet in which the
    /// message's last byte arrived.
    pub frame: u64,
    /// Seconds since the epoch of that packet (0 for pcapng simple packets,
    /// which carry no timestamp).
    pub timestamp: f64,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    /// The whole message, header included. For an error entry: the bytes the
    /// error is about (the bad header, or the partial message).
    pub bytes: Bytes,
    /// Parameters in force for this direction when the message was decoded.
    pub params: SessionParams,
    pub message: Result<Message, DecodeError>,
}

/// Why a capture could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum PcapError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("not a pcap or pcapng capture")]
    NotACapture,
    #[error("capture is cut short inside the record at byte {offset}")]
    Truncated { offset: usize },
    #[error("malformed capture at byte {offset}: {reason}")]
    Format { offset: usize, reason: String },
    #[error("frame {frame} has link type {linktype}, which this reader does not parse")]
    UnsupportedLinkType { frame: u64, linktype: i32 },
    #[error("payload {index} is {len} bytes; one IPv4 TCP segment carries at most {max}")]
    PayloadTooLarge {
        index: usize,
        len: usize,
        max: usize,
    },
}

/// Reads a pcap or pcapng file, reassembles every TCP stream to or from port
/// 179 (either side), splits it into BGP messages and decodes each one.
///
/// Messages come out ordered by frame, then by position in their stream.
pub fn read_bgp_messages(path: &Path) -> Result<Vec<CapturedMessage>, PcapError> {
    let data = std::fs::read(path).map_err(|source| PcapError::Io {
        path: path.to_owned(),
        source,
    })?;
    decode_capture(&data, SessionParams::default())
}

/// [`read_bgp_messages`] on a capture already in memory. `assumed` is used
/// for a connection until both of its OPENs have been seen (useful for
/// captures started after the session came up).
pub fn decode_capture(
    data: &[u8],
    assumed: SessionParams,
) -> Result<Vec<CapturedMessage>, PcapError> {
    let mut found = Vec::new();
    visit_capture(data, assumed, |message| {
        found.push(message);
        ControlFlow::Continue(())
    })?;
    Ok(found)
}

/// [`decode_capture`] without holding every message: `visit` gets each one
/// in the same order as soon as no later packet can put another before it,
/// so memory stays bounded by the TCP state still open rather than by the
/// capture's size. `visit` can stop the walk by returning `Break`.
///
/// A file error (such as [`PcapError::Truncated`]) is returned after the
/// messages of the packets before it have been visited.
pub fn visit_capture(
    data: &[u8],
    assumed: SessionParams,
    mut visit: impl FnMut(CapturedMessage) -> ControlFlow<()>,
) -> Result<(), PcapError> {
    /// Packets between attempts to hand messages over.
    const RELEASE_INTERVAL: u64 = 256;
    let mut streams = StreamTable::new(assumed);
    let walked = for_each_packet(data, |packet| {
        let Some(network) =
            network_layer(packet.linktype, packet.data).ok_or(PcapError::UnsupportedLinkType {
                frame: packet.frame,
                linktype: packet.linktype,
            })?
        else {
            return Ok(ControlFlow::Continue(()));
        };
        if let Some(segment) = tcp_segment(network) {
            if segment.src.port() == BGP_PORT || segment.dst.port() == BGP_PORT {
                let stamp = Stamp {
                    frame: packet.frame,
                    timestamp: packet.timestamp,
                };
                streams.on_segment(&segment, stamp);
            }
        }
        if packet.frame % RELEASE_INTERVAL == 0 {
            // Later packets have higher frame numbers.
            return Ok(streams.release(packet.frame + 1, &mut visit));
        }
        Ok(ControlFlow::Continue(()))
    });
    match walked {
        Ok(ControlFlow::Break(())) => Ok(()),
        Ok(ControlFlow::Continue(())) => {
            streams.finish();
            let _ = streams.release(u64::MAX, &mut visit);
            Ok(())
        }
        Err(error) => {
            // The packets before the error are still worth showing.
            streams.finish();
            let _ = streams.release(u64::MAX, &mut visit);
            Err(error)
        }
    }
}

// ---------------------------------------------------------------------------
// Capture files
// ---------------------------------------------------------------------------

/// One packet record of a capture file.
struct RawPacket<'a> {
    frame: u64,
    timestamp: f64,
    linktype: i32,
    data: &'a [u8],
}

const PCAPNG_SHB_MAGIC: [u8; 4] = [0x0a, 0x0d, 0x0d, 0x0a];

/// What a per-packet callback says: go on, stop, or fail.
type PacketResult = Result<ControlFlow<()>, PcapError>;

/// Calls `on_packet` for every packet record, in file order, until it asks
/// to stop.
fn for_each_packet(
    data: &[u8],
    on_packet: impl FnMut(RawPacket<'_>) -> PacketResult,
) -> PacketResult {
    if data.starts_with(&PCAPNG_SHB_MAGIC) {
        for_each_pcapng_packet(data, on_packet)
    } else {
        for_each_legacy_packet(data, on_packet)
    }
}

/// Maps a pcap-parser failure at `offset` to our error.
fn parse_failure<E>(err: nom::Err<E>, offset: usize, what: &str) -> PcapError {
    match err {
        nom::Err::Incomplete(_) => PcapError::Truncated { offset },
        nom::Err::Error(_) | nom::Err::Failure(_) => PcapError::Format {
            offset,
            reason: format!("unparsable {what}"),
        },
    }
}

fn for_each_legacy_packet(
    data: &[u8],
    mut on_packet: impl FnMut(RawPacket<'_>) -> PacketResult,
) -> PacketResult {
    let (mut rest, header) = match pcap_parser::parse_pcap_header(data) {
        Ok(parsed) => parsed,
        // Too short to hold a header but starting like one: cut short.
        Err(nom::Err::Incomplete(_)) if data.len() >= 4 => {
            return Err(PcapError::Truncated { offset: 0 })
        }
        Err(_) => return Err(PcapError::NotACapture),
    };
    let parse_frame = if header.is_modified_format() {
        pcap_parser::parse_pcap_frame_modified
    } else if header.is_bigendian() {
        pcap_parser::parse_pcap_frame_be
    } else {
        pcap_parser::parse_pcap_frame
    };
    let fraction_per_second = if header.is_nanosecond_precision() {
        1e9
    } else {
        1e6
    };
    let mut frame = 0u64;
    while !rest.is_empty() {
        let offset = data.len() - rest.len();
        let (next, record) =
            parse_frame(rest).map_err(|e| parse_failure(e, offset, "packet record"))?;
        frame += 1;
        let flow = on_packet(RawPacket {
            frame,
            timestamp: f64::from(record.ts_sec) + f64::from(record.ts_usec) / fraction_per_second,
            linktype: header.network.0,
            data: record.data,
        })?;
        if flow.is_break() {
            return Ok(flow);
        }
        rest = next;
    }
    Ok(ControlFlow::Continue(()))
}

/// What a pcapng Interface Description Block says about its packets.
struct Interface {
    linktype: i32,
    /// Timestamp units per second (`if_tsresol`).
    units_per_second: u64,
    /// Seconds added to every timestamp (`if_tsoffset`).
    offset_seconds: i64,
}

/// `if_tsresol`: a power of ten, or of two when the top bit is set.
fn units_per_second(tsresol: u8) -> Option<u64> {
    if tsresol & 0x80 == 0 {
        10u64.checked_pow(u32::from(tsresol))
    } else {
        1u64.checked_shl(u32::from(tsresol & 0x7f))
    }
}

fn for_each_pcapng_packet(
    data: &[u8],
    mut on_packet: impl FnMut(RawPacket<'_>) -> PacketResult,
) -> PacketResult {
    let mut rest = data;
    let mut big_endian = false;
    let mut interfaces: Vec<Interface> = Vec::new();
    let mut frame = 0u64;
    while !rest.is_empty() {
        let offset = data.len() - rest.len();
        // The section header's magic reads the same in both byte orders, so
        // either parser recognises it and learns the section's byte order.
        let parsed = if big_endian {
            pcap_parser::parse_block_be(rest)
        } else {
            pcap_parser::parse_block_le(rest)
        };
        let (next, block) = parsed.map_err(|e| parse_failure(e, offset, "pcapng block"))?;
        rest = next;
        match block {
            Block::SectionHeader(shb) => {
                big_endian = shb.big_endian();
                interfaces.clear();
            }
            Block::InterfaceDescription(idb) => {
                let units_per_second =
                    units_per_second(idb.if_tsresol).ok_or_else(|| PcapError::Format {
                        offset,
                        reason: format!(
                            "timestamp resolution {:#04x} is out of range",
                            idb.if_tsresol
                        ),
                    })?;
                interfaces.push(Interface {
                    linktype: idb.linktype.0,
                    units_per_second,
                    offset_seconds: idb.if_tsoffset,
                });
            }
            Block::EnhancedPacket(epb) => {
                let interface = usize::try_from(epb.if_id)
                    .ok()
                    .and_then(|i| interfaces.get(i))
                    .ok_or_else(|| PcapError::Format {
                        offset,
                        reason: format!("packet on undescribed interface {}", epb.if_id),
                    })?;
                let ticks = (u64::from(epb.ts_high) << 32) | u64::from(epb.ts_low);
                let units = interface.units_per_second;
                frame += 1;
                let flow = on_packet(RawPacket {
                    frame,
                    timestamp: interface.offset_seconds as f64
                        + (ticks / units) as f64
                        + (ticks % units) as f64 / units as f64,
                    linktype: interface.linktype,
                    data: epb.packet_data(),
                })?;
                if flow.is_break() {
                    return Ok(flow);
                }
            }
            Block::SimplePacket(spb) => {
                // Simple packets belong to the first interface and carry no
                // timestamp (pcapng §4.4).
                let interface = interfaces.first().ok_or_else(|| PcapError::Format {
                    offset,
                    reason: "simple packet before any interface description".to_owned(),
                })?;
                frame += 1;
                let flow = on_packet(RawPacket {
                    frame,
                    timestamp: 0.0,
                    linktype: interface.linktype,
                    data: spb.packet_data(),
                })?;
                if flow.is_break() {
                    return Ok(flow);
                }
            }
            _ => {}
        }
    }
    Ok(ControlFlow::Continue(()))
}

// ---------------------------------------------------------------------------
// Link and network layers
// ---------------------------------------------------------------------------

/// The IP packet a frame carries.
enum Network<'a> {
    Ipv4(&'a [u8]),
    Ipv6(&'a [u8]),
}

/// Link-layer types (tcpdump.org "LINKTYPE_" values).
mod linktype {
    pub const NULL: i32 = 0;
    pub const ETHERNET: i32 = 1;
    pub const RAW: i32 = 101;
    pub const LOOP: i32 = 108;
    pub const LINUX_SLL: i32 = 113;
    pub const IPV4: i32 = 228;
    pub const IPV6: i32 = 229;
    pub const LINUX_SLL2: i32 = 276;
}

mod ethertype {
    pub const IPV4: u16 = 0x0800;
    pub const IPV6: u16 = 0x86dd;
    pub const VLAN: u16 = 0x8100;
    pub const QINQ: u16 = 0x88a8;
    pub const QINQ_OLD: u16 = 0x9100;
}

/// Finds the IP packet in a frame. `None`: link type not supported;
/// `Some(None)`: supported, but the frame holds no IP packet.
fn network_layer(linktype: i32, frame: &[u8]) -> Option<Option<Network<'_>>> {
    Some(match linktype {
        linktype::ETHERNET => frame
            .get(12..14)
            .and_then(|t| by_ethertype(u16::from_be_bytes([t[0], t[1]]), &frame[14..])),
        linktype::LINUX_SLL => frame
            .get(14..16)
            .and_then(|t| by_ethertype(u16::from_be_bytes([t[0], t[1]]), &frame[16..])),
        linktype::LINUX_SLL2 => match (frame.get(0..2), frame.get(20..)) {
            (Some(t), Some(rest)) => by_ethertype(u16::from_be_bytes([t[0], t[1]]), rest),
            _ => None,
        },
        linktype::RAW => by_version(frame),
        linktype::IPV4 => Some(Network::Ipv4(frame)),
        linktype::IPV6 => Some(Network::Ipv6(frame)),
        linktype::NULL | linktype::LOOP => frame.get(0..4).and_then(|af| {
            // NULL stores the address family in the capturing host's byte
            // order, LOOP in network order; the values are all small.
            let mut family = u32::from_le_bytes([af[0], af[1], af[2], af[3]]);
            if family > 0xffff {
                family = family.swap_bytes();
            }
            match family {
                2 => Some(Network::Ipv4(&frame[4..])),
                // AF_INET6 on Linux, the BSDs, FreeBSD and macOS.
                10 | 24 | 28 | 30 => Some(Network::Ipv6(&frame[4..])),
                _ => None,
            }
        }),
        _ => return None,
    })
}

/// Follows an EtherType through any 802.1Q / 802.1ad tags.
fn by_ethertype(mut ethertype: u16, mut payload: &[u8]) -> Option<Network<'_>> {
    loop {
        match ethertype {
            ethertype::IPV4 => return Some(Network::Ipv4(payload)),
            ethertype::IPV6 => return Some(Network::Ipv6(payload)),
            ethertype::VLAN | ethertype::QINQ | ethertype::QINQ_OLD => {
                let tag = payload.get(0..4)?;
                ethertype = u16::from_be_bytes([tag[2], tag[3]]);
                payload = &payload[4..];
            }
            _ => return None,
        }
    }
}

/// Raw IP: the version nibble says which.
fn by_version(packet: &[u8]) -> Option<Network<'_>> {
    match packet.first()? >> 4 {
        4 => Some(Network::Ipv4(packet)),
        6 => Some(Network::Ipv6(packet)),
        _ => None,
    }
}

const IPPROTO_TCP: u8 = 6;

/// The source, destination and TCP payload of an IP packet that carries a
/// whole (unfragmented) TCP segment.
fn ip_tcp_payload(network: Network<'_>) -> Option<(IpAddr, IpAddr, &[u8])> {
    match network {
        Network::Ipv4(p) => {
            let header_len = usize::from(p.first()? & 0x0f) * 4;
            if p[0] >> 4 != 4 || header_len < 20 || p.len() < header_len {
                return None;
            }
            let total_len = usize::from(u16::from_be_bytes([p[2], p[3]]));
            // A total length of 0 appears in captures of TSO-offloaded
            // segments: the packet is as long as what was captured.
            let end = if total_len == 0 {
                p.len()
            } else {
                total_len.min(p.len())
            };
            let fragment = u16::from_be_bytes([p[6], p[7]]);
            let more_fragments = fragment & 0x2000 != 0;
            let fragment_offset = fragment & 0x1fff;
            if more_fragments || fragment_offset != 0 || p[9] != IPPROTO_TCP || end < header_len {
                return None;
            }
            let src = Ipv4Addr::new(p[12], p[13], p[14], p[15]);
            let dst = Ipv4Addr::new(p[16], p[17], p[18], p[19]);
            Some((src.into(), dst.into(), &p[header_len..end]))
        }
        Network::Ipv6(p) => {
            if p.len() < 40 || p[0] >> 4 != 6 {
                return None;
            }
            let payload_len = usize::from(u16::from_be_bytes([p[4], p[5]]));
            // Payload length 0: a jumbogram, or TSO as above.
            let end = if payload_len == 0 {
                p.len()
            } else {
                (40 + payload_len).min(p.len())
            };
            let src = Ipv6Addr::from(<[u8; 16]>::try_from(&p[8..24]).ok()?);
            let dst = Ipv6Addr::from(<[u8; 16]>::try_from(&p[24..40]).ok()?);
            let mut next_header = p[6];
            let mut pos = 40;
            // Walk the extension headers (RFC 8200 §4) to the TCP header.
            loop {
                let ext = p.get(pos..end)?;
                match next_header {
                    IPPROTO_TCP => return Some((src.into(), dst.into(), ext)),
                    // Hop-by-hop, routing, destination options.
                    0 | 43 | 60 => {
                        next_header = *ext.first()?;
                        pos += (usize::from(*ext.get(1)?) + 1) * 8;
                    }
                    // Fragment: only an atomic fragment (offset 0, no more
                    // fragments) holds a whole segment.
                    44 => {
                        let fragment = u16::from_be_bytes([*ext.get(2)?, *ext.get(3)?]);
                        if fragment & 0xfff9 != 0 {
                            return None;
                        }
                        next_header = ext[0];
                        pos += 8;
                    }
                    // Authentication header: length in 4-octet units, minus 2.
                    51 => {
                        next_header = *ext.first()?;
                        pos += (usize::from(*ext.get(1)?) + 2) * 4;
                    }
                    _ => return None,
                }
            }
        }
    }
}

/// A TCP segment, as far as reassembly cares.
struct TcpSegment<'a> {
    src: SocketAddr,
    dst: SocketAddr,
    seq: u32,
    flags: u8,
    payload: &'a [u8],
}

mod tcp_flag {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
}

fn tcp_segment(network: Network<'_>) -> Option<TcpSegment<'_>> {
    let (src_ip, dst_ip, t) = ip_tcp_payload(network)?;
    let header_len = usize::from(t.get(12)? >> 4) * 4;
    if header_len < 20 || t.len() < header_len {
        return None;
    }
    Some(TcpSegment {
        src: SocketAddr::new(src_ip, u16::from_be_bytes([t[0], t[1]])),
        dst: SocketAddr::new(dst_ip, u16::from_be_bytes([t[2], t[3]])),
        seq: u32::from_be_bytes([t[4], t[5], t[6], t[7]]),
        flags: t[13],
        payload: &t[header_len..],
    })
}

// ---------------------------------------------------------------------------
// TCP reassembly and BGP framing
// ---------------------------------------------------------------------------

/// When and in which packet some bytes arrived.
#[derive(Clone, Copy, Debug, Default)]
struct Stamp {
    frame: u64,
    timestamp: f64,
}

/// Where found messages go, with the parameters to use before the OPENs.
struct Output {
    assumed: SessionParams,
    found: Vec<CapturedMessage>,
}

/// All connections seen so far, and the messages found in them.
struct StreamTable {
    connections: Vec<Connection>,
    /// Connection index by its endpoints, lower address first.
    by_endpoints: HashMap<(SocketAddr, SocketAddr), usize>,
    out: Output,
}

/// One TCP connection: `streams[i]` carries what `ends[i]` sends.
struct Connection {
    ends: [SocketAddr; 2],
    streams: [Stream; 2],
    /// The OPEN each end sent, once decoded.
    opens: [Option<Open>; 2],
}

/// The bytes one end sends, reassembled in sequence order.
#[derive(Default)]
struct Stream {
    /// Initial sequence number, from the SYN if one was seen.
    isn: Option<u32>,
    /// Sequence number of the next in-order byte; `None` until the first SYN
    /// or data segment.
    next_seq: Option<u32>,
    /// Stream offset of `next_seq`: bytes delivered (or skipped) so far.
    delivered: u64,
    /// Segments that arrived ahead of `next_seq`, by stream offset.
    early: BTreeMap<u64, (Vec<u8>, Stamp)>,
    /// Delivered bytes not yet framed are `buf[start..]`; they end at stream
    /// offset `delivered`.
    buf: Vec<u8>,
    start: usize,
    /// Which packet delivered the unframed bytes, oldest first: bytes up to
    /// stream offset `.0` came in `.1`.
    arrivals: VecDeque<(u64, Stamp)>,
    /// Whether the unframed bytes begin at a message boundary; `false` after
    /// a framing error, a hole, or when the stream's start was not seen.
    synced: bool,
}

/// Result of looking for a message header in unsynchronised bytes.
enum HeaderSearch {
    /// A plausible header starts here.
    Found(usize),
    /// The bytes from here on could still become a header.
    NeedMore(usize),
    NotFound,
}

impl StreamTable {
    fn new(assumed: SessionParams) -> Self {
        StreamTable {
            connections: Vec::new(),
            by_endpoints: HashMap::new(),
            out: Output {
                assumed,
                found: Vec::new(),
            },
        }
    }

    fn on_segment(&mut self, segment: &TcpSegment<'_>, stamp: Stamp) {
        let key = if segment.src <= segment.dst {
            (segment.src, segment.dst)
        } else {
            (segment.dst, segment.src)
        };
        let connections = &mut self.connections;
        let index = *self.by_endpoints.entry(key).or_insert_with(|| {
            connections.push(Connection {
                ends: [segment.src, segment.dst],
                streams: Default::default(),
                opens: [None, None],
            });
            connections.len() - 1
        });
        let Some(connection) = connections.get_mut(index) else {
            return;
        };
        let side = usize::from(connection.ends[0] != segment.src);
        let mut payload_seq = segment.seq;
        if segment.flags & tcp_flag::SYN != 0 {
            let stream = &mut connection.streams[side];
            match (stream.isn, stream.next_seq) {
                // Fresh stream, or the SYN retransmitted.
                (_, None) => {}
                (Some(isn), Some(_)) if isn == segment.seq => {}
                // Recorded after data it precedes (capture reordering):
                // the stream started right after this SYN.
                (None, Some(next))
                    if u64::from(next.wrapping_sub(segment.seq.wrapping_add(1)))
                        == stream.delivered =>
                {
                    stream.isn = Some(segment.seq);
                }
                // Same endpoints, new sequence space: a new connection.
                (_, Some(_)) => {
                    connection.finish(&mut self.out);
                    connection.streams = Default::default();
                    connection.opens = [None, None];
                }
            }
            let stream = &mut connection.streams[side];
            if stream.next_seq.is_none() {
                stream.isn = Some(segment.seq);
                stream.next_seq = Some(segment.seq.wrapping_add(1));
                stream.synced = true;
            }
            // The SYN occupies one sequence number; data rides after it.
            payload_seq = segment.seq.wrapping_add(1);
        }
        if !segment.payload.is_empty() {
            connection.receive(side, payload_seq, segment.payload, stamp, &mut self.out);
        }
    }

    /// End of capture: flushes every connection.
    fn finish(&mut self) {
        for connection in &mut self.connections {
            connection.finish(&mut self.out);
        }
    }

    /// Hands `visit` the found messages that nothing can precede any more:
    /// those before frame `next_frame` (the earliest a later packet can
    /// have) and before the earliest frame of any bytes still held in TCP
    /// state. Stops early if `visit` breaks.
    fn release(
        &mut self,
        next_frame: u64,
        visit: &mut impl FnMut(CapturedMessage) -> ControlFlow<()>,
    ) -> ControlFlow<()> {
        let held = self
            .connections
            .iter()
            .flat_map(|c| &c.streams)
            .filter_map(Stream::earliest_held_frame)
            .min();
        let limit = held.map_or(next_frame, |h| h.min(next_frame));
        // Stable: messages of one frame keep their stream order.
        self.out.found.sort_by_key(|m| m.frame);
        let ready = self.out.found.partition_point(|m| m.frame < limit);
        for message in self.out.found.drain(..ready) {
            visit(message)?;
        }
        ControlFlow::Continue(())
    }
}

impl Connection {
    /// Parameters for what `side` sends.
    fn params(&self, side: usize, assumed: SessionParams) -> SessionParams {
        match (&self.opens[side], &self.opens[1 - side]) {
            (Some(sender), Some(receiver)) => SessionParams::negotiate_receive(receiver, sender),
            _ => assumed,
        }
    }

    /// Takes in one segment's payload, which starts at sequence number `seq`.
    fn receive(&mut self, side: usize, seq: u32, payload: &[u8], stamp: Stamp, out: &mut Output) {
        let stream = &mut self.streams[side];
        let next_seq = *stream.next_seq.get_or_insert_with(|| {
            // No SYN seen: start here, at an unknown message boundary.
            stream.synced = false;
            seq
        });
        // Sequence numbers wrap; a segment is at most 2^31 ahead or behind.
        let ahead = i64::from(seq.wrapping_sub(next_seq) as i32);
        let delivered = stream.delivered as i64;
        let offset = delivered + ahead;
        let end = offset + payload.len() as i64;
        if end <= delivered {
            return; // retransmission of bytes already delivered
        }
        if offset > delivered {
            // Keep the longer of two early segments starting at one byte.
            let held = stream.early.get(&(offset as u64));
            if !matches!(held, Some((data, _)) if data.len() >= payload.len()) {
                stream
                    .early
                    .insert(offset as u64, (payload.to_vec(), stamp));
            }
            return;
        }
        let skip = (delivered - offset) as usize;
        self.deliver(side, &payload[skip..], stamp, out);
        self.deliver_early(side, out);
    }

    /// Delivers held segments that have become in-order.
    fn deliver_early(&mut self, side: usize, out: &mut Output) {
        loop {
            let stream = &mut self.streams[side];
            let Some(entry) = stream.early.first_entry() else {
                return;
            };
            let offset = *entry.key();
            if offset > stream.delivered {
                return;
            }
            let (data, stamp) = entry.remove();
            let skip = usize::try_from(stream.delivered - offset).unwrap_or(usize::MAX);
            if let Some(fresh) = data.get(skip..).filter(|d| !d.is_empty()) {
                self.deliver(side, fresh, stamp, out);
            }
        }
    }

    /// Appends in-order bytes to the stream and frames what it can.
    fn deliver(&mut self, side: usize, data: &[u8], stamp: Stamp, out: &mut Output) {
        let stream = &mut self.streams[side];
        stream.buf.extend_from_slice(data);
        stream.delivered += data.len() as u64;
        stream.next_seq = stream.next_seq.map(|s| s.wrapping_add(data.len() as u32));
        stream.arrivals.push_back((stream.delivered, stamp));
        self.frame_messages(side, out);
    }

    /// Splits the unframed bytes of `side` into messages and decodes them.
    fn frame_messages(&mut self, side: usize, out: &mut Output) {
        loop {
            let params = self.params(side, out.assumed);
            let stream = &mut self.streams[side];
            let unframed = &stream.buf[stream.start..];
            if unframed.is_empty() {
                return;
            }
            if !stream.synced {
                match find_header(unframed, &params) {
                    HeaderSearch::Found(at) => {
                        stream.consume(at);
                        stream.synced = true;
                        continue;
                    }
                    HeaderSearch::NeedMore(at) => {
                        stream.consume(at);
                        return;
                    }
                    HeaderSearch::NotFound => {
                        let all = unframed.len();
                        stream.consume(all);
                        return;
                    }
                }
            }
            match wire::frame_len(unframed, &params) {
                Ok(Some(len)) => {
                    let bytes = Bytes::copy_from_slice(&unframed[..len]);
                    let stamp = stream.arrival_of(len);
                    stream.consume(len);
                    let message = wire::decode(&bytes, &params);
                    if let Ok(Message::Open(open)) = &message {
                        self.opens[side] = Some(open.clone());
                    }
                    self.emit(side, stamp, bytes, params, message, out);
                }
                Ok(None) => return,
                Err(error) => {
                    // Report the bad header, then look for the next good one.
                    let shown = unframed.len().min(HEADER_LEN);
                    let bytes = Bytes::copy_from_slice(&unframed[..shown]);
                    let stamp = stream.arrival_of(shown);
                    stream.consume(1);
                    stream.synced = false;
                    self.emit(side, stamp, bytes, params, Err(error), out);
                }
            }
        }
    }

    fn emit(
        &self,
        side: usize,
        stamp: Stamp,
        bytes: Bytes,
        params: SessionParams,
        message: Result<Message, DecodeError>,
        out: &mut Output,
    ) {
        out.found.push(CapturedMessage {
            frame: stamp.frame,
            timestamp: stamp.timestamp,
            src: self.ends[side],
            dst: self.ends[1 - side],
            bytes,
            params,
            message,
        });
    }

    /// End of capture (or of this incarnation of the connection): steps over
    /// holes nothing filled and reports messages left incomplete.
    fn finish(&mut self, out: &mut Output) {
        for side in 0..2 {
            while let Some((&resume_at, _)) = self.streams[side].early.first_key_value() {
                self.report_incomplete(side, out);
                let stream = &mut self.streams[side];
                let skipped = resume_at - stream.delivered;
                stream.delivered = resume_at;
                stream.next_seq = stream.next_seq.map(|s| s.wrapping_add(skipped as u32));
                self.deliver_early(side, out);
            }
            self.report_incomplete(side, out);
        }
    }

    /// Reports the unframed bytes of `side` as a truncated message (if they
    /// start one) and drops them, leaving the stream unsynchronised.
    fn report_incomplete(&mut self, side: usize, out: &mut Output) {
        let params = self.params(side, out.assumed);
        let stream = &mut self.streams[side];
        let unframed = &stream.buf[stream.start..];
        let len = unframed.len();
        let report = (stream.synced && len > 0).then(|| {
            let needed = match unframed.get(16..18) {
                Some(l) => usize::from(u16::from_be_bytes([l[0], l[1]])),
                None => HEADER_LEN,
            };
            let error = DecodeError::reset(
                ErrorKind::Truncated {
                    needed,
                    available: len,
                },
                Bytes::new(),
            );
            (
                Bytes::copy_from_slice(unframed),
                stream.arrival_of(len),
                error,
            )
        });
        stream.consume(len);
        stream.synced = false;
        if let Some((bytes, stamp, error)) = report {
            self.emit(side, stamp, bytes, params, Err(error), out);
        }
    }
}

impl Stream {
    /// The earliest frame among bytes that may still become a message.
    fn earliest_held_frame(&self) -> Option<u64> {
        let unframed = self.arrivals.iter().map(|(_, stamp)| stamp.frame);
        let early = self.early.values().map(|(_, stamp)| stamp.frame);
        unframed.chain(early).min()
    }

    /// Stream offset of the first unframed byte.
    fn unframed_start(&self) -> u64 {
        self.delivered - (self.buf.len() - self.start) as u64
    }

    /// When the `n`th unframed byte (1-based) arrived.
    fn arrival_of(&self, n: usize) -> Stamp {
        let last_byte = self.unframed_start() + n.saturating_sub(1) as u64;
        self.arrivals
            .iter()
            .find(|(end, _)| *end > last_byte)
            .or(self.arrivals.back())
            .map(|(_, stamp)| *stamp)
            .unwrap_or_default()
    }

    /// Drops the first `n` unframed bytes.
    fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.buf.len());
        let unframed_start = self.unframed_start();
        while self
            .arrivals
            .front()
            .is_some_and(|(end, _)| *end <= unframed_start)
        {
            self.arrivals.pop_front();
        }
        // Compact once the consumed prefix dominates, keeping appends cheap.
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start > 4096 && self.start * 2 > self.buf.len() {
            self.buf.drain(..self.start);
            self.start = 0;
        }
    }
}

/// Looks for the first plausible message header: the 16-byte marker
/// followed by a length and type that `frame_len` accepts.
fn find_header(buf: &[u8], params: &SessionParams) -> HeaderSearch {
    for (at, &byte) in buf.iter().enumerate() {
        if byte != 0xff {
            continue;
        }
        let candidate = &buf[at..];
        if candidate.len() < HEADER_LEN {
            let marker_so_far = &candidate[..candidate.len().min(16)];
            if marker_so_far.iter().all(|&b| b == 0xff) {
                return HeaderSearch::NeedMore(at);
            }
            continue;
        }
        if wire::frame_len(&candidate[..HEADER_LEN], params).is_ok() {
            return HeaderSearch::Found(at);
        }
    }
    HeaderSearch::NotFound
}

// ---------------------------------------------------------------------------
// Writing synthetic captures
// ---------------------------------------------------------------------------

/// Largest TCP payload of one IPv4 packet without options.
pub const MAX_SEGMENT_PAYLOAD: usize = 65535 - 20 - 20;

/// Writes a classic pcap (linktype Ethernet) holding each payload as one TCP
/// segment of a single IPv4 connection `client -> server` (`true` = sent by
/// the client), after a 3-way handshake, with correct sequence and
/// acknowledgement numbers and valid checksums, so that tshark dissects the
/// payloads as BGP when either port is 179.
pub fn write_bgp_pcap(
    path: &Path,
    client: SocketAddrV4,
    server: SocketAddrV4,
    payloads: &[(bool, Bytes)],
) -> Result<(), PcapError> {
    let mut capture = TcpCaptureWriter::new(client, server);
    for (index, (from_client, payload)) in payloads.iter().enumerate() {
        if payload.len() > MAX_SEGMENT_PAYLOAD {
            return Err(PcapError::PayloadTooLarge {
                index,
                len: payload.len(),
                max: MAX_SEGMENT_PAYLOAD,
            });
        }
        capture.send(*from_client, payload);
    }
    std::fs::write(path, capture.into_bytes()).map_err(|source| PcapError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Builds a classic pcap of one IPv4 TCP connection segment by segment, for
/// tests and reproductions: in-order sends, plus segments at any stream
/// offset to model retransmissions, overlaps, reordering and loss.
///
/// Packets are 1 ms apart starting at [`TcpCaptureWriter::START_TIME`]; the
/// handshake takes frames 1–3.
pub struct TcpCaptureWriter {
    ends: [SocketAddrV4; 2],
    isn: [u32; 2],
    /// Bytes each side has sent so far (highest stream offset + 1).
    sent: [u32; 2],
    file: Vec<u8>,
    packets: u32,
}

impl TcpCaptureWriter {
    /// Timestamp of the first packet, seconds since the epoch.
    pub const START_TIME: u32 = 1_700_000_000;

    /// A capture holding the handshake, with fixed initial sequence numbers.
    pub fn new(client: SocketAddrV4, server: SocketAddrV4) -> Self {
        Self::with_initial_sequence(client, server, 0x1000_0000, 0x2000_0000)
    }

    /// As [`TcpCaptureWriter::new`], choosing the initial sequence numbers
    /// (to test wrap-around).
    pub fn with_initial_sequence(
        client: SocketAddrV4,
        server: SocketAddrV4,
        client_isn: u32,
        server_isn: u32,
    ) -> Self {
        let mut file = Vec::with_capacity(4096);
        file.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
        file.extend_from_slice(&2u16.to_le_bytes());
        file.extend_from_slice(&4u16.to_le_bytes());
        file.extend_from_slice(&0i32.to_le_bytes()); // thiszone
        file.extend_from_slice(&0u32.to_le_bytes()); // sigfigs
        file.extend_from_slice(&262_144u32.to_le_bytes()); // snaplen
        file.extend_from_slice(&(linktype::ETHERNET as u32).to_le_bytes());
        let mut writer = TcpCaptureWriter {
            ends: [client, server],
            isn: [client_isn, server_isn],
            sent: [0, 0],
            file,
            packets: 0,
        };
        writer.packet(0, client_isn, 0, tcp_flag::SYN, &[]);
        writer.packet(
            1,
            server_isn,
            client_isn.wrapping_add(1),
            tcp_flag::SYN | tcp_flag::ACK,
            &[],
        );
        writer.packet(
            0,
            client_isn.wrapping_add(1),
            server_isn.wrapping_add(1),
            tcp_flag::ACK,
            &[],
        );
        writer
    }

    /// Sends the next bytes of one side's stream in one segment.
    pub fn send(&mut self, from_client: bool, payload: &[u8]) -> &mut Self {
        let side = usize::from(!from_client);
        let offset = self.sent[side];
        self.send_at(from_client, offset, payload)
    }

    /// Sends `payload` as the bytes at `offset` (0 = first data byte) of one
    /// side's stream, whether or not they were sent before.
    pub fn send_at(&mut self, from_client: bool, offset: u32, payload: &[u8]) -> &mut Self {
        let side = usize::from(!from_client);
        let seq = self.isn[side].wrapping_add(1).wrapping_add(offset);
        let ack = self.isn[1 - side]
            .wrapping_add(1)
            .wrapping_add(self.sent[1 - side]);
        let flags = tcp_flag::ACK | if payload.is_empty() { 0 } else { tcp_flag::PSH };
        self.packet(side, seq, ack, flags, payload);
        let end = offset.wrapping_add(payload.len() as u32);
        if end.wrapping_sub(self.sent[side]) as i32 > 0 {
            self.sent[side] = end;
        }
        self
    }

    /// Closes the connection from the client side (FIN, FIN-ACK, ACK).
    pub fn close(&mut self) -> &mut Self {
        let seq = |w: &Self, side: usize| w.isn[side].wrapping_add(1).wrapping_add(w.sent[side]);
        let (c, s) = (seq(self, 0), seq(self, 1));
        self.packet(0, c, s, tcp_flag::FIN | tcp_flag::ACK, &[]);
        self.packet(1, s, c.wrapping_add(1), tcp_flag::FIN | tcp_flag::ACK, &[]);
        self.packet(0, c.wrapping_add(1), s.wrapping_add(1), tcp_flag::ACK, &[]);
        self
    }

    /// Number of packets written so far (the last one's frame number).
    pub fn packets(&self) -> u32 {
        self.packets
    }

    /// The finished pcap file.
    pub fn into_bytes(self) -> Vec<u8> {
        self.file
    }

    /// Appends one Ethernet/IPv4/TCP packet record sent by `side`.
    fn packet(&mut self, side: usize, seq: u32, ack: u32, flags: u8, payload: &[u8]) {
        let (src, dst) = (self.ends[side], self.ends[1 - side]);
        // Oversized payloads are cut rather than written with a wrong length.
        let payload = &payload[..payload.len().min(MAX_SEGMENT_PAYLOAD)];
        let ip_len = 20 + 20 + payload.len();

        let mut tcp = Vec::with_capacity(20 + payload.len());
        tcp.extend_from_slice(&src.port().to_be_bytes());
        tcp.extend_from_slice(&dst.port().to_be_bytes());
        tcp.extend_from_slice(&seq.to_be_bytes());
        tcp.extend_from_slice(&(if flags & tcp_flag::ACK != 0 { ack } else { 0 }).to_be_bytes());
        tcp.push(5 << 4); // data offset: 5 words, no options
        tcp.push(flags);
        tcp.extend_from_slice(&65535u16.to_be_bytes()); // window
        tcp.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
        tcp.extend_from_slice(payload);
        let mut pseudo = Vec::with_capacity(12);
        pseudo.extend_from_slice(&src.ip().octets());
        pseudo.extend_from_slice(&dst.ip().octets());
        pseudo.extend_from_slice(&[0, IPPROTO_TCP]);
        pseudo.extend_from_slice(&(tcp.len() as u16).to_be_bytes());
        let tcp_checksum = internet_checksum(&[&pseudo, &tcp]);
        tcp[16..18].copy_from_slice(&tcp_checksum.to_be_bytes());

        let mut ip = Vec::with_capacity(20);
        ip.extend_from_slice(&[0x45, 0]);
        ip.extend_from_slice(&(ip_len as u16).to_be_bytes());
        ip.extend_from_slice(&(self.packets as u16).to_be_bytes()); // identification
        ip.extend_from_slice(&0x4000u16.to_be_bytes()); // don't fragment
        ip.extend_from_slice(&[64, IPPROTO_TCP, 0, 0]); // TTL, protocol, checksum
        ip.extend_from_slice(&src.ip().octets());
        ip.extend_from_slice(&dst.ip().octets());
        let ip_checksum = internet_checksum(&[&ip]);
        ip[10..12].copy_from_slice(&ip_checksum.to_be_bytes());

        // Locally administered MACs, distinct per side.
        let mac = |s: usize| [0x02, 0, 0, 0, 0, s as u8 + 1];
        let frame_len = 14 + ip_len;
        let micros = u64::from(self.packets) * 1000;
        self.packets += 1;
        let seconds = u64::from(Self::START_TIME) + micros / 1_000_000;
        let record = &mut self.file;
        record.extend_from_slice(&(seconds as u32).to_le_bytes());
        record.extend_from_slice(&((micros % 1_000_000) as u32).to_le_bytes());
        record.extend_from_slice(&(frame_len as u32).to_le_bytes());
        record.extend_from_slice(&(frame_len as u32).to_le_bytes());
        record.extend_from_slice(&mac(1 - side));
        record.extend_from_slice(&mac(side));
        record.extend_from_slice(&ethertype::IPV4.to_be_bytes());
        record.extend_from_slice(&ip);
        record.extend_from_slice(&tcp);
    }
}

/// The ones' complement sum of RFC 1071 over the concatenated parts (each
/// part but the last has even length here).
fn internet_checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    for part in parts {
        let mut words = part.chunks_exact(2);
        for w in &mut words {
            sum += u32::from(u16::from_be_bytes([w[0], w[1]]));
        }
        if let [last] = words.remainder() {
            sum += u32::from(*last) << 8;
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}
