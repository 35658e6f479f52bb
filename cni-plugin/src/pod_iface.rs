//! The pod interface, the Calico way: a veth pair whose host end
//! (`fx` + 11 hex digits) has no address and answers ARP for the pod's
//! gateway 169.254.1.1 by proxy ARP; the pod end carries /32 and /128
//! addresses and default routes via that gateway (IPv4, on-link) and via
//! the host end's fixed link-local address (IPv6). The node reaches each pod
//! address by a host route to the host end, tagged with felix's route
//! protocol number so the agent's route programmer recognises it.

use std::fs;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;

use ipnet::IpNet;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::address::{
    AddressAttribute, AddressHeaderFlags, AddressMessage, AddressScope,
};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
    RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::netlink::{NetlinkError, RouteSocket};
use crate::netns::NetNs;
use crate::ROUTE_PROTOCOL;

/// The pod's IPv4 gateway, answered by proxy ARP on the host end (never
/// configured anywhere: Calico's convention).
pub const POD_GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// The host end's MAC address, fixed so that its link-local address (the
/// pod's IPv6 gateway) is known in advance.
pub const HOST_VETH_MAC: [u8; 6] = [0xee; 6];
/// The EUI-64 link-local address of [`HOST_VETH_MAC`] (RFC 4291 app. A).
pub const POD_GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0xecee, 0xeeff, 0xfeee, 0xeeee);

/// The host end's name: `fx` + 11 hex digits of a hash of the container id
/// and interface name (13 bytes, under IFNAMSIZ). FNV-1a is not a
/// cryptographic hash; a collision shows up as "already exists" at ADD,
/// never as a shared interface.
pub fn host_veth_name(container_id: &str, ifname: &str) -> String {
    let hex = format!("{:016x}", fnv1a(container_id, ifname));
    format!("fx{}", &hex[..11])
}

/// The pod end's MAC address: locally administered, unicast (IEEE 802
/// I/G bit clear, U/L bit set), from the same hash as the host end's name
/// with the bytes reversed. Chosen by the plugin rather than the kernel so
/// that ADD knows the pod end without asking the pod's namespace for it:
/// the veth is a point-to-point link of its own, so two pods with the same
/// MAC never meet on one segment.
pub fn pod_veth_mac(container_id: &str, ifname: &str) -> [u8; 6] {
    let bytes = fnv1a(container_id, ifname).to_le_bytes();
    let mut mac = [bytes[0], bytes[1], bytes[2], bytes[3], bytes[4], bytes[5]];
    mac[0] = (mac[0] & 0xfc) | 0x02;
    if mac == HOST_VETH_MAC {
        mac[5] ^= 1;
    }
    mac
}

/// FNV-1a over the container id, a zero byte and the interface name.
fn fnv1a(container_id: &str, ifname: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in container_id
        .bytes()
        .chain(std::iter::once(0))
        .chain(ifname.bytes())
    {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// A link as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: Vec<u8>,
    pub mtu: u32,
    pub up: bool,
    pub is_veth: bool,
    /// `IFLA_LINK`: for a veth, the peer's index in the peer's namespace.
    pub peer_index: Option<u32>,
}

impl Link {
    pub fn mac_string(&self) -> String {
        self.mac
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    }

    /// The link of `answers` named `name` (e.g. a kernel's echo).
    pub fn named_in(answers: &[RouteNetlinkMessage], name: &str) -> Option<Link> {
        answers.iter().find_map(|answer| match answer {
            RouteNetlinkMessage::NewLink(m) => {
                let link = Link::from_message(m);
                (link.name == name).then_some(link)
            }
            _ => None,
        })
    }

    fn from_message(message: &LinkMessage) -> Link {
        let mut link = Link {
            index: message.header.index,
            name: String::new(),
            mac: Vec::new(),
            mtu: 0,
            up: message.header.flags.contains(LinkFlags::Up),
            is_veth: false,
            peer_index: None,
        };
        for attribute in &message.attributes {
            match attribute {
                LinkAttribute::IfName(name) => link.name = name.clone(),
                LinkAttribute::Address(mac) => link.mac = mac.clone(),
                LinkAttribute::Mtu(mtu) => link.mtu = *mtu,
                LinkAttribute::Link(index) => link.peer_index = Some(*index),
                LinkAttribute::LinkInfo(infos) => {
                    link.is_veth = infos
                        .iter()
                        .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Veth)));
                }
                _ => {}
            }
        }
        link
    }
}

/// A route in the main table as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dst: IpNet,
    pub gateway: Option<IpAddr>,
    pub oif: Option<u32>,
    pub protocol: u8,
}

/// Looks a link up by name; `None` when there is none.
pub fn find_link(socket: &mut RouteSocket, name: &str) -> Result<Option<Link>, NetlinkError> {
    let mut message = LinkMessage::default();
    message
        .attributes
        .push(LinkAttribute::IfName(name.to_owned()));
    let answer = socket.get(RouteNetlinkMessage::GetLink(message), || {
        format!("looking up link {name}")
    })?;
    Ok(match answer {
        Some(RouteNetlinkMessage::NewLink(m)) => Some(Link::from_message(&m)),
        _ => None,
    })
}

/// Creates the veth pair: `host_name` here, `pod_name` directly inside
/// `pod` (so the pod end never appears in the node's namespace), both with
/// `mtu`, the host end with [`HOST_VETH_MAC`], the pod end with `pod_mac`.
/// When `host_up`, the host end is up from the start (the kernel applies
/// the request's `ifinfomsg` flags once the pair is made): one request
/// instead of two, each taking the kernel's RTNL lock, which every pod
/// start on the node queues for. The pod end cannot be made up the same
/// way: the kernel applies the peer's flags before the two ends are
/// joined, and a veth without its peer refuses to open (`ENOTCONN`).
///
/// Returns the host end as the kernel echoes it (`NLM_F_ECHO`, Linux ≥
/// 6.3; `None` on older kernels), which spares a look-up: its index and
/// its `IFLA_LINK`, the pod end's index.
pub fn create_veth(
    host: &mut RouteSocket,
    host_name: &str,
    pod_name: &str,
    pod_mac: [u8; 6],
    mtu: u32,
    pod: &NetNs,
    host_up: bool,
) -> Result<Option<Link>, NetlinkError> {
    let mut peer = LinkMessage::default();
    peer.attributes = vec![
        LinkAttribute::IfName(pod_name.to_owned()),
        LinkAttribute::Mtu(mtu),
        LinkAttribute::Address(pod_mac.to_vec()),
        LinkAttribute::NetNsFd(pod.file().as_raw_fd()),
    ];
    let mut message = LinkMessage::default();
    if host_up {
        message.header.flags = LinkFlags::Up;
        message.header.change_mask = LinkFlags::Up;
    }
    message.attributes = vec![
        LinkAttribute::IfName(host_name.to_owned()),
        LinkAttribute::Mtu(mtu),
        LinkAttribute::Address(HOST_VETH_MAC.to_vec()),
        LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
        ]),
    ];
    let answers = host.execute_echo(
        RouteNetlinkMessage::NewLink(message),
        NLM_F_CREATE | NLM_F_EXCL,
        || format!("creating veth {host_name} / {pod_name}"),
    )?;
    Ok(Link::named_in(&answers, host_name))
}

/// Sets a link up.
pub fn set_up(socket: &mut RouteSocket, link: &Link) -> Result<(), NetlinkError> {
    socket.execute(set_up_message(link), 0, || {
        format!("setting {} up", link.name)
    })
}

fn set_up_message(link: &Link) -> RouteNetlinkMessage {
    let mut message = LinkMessage::default();
    message.header.index = link.index;
    message.header.flags = LinkFlags::Up;
    message.header.change_mask = LinkFlags::Up;
    RouteNetlinkMessage::SetLink(message)
}

/// Gives the pod end its addresses, sets it up and adds its routes, in
/// this order, as one batch ([`RouteSocket::execute_all`]); the first
/// refusal is the error. A failure leaves a partly configured pod end for
/// the caller to remove (deleting the veth takes all of it along).
pub fn configure_pod_end(
    pod: &mut RouteSocket,
    link: &Link,
    addresses: &[IpAddr],
    routes: &[RouteSpec],
) -> Result<(), NetlinkError> {
    let mut requests = Vec::with_capacity(addresses.len() + 1 + routes.len());
    for address in addresses {
        requests.push((
            add_address_message(link, *address),
            NLM_F_CREATE | NLM_F_EXCL,
        ));
    }
    requests.push((set_up_message(link), 0));
    for route in routes {
        requests.push((add_route_message(*route), NLM_F_CREATE | NLM_F_EXCL));
    }
    pod.execute_all(requests, |index| match index {
        i if i < addresses.len() => format!("adding {} to {}", addresses[i], link.name),
        i if i == addresses.len() => format!("setting {} up", link.name),
        i => match routes.get(i - addresses.len() - 1) {
            Some(route) => format!("adding route {} in the pod", route.dst),
            None => format!("configuring {}", link.name),
        },
    })
}

/// Deletes a link by name; `Ok(false)` when it was already gone.
pub fn delete_link(socket: &mut RouteSocket, name: &str) -> Result<bool, NetlinkError> {
    let mut message = LinkMessage::default();
    message
        .attributes
        .push(LinkAttribute::IfName(name.to_owned()));
    match socket.execute(RouteNetlinkMessage::DelLink(message), 0, || {
        format!("deleting link {name}")
    }) {
        Ok(()) => Ok(true),
        Err(e) if e.errno() == Some(nix::libc::ENODEV) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Adds a host address (/32 or /128) to a link; IPv6 without duplicate
/// address detection, so it is usable at once.
pub fn add_host_address(
    socket: &mut RouteSocket,
    link: &Link,
    address: IpAddr,
) -> Result<(), NetlinkError> {
    socket.execute(
        add_address_message(link, address),
        NLM_F_CREATE | NLM_F_EXCL,
        || format!("adding {address} to {}", link.name),
    )
}

fn add_address_message(link: &Link, address: IpAddr) -> RouteNetlinkMessage {
    let mut message = AddressMessage::default();
    message.header.index = link.index;
    message.header.scope = AddressScope::Universe;
    match address {
        IpAddr::V4(_) => {
            message.header.family = AddressFamily::Inet;
            message.header.prefix_len = 32;
            message.attributes.push(AddressAttribute::Local(address));
        }
        IpAddr::V6(_) => {
            message.header.family = AddressFamily::Inet6;
            message.header.prefix_len = 128;
            message.header.flags = AddressHeaderFlags::Nodad;
        }
    }
    message.attributes.push(AddressAttribute::Address(address));
    RouteNetlinkMessage::NewAddress(message)
}

/// The global (non-link-local) addresses of a link.
pub fn addresses_of(socket: &mut RouteSocket, link: &Link) -> Result<Vec<IpNet>, NetlinkError> {
    let answers = socket.dump(
        RouteNetlinkMessage::GetAddress(AddressMessage::default()),
        || "listing addresses".to_owned(),
    )?;
    let mut out = Vec::new();
    for answer in answers {
        let RouteNetlinkMessage::NewAddress(m) = answer else {
            continue;
        };
        if m.header.index != link.index || m.header.scope != AddressScope::Universe {
            continue;
        }
        let address = m.attributes.iter().find_map(|a| match a {
            AddressAttribute::Address(ip) => Some(*ip),
            _ => None,
        });
        if let Some(ip) = address {
            if let Ok(net) = IpNet::new(ip, m.header.prefix_len) {
                out.push(net);
            }
        }
    }
    Ok(out)
}

/// What a route to add looks like.
#[derive(Debug, Clone, Copy)]
pub struct RouteSpec {
    pub dst: IpNet,
    pub gateway: Option<IpAddr>,
    pub oif: u32,
    pub onlink: bool,
    pub protocol: u8,
}

/// Adds a route to the main table; `EEXIST` when one with the same
/// destination is there already.
pub fn add_route(socket: &mut RouteSocket, spec: RouteSpec) -> Result<(), NetlinkError> {
    socket.execute(add_route_message(spec), NLM_F_CREATE | NLM_F_EXCL, || {
        format!("adding route {}", spec.dst)
    })
}

// The header type is `#[non_exhaustive]`: it cannot be built with a struct
// expression, only filled in after `default()`.
#[allow(clippy::field_reassign_with_default)]
fn add_route_message(spec: RouteSpec) -> RouteNetlinkMessage {
    let mut header = RouteHeader::default();
    header.address_family = match spec.dst {
        IpNet::V4(_) => AddressFamily::Inet,
        IpNet::V6(_) => AddressFamily::Inet6,
    };
    header.destination_prefix_length = spec.dst.prefix_len();
    header.table = RouteHeader::RT_TABLE_MAIN;
    header.protocol = RouteProtocol::from(spec.protocol);
    header.kind = RouteType::Unicast;
    header.scope = if spec.gateway.is_some() {
        RouteScope::Universe
    } else {
        RouteScope::Link
    };
    if spec.onlink {
        header.flags = RouteFlags::Onlink;
    }
    let mut message = RouteMessage::default();
    message.header = header;
    if spec.dst.prefix_len() > 0 {
        message
            .attributes
            .push(RouteAttribute::Destination(RouteAddress::from(
                spec.dst.addr(),
            )));
    }
    if let Some(gateway) = spec.gateway {
        message
            .attributes
            .push(RouteAttribute::Gateway(RouteAddress::from(gateway)));
    }
    message.attributes.push(RouteAttribute::Oif(spec.oif));
    RouteNetlinkMessage::NewRoute(message)
}

/// Whether the main table routes `address` (as a host route) to `link`
/// with felix's protocol: the route [`host_route`] makes.
pub fn routed_to(
    socket: &mut RouteSocket,
    address: IpAddr,
    link: &Link,
) -> Result<bool, NetlinkError> {
    let dst = IpNet::from(address);
    Ok(routes(socket, address.is_ipv4())?.iter().any(|r| {
        r.dst == dst
            && r.oif == Some(link.index)
            && r.gateway.is_none()
            && r.protocol == ROUTE_PROTOCOL
    }))
}

/// The main-table unicast routes of one family.
pub fn routes(socket: &mut RouteSocket, v4: bool) -> Result<Vec<Route>, NetlinkError> {
    let mut request = RouteMessage::default();
    request.header.address_family = if v4 {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let answers = socket.dump(RouteNetlinkMessage::GetRoute(request), || {
        "listing routes".to_owned()
    })?;
    let mut out = Vec::new();
    for answer in answers {
        let RouteNetlinkMessage::NewRoute(m) = answer else {
            continue;
        };
        let table = m
            .attributes
            .iter()
            .find_map(|a| match a {
                RouteAttribute::Table(t) => Some(*t),
                _ => None,
            })
            .unwrap_or(u32::from(m.header.table));
        if table != u32::from(RouteHeader::RT_TABLE_MAIN) || m.header.kind != RouteType::Unicast {
            continue;
        }
        let mut dst_addr = None;
        let mut gateway = None;
        let mut oif = None;
        for attribute in &m.attributes {
            match attribute {
                RouteAttribute::Destination(a) => dst_addr = route_ip(a),
                RouteAttribute::Gateway(a) => gateway = route_ip(a),
                RouteAttribute::Oif(i) => oif = Some(*i),
                _ => {}
            }
        }
        let unspecified = if v4 {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        } else {
            IpAddr::V6(Ipv6Addr::UNSPECIFIED)
        };
        let Ok(dst) = IpNet::new(
            dst_addr.unwrap_or(unspecified),
            m.header.destination_prefix_length,
        ) else {
            continue;
        };
        out.push(Route {
            dst,
            gateway,
            oif,
            protocol: u8::from(m.header.protocol),
        });
    }
    Ok(out)
}

fn route_ip(address: &RouteAddress) -> Option<IpAddr> {
    match address {
        RouteAddress::Inet(a) => Some(IpAddr::V4(*a)),
        RouteAddress::Inet6(a) => Some(IpAddr::V6(*a)),
        _ => None,
    }
}

/// The sysctls of the host end: proxy ARP on (it answers for
/// 169.254.1.1) with no delay (the kernel's default `proxy_delay` would hold
/// the pod's first ARP reply back by up to 0.8 s); for IPv6, no duplicate
/// address detection so the link-local gateway is usable when the link
/// comes up.
pub fn configure_host_end(name: &str, ipv6: bool) -> std::io::Result<()> {
    write_sysctl(&format!("/proc/sys/net/ipv4/conf/{name}/proxy_arp"), "1")?;
    write_sysctl(&format!("/proc/sys/net/ipv4/neigh/{name}/proxy_delay"), "0")?;
    if ipv6 {
        write_sysctl(&format!("/proc/sys/net/ipv6/conf/{name}/accept_dad"), "0")?;
    }
    Ok(())
}

/// Whether proxy ARP is on for a host end (CHECK).
pub fn proxy_arp_on(name: &str) -> bool {
    fs::read_to_string(format!("/proc/sys/net/ipv4/conf/{name}/proxy_arp"))
        .is_ok_and(|v| v.trim() == "1")
}

fn write_sysctl(path: &str, value: &str) -> std::io::Result<()> {
    fs::write(path, value).map_err(|e| std::io::Error::new(e.kind(), format!("{path}: {e}")))
}

/// The routes a pod end gets for the address families it has.
pub fn pod_routes(addresses: &[IpNet], pod: &Link) -> Vec<RouteSpec> {
    let mut specs = Vec::new();
    if addresses.iter().any(|a| a.addr().is_ipv4()) {
        specs.push(RouteSpec {
            dst: IpNet::V4(ipnet::Ipv4Net::default()),
            gateway: Some(IpAddr::V4(POD_GATEWAY_V4)),
            oif: pod.index,
            onlink: true,
            protocol: u8::from(RouteProtocol::Boot),
        });
    }
    if addresses.iter().any(|a| a.addr().is_ipv6()) {
        specs.push(RouteSpec {
            dst: IpNet::V6(ipnet::Ipv6Net::default()),
            gateway: Some(IpAddr::V6(POD_GATEWAY_V6)),
            oif: pod.index,
            onlink: false,
            protocol: u8::from(RouteProtocol::Boot),
        });
    }
    specs
}

/// The node's route to one pod address.
pub fn host_route(address: IpAddr, host: &Link) -> RouteSpec {
    RouteSpec {
        dst: IpNet::from(address),
        gateway: None,
        oif: host.index,
        onlink: false,
        protocol: ROUTE_PROTOCOL,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn host_veth_name_is_fx_and_11_hex_and_depends_on_both_parts() {
        let a = host_veth_name("abc123", "eth0");
        assert_eq!(a.len(), 13);
        assert!(a.starts_with("fx"));
        assert!(a[2..].chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(a, host_veth_name("abc123", "eth0"));
        assert_ne!(a, host_veth_name("abc123", "eth1"));
        assert_ne!(a, host_veth_name("abc124", "eth0"));
        // The separator keeps ("ab", "ceth0") apart from ("abc", "eth0").
        assert_ne!(host_veth_name("ab", "ceth0"), host_veth_name("abc", "eth0"));
    }

    #[test]
    fn pod_veth_mac_is_local_unicast_and_follows_the_attachment() {
        let mac = pod_veth_mac("abc123", "eth0");
        assert_eq!(mac[0] & 0x01, 0, "unicast (I/G bit clear)");
        assert_eq!(mac[0] & 0x02, 0x02, "locally administered (U/L bit set)");
        assert_eq!(mac, pod_veth_mac("abc123", "eth0"));
        assert_ne!(mac, pod_veth_mac("abc123", "eth1"));
        assert_ne!(mac, pod_veth_mac("abc124", "eth0"));
        for i in 0..1000 {
            assert_ne!(pod_veth_mac(&i.to_string(), "eth0"), HOST_VETH_MAC);
        }
    }

    #[test]
    fn ipv6_gateway_is_the_eui64_of_the_host_mac() {
        // RFC 4291 appendix A: flip the universal/local bit of the first
        // octet, insert ff:fe in the middle.
        let m = HOST_VETH_MAC;
        let octets = POD_GATEWAY_V6.octets();
        assert_eq!(&octets[..8], &[0xfe, 0x80, 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            &octets[8..],
            &[m[0] ^ 0x02, m[1], m[2], 0xff, 0xfe, m[3], m[4], m[5]]
        );
    }

    #[test]
    fn pod_routes_follow_the_families() {
        let pod = Link {
            index: 7,
            name: "eth0".into(),
            mac: vec![],
            mtu: 1500,
            up: true,
            is_veth: true,
            peer_index: None,
        };
        let v4: Vec<IpNet> = vec!["10.0.0.1/32".parse().unwrap()];
        let routes = pod_routes(&v4, &pod);
        assert_eq!(routes.len(), 1);
        assert_eq!(routes[0].gateway, Some(IpAddr::V4(POD_GATEWAY_V4)));
        assert!(routes[0].onlink);
        let dual: Vec<IpNet> = vec![
            "10.0.0.1/32".parse().unwrap(),
            "fd00::1/128".parse().unwrap(),
        ];
        assert_eq!(pod_routes(&dual, &pod).len(), 2);
        let h = host_route("10.0.0.1".parse().unwrap(), &pod);
        assert_eq!(h.dst.to_string(), "10.0.0.1/32");
        assert_eq!(h.protocol, ROUTE_PROTOCOL);
    }
}
