//! Which client addresses count as one client, for every per-address limit
//! (connections at once, failed logins).
//!
//! An IPv4 address is one client. An IPv6 host is usually handed a whole
//! /64 and can pick any address in it, so per-address limits keyed on the
//! full address would be as many limits as the host cares to use: IPv6
//! addresses are keyed by their /64 prefix. An IPv4-mapped IPv6 address
//! (`::ffff:a.b.c.d`, as a dual-stack listener reports IPv4 peers) is the
//! IPv4 address it maps.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};

/// The client an address belongs to, as far as per-address limits go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AddrKey(IpAddr);

/// Bits of an IPv6 address that name one client's network.
const V6_PREFIX_BITS: u32 = 64;

impl AddrKey {
    /// The key of `ip`: the IPv4 address itself, or the IPv6 /64.
    pub fn of(ip: IpAddr) -> AddrKey {
        match ip.to_canonical() {
            IpAddr::V4(v4) => AddrKey(IpAddr::V4(v4)),
            IpAddr::V6(v6) => {
                let mask = u128::MAX << (128 - V6_PREFIX_BITS);
                AddrKey(IpAddr::V6(Ipv6Addr::from(v6.to_bits() & mask)))
            }
        }
    }
}

impl fmt::Display for AddrKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            IpAddr::V4(v4) => write!(f, "{v4}"),
            IpAddr::V6(v6) => write!(f, "{v6}/{V6_PREFIX_BITS}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(text: &str) -> AddrKey {
        AddrKey::of(text.parse().unwrap())
    }

    #[test]
    fn ipv6_addresses_in_one_64_share_a_key() {
        assert_eq!(
            key("2001:db8:1:2::1"),
            key("2001:db8:1:2:ffff:ffff:ffff:ffff")
        );
        assert_eq!(key("2001:db8:1:2:abcd::7"), key("2001:db8:1:2::"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_eq!(key("2001:db8:1:2::1").to_string(), "2001:db8:1:2::/64");
        assert_eq!(key("::1"), key("::2"));
    }

    #[test]
    fn ipv4_addresses_are_their_own_keys() {
        assert_ne!(key("10.0.0.1"), key("10.0.0.2"));
        assert_eq!(key("10.0.0.1").to_string(), "10.0.0.1");
        // A dual-stack listener sees IPv4 peers as mapped IPv6 addresses.
        assert_eq!(key("::ffff:10.0.0.1"), key("10.0.0.1"));
        assert_ne!(key("::ffff:10.0.0.1"), key("::ffff:10.0.0.2"));
    }
}
