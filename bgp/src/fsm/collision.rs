//! Connection collision resolution (RFC 4271 §6.8, RFC 6286 §2.3).

use std::net::Ipv4Addr;

/// Which of two colliding connections to the same peer survives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Survivor {
    /// The connection we initiated (our outgoing TCP connection).
    Outgoing,
    /// The connection the peer initiated (the one we accepted).
    Incoming,
}

/// Decides a collision: keep the connection initiated by the speaker with
/// the higher BGP Identifier, compared as 4-octet unsigned integers (RFC 4271
/// §6.8). If the identifiers are equal (allowed between different ASes by
/// RFC 6286 §2.2), keep the one initiated by the speaker with the larger AS
/// number (RFC 6286 §2.3).
///
/// The loser's FSM gets [`super::Event::OpenCollisionDump`].
pub fn resolve_collision(
    local_id: Ipv4Addr,
    local_asn: u32,
    remote_id: Ipv4Addr,
    remote_asn: u32,
) -> Survivor {
    let (local, remote) = (u32::from(local_id), u32::from(remote_id));
    if local > remote || (local == remote && local_asn > remote_asn) {
        Survivor::Outgoing
    } else {
        Survivor::Incoming
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn higher_id_keeps_its_own_connection() {
        let low = Ipv4Addr::new(10, 0, 0, 1);
        let high = Ipv4Addr::new(10, 0, 0, 2);
        assert_eq!(resolve_collision(high, 1, low, 1), Survivor::Outgoing);
        assert_eq!(resolve_collision(low, 1, high, 1), Survivor::Incoming);
        // Compared as integers, not textually.
        let big = Ipv4Addr::new(192, 168, 0, 1);
        let small = Ipv4Addr::new(9, 255, 255, 255);
        assert_eq!(resolve_collision(big, 1, small, 1), Survivor::Outgoing);
    }

    #[test]
    fn equal_ids_fall_back_to_asn() {
        let id = Ipv4Addr::new(10, 0, 0, 1);
        assert_eq!(resolve_collision(id, 65001, id, 65000), Survivor::Outgoing);
        assert_eq!(resolve_collision(id, 65000, id, 65001), Survivor::Incoming);
    }
}
