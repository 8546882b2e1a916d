#!/usr/bin/env python3
"""Sort the samples of a `perf record -g` profile into cost categories.

Usage: perf script -i perf.data | cpu_categories.py [--per-second RATE]

Each sample is put in the first category whose rule matches any frame of its
stack, in the order below. The order is what makes the split meaningful: a
tcp_recvmsg that io_uring runs as task work counts as TCP receive, not as
io_uring; the receiver's half of a loopback send counts as delivery, not as the
sender's tcp_sendmsg. With --per-second (messages or cycles per second in the
profiled window) each category is also given in nanoseconds of the profiled
CPU per unit of work.
"""
import re
import sys

CATEGORIES = [
    ("idle", re.compile(r"^(do_idle|cpuidle_\w+|default_idle\w*|pv_native_safe_halt|acpi_idle\w*|intel_idle)$")),
    ("loopback delivery (receiver's softirq)", re.compile(r"^(net_rx_action|__netif_receive_skb\w*|process_backlog|tcp_v4_rcv)$")),
    ("TCP send", re.compile(r"^(tcp_sendmsg\w*|tcp_push\w*|__tcp_transmit_skb|tcp_write_xmit)$")),
    ("TCP receive", re.compile(r"^(tcp_recvmsg\w*|tcp_read_sock|tcp_rcv_space_adjust)$")),
    ("connection set-up and teardown", re.compile(r"^(__sys_connect|__sys_accept4|do_accept|inet_accept|tcp_close|__x64_sys_close|__sys_shutdown\w*|__sys_socket|__sys_setsockopt|__sys_getsockopt|tcp_v4_connect|io_accept|io_connect|io_shutdown|io_close|sk_destruct|__fput)$")),
    ("io_uring machinery", re.compile(r"^(io_\w+|__io_\w+|__do_sys_io_uring_enter|__x64_sys_io_uring_enter|tctx_task_work\w*|llist_reverse_order)$")),
    ("epoll machinery", re.compile(r"^(do_epoll_wait|ep_\w+|__x64_sys_epoll_\w+|do_epoll_ctl|ep_poll_callback)$")),
    ("scheduler and wakeups", re.compile(r"^(schedule|__schedule|finish_task_switch\w*|try_to_wake_up|__wake_up\w*|sock_def_readable|futex_\w+|do_futex)$")),
    ("system call entry and exit", re.compile(r"^(entry_SYSCALL_64\w*|do_syscall_64|syscall_exit_to_user_mode\w*|syscall_return_via_sysret|exit_to_user_mode\w*|irqentry_exit_to_user_mode)$")),
]
OTHER_KERNEL = "other kernel"
USER_CRYPTO = "userspace: crypto (AEAD, hashes; all of libssl, libcrypto)"
USER_LIBC = "userspace: libc (memcpy, allocator)"
USER_OTHER = "userspace: other (TLS records, WebSocket, relay, runtime)"
CRYPTO = re.compile(r"(aes|gcm|ghash|chacha|poly1305|sha\d|sha512|sha256|x25519|curve25519|ecp_nistz|p256|EVP_|CRYPTO_|aws_lc|bn_|ring_core)", re.I)

FRAME = re.compile(r"^\s*[0-9a-f]+\s+(\S+?)(\+0x[0-9a-f]+)?\s+\((.*)\)\s*$")


def classify(frames):
    """frames: list of (symbol, dso), leaf first."""
    for name, rule in CATEGORIES:
        if any(rule.match(sym) for sym, _ in frames):
            return name
    if not frames:
        return OTHER_KERNEL
    sym, dso = frames[0]
    if "kernel" in dso or dso.startswith("["):
        return OTHER_KERNEL
    if CRYPTO.search(sym) or re.search(r"lib(crypto|ssl)\.so", dso):
        return USER_CRYPTO
    if re.search(r"libc[.-]", dso):
        return USER_LIBC
    return USER_OTHER


def main():
    per_second = None
    if "--per-second" in sys.argv:
        per_second = float(sys.argv[sys.argv.index("--per-second") + 1])
    counts = {}
    total = 0
    frames = []
    in_sample = False
    for line in sys.stdin:
        if not line.strip():
            if in_sample:
                cat = classify(frames)
                counts[cat] = counts.get(cat, 0) + 1
                total += 1
            frames, in_sample = [], False
            continue
        m = FRAME.match(line)
        if m and in_sample:
            frames.append((m.group(1), m.group(3)))
        elif not line.startswith((" ", "\t")):
            in_sample, frames = True, []
    if in_sample:
        cat = classify(frames)
        counts[cat] = counts.get(cat, 0) + 1
        total += 1
    if total == 0:
        sys.exit("no samples on stdin")
    order = [c for c, _ in CATEGORIES] + [OTHER_KERNEL, USER_CRYPTO, USER_LIBC, USER_OTHER]
    print(f"samples\t{total}")
    for cat in order:
        n = counts.get(cat, 0)
        share = n / total
        line = f"{cat}\t{100 * share:.1f}%"
        if per_second:
            line += f"\t{share * 1e9 / per_second:.0f} ns"
        print(line)


if __name__ == "__main__":
    main()
