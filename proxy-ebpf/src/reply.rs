//! The reply path: a packet from a backend to a balancer NAT address and port is translated
//! back to VIP -> client, if it belongs to a live flow of ours; anything else addressed to
//! a NAT address (the balancer's own traffic, late replies of flows that moved on) passes
//! to the stack.

use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use proxy_common::{FlowKey, NatKey, Reason, Settings, FLOW_FIN_BACKEND};

use crate::{
    copy4,
    counters::{flow_packet, reason},
    expired, flows, forward, frame_len, nat, nat_ports,
    nat_ports::FIN_BOTH,
    parse::{Packet, TCP_RST},
    rewrite::{self, Translation},
    touch, Scratch, Seen,
};

/// Backend -> balancer NAT address: translate back to VIP -> client.
#[inline(never)]
pub fn to_client(ctx: &XdpContext, pkt: &Packet, sc: &mut Scratch, s: &Settings, now: u64) -> u32 {
    sc.nat = NatKey {
        backend_addr: copy4(&pkt.key.src),
        snat_addr: copy4(&pkt.key.dst),
        backend_port: pkt.key.sport,
        nat_port: pkt.key.dport,
        proto: pkt.key.proto,
        family: pkt.key.family,
        pad: [0; 2],
    };
    if !nat::read(&sc.nat, s, &mut sc.reverse) {
        // Not a NAT flow of ours: the balancer's own traffic.
        reason(Reason::PassNotVip);
        return xdp_action::XDP_PASS;
    }
    sc.flow = FlowKey {
        src: copy4(&sc.reverse.client_addr),
        dst: copy4(&sc.reverse.vip_addr),
        sport: sc.reverse.client_port,
        dport: sc.reverse.vip_port,
        proto: pkt.key.proto,
        family: pkt.key.family,
        pad: [0; 2],
    };
    let Some(found) = flows::get(&sc.flow, s) else {
        // The client side is gone (evicted): the stack answers the backend (with a RST).
        nat::remove(&sc.nat, s);
        reason(Reason::PassNotVip);
        return xdp_action::XDP_PASS;
    };
    let Some(seen) = Seen::read(&found) else {
        // Its slot is being given to another flow right now: as if evicted.
        reason(Reason::PassNotVip);
        return xdp_action::XDP_PASS;
    };
    // A reply from a backend the flow no longer uses (it was removed and the flow re-pinned,
    // possibly to the same NAT port) must not reach the client either.
    if seen.nat_port() != pkt.key.dport
        || seen.backend() != sc.reverse.backend
        || seen.snat() != sc.reverse.snat
        || expired(seen.fin(), seen.last_seen, now, pkt.key.proto, s)
    {
        // The client's flow moved on to another mapping: this reply belongs to nobody.
        nat::remove(&sc.nat, s);
        reason(Reason::PassNotVip);
        return xdp_action::XDP_PASS;
    }
    touch(&found, &seen, FLOW_FIN_BACKEND, pkt, now, s);
    if pkt.tcp_flags & TCP_RST != 0 {
        nat::remove(&sc.nat, s);
        flows::remove(&sc.flow, s);
        if seen.fin() != FIN_BOTH {
            nat_ports::give_back(
                seen.backend(),
                seen.snat(),
                seen.nat_port(),
                pkt.key.family,
                s,
            );
        }
    }
    flow_packet(
        sc.reverse.vip_num as u32,
        sc.reverse.backend,
        frame_len(ctx),
        false,
        false,
    );
    sc.t = Translation {
        src: copy4(&sc.reverse.vip_addr),
        dst: copy4(&sc.reverse.client_addr),
        sport: sc.reverse.vip_port,
        dport: sc.reverse.client_port,
    };
    if !rewrite::apply(ctx, pkt, &sc.t) {
        reason(Reason::DropMalformed);
        return xdp_action::XDP_DROP;
    }
    forward::send(ctx, pkt, &sc.t, forward::CLIENT_HOP, now, s)
}
