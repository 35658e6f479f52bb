//! IPIP (RFC 2003) over `tunl0`, Calico style: the `ipip` module's fallback
//! device `tunl0` (no local or remote: it receives from any node and sends to
//! the gateway of each route), up, with MTU = underlay MTU - 20 and the
//! node's IPIP tunnel address; routes to remote blocks go on-link via the
//! remote node's underlay address on `tunl0`.
//!
//! Kernels without the `ipip` module (this project's CI machines) have no
//! `tunl0` and refuse `ip link add ... type ipip`; [`ensure_tunl0`] then
//! returns [`TunnelError::IpipUnavailable`].

use std::net::{IpAddr, Ipv4Addr};

use futures_util::TryStreamExt;
use ipnet::IpNet;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::LinkMessage;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{LinkIpIp, LinkUnspec};

use super::{link_by_name, Encapsulation, TunnelError, Underlay};
use crate::routes::DesiredRoute;

/// The IPIP device (the fallback device the `ipip` module makes in every
/// network namespace).
pub const IPIP_DEVICE: &str = "tunl0";

/// The `RTM_NEWLINK` body that creates `tunl0` if the module did not.
pub fn tunl0_link_message(mtu: u32) -> LinkMessage {
    LinkIpIp::new(IPIP_DEVICE).mtu(mtu).up().build()
}

/// The `RTM_NEWLINK` body that sets MTU and up on an existing `tunl0`.
pub fn tunl0_set_message(ifindex: u32, mtu: u32) -> LinkMessage {
    LinkUnspec::new_with_index(ifindex).mtu(mtu).up().build()
}

/// The route to a remote block over IPIP: on-link via the node's address.
pub fn ipip_route(block: IpNet, node_address: Ipv4Addr, mtu: u32) -> DesiredRoute {
    DesiredRoute::tunnel(block, IpAddr::V4(node_address), IPIP_DEVICE, mtu)
}

/// Makes `tunl0` usable: present (created if the module is there but the
/// device is not), up, MTU from the underlay, `tunnel_address`/32 on it.
/// Returns its ifindex.
pub async fn ensure_tunl0(
    handle: &rtnetlink::Handle,
    underlay: &Underlay,
    tunnel_address: Ipv4Addr,
) -> Result<u32, TunnelError> {
    let mtu = underlay.tunnel_mtu(Encapsulation::Ipip);
    let ifindex = match link_by_name(handle, IPIP_DEVICE).await? {
        Some(link) => link.header.index,
        None => {
            if let Err(e) = handle.link().add(tunl0_link_message(mtu)).execute().await {
                // Without the module the kernel knows no "ipip" link kind
                // (EOPNOTSUPP; the request to load it finds no module).
                return Err(TunnelError::IpipUnavailable(e.to_string()));
            }
            link_by_name(handle, IPIP_DEVICE)
                .await?
                .ok_or_else(|| TunnelError::IpipUnavailable("tunl0 did not appear".into()))?
                .header
                .index
        }
    };
    handle
        .link()
        .set(tunl0_set_message(ifindex, mtu))
        .execute()
        .await
        .map_err(TunnelError::netlink("setting up tunl0"))?;
    let want = IpAddr::V4(tunnel_address);
    let mut addrs = handle
        .address()
        .get()
        .set_link_index_filter(ifindex)
        .execute();
    let mut have = false;
    while let Some(msg) = addrs
        .try_next()
        .await
        .map_err(TunnelError::netlink("listing tunl0 addresses"))?
    {
        if msg.header.index == ifindex
            && msg.header.family == AddressFamily::Inet
            && msg
                .attributes
                .iter()
                .any(|a| matches!(a, AddressAttribute::Address(ip) if *ip == want))
        {
            have = true;
        }
    }
    if !have {
        handle
            .address()
            .add(ifindex, want, 32)
            .execute()
            .await
            .map_err(TunnelError::netlink("adding the IPIP tunnel address"))?;
    }
    Ok(ifindex)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::routes::{NextHop, RouteKind};
    use rtnetlink::packet_core::{NetlinkMessage, NetlinkPayload};
    use rtnetlink::packet_route::link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo};
    use rtnetlink::packet_route::RouteNetlinkMessage;

    #[test]
    fn tunl0_message_is_an_ipip_link_up_with_mtu_and_survives_the_wire() {
        let m = tunl0_link_message(1480);
        assert!(m
            .attributes
            .contains(&LinkAttribute::IfName("tunl0".into())));
        assert!(m.attributes.contains(&LinkAttribute::Mtu(1480)));
        assert!(m.header.flags.contains(LinkFlags::Up));
        let kind_is_ipip = |m: &LinkMessage| {
            m.attributes.iter().any(|a| {
                matches!(a, LinkAttribute::LinkInfo(i) if i.contains(&LinkInfo::Kind(InfoKind::IpIp)))
            })
        };
        assert!(kind_is_ipip(&m));
        let mut msg = NetlinkMessage::from(RouteNetlinkMessage::NewLink(m));
        msg.finalize();
        let mut buf = vec![0u8; msg.buffer_len()];
        msg.serialize(&mut buf);
        let back = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf).unwrap();
        let NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(back)) = back.payload else {
            panic!("not a NewLink");
        };
        assert!(kind_is_ipip(&back));
        assert!(back.attributes.contains(&LinkAttribute::Mtu(1480)));
    }

    #[test]
    fn set_message_targets_the_index() {
        let m = tunl0_set_message(5, 1480);
        assert_eq!(m.header.index, 5);
        assert!(m.attributes.contains(&LinkAttribute::Mtu(1480)));
    }

    #[test]
    fn ipip_route_is_onlink_via_the_node_on_tunl0() {
        let r = ipip_route(
            "10.244.3.0/26".parse().unwrap(),
            "192.168.2.11".parse().unwrap(),
            1480,
        );
        assert_eq!(
            r.kind,
            RouteKind::Via(vec![NextHop::onlink(
                "192.168.2.11".parse().unwrap(),
                "tunl0"
            )])
        );
        assert_eq!(r.mtu, Some(1480));
        r.validate().unwrap();
    }
}
