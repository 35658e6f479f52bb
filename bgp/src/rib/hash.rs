//! A fast hasher for the RIB's and the packer's maps, keyed by prefixes.
//!
//! std's default (SipHash-1-3) costs more than the rest of a map look-up
//! for keys of a few bytes, and the RIB does several look-ups per prefix.
//! This one folds each written word in with a rotate-xor-multiply step and
//! finishes with MurmurHash3's 64-bit mixer, so that the low bits (the
//! bucket index) depend on every input bit: IPv4 prefixes mostly end in
//! zero bits. Each map gets its own random starting state (from std's
//! `RandomState`), so a peer cannot precompute colliding prefixes for every
//! felix; it is not a keyed PRF like SipHash, though.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};

const MULTIPLIER: u64 = 0x517c_c1b7_2722_0a95;

/// The hasher (see the module doc).
#[derive(Clone, Copy, Debug)]
pub struct PrefixHasher {
    state: u64,
}

impl PrefixHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.state = (self.state.rotate_left(5) ^ word).wrapping_mul(MULTIPLIER);
    }
}

impl Hasher for PrefixHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(word));
        }
    }

    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    #[inline]
    fn write_u16(&mut self, i: u16) {
        self.add(u64::from(i));
    }

    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }

    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }

    #[inline]
    fn write_u128(&mut self, i: u128) {
        self.add(i as u64);
        self.add((i >> 64) as u64);
    }

    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        // MurmurHash3's fmix64.
        let mut h = self.state;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^= h >> 33;
        h
    }
}

/// Builds [`PrefixHasher`]s with a per-map random starting state.
#[derive(Clone, Copy, Debug)]
pub struct BuildPrefixHasher {
    seed: u64,
}

impl Default for BuildPrefixHasher {
    fn default() -> Self {
        BuildPrefixHasher {
            seed: RandomState::new().hash_one(0x5eed_u64),
        }
    }
}

impl BuildHasher for BuildPrefixHasher {
    type Hasher = PrefixHasher;

    #[inline]
    fn build_hasher(&self) -> PrefixHasher {
        PrefixHasher { state: self.seed }
    }
}

/// A `HashMap` with [`PrefixHasher`].
pub type PrefixHashMap<K, V> = std::collections::HashMap<K, V, BuildPrefixHasher>;
/// A `HashSet` with [`PrefixHasher`].
pub type PrefixHashSet<K> = std::collections::HashSet<K, BuildPrefixHasher>;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use ipnet::{IpNet, Ipv4Net};
    use std::collections::HashSet;
    use std::net::Ipv4Addr;

    /// /24s differ only above their zero last octet; their bucket indices
    /// (low bits) must still spread.
    #[test]
    fn low_bits_spread_for_aligned_prefixes() {
        let build = BuildPrefixHasher::default();
        let buckets: HashSet<u64> = (0..4096u32)
            .map(|i| {
                let net =
                    IpNet::V4(Ipv4Net::new(Ipv4Addr::from(0x0a00_0000 | (i << 8)), 24).unwrap());
                build.hash_one(net) & 0xfff
            })
            .collect();
        // 4096 keys into 4096 buckets: a uniform hash fills about 63 %.
        assert!(buckets.len() > 2300, "{} distinct buckets", buckets.len());
    }

    #[test]
    fn equal_keys_hash_equal_and_maps_work() {
        let build = BuildPrefixHasher::default();
        let a: IpNet = "10.1.0.0/16".parse().unwrap();
        let b: IpNet = "10.1.0.0/17".parse().unwrap();
        assert_eq!(build.hash_one(a), build.hash_one(a));
        assert_ne!(build.hash_one(a), build.hash_one(b));
        let mut m: PrefixHashMap<IpNet, u32> = PrefixHashMap::default();
        m.insert(a, 1);
        m.insert(b, 2);
        assert_eq!(m.get(&a), Some(&1));
        assert_eq!(m.get(&b), Some(&2));
    }
}
