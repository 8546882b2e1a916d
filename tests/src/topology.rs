//! The lab the end-to-end tests and the demo run in: a client namespace, a balancer
//! namespace and one namespace per backend node, joined by veth pairs.
//!
//! ```text
//!  client (198.51.100.2) ── cl ══ lb-c (198.51.100.1) [balancer] lb-nI (192.0.2.4I+1/30) ══ nI ── node I (192.0.2.4I+2)
//! ```
//! The VIP 203.0.113.10 is routed by the client to the balancer; the balancer's NAT address
//! 192.0.2.254 sits on its loopback and every node routes it back through its veth.
//! All addresses are documentation ranges and no namespace has a route to the outside.

use std::net::Ipv4Addr;

use anyhow::Result;

use crate::netns::{veth_pair, NetNs};

pub const CLIENT_ADDR: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
pub const LB_CLIENT_ADDR: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
pub const VIP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
pub const SNAT_ADDR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 254);
/// Balancer-side interface towards the client.
pub const LB_CLIENT_DEV: &str = "lb-c";

/// Address of node `i` (1-based).
pub fn node_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(192, 0, 2, (4 * i + 2) as u8)
}

/// The balancer's address on the link to node `i`.
pub fn lb_node_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(192, 0, 2, (4 * i + 1) as u8)
}

/// Balancer-side interface towards node `i`.
pub fn lb_node_dev(i: usize) -> String {
    format!("lb-n{i}")
}

/// One backend node's namespace.
pub struct Node {
    pub index: usize,
    pub ns: NetNs,
    pub addr: Ipv4Addr,
}

/// The whole lab; dropping it deletes every namespace (and with them the veths).
pub struct Lab {
    pub client: NetNs,
    pub lb: NetNs,
    pub nodes: Vec<Node>,
    tag: String,
}

impl Lab {
    /// Builds the client and balancer namespaces and `nodes` node namespaces. `tag` keeps
    /// namespace names of concurrent labs apart.
    pub fn new(tag: &str, nodes: usize) -> Result<Lab> {
        let client = NetNs::new(&format!("{tag}-cl"))?;
        let lb = NetNs::new(&format!("{tag}-lb"))?;
        let mut lab = Lab {
            client,
            lb,
            nodes: Vec::new(),
            tag: tag.to_string(),
        };
        veth(&lab.client, "cl", &lab.lb, LB_CLIENT_DEV)?;
        ip(
            &lab.client,
            &["addr", "add", &format!("{CLIENT_ADDR}/24"), "dev", "cl"],
        )?;
        ip(
            &lab.client,
            &[
                "route",
                "add",
                "default",
                "via",
                &LB_CLIENT_ADDR.to_string(),
            ],
        )?;
        ip(
            &lab.lb,
            &[
                "addr",
                "add",
                &format!("{LB_CLIENT_ADDR}/24"),
                "dev",
                LB_CLIENT_DEV,
            ],
        )?;
        ip(
            &lab.lb,
            &["addr", "add", &format!("{SNAT_ADDR}/32"), "dev", "lo"],
        )?;
        // The kernel fallback path (before a neighbour is resolved XDP passes the translated
        // packet up) forwards packets whose source is the local NAT address.
        for (key, value) in [
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv4.conf.all.accept_local", "1"),
            ("net.ipv4.conf.all.rp_filter", "0"),
            ("net.ipv4.conf.default.rp_filter", "0"),
        ] {
            lab.lb.sysctl(key, value)?;
        }
        for _ in 0..nodes {
            lab.add_node()?;
        }
        Ok(lab)
    }

    /// Adds node `nodes.len() + 1` with its link to the balancer; returns its index.
    pub fn add_node(&mut self) -> Result<usize> {
        let i = self.nodes.len() + 1;
        let ns = NetNs::new(&format!("{}-n{i}", self.tag))?;
        let dev = lb_node_dev(i);
        veth(&self.lb, &dev, &ns, "nic")?;
        ip(
            &self.lb,
            &[
                "addr",
                "add",
                &format!("{}/30", lb_node_addr(i)),
                "dev",
                &dev,
            ],
        )?;
        ip(
            &ns,
            &["addr", "add", &format!("{}/30", node_addr(i)), "dev", "nic"],
        )?;
        ip(
            &ns,
            &[
                "route",
                "add",
                "default",
                "via",
                &lb_node_addr(i).to_string(),
            ],
        )?;
        self.nodes.push(Node {
            index: i,
            ns,
            addr: node_addr(i),
        });
        Ok(i)
    }

    /// Balancer interfaces XDP must be attached to (every one of them: replies arrive on the
    /// node links, and XDP_REDIRECT needs a native XDP program on the target).
    pub fn lb_interfaces(&self) -> Vec<String> {
        let mut v = vec![LB_CLIENT_DEV.to_string()];
        v.extend(self.nodes.iter().map(|n| lb_node_dev(n.index)));
        v
    }
}

fn ip(ns: &NetNs, args: &[&str]) -> Result<()> {
    ns.ip(args).map(|_| ())
}

/// A veth pair from `a`/`name_a` to `b`/`name_b`, both up, set up like a real wire:
/// - GRO on: frames XDP redirects into a veth are dropped by its peer unless the peer runs
///   XDP or GRO;
/// - TX checksum offload off: with it, veth hands over frames whose TCP/UDP checksum holds
///   only the pseudo-header sum (CHECKSUM_PARTIAL), which no real wire carries and which an
///   XDP rewrite cannot complete.
fn veth(a: &NetNs, name_a: &str, b: &NetNs, name_b: &str) -> Result<()> {
    veth_pair(a, name_a, b, name_b)?;
    for (ns, dev) in [(a, name_a), (b, name_b)] {
        ip(ns, &["link", "set", dev, "up"])?;
        ns.exec("ethtool", &["-K", dev, "gro", "on", "tx", "off"])?;
    }
    Ok(())
}
