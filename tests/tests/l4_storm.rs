//! A connection storm through the XDP data plane, end to end through real kernels, with the
//! default configuration: client namespace → balancer namespace (XDP attached natively) →
//! one node namespace whose server answers and closes first (its side of every tuple then
//! sits in TIME_WAIT, as behind an HTTP server with `Connection: close`).
//!
//! For 20 seconds the client opens connections as fast as they complete, on many threads,
//! so its own ports wrap around and it reuses its 5-tuples (a SYN on a closed flow) while
//! the NAT ports towards the node are handed out again and again. What must hold:
//! - no SYN dropped for want of a NAT port (`drop_nat_ports_exhausted` stays 0);
//! - no second without completed connections (the data plane never stalls);
//! - every connection the client made reached the node, and nothing else did; the
//!   backend's `new_flows` counter equals the connections the node accepted.
//!
//! Root only; CI runs as root.

use std::{net::SocketAddr, time::Duration};

use proxy::{
    balancer::Balancer,
    config::Config,
    ebpf::{AttachMode, DataPlane, LoadOptions},
};
use proxy_common::{backend_counter_index, Reason};
use proxy_tests::{
    netns,
    storm::{l4_config, storm, StormServer, NODE_PORT, VIP_PORT as PORT},
    topology::{self, Lab},
};

const STORM: Duration = Duration::from_secs(20);
/// Client threads: enough to keep both CPUs busy with connections in every state.
const WORKERS: usize = 48;

/// Removes the test's pinned maps even when the test fails.
struct PinGuard(String);
impl Drop for PinGuard {
    fn drop(&mut self) {
        let _ = DataPlane::remove_pins(std::path::Path::new(&self.0));
    }
}

#[test]
fn a_connection_storm_never_runs_out_of_nat_ports_or_stalls() {
    let tag = format!("{}s", netns::unique_prefix());
    let lab = Lab::new(&tag, 1).expect("lab");
    let pin_dir = format!("/sys/fs/bpf/{tag}");
    let _pins = PinGuard(pin_dir.clone());
    let config = Config::parse(&l4_config(&lab, &pin_dir), "storm").expect("config");
    let server =
        StormServer::start(&lab.nodes[0].ns, lab.nodes[0].addr, NODE_PORT, 4).expect("node server");

    let ifaces = lab.lb_interfaces();
    let (dp, _balancer) = netns::run_in(&lab.lb, move || {
        let mut dp =
            DataPlane::load(&LoadOptions::from_config(&config.balancer)).expect("load XDP");
        let balancer = Balancer::from_config(&config, &mut dp).expect("initial maps");
        for iface in &ifaces {
            let mode = dp.attach(iface).expect("attach");
            assert_eq!(mode, AttachMode::Native, "{iface} fell back to generic XDP");
        }
        (dp, balancer)
    })
    .expect("enter balancer namespace");
    let backend_id = 0;
    let drops_before = dp.reasons().expect("reasons")[&Reason::DropNatPortsExhausted];
    let flows_before = dp
        .counters(backend_counter_index(backend_id))
        .expect("counters")
        .new_flows;

    let report = storm(
        &lab.client,
        SocketAddr::from((topology::VIP, PORT)),
        WORKERS,
        STORM,
    )
    .expect("storm");
    // Let the last connections' closes reach the node.
    std::thread::sleep(Duration::from_millis(200));
    if std::env::var_os("STORM_DEBUG").is_some() {
        for (who, ns) in [
            ("node", &lab.nodes[0].ns),
            ("client", &lab.client),
            ("lb", &lab.lb),
        ] {
            let out = ns.exec("nstat", &["-az"]).unwrap_or_default();
            let keep: Vec<&str> = out
                .lines()
                .filter(|l| {
                    let v: Vec<&str> = l.split_whitespace().collect();
                    v.len() >= 2 && v[1] != "0" && (l.contains("Tcp") || l.contains("Ip"))
                })
                .collect();
            println!("{who}: {}", keep.join(" | "));
        }
        println!("reasons: {:?}", dp.reasons().unwrap());
    }

    let drops = dp.reasons().expect("reasons")[&Reason::DropNatPortsExhausted] - drops_before;
    let new_flows = dp
        .counters(backend_counter_index(backend_id))
        .expect("counters")
        .new_flows
        - flows_before;
    let occupancy = dp.nat_occupancy(backend_id).expect("occupancy");
    println!(
        "storm: {} connections in {:.1} s ({:.0}/s), {} failed, per second {:?}; node accepted {}, \
         backend new_flows {new_flows}, NAT drops {drops}, NAT ports {occupancy:?}",
        report.completed,
        report.elapsed.as_secs_f64(),
        report.rate(),
        report.failed,
        report.per_second,
        server.accepted(),
    );
    assert!(
        report.completed > 10 * STORM.as_secs(),
        "the storm hardly ran: {report:?}"
    );
    assert_eq!(drops, 0, "SYNs dropped for want of a NAT port");
    assert_eq!(
        report.stalled_seconds(),
        Vec::<usize>::new(),
        "seconds without a completed connection: {:?}",
        report.per_second
    );
    assert_eq!(report.failed, 0, "failed connections: {:?}", report.errors);
    assert_eq!(
        server.accepted(),
        report.completed,
        "the node accepted exactly the client's connections"
    );
    assert_eq!(
        new_flows,
        server.accepted(),
        "the backend's new_flows counts exactly the connections that reached the node"
    );
}
