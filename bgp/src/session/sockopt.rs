//! Socket options a BGP session sets before connecting (or on a listener
//! before accepting): TCP MD5 signatures (RFC 2385), the outgoing TTL for
//! eBGP multihop, and the minimum incoming TTL of GTSM (RFC 5082).

use socket2::SockRef;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;

/// Linux's `TCP_MD5SIG_MAXKEYLEN`.
pub const MD5_MAX_KEY_LEN: usize = 80;

/// Outgoing TTL / hop limit for every packet of the connection (eBGP
/// multihop, or 255 for GTSM).
pub fn set_ttl(socket: &impl AsFd, peer: SocketAddr, ttl: u8) -> io::Result<()> {
    let sock = SockRef::from(socket);
    match peer {
        SocketAddr::V4(_) => sock.set_ttl_v4(u32::from(ttl)),
        SocketAddr::V6(_) => sock.set_unicast_hops_v6(u32::from(ttl)),
    }
}

/// GTSM (RFC 5082 §3): drop segments that arrive with a TTL below
/// `min_ttl` (`IP_MINTTL`, or `IPV6_MINHOPCOUNT` for IPv6).
pub fn set_min_ttl(socket: &impl AsFd, peer: SocketAddr, min_ttl: u8) -> io::Result<()> {
    let (level, name) = match peer {
        SocketAddr::V4(_) => (libc::IPPROTO_IP, libc::IP_MINTTL),
        SocketAddr::V6(_) => (libc::IPPROTO_IPV6, libc::IPV6_MINHOPCOUNT),
    };
    setsockopt_int(socket, level, name, libc::c_int::from(min_ttl))
}

/// The minimum incoming TTL (hop limit for IPv6) set by [`set_min_ttl`];
/// 0 when none is.
pub fn min_ttl(socket: &impl AsFd, peer: SocketAddr) -> io::Result<u8> {
    let (level, name) = match peer {
        SocketAddr::V4(_) => (libc::IPPROTO_IP, libc::IP_MINTTL),
        SocketAddr::V6(_) => (libc::IPPROTO_IPV6, libc::IPV6_MINHOPCOUNT),
    };
    let value = getsockopt_int(socket, level, name)?;
    u8::try_from(value).map_err(|_| io::Error::other(format!("minimum TTL {value} out of range")))
}

/// The outgoing TTL (hop limit for IPv6) of the socket.
pub fn ttl(socket: &impl AsFd, peer: SocketAddr) -> io::Result<u32> {
    let sock = SockRef::from(socket);
    match peer {
        SocketAddr::V4(_) => sock.ttl_v4(),
        SocketAddr::V6(_) => sock.unicast_hops_v6(),
    }
}

/// `struct tcp_md5sig` of `linux/tcp.h` (libc does not define it).
#[repr(C)]
struct TcpMd5Sig {
    addr: libc::sockaddr_storage,
    flags: u8,
    prefixlen: u8,
    keylen: u16,
    ifindex: libc::c_int,
    key: [u8; MD5_MAX_KEY_LEN],
}

/// Installs (non-empty `key`) or removes (empty `key`) the TCP MD5
/// signature key for segments to and from `peer` (RFC 2385). On a
/// listening socket it applies to connections accepted from `peer`.
pub fn set_md5(socket: &impl AsFd, peer: SocketAddr, key: &[u8]) -> io::Result<()> {
    md5_setsockopt(socket, peer, None, key)
}

/// `TCP_MD5SIG_FLAG_PREFIX` of `linux/tcp.h`: the key applies to every
/// address in `addr/prefixlen`.
const TCP_MD5SIG_FLAG_PREFIX: u8 = 1;

/// Like [`set_md5`], for every peer address in `prefix` at once
/// (`TCP_MD5SIG_EXT` with a prefix length, Linux 4.13+): what a listening
/// socket needs for dynamic neighbours of a listen range.
pub fn set_md5_prefix(socket: &impl AsFd, prefix: ipnet::IpNet, key: &[u8]) -> io::Result<()> {
    let addr = SocketAddr::new(prefix.network(), 0);
    md5_setsockopt(socket, addr, Some(prefix.prefix_len()), key)
}

/// [`set_md5_prefix`] for IPv4 peers of a dual-stack (IPv6) socket: Linux
/// takes the IPv4 prefix as its IPv4-mapped address with the IPv4 prefix
/// length (at most 32; `tcp_v6_parse_md5_keys`).
pub fn set_md5_prefix_v4_mapped(
    socket: &impl AsFd,
    prefix: ipnet::Ipv4Net,
    key: &[u8],
) -> io::Result<()> {
    let addr = SocketAddr::new(std::net::IpAddr::V6(prefix.network().to_ipv6_mapped()), 0);
    md5_setsockopt(socket, addr, Some(prefix.prefix_len()), key)
}

#[allow(unsafe_code)]
fn md5_setsockopt(
    socket: &impl AsFd,
    peer: SocketAddr,
    prefix_len: Option<u8>,
    key: &[u8],
) -> io::Result<()> {
    if key.len() > MD5_MAX_KEY_LEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("TCP MD5 key longer than {MD5_MAX_KEY_LEN} bytes"),
        ));
    }
    let addr = socket2::SockAddr::from(peer);
    let mut sig = TcpMd5Sig {
        // SAFETY: sockaddr_storage is plain old data (integers and byte
        // arrays): all zeroes is a valid value.
        addr: unsafe { std::mem::zeroed() },
        flags: if prefix_len.is_some() {
            TCP_MD5SIG_FLAG_PREFIX
        } else {
            0
        },
        prefixlen: prefix_len.unwrap_or(0),
        keylen: key.len() as u16,
        ifindex: 0,
        key: [0; MD5_MAX_KEY_LEN],
    };
    sig.key[..key.len()].copy_from_slice(key);
    let len = (addr.len() as usize).min(std::mem::size_of::<libc::sockaddr_storage>());
    // SAFETY: `addr.as_ptr()` points to `addr.len()` initialised bytes of a
    // sockaddr, `sig.addr` is a distinct sockaddr_storage of at least `len`
    // bytes, and both are plain bytes for the copy.
    unsafe {
        std::ptr::copy_nonoverlapping(
            addr.as_ptr().cast::<u8>(),
            (&mut sig.addr as *mut libc::sockaddr_storage).cast::<u8>(),
            len,
        );
    }
    let fd = socket.as_fd();
    // SAFETY: `fd` is a valid open socket for the duration of the call
    // (borrowed), and the pointer/length pair describes `sig`, a live
    // `#[repr(C)]` value laid out as the kernel's `struct tcp_md5sig`.
    let rc = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            libc::IPPROTO_TCP,
            if prefix_len.is_some() {
                libc::TCP_MD5SIG_EXT
            } else {
                libc::TCP_MD5SIG
            },
            (&sig as *const TcpMd5Sig).cast::<libc::c_void>(),
            std::mem::size_of::<TcpMd5Sig>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[allow(unsafe_code)]
fn setsockopt_int(
    socket: &impl AsFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    let fd = socket.as_fd();
    // SAFETY: `fd` is a valid open socket for the duration of the call
    // (borrowed); the pointer/length pair describes a live c_int.
    let rc = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            level,
            name,
            (&value as *const libc::c_int).cast::<libc::c_void>(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[allow(unsafe_code)]
fn getsockopt_int(
    socket: &impl AsFd,
    level: libc::c_int,
    name: libc::c_int,
) -> io::Result<libc::c_int> {
    let fd = socket.as_fd();
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `fd` is a valid open socket for the duration of the call
    // (borrowed); the pointer/length pair describes a live, writable c_int
    // and `len` its size, which the kernel updates.
    let rc = unsafe {
        libc::getsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            level,
            name,
            (&mut value as *mut libc::c_int).cast::<libc::c_void>(),
            &mut len,
        )
    };
    if rc == 0 {
        Ok(value)
    } else {
        Err(io::Error::last_os_error())
    }
}
