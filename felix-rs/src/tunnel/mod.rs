//! Tunnels for cross-subnet pod traffic, the way Calico does it: a
//! felix-managed VXLAN device with static neighbour and FDB entries per
//! remote node ([`vxlan`]), or IPIP over `tunl0` ([`ipip`]); the underlay
//! they run over ([`Underlay`]) and the MTU left inside them. Which
//! learned block goes through which tunnel is the agent's decision
//! (`agent::forwarding::remote_route`, Calico's `vxlanMode` / `ipipMode`).

pub mod ipip;
pub mod vxlan;

use std::io;
use std::net::IpAddr;

use futures_util::TryStreamExt;
use ipnet::IpNet;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::LinkAttribute;

/// VXLAN over IPv4: outer IPv4 (20) + UDP (8) + VXLAN (8) + inner Ethernet (14).
pub const VXLAN_V4_OVERHEAD: u32 = 50;
/// VXLAN over IPv6: outer IPv6 (40) + UDP (8) + VXLAN (8) + inner Ethernet (14).
pub const VXLAN_V6_OVERHEAD: u32 = 70;
/// IPIP (RFC 2003): one outer IPv4 header.
pub const IPIP_OVERHEAD: u32 = 20;

/// An encapsulation for cross-subnet traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encapsulation {
    /// VXLAN (RFC 7348) on the felix VXLAN device.
    Vxlan,
    /// IP in IP (RFC 2003) on `tunl0`.
    Ipip,
}

/// Why a tunnel or underlay operation failed.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    /// A netlink request failed.
    #[error("{what}: {source}")]
    Netlink {
        /// What felix was doing.
        what: String,
        /// The error.
        #[source]
        source: rtnetlink::Error,
    },
    /// The rtnetlink socket could not be opened.
    #[error("cannot open the rtnetlink socket: {0}")]
    Socket(#[source] io::Error),
    /// A device felix needs is missing.
    #[error("device {0} not found")]
    DeviceNotFound(String),
    /// The underlay device has no usable address.
    #[error("device {0} has no address of the wanted family (give the node address explicitly)")]
    NoUnderlayAddress(String),
    /// The given node address is not on the underlay device.
    #[error("address {address} is not on device {device}")]
    AddressNotOnDevice {
        /// The device.
        device: String,
        /// The address.
        address: IpAddr,
    },
    /// This kernel cannot make IPIP tunnels (no `ipip` module).
    #[error("ipip not available in this kernel: {0}")]
    IpipUnavailable(String),
}

impl TunnelError {
    pub(crate) fn netlink(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> TunnelError {
        let what = what.into();
        move |source| TunnelError::Netlink { what, source }
    }

    /// The kernel errno behind a netlink failure, if any.
    pub fn errno(&self) -> Option<i32> {
        match self {
            TunnelError::Netlink {
                source: rtnetlink::Error::NetlinkError(e),
                ..
            } => Some(-e.raw_code()),
            _ => None,
        }
    }
}

/// The node's underlay: the device and address that node-to-node traffic
/// (and encapsulated pod traffic) uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Underlay {
    /// Device name (the one holding the default route, usually).
    pub device: String,
    /// Its interface index.
    pub ifindex: u32,
    /// The node address with its subnet prefix length.
    pub address: IpNet,
    /// The device's MTU.
    pub mtu: u32,
}

impl Underlay {
    /// Reads the device's index, MTU and address. With `address` given it
    /// must be on the device; otherwise the first global IPv4 address (IPv6
    /// if there is none) is taken.
    pub async fn lookup(
        handle: &rtnetlink::Handle,
        device: &str,
        address: Option<IpAddr>,
    ) -> Result<Underlay, TunnelError> {
        let link = link_by_name(handle, device)
            .await?
            .ok_or_else(|| TunnelError::DeviceNotFound(device.to_string()))?;
        let ifindex = link.header.index;
        let mtu = link
            .attributes
            .iter()
            .find_map(|a| match a {
                LinkAttribute::Mtu(m) => Some(*m),
                _ => None,
            })
            .unwrap_or(1500);
        let mut addrs = handle
            .address()
            .get()
            .set_link_index_filter(ifindex)
            .execute();
        let mut found: Vec<IpNet> = Vec::new();
        while let Some(msg) = addrs
            .try_next()
            .await
            .map_err(TunnelError::netlink(format!(
                "listing addresses of {device}"
            )))?
        {
            if msg.header.index != ifindex
                || msg.header.scope != rtnetlink::packet_route::address::AddressScope::Universe
            {
                continue;
            }
            for a in &msg.attributes {
                if let AddressAttribute::Address(ip) = a {
                    if let Ok(n) = IpNet::new(*ip, msg.header.prefix_len) {
                        found.push(n);
                    }
                }
            }
        }
        let address =
            match address {
                Some(want) => *found.iter().find(|n| n.addr() == want).ok_or(
                    TunnelError::AddressNotOnDevice {
                        device: device.to_string(),
                        address: want,
                    },
                )?,
                None => *found
                    .iter()
                    .find(|n| n.addr().is_ipv4())
                    .or_else(|| found.first())
                    .ok_or_else(|| TunnelError::NoUnderlayAddress(device.to_string()))?,
            };
        Ok(Underlay {
            device: device.to_string(),
            ifindex,
            address,
            mtu,
        })
    }

    /// The underlay of the device that holds `address` (the node address
    /// the agent is configured with).
    pub async fn holding(
        handle: &rtnetlink::Handle,
        address: IpAddr,
    ) -> Result<Underlay, TunnelError> {
        let mut addrs = handle.address().get().execute();
        let mut ifindex = None;
        while let Some(msg) = addrs
            .try_next()
            .await
            .map_err(TunnelError::netlink("listing addresses"))?
        {
            let here = msg
                .attributes
                .iter()
                .any(|a| matches!(a, AddressAttribute::Address(ip) if *ip == address));
            if here && ifindex.is_none() {
                ifindex = Some(msg.header.index);
            }
        }
        let ifindex = ifindex.ok_or(TunnelError::AddressNotOnDevice {
            device: "any device".into(),
            address,
        })?;
        let mut links = handle.link().get().match_index(ifindex).execute();
        let link = links
            .try_next()
            .await
            .map_err(TunnelError::netlink(format!("looking up link {ifindex}")))?
            .ok_or_else(|| TunnelError::DeviceNotFound(format!("index {ifindex}")))?;
        let device = link
            .attributes
            .iter()
            .find_map(|a| match a {
                LinkAttribute::IfName(n) => Some(n.clone()),
                _ => None,
            })
            .ok_or_else(|| TunnelError::DeviceNotFound(format!("index {ifindex}")))?;
        Underlay::lookup(handle, &device, Some(address)).await
    }

    /// Whether `ip` is on this node's underlay subnet (reachable without a
    /// router: Calico's `CrossSubnet` test).
    pub fn on_subnet(&self, ip: IpAddr) -> bool {
        self.address.contains(&ip)
    }

    /// The MTU left for pod packets inside `encap` over this underlay.
    pub fn tunnel_mtu(&self, encap: Encapsulation) -> u32 {
        tunnel_mtu(self.mtu, encap, self.address.addr().is_ipv6())
    }
}

/// Underlay MTU minus the encapsulation overhead.
pub fn tunnel_mtu(underlay_mtu: u32, encap: Encapsulation, underlay_is_ipv6: bool) -> u32 {
    let overhead = match (encap, underlay_is_ipv6) {
        (Encapsulation::Vxlan, false) => VXLAN_V4_OVERHEAD,
        (Encapsulation::Vxlan, true) => VXLAN_V6_OVERHEAD,
        (Encapsulation::Ipip, _) => IPIP_OVERHEAD,
    };
    underlay_mtu.saturating_sub(overhead)
}

/// The link called `name`, if there is one.
pub(crate) async fn link_by_name(
    handle: &rtnetlink::Handle,
    name: &str,
) -> Result<Option<rtnetlink::packet_route::link::LinkMessage>, TunnelError> {
    let mut links = handle.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(link) => Ok(link),
        Err(rtnetlink::Error::NetlinkError(e)) if -e.raw_code() == libc::ENODEV => Ok(None),
        Err(e) => Err(TunnelError::Netlink {
            what: format!("looking up device {name}"),
            source: e,
        }),
    }
}

/// Opens an rtnetlink handle whose connection runs on the current tokio
/// runtime (in the calling thread's network namespace).
pub fn rtnetlink_handle() -> Result<rtnetlink::Handle, TunnelError> {
    let (conn, handle, _) = rtnetlink::new_connection().map_err(TunnelError::Socket)?;
    tokio::spawn(conn);
    Ok(handle)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn underlay() -> Underlay {
        Underlay {
            device: "eth0".into(),
            ifindex: 2,
            address: "192.168.1.10/24".parse().unwrap(),
            mtu: 1500,
        }
    }

    #[test]
    fn tunnel_mtu_subtracts_the_encapsulation_overhead() {
        assert_eq!(tunnel_mtu(1500, Encapsulation::Vxlan, false), 1450);
        assert_eq!(tunnel_mtu(1500, Encapsulation::Vxlan, true), 1430);
        assert_eq!(tunnel_mtu(9000, Encapsulation::Ipip, false), 8980);
        assert_eq!(underlay().tunnel_mtu(Encapsulation::Ipip), 1480);
        assert!(underlay().on_subnet("192.168.1.200".parse().unwrap()));
        assert!(!underlay().on_subnet("192.168.2.1".parse().unwrap()));
    }
}
