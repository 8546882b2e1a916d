//! BPF_PROG_TEST_RUN: run the loaded XDP program on a packet in the kernel without a device.
//! aya 0.14 does not expose it, so this is the raw `bpf(2)` call. Used by the fixture tests
//! and by `cargo xtask bench xdp`.

use std::{io, os::fd::RawFd};

const BPF_PROG_TEST_RUN: libc::c_long = 10;

/// The kernel's `struct xdp_md` as a test-run context.
#[repr(C)]
#[derive(Default, Clone, Copy)]
struct XdpMd {
    data: u32,
    data_end: u32,
    data_meta: u32,
    ingress_ifindex: u32,
    rx_queue_index: u32,
    egress_ifindex: u32,
}

/// The `test` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct TestAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    pad: u32,
}

/// What one test run returned.
#[derive(Debug, Clone)]
pub struct TestRunOutput {
    /// The XDP verdict (`XDP_PASS` = 2, ...).
    pub action: u32,
    /// The packet as the program left it.
    pub packet: Vec<u8>,
    /// Mean nanoseconds per run, as the kernel measured it.
    pub duration_ns: u32,
}

/// Runs program `prog_fd` `repeat` times on `packet` as if received on `ingress_ifindex`
/// (0: the test device). The calling thread's network namespace is the one the program's
/// FIB lookups see.
pub fn run_xdp(
    prog_fd: RawFd,
    packet: &[u8],
    ingress_ifindex: u32,
    repeat: u32,
) -> io::Result<TestRunOutput> {
    // Headroom for programs that grow the packet.
    let mut out = vec![0u8; packet.len() + 256];
    let ctx = XdpMd {
        data_end: packet.len() as u32,
        ingress_ifindex,
        ..Default::default()
    };
    let mut attr = TestAttr {
        prog_fd: prog_fd as u32,
        data_size_in: packet.len() as u32,
        data_size_out: out.len() as u32,
        data_in: packet.as_ptr() as u64,
        data_out: out.as_mut_ptr() as u64,
        repeat,
        ..Default::default()
    };
    if ingress_ifindex != 0 {
        attr.ctx_in = &ctx as *const XdpMd as u64;
        attr.ctx_size_in = std::mem::size_of::<XdpMd>() as u32;
    }
    // SAFETY: attr points at live buffers whose sizes are given; the kernel writes at most
    // data_size_out bytes into `out`.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            &mut attr as *mut TestAttr,
            std::mem::size_of::<TestAttr>(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    out.truncate(attr.data_size_out as usize);
    Ok(TestRunOutput {
        action: attr.retval,
        packet: out,
        duration_ns: attr.duration,
    })
}
