//! The embedded XDP object passes the kernel verifier, and its pinned maps survive a
//! restart of the userspace process (root only; CI runs as root).

use std::path::{Path, PathBuf};

use proxy::{
    ebpf::{DataPlane, DataPlaneError, LoadOptions},
    maglev::RingDelta,
};
use proxy_common::{Backend, Settings, BACKEND_PRESENT};

struct Pins(PathBuf);
impl Drop for Pins {
    fn drop(&mut self) {
        let _ = DataPlane::remove_pins(&self.0);
    }
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(x) = src {
        s += &format!("\n  caused by: {x}");
        src = x.source();
    }
    s
}

#[test]
fn verifier_accepts_and_pinned_maps_survive_a_restart() {
    let pins = Pins(PathBuf::from(format!(
        "/sys/fs/bpf/pxt{}-load",
        std::process::id()
    )));
    let opts = LoadOptions::new(&pins.0, 1009);
    let mut dp = DataPlane::load(&opts).unwrap_or_else(|e| panic!("{}", chain(&e)));
    dp.set_settings(&Settings {
        nat_port_min: 10_000,
        nat_port_max: 20_000,
        ..Default::default()
    })
    .unwrap();
    let backend = Backend {
        addr: [7, 0, 0, 0],
        port: 80u16.to_be(),
        family: 4,
        flags: BACKEND_PRESENT,
    };
    dp.set_backend(5, &backend).unwrap();
    dp.write_ring_delta(1, &[RingDelta { slot: 3, id: 5 }])
        .unwrap();
    // The RING map holds both copies of every VIP's ring, the last VIP's included.
    let last_vip = proxy_common::MAX_VIPS - 1;
    dp.write_ring_delta(last_vip, &[RingDelta { slot: 1008, id: 5 }])
        .unwrap_or_else(|e| panic!("last slot of the last VIP: {}", chain(&e)));
    assert_eq!(dp.read_ring(last_vip, 1).unwrap()[1008], 5);
    for name in [
        "FLOWS",
        "FLOW_SLOTS4",
        "NAT_SLOTS4",
        "NAT_REVERSE",
        "RING",
        "SETTINGS",
        "COUNTERS",
        "VIP_KEYS",
    ] {
        assert!(
            pins.0.join(name).exists(),
            "map {name} is not pinned under {}",
            pins.0.display()
        );
    }
    drop(dp);

    // A second process (here: a second load) finds the same maps with their contents.
    let mut again = DataPlane::load(&opts).unwrap_or_else(|e| panic!("{}", chain(&e)));
    let s = again.settings().unwrap();
    assert_eq!(
        (s.ring_size, s.nat_port_min, s.nat_port_max),
        (1009, 10_000, 20_000)
    );
    assert_eq!(again.read_ring(1, 0).unwrap()[3], 5);
    assert_eq!(again.read_ring(1, 1).unwrap()[3], 5);
    // The benchmark's reference programs in the same object pass the verifier too.
    again
        .load_baseline()
        .unwrap_or_else(|e| panic!("{}", chain(&e)));
    again
        .load_lookup_floor()
        .unwrap_or_else(|e| panic!("{}", chain(&e)));
    drop(again);

    // Changing the ring size under pinned maps is refused with a clear error.
    match DataPlane::load(&LoadOptions::new(&pins.0, 65_537)) {
        Err(DataPlaneError::RingSizeChanged {
            pinned: 1009,
            wanted: 65_537,
            ..
        }) => {}
        Err(e) => panic!("unexpected error: {}", chain(&e)),
        Ok(_) => panic!("ring size change under pinned maps was accepted"),
    }
    assert!(Path::new(&pins.0).exists());
}

/// Pinned maps left by a version with another layout are refused with a clear error, not
/// reused (the verifier would reject the program, or flows would be misread).
#[test]
fn pinned_maps_of_another_layout_are_refused() {
    let pins = Pins(PathBuf::from(format!(
        "/sys/fs/bpf/pxt{}-layout",
        std::process::id()
    )));
    proxy::ebpf::ensure_bpffs().unwrap();
    std::fs::create_dir_all(&pins.0).unwrap();
    // A SETTINGS map as an older version made it: 64-byte values.
    let path = pins.0.join("SETTINGS");
    let out = std::process::Command::new("bpftool")
        .args(["map", "create"])
        .arg(&path)
        .args(["type", "array", "key", "4", "value", "64", "entries", "1"])
        .args(["name", "SETTINGS"])
        .output()
        .expect("bpftool (installed by cargo xtask setup)");
    assert!(
        out.status.success(),
        "bpftool map create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let want = std::mem::size_of::<Settings>() as u32;
    match DataPlane::load(&LoadOptions::new(&pins.0, 1009)) {
        Err(DataPlaneError::PinnedLayoutChanged {
            name: "SETTINGS",
            found_value: 64,
            want_value,
            ..
        }) if want_value == want => {}
        Err(e) => panic!("unexpected error: {}", chain(&e)),
        Ok(_) => panic!("a pinned map of another layout was reused"),
    }
}
