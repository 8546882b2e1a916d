//! `cargo xtask bench tls-ws` / `cargo xtask bench idle`: this proxy in both io modes vs
//! HAProxy and nginx, TLS WebSocket. The bench lives in `proxy_perf::tls_ws`; this binary only
//! installs its counting allocator (used in this proxy's child with `--count-heap`).

use proxy_perf::tls_ws::{self, heap::CountingAlloc};

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

fn main() -> anyhow::Result<()> {
    tls_ws::main()
}
