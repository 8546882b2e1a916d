//! `cargo xtask bench proxy`: the terminator (TLS + WebSocket relay) in both io modes, side by
//! side in one run. The bench lives in `proxy_perf::proxy_bench`; this binary only installs
//! its counting allocator (used in the proxy child with `--count-heap`).

use proxy_perf::proxy_bench::{self, heap::CountingAlloc};

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

fn main() -> anyhow::Result<()> {
    proxy_bench::main()
}
