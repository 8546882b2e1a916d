#[test]
fn loads() {
    let dir = format!("/sys/fs/bpf/xdp-proxy-smoke-{}", std::process::id());
    let r = proxy::ebpf::DataPlane::load(&proxy::ebpf::LoadOptions::new(&dir, 65537));
    let _ = proxy::ebpf::DataPlane::remove_pins(std::path::Path::new(&dir));
    match r {
        Ok(_) => {}
        Err(e) => {
            let mut s = format!("{e}");
            let mut src = std::error::Error::source(&e);
            while let Some(x) = src {
                s += &format!("\n caused by: {x}");
                src = x.source();
            }
            panic!("{s}");
        }
    }
}
