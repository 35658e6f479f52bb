//! The felix-managed VXLAN device (RFC 7348), Calico style: one device per
//! node (`vxlan.felix`, VNI 4096, UDP 4789, no learning), a /32 tunnel
//! address (the node's VTEP address), and per remote node a static
//! neighbour entry (remote VTEP address -> remote VTEP MAC) and a static FDB
//! entry (remote VTEP MAC -> remote node's underlay address). Routes to
//! remote blocks then go on-link via the remote VTEP address on this device
//! (`agent::forwarding::remote_route`). No flooding, no multicast group: every
//! entry comes from the datastore, so the device never has to learn.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};

use futures_util::TryStreamExt;
use rtnetlink::packet_core::{
    NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_REPLACE, NLM_F_REQUEST,
};
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{
    InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkInfo, LinkMessage,
};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::route::RouteType;
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::{LinkUnspec, LinkVxlan};

use super::{link_by_name, Encapsulation, TunnelError, Underlay};

/// The device name (Calico's is `vxlan.calico`).
pub const VXLAN_DEVICE: &str = "vxlan.felix";
/// The VXLAN network identifier (Calico's default `vxlanVNI`).
pub const VXLAN_VNI: u32 = 4096;
/// The IANA VXLAN UDP port (RFC 7348 section 5).
pub const VXLAN_PORT: u16 = 4789;

/// The local end of the overlay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanConfig {
    /// Device name.
    pub device: String,
    /// VNI.
    pub vni: u32,
    /// UDP destination port.
    pub port: u16,
    /// Underlay device index (`dev`).
    pub underlay_ifindex: u32,
    /// Local underlay address (`local`): the node address.
    pub local: Ipv4Addr,
    /// The device MTU: underlay MTU minus 50.
    pub mtu: u32,
    /// This node's VTEP address, put on the device as a /32.
    pub tunnel_address: Ipv4Addr,
    /// This node's VTEP MAC (registered in the datastore for the others).
    pub mac: [u8; 6],
}

impl VxlanConfig {
    /// Calico's defaults over `underlay` (which must have an IPv4 address).
    pub fn new(
        underlay: &Underlay,
        tunnel_address: Ipv4Addr,
        mac: [u8; 6],
    ) -> Result<Self, TunnelError> {
        let IpAddr::V4(local) = underlay.address.addr() else {
            return Err(TunnelError::NoUnderlayAddress(underlay.device.clone()));
        };
        Ok(VxlanConfig {
            device: VXLAN_DEVICE.to_string(),
            vni: VXLAN_VNI,
            port: VXLAN_PORT,
            underlay_ifindex: underlay.ifindex,
            local,
            mtu: underlay.tunnel_mtu(Encapsulation::Vxlan),
            tunnel_address,
            mac,
        })
    }

    /// The `RTM_NEWLINK` body that creates the device.
    pub fn link_message(&self) -> LinkMessage {
        LinkVxlan::new(&self.device, self.vni)
            .dev(self.underlay_ifindex)
            .port(self.port)
            .local(self.local)
            .learning(false)
            .mtu(self.mtu)
            .address(self.mac.to_vec())
            .build()
    }

    /// Whether an existing device was made with this configuration (the
    /// parameters that cannot be changed without recreating it).
    fn matches(&self, link: &LinkMessage) -> bool {
        let mut info = None;
        for a in &link.attributes {
            if let LinkAttribute::LinkInfo(infos) = a {
                for i in infos {
                    match i {
                        LinkInfo::Kind(k) if *k != InfoKind::Vxlan => return false,
                        LinkInfo::Data(InfoData::Vxlan(v)) => info = Some(v),
                        _ => {}
                    }
                }
            }
        }
        let Some(info) = info else { return false };
        let want = [
            InfoVxlan::Id(self.vni),
            InfoVxlan::Port(self.port),
            InfoVxlan::Local(self.local),
            InfoVxlan::Link(self.underlay_ifindex),
            InfoVxlan::Learning(false),
        ];
        want.iter().all(|w| info.contains(w))
    }
}

/// A VTEP MAC derived from a stable seed (the node name), so that a restart
/// keeps the MAC the other nodes have in their FDB: locally administered,
/// unicast (IEEE 802 section 8.2; first octet x2).
pub fn vtep_mac(seed: &str) -> [u8; 6] {
    // FNV-1a, 64 bit: stable across Rust versions, unlike DefaultHasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in seed.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // MurmurHash3's fmix64: FNV alone leaves names that differ in their
    // last character with MACs that differ in one octet.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    let b = h.to_be_bytes();
    [(b[0] & 0xfc) | 0x02, b[1], b[2], b[3], b[4], b[5]]
}

/// A remote node's VTEP, as the datastore knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VxlanPeer {
    /// The remote VTEP address (the remote device's /32).
    pub vtep_address: Ipv4Addr,
    /// The remote VTEP MAC.
    pub vtep_mac: [u8; 6],
    /// The remote node's underlay address (where the UDP goes).
    pub node_address: Ipv4Addr,
}

/// The static neighbour entry: `ip neigh replace VTEP lladdr MAC dev D nud permanent`.
pub fn neighbour_entry(ifindex: u32, peer: &VxlanPeer) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.family = AddressFamily::Inet;
    m.header.ifindex = ifindex;
    m.header.state = NeighbourState::Permanent;
    m.header.kind = RouteType::Unspec;
    m.attributes
        .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
            peer.vtep_address,
        )));
    m.attributes
        .push(NeighbourAttribute::LinkLayerAddress(peer.vtep_mac.to_vec()));
    m
}

/// The static FDB entry: `bridge fdb replace MAC dev D dst NODE self permanent`.
pub fn fdb_entry(ifindex: u32, peer: &VxlanPeer) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.family = AddressFamily::Bridge;
    m.header.ifindex = ifindex;
    m.header.state = NeighbourState::Permanent;
    m.header.flags = NeighbourFlags::Own;
    m.header.kind = RouteType::Unspec;
    m.attributes
        .push(NeighbourAttribute::LinkLayerAddress(peer.vtep_mac.to_vec()));
    m.attributes
        .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
            peer.node_address,
        )));
    m
}

/// What [`VxlanDevice::reconcile_peers`] changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerReport {
    /// Neighbour + FDB entries written (added or corrected).
    pub written: usize,
    /// Stale entries removed.
    pub removed: usize,
}

/// The device, once made.
#[derive(Debug, Clone)]
pub struct VxlanDevice {
    handle: rtnetlink::Handle,
    config: VxlanConfig,
    ifindex: u32,
}

impl VxlanDevice {
    /// Makes the device as configured (recreating one of the same name made
    /// with other parameters), sets MTU, MAC and up, and leaves exactly the
    /// tunnel address on it.
    pub async fn ensure(
        handle: rtnetlink::Handle,
        config: VxlanConfig,
    ) -> Result<Self, TunnelError> {
        let name = config.device.clone();
        let existing = link_by_name(&handle, &name).await?;
        let (ifindex, mac_ok) = match existing {
            Some(link) if config.matches(&link) => (
                link.header.index,
                link.attributes
                    .contains(&LinkAttribute::Address(config.mac.to_vec())),
            ),
            other => {
                if let Some(link) = other {
                    tracing::info!(device = %name, "recreating VXLAN device with felix's parameters");
                    delete_link(&handle, link.header.index, &name).await?;
                }
                handle
                    .link()
                    .add(config.link_message())
                    .execute()
                    .await
                    .map_err(TunnelError::netlink(format!("creating {name}")))?;
                let link = link_by_name(&handle, &name)
                    .await?
                    .ok_or_else(|| TunnelError::DeviceNotFound(name.clone()))?;
                (link.header.index, true)
            }
        };
        let mut set = LinkUnspec::new_with_index(ifindex).mtu(config.mtu).up();
        // Only when it differs: a MAC change flushes every neighbour entry
        // of the device, permanent ones included (neigh_changeaddr), which
        // would cut the overlay on each agent restart.
        if !mac_ok {
            set = set.address(config.mac.to_vec());
        }
        handle
            .link()
            .set(set.build())
            .execute()
            .await
            .map_err(TunnelError::netlink(format!("setting up {name}")))?;
        let dev = VxlanDevice {
            handle,
            config,
            ifindex,
        };
        dev.ensure_address().await?;
        Ok(dev)
    }

    /// Deletes the device called `name` if there is one (no pool wants
    /// VXLAN any more); true when one was deleted. Its routes, neighbour and
    /// FDB entries go with it.
    pub async fn remove(handle: &rtnetlink::Handle, name: &str) -> Result<bool, TunnelError> {
        let Some(link) = link_by_name(handle, name).await? else {
            return Ok(false);
        };
        delete_link(handle, link.header.index, name).await?;
        Ok(true)
    }

    async fn ensure_address(&self) -> Result<(), TunnelError> {
        let want = IpAddr::V4(self.config.tunnel_address);
        let mut have = false;
        let mut addrs = self
            .handle
            .address()
            .get()
            .set_link_index_filter(self.ifindex)
            .execute();
        let mut stale = Vec::new();
        while let Some(msg) = addrs
            .try_next()
            .await
            .map_err(TunnelError::netlink("listing VXLAN device addresses"))?
        {
            if msg.header.index != self.ifindex || msg.header.family != AddressFamily::Inet {
                continue;
            }
            let is_want = msg.header.prefix_len == 32
                && msg
                    .attributes
                    .iter()
                    .any(|a| matches!(a, AddressAttribute::Address(ip) if *ip == want));
            if is_want {
                have = true;
            } else {
                stale.push(msg);
            }
        }
        for msg in stale {
            self.handle
                .address()
                .del(msg)
                .execute()
                .await
                .map_err(TunnelError::netlink(
                    "removing a stale VXLAN device address",
                ))?;
        }
        if !have {
            self.handle
                .address()
                .add(self.ifindex, want, 32)
                .execute()
                .await
                .map_err(TunnelError::netlink("adding the VXLAN tunnel address"))?;
        }
        Ok(())
    }

    /// The device's interface index.
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// The configuration it was made with.
    pub fn config(&self) -> &VxlanConfig {
        &self.config
    }

    /// Converges the device's static neighbour and FDB entries to `peers`:
    /// writes missing or wrong ones, removes the others (felix owns every
    /// permanent entry on its own device).
    pub async fn reconcile_peers(&self, peers: &[VxlanPeer]) -> Result<PeerReport, TunnelError> {
        let mut report = PeerReport::default();
        let want_arp: HashMap<Ipv4Addr, [u8; 6]> =
            peers.iter().map(|p| (p.vtep_address, p.vtep_mac)).collect();
        let want_fdb: HashMap<[u8; 6], Ipv4Addr> =
            peers.iter().map(|p| (p.vtep_mac, p.node_address)).collect();
        let mut have_arp = HashMap::new();
        let mut have_fdb = HashMap::new();
        let mut stale = Vec::new();
        for family in [AddressFamily::Inet, AddressFamily::Bridge] {
            let mut entries = self
                .handle
                .neighbours()
                .get()
                .set_address_family(family)
                .execute();
            while let Some(msg) = entries
                .try_next()
                .await
                .map_err(TunnelError::netlink("dumping VXLAN neighbours"))?
            {
                if msg.header.ifindex != self.ifindex
                    || msg.header.state != NeighbourState::Permanent
                {
                    continue;
                }
                let (dst, lladdr) = neighbour_fields(&msg);
                let mac = lladdr.and_then(|l| <[u8; 6]>::try_from(l.as_slice()).ok());
                // An entry whose key (VTEP address; MAC) is wanted is kept and,
                // if its value is wrong, replaced in place below; deleting it
                // would open a gap (and a delete matches the key only).
                let keep = match (family, dst, mac) {
                    (AddressFamily::Inet, Some(IpAddr::V4(ip)), Some(mac))
                        if want_arp.contains_key(&ip) =>
                    {
                        have_arp.insert(ip, mac);
                        true
                    }
                    (AddressFamily::Bridge, Some(IpAddr::V4(ip)), Some(mac))
                        if want_fdb.contains_key(&mac) =>
                    {
                        have_fdb.insert(mac, ip);
                        true
                    }
                    _ => false,
                };
                if !keep {
                    stale.push(delete_key(&msg));
                }
            }
        }
        let mut seen = HashSet::new();
        for peer in peers {
            if !seen.insert(*peer) {
                continue;
            }
            if have_arp.get(&peer.vtep_address) != Some(&peer.vtep_mac) {
                self.replace_neighbour(neighbour_entry(self.ifindex, peer), "neighbour")
                    .await?;
                report.written += 1;
            }
            if have_fdb.get(&peer.vtep_mac) != Some(&peer.node_address) {
                self.replace_neighbour(fdb_entry(self.ifindex, peer), "FDB")
                    .await?;
                report.written += 1;
            }
        }
        for msg in stale {
            match self.handle.neighbours().del(msg).execute().await {
                Ok(()) => report.removed += 1,
                // Replaced above (same key, new value) or already gone.
                Err(rtnetlink::Error::NetlinkError(e)) if -e.raw_code() == libc::ENOENT => {}
                Err(e) => {
                    return Err(TunnelError::Netlink {
                        what: "removing a stale VXLAN entry".into(),
                        source: e,
                    })
                }
            }
        }
        Ok(report)
    }

    async fn replace_neighbour(
        &self,
        entry: NeighbourMessage,
        what: &str,
    ) -> Result<(), TunnelError> {
        let mut req = NetlinkMessage::from(RouteNetlinkMessage::NewNeighbour(entry));
        req.header.flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE;
        let mut handle = self.handle.clone();
        let mut responses = handle.request(req).map_err(TunnelError::netlink(format!(
            "writing a VXLAN {what} entry"
        )))?;
        while let Some(m) = futures_util::StreamExt::next(&mut responses).await {
            if let NetlinkPayload::Error(e) = m.payload {
                if e.code.is_some() {
                    return Err(TunnelError::Netlink {
                        what: format!("writing a VXLAN {what} entry"),
                        source: rtnetlink::Error::NetlinkError(e),
                    });
                }
            }
        }
        Ok(())
    }
}

async fn delete_link(
    handle: &rtnetlink::Handle,
    index: u32,
    name: &str,
) -> Result<(), TunnelError> {
    handle
        .link()
        .del(index)
        .execute()
        .await
        .map_err(TunnelError::netlink(format!("deleting {name}")))
}

/// The minimal message that deletes a dumped entry: its key only (a dump's
/// cache info and state are no part of a delete request).
fn delete_key(msg: &NeighbourMessage) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.family = msg.header.family;
    m.header.ifindex = msg.header.ifindex;
    m.header.flags = msg.header.flags & NeighbourFlags::Own;
    m.attributes = msg
        .attributes
        .iter()
        .filter(|a| {
            matches!(
                a,
                NeighbourAttribute::Destination(_) | NeighbourAttribute::LinkLayerAddress(_)
            )
        })
        .cloned()
        .collect();
    if m.header.family != AddressFamily::Bridge {
        m.attributes
            .retain(|a| matches!(a, NeighbourAttribute::Destination(_)));
    }
    m
}

fn neighbour_fields(msg: &NeighbourMessage) -> (Option<IpAddr>, Option<&Vec<u8>>) {
    let mut dst = None;
    let mut lladdr = None;
    for a in &msg.attributes {
        match a {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => {
                dst = Some(IpAddr::V4(*ip))
            }
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(ip)) => {
                dst = Some(IpAddr::V6(*ip))
            }
            // FDB (AF_BRIDGE) dumps may carry the remote as raw bytes.
            NeighbourAttribute::Destination(NeighbourAddress::Other(b)) => {
                dst = <[u8; 4]>::try_from(b.as_slice())
                    .map(IpAddr::from)
                    .ok()
                    .or_else(|| <[u8; 16]>::try_from(b.as_slice()).map(IpAddr::from).ok())
            }
            NeighbourAttribute::LinkLayerAddress(l) => lladdr = Some(l),
            _ => {}
        }
    }
    (dst, lladdr)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn config() -> VxlanConfig {
        let underlay = Underlay {
            device: "eth0".into(),
            ifindex: 3,
            address: "192.168.1.10/24".parse().unwrap(),
            mtu: 1500,
        };
        VxlanConfig::new(&underlay, "10.244.0.0".parse().unwrap(), vtep_mac("node-a")).unwrap()
    }

    #[test]
    fn link_message_is_calico_style() {
        let m = config().link_message();
        let infos = m
            .attributes
            .iter()
            .find_map(|a| match a {
                LinkAttribute::LinkInfo(i) => Some(i),
                _ => None,
            })
            .unwrap();
        assert!(infos.contains(&LinkInfo::Kind(InfoKind::Vxlan)));
        let data = infos
            .iter()
            .find_map(|i| match i {
                LinkInfo::Data(InfoData::Vxlan(v)) => Some(v),
                _ => None,
            })
            .unwrap();
        for want in [
            InfoVxlan::Id(4096),
            InfoVxlan::Port(4789),
            InfoVxlan::Learning(false),
            InfoVxlan::Local("192.168.1.10".parse().unwrap()),
            InfoVxlan::Link(3),
        ] {
            assert!(data.contains(&want), "{want:?} missing from {data:?}");
        }
        assert!(m
            .attributes
            .contains(&LinkAttribute::IfName("vxlan.felix".into())));
        assert!(m.attributes.contains(&LinkAttribute::Mtu(1450)));
        assert!(m
            .attributes
            .contains(&LinkAttribute::Address(vtep_mac("node-a").to_vec())));
        assert!(config().matches(&m));
        let mut other = config();
        other.vni = 4097;
        assert!(!other.matches(&m));
    }

    #[test]
    fn vtep_mac_is_stable_local_unicast() {
        let a = vtep_mac("node-a");
        assert_eq!(a, vtep_mac("node-a"));
        assert_ne!(a, vtep_mac("node-b"));
        assert_eq!(a[0] & 0x03, 0x02, "locally administered, unicast");
        // Names one character apart get MACs apart in most octets.
        let (m1, m2) = (vtep_mac("node-1"), vtep_mac("node-2"));
        let differing = m1.iter().zip(&m2).filter(|(x, y)| x != y).count();
        assert!(differing >= 3, "{m1:02x?} vs {m2:02x?}");
    }

    #[test]
    fn neighbour_and_fdb_entries() {
        let peer = VxlanPeer {
            vtep_address: "10.244.1.0".parse().unwrap(),
            vtep_mac: [0x02, 1, 2, 3, 4, 5],
            node_address: "192.168.2.11".parse().unwrap(),
        };
        let n = neighbour_entry(9, &peer);
        assert_eq!(n.header.family, AddressFamily::Inet);
        assert_eq!(n.header.state, NeighbourState::Permanent);
        assert_eq!(
            neighbour_fields(&n),
            (
                Some("10.244.1.0".parse().unwrap()),
                Some(&vec![2, 1, 2, 3, 4, 5])
            )
        );
        let f = fdb_entry(9, &peer);
        assert_eq!(f.header.family, AddressFamily::Bridge);
        assert_eq!(
            f.header.flags,
            NeighbourFlags::Own,
            "NTF_SELF: the entry is the VXLAN device's own"
        );
        assert_eq!(f.header.ifindex, 9);
        assert_eq!(
            neighbour_fields(&f),
            (
                Some("192.168.2.11".parse().unwrap()),
                Some(&vec![2, 1, 2, 3, 4, 5])
            )
        );
    }
}
