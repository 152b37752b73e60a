//! Where simulated agents connect from, and the TCP connection under their WebSocket.
//!
//! One host can only open about 28,000 connections to one backend address and port: a TCP
//! connection is named by (source address, source port, destination address, destination
//! port), and with a single source address only the ephemeral port range
//! (`net.ipv4.ip_local_port_range`, 32768–60999 by default) varies. On loopback every address
//! of 127.0.0.0/8 is local, so spreading agents over many source addresses multiplies that
//! limit by the number of addresses, with nothing to configure on the host. Each socket is
//! bound to its source address with `IP_BIND_ADDRESS_NO_PORT`, which leaves the choice of the
//! port to `connect` (where only the full four-tuple has to be unique) instead of reserving a
//! port at `bind` time.
//!
//! Addresses are 127.x.y.z with x in 1..=254, y in 0..=255 and z in 1..=254: never 127.0.0.0/16
//! (127.0.0.1 is what the backend, PostgreSQL and NATS use among themselves), never a network
//! (.0) or broadcast (.255, 127.255.255.255) address.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use anyhow::{bail, ensure, Context};
use clap::ValueEnum;
use tokio::net::{TcpSocket, TcpStream};

/// Whether agents spread their source addresses (`--spread-sources`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SpreadSources {
    /// When every target is an IPv4 loopback address.
    Auto,
    On,
    Off,
}

/// Distinct source addresses available: 254 × 256 × 254.
const ADDRESSES: usize = 254 * 256 * 254;

/// The source address of each agent, `per_address` agents per address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceAddresses {
    per_address: usize,
}

impl SourceAddresses {
    /// The plan for `agents` agents connecting to `targets`, or `None` when they keep the
    /// kernel's choice of source address. `On` with a target that is not IPv4 loopback is an
    /// error: a 127.x address cannot reach it.
    pub fn plan(
        mode: SpreadSources,
        targets: &[SocketAddr],
        agents: usize,
        per_address: usize,
    ) -> anyhow::Result<Option<SourceAddresses>> {
        ensure!(per_address > 0, "--agents-per-source must be > 0");
        let all_loopback = targets.iter().all(|t| is_ipv4_loopback(t.ip()));
        let spread = match mode {
            SpreadSources::Off => false,
            SpreadSources::Auto => all_loopback,
            SpreadSources::On if all_loopback => true,
            SpreadSources::On => {
                bail!("--spread-sources on needs IPv4 loopback targets (127.0.0.0/8): {targets:?}")
            }
        };
        if !spread {
            return Ok(None);
        }
        let needed = agents.div_ceil(per_address);
        ensure!(
            needed <= ADDRESSES,
            "{agents} agents at {per_address} per source address need {needed} addresses; \
             127.0.0.0/8 has {ADDRESSES} usable ones (raise --agents-per-source)"
        );
        Ok(Some(SourceAddresses { per_address }))
    }

    /// The source address of agent `index`.
    pub fn for_agent(&self, index: usize) -> Ipv4Addr {
        address(index / self.per_address)
    }

    /// How many distinct addresses `agents` agents use.
    pub fn count(&self, agents: usize) -> usize {
        agents.div_ceil(self.per_address)
    }
}

/// The `slot`-th source address (see the module comment for the ranges).
pub fn address(slot: usize) -> Ipv4Addr {
    let slot = slot % ADDRESSES;
    let z = (slot % 254) as u8 + 1;
    let y = ((slot / 254) % 256) as u8;
    let x = (slot / (254 * 256)) as u8 + 1;
    Ipv4Addr::new(127, x, y, z)
}

fn is_ipv4_loopback(ip: IpAddr) -> bool {
    matches!(ip, IpAddr::V4(v4) if v4.is_loopback())
}

/// The address a `ws://host:port/…` URL connects to (resolved once, not per agent).
pub async fn resolve(url: &str) -> anyhow::Result<SocketAddr> {
    let rest = url
        .strip_prefix("ws://")
        .with_context(|| format!("agent url {url:?}: only ws:// is supported"))?;
    let authority = rest.split(['/', '?']).next().unwrap_or(rest);
    let with_port = if authority.starts_with('[') {
        if authority.contains("]:") {
            authority.to_owned()
        } else {
            format!("{authority}:80")
        }
    } else if authority.contains(':') {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    let mut addresses: Vec<SocketAddr> = tokio::net::lookup_host(&with_port)
        .await
        .with_context(|| format!("resolving {with_port}"))?
        .collect();
    // An IPv4 address first: only those can be spread over 127.0.0.0/8.
    addresses.sort_by_key(|a| !a.is_ipv4());
    addresses
        .into_iter()
        .next()
        .with_context(|| format!("{with_port} resolves to no address"))
}

/// A TCP connection to `target`, from `source` when given.
pub async fn connect(target: SocketAddr, source: Option<Ipv4Addr>) -> std::io::Result<TcpStream> {
    let socket = if target.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(source) = source {
        nix::sys::socket::setsockopt(
            &socket,
            nix::sys::socket::sockopt::IpBindAddressNoPort,
            &true,
        )
        .map_err(std::io::Error::from)?;
        socket.bind(SocketAddr::new(IpAddr::V4(source), 0))?;
    }
    socket.set_nodelay(true)?;
    socket.connect(target).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_skip_network_broadcast_and_127_0() {
        let cases = [
            (0, [127, 1, 0, 1]),
            (1, [127, 1, 0, 2]),
            (253, [127, 1, 0, 254]),
            (254, [127, 1, 1, 1]),
            (254 * 256 - 1, [127, 1, 255, 254]),
            (254 * 256, [127, 2, 0, 1]),
            (ADDRESSES - 1, [127, 254, 255, 254]),
        ];
        for (slot, expected) in cases {
            assert_eq!(address(slot), Ipv4Addr::from(expected), "slot {slot}");
        }
        let distinct: std::collections::HashSet<Ipv4Addr> = (0..100_000).map(address).collect();
        assert_eq!(distinct.len(), 100_000);
        assert!(distinct
            .iter()
            .all(|a| a.is_loopback() && a.octets()[1] != 0 && ![0, 255].contains(&a.octets()[3])));
    }

    #[test]
    fn agents_share_an_address_up_to_the_limit() {
        let loopback: SocketAddr = "127.0.0.1:8081".parse().unwrap();
        let plan = SourceAddresses::plan(SpreadSources::Auto, &[loopback], 2500, 1000)
            .unwrap()
            .unwrap();
        assert_eq!(plan.count(2500), 3);
        assert_eq!(plan.for_agent(0), plan.for_agent(999));
        assert_ne!(plan.for_agent(999), plan.for_agent(1000));
        assert_eq!(plan.for_agent(2499), Ipv4Addr::new(127, 1, 0, 3));
    }

    #[test]
    fn spreading_depends_on_the_targets() {
        let loopback: SocketAddr = "127.0.0.1:8081".parse().unwrap();
        let other: SocketAddr = "127.3.2.1:8081".parse().unwrap();
        let remote: SocketAddr = "10.0.0.5:8081".parse().unwrap();
        let v6: SocketAddr = "[::1]:8081".parse().unwrap();
        let plan = |mode, targets: &[SocketAddr]| SourceAddresses::plan(mode, targets, 10, 1);
        assert!(plan(SpreadSources::Auto, &[loopback, other])
            .unwrap()
            .is_some());
        assert!(plan(SpreadSources::Auto, &[loopback, remote])
            .unwrap()
            .is_none());
        assert!(plan(SpreadSources::Auto, &[v6]).unwrap().is_none());
        assert!(plan(SpreadSources::Off, &[loopback]).unwrap().is_none());
        let err = plan(SpreadSources::On, &[remote]).unwrap_err().to_string();
        assert!(err.contains("--spread-sources on"), "{err}");
        let err = SourceAddresses::plan(SpreadSources::Auto, &[loopback], 10, 0)
            .unwrap_err()
            .to_string();
        assert!(err.contains("--agents-per-source"), "{err}");
    }

    #[tokio::test]
    async fn connections_come_from_their_source_address() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = listener.local_addr().unwrap();
        for slot in [0, 300] {
            let source = address(slot);
            let client = connect(target, Some(source)).await.unwrap();
            let (_, peer) = listener.accept().await.unwrap();
            assert_eq!(peer.ip(), IpAddr::V4(source));
            assert_eq!(client.local_addr().unwrap().ip(), IpAddr::V4(source));
        }
    }

    #[tokio::test]
    async fn urls_resolve_to_their_address() {
        for (url, expected) in [
            ("ws://127.0.0.1:8081", "127.0.0.1:8081"),
            ("ws://127.0.0.1:9000/agent?x=1", "127.0.0.1:9000"),
            ("ws://127.0.0.1", "127.0.0.1:80"),
            ("ws://[::1]:8081/", "[::1]:8081"),
        ] {
            assert_eq!(
                resolve(url).await.unwrap(),
                expected.parse::<SocketAddr>().unwrap(),
                "{url}"
            );
        }
        let err = resolve("wss://127.0.0.1:8081")
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("only ws://"), "{err}");
    }
}
