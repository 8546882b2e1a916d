//! The ring driver against real loopback sockets: ordering, buffers lent and given back,
//! backpressure, running out of buffers, and operations abandoned mid-flight.

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    time::Duration,
};

use super::{block_on, driver, RingConfig, UringListener, UringStream};
use crate::terminator::io::Io;

fn pair() -> (UringStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let peer = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (ours, _) = l.accept().unwrap();
    (UringStream::from_std(ours).unwrap(), peer)
}

fn small_ring() -> RingConfig {
    RingConfig {
        sq_entries: 64,
        buffers: 4,
        buf_size: 256,
    }
}

/// Lets the driver settle: submits, runs completion work, dispatches.
async fn settle() {
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(5)).await;
        driver::flush();
    }
}

#[test]
fn bytes_arrive_in_order_across_buffers_and_idle_reads_hold_none() {
    block_on(small_ring(), async {
        let (s, mut peer) = pair();
        let sent: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        let expect = sent.clone();
        let writer = std::thread::spawn(move || {
            // In pieces, so reads see several buffers, partial copies and waits.
            for chunk in sent.chunks(700) {
                peer.write_all(chunk).unwrap();
                std::thread::sleep(Duration::from_millis(2));
            }
            peer
        });
        let mut got = Vec::new();
        let mut buf = Vec::with_capacity(100);
        while got.len() < expect.len() {
            let (r, b) = s.read(buf).await;
            let n = r.unwrap();
            assert!(
                n > 0 && n <= 100,
                "a read fills at most the caller's capacity: {n}"
            );
            got.extend_from_slice(&b);
            buf = b;
        }
        assert_eq!(got, expect, "bytes in order, none lost or doubled");
        let peer = writer.join().unwrap();
        // Idle: a read is pending, and no buffer is lent out for it.
        let pending = tokio::time::timeout(Duration::from_millis(50), s.read(buf)).await;
        assert!(pending.is_err(), "nothing to read yet");
        settle().await;
        assert_eq!(
            driver::with(|d| d.bufs().lent),
            0,
            "an idle reader holds no buffer"
        );
        drop(peer);
        let (r, _) = s.read(Vec::with_capacity(16)).await;
        assert_eq!(r.unwrap(), 0, "EOF after the peer closed");
        let (r, _) = s.read(Vec::with_capacity(16)).await;
        assert_eq!(r.unwrap(), 0, "EOF is sticky");
    })
    .unwrap();
}

#[test]
fn a_reader_that_stops_stops_the_receives_backpressure() {
    block_on(small_ring(), async {
        let (s, peer) = pair();
        peer.set_nonblocking(true).unwrap();
        // Arm the receive, then stop reading while the peer writes as much as it can.
        let _ =
            tokio::time::timeout(Duration::from_millis(20), s.read(Vec::with_capacity(8))).await;
        let mut peer = peer;
        let mut written = 0usize;
        let chunk = vec![7u8; 4096];
        for _ in 0..2000 {
            match peer.write(&chunk) {
                Ok(n) => written += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    settle().await;
                    if peer.write(&chunk).is_err() {
                        break;
                    }
                }
                Err(e) => panic!("{e}"),
            }
            driver::flush();
        }
        settle().await;
        let lent = driver::with(|d| d.bufs().lent);
        assert!(
            lent <= driver::MAX_QUEUED + 1,
            "a reader that does not read holds at most a few buffers: {lent}"
        );
        assert!(
            written < 2000 * 4096,
            "the peer's writes blocked: TCP flow control reached it ({written} bytes)"
        );
        // Reading again takes everything, in order, and gives the buffers back.
        let mut total = 0;
        while total < written {
            let (r, _) = s.read(Vec::with_capacity(4096)).await;
            total += r.unwrap();
        }
        assert_eq!(total, written);
    })
    .unwrap();
}

#[test]
fn out_of_buffers_falls_back_to_a_private_read_and_loses_nothing() {
    let config = RingConfig {
        sq_entries: 64,
        buffers: 2,
        buf_size: 64,
    };
    block_on(config, async {
        // Three connections share two buffers; each one's bytes must arrive whole.
        let mut conns: Vec<(UringStream, TcpStream)> = (0..3).map(|_| pair()).collect();
        for (i, (_, peer)) in conns.iter_mut().enumerate() {
            peer.write_all(&vec![i as u8; 1000]).unwrap();
        }
        for (i, (s, _)) in conns.iter().enumerate() {
            let mut total = 0;
            while total < 1000 {
                let (r, b) = s.read(Vec::with_capacity(512)).await;
                let n = r.unwrap();
                assert!(
                    b.iter().all(|&x| x == i as u8),
                    "connection {i} got another's bytes"
                );
                total += n;
            }
            assert_eq!(total, 1000);
        }
    })
    .unwrap();
}

#[test]
fn abandoned_reads_and_closed_streams_give_everything_back() {
    block_on(small_ring(), async {
        let (s, mut peer) = pair();
        let w = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            peer.write_all(&[1u8; 600]).unwrap();
            peer
        });
        // A read dropped while pending (a timeout), then the stream dropped with bytes queued.
        let r = tokio::time::timeout(Duration::from_millis(5), s.read(Vec::with_capacity(8))).await;
        assert!(r.is_err());
        let _peer = w.join().unwrap();
        settle().await;
        drop(s);
        settle().await;
        assert_eq!(
            driver::with(|d| d.bufs().lent),
            0,
            "queued buffers recycled"
        );
        assert_eq!(
            driver::with(|d| d.in_flight()),
            0,
            "the receive was cancelled"
        );
        // A write abandoned mid-flight to a peer that never reads: the send is cancelled
        // (it would otherwise hold its socket and buffer for good), the slot freed.
        let (s, _peer) = pair();
        let big = vec![9u8; 4 << 20];
        let write = tokio::time::timeout(Duration::from_millis(20), s.write_all(big)).await;
        assert!(
            write.is_err(),
            "4 MiB to a peer that does not read cannot finish"
        );
        settle().await;
        assert_eq!(
            driver::with(|d| d.in_flight()),
            1,
            "left: the stream's receive slot"
        );
        drop(s);
        settle().await;
        assert_eq!(
            driver::with(|d| d.in_flight()),
            0,
            "the send was cancelled, its buffer freed"
        );
    })
    .unwrap();
}

#[test]
fn multishot_accept_serves_each_connection_and_stops_with_its_listener() {
    block_on(small_ring(), async {
        let std_listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = std_listener.local_addr().unwrap();
        let listener = UringListener::from_std(std_listener).unwrap();
        let clients: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(addr).unwrap()).collect();
        for c in &clients {
            let (s, peer) = listener.accept().await.unwrap();
            assert_eq!(peer, c.local_addr().unwrap());
            let (r, _) = s.write_all(b"hi".to_vec()).await;
            r.unwrap();
        }
        for mut c in clients {
            let mut b = [0u8; 2];
            c.read_exact(&mut b).unwrap();
            assert_eq!(&b, b"hi");
        }
        drop(listener);
        settle().await;
        assert_eq!(
            driver::with(|d| d.in_flight()),
            0,
            "the accept was cancelled"
        );
        // The socket is closed with the listener: nobody accepts for it any more.
        assert!(TcpStream::connect(addr).is_err());
    })
    .unwrap();
}

#[test]
fn the_probe_passes_on_a_kernel_that_has_every_feature() {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut parts = release
        .trim()
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let version = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    match super::probe() {
        Ok(()) => {}
        Err(why) if version < (6, 1) => {
            proxy_tests::skip::skipped(&format!("Linux {release} lacks io_uring features: {why}"))
        }
        Err(why) => panic!("Linux {release} has every feature, yet: {why}"),
    }
}

#[test]
fn ready_waits_for_bytes_holding_nothing_and_leaves_them_to_the_read() {
    block_on(small_ring(), async {
        let (s, mut peer) = pair();
        let waiting = tokio::time::timeout(Duration::from_millis(50), s.ready()).await;
        assert!(waiting.is_err(), "ready before any byte arrived");
        settle().await;
        assert_eq!(
            driver::with(|d| d.bufs().lent),
            0,
            "a readiness wait holds no buffer"
        );
        peer.write_all(b"hello").unwrap();
        tokio::time::timeout(Duration::from_secs(5), s.ready())
            .await
            .expect("ready once bytes arrive")
            .unwrap();
        // It took nothing: still ready, and the read gets every byte.
        tokio::time::timeout(Duration::from_millis(100), s.ready())
            .await
            .expect("still ready before the read")
            .unwrap();
        let (r, b) = s.read(Vec::with_capacity(64)).await;
        assert_eq!((r.unwrap(), &b[..]), (5, &b"hello"[..]));
        drop(peer);
        tokio::time::timeout(Duration::from_secs(5), s.ready())
            .await
            .expect("ready at EOF")
            .unwrap();
        let (r, _) = s.read(Vec::with_capacity(16)).await;
        assert_eq!(r.unwrap(), 0, "EOF");
    })
    .unwrap();
}

/// A completion must wake a sleeping worker at once. With `DEFER_TASKRUN` the ring's
/// eventfd is signalled late on some kernels (seen: 10-26 ms after the bytes arrived, on
/// 6.18), and a worker that sleeps in epoll then serves one round trip per delay: 40
/// messages/s on one connection instead of thousands.
#[test]
fn a_completion_wakes_the_sleeping_worker_promptly() {
    block_on(small_ring(), async {
        let (s, mut peer) = pair();
        let rounds = 40;
        let client = std::thread::spawn(move || {
            let mut times = Vec::with_capacity(rounds);
            let mut b = [0u8; 1];
            for _ in 0..rounds {
                // The worker is asleep by now: nothing else runs on it.
                std::thread::sleep(Duration::from_millis(2));
                let t0 = std::time::Instant::now();
                peer.write_all(b"x").unwrap();
                peer.read_exact(&mut b).unwrap();
                times.push(t0.elapsed());
            }
            times.sort();
            times[rounds / 2]
        });
        let mut buf = Vec::with_capacity(16);
        for _ in 0..rounds {
            let (r, b) = s.read(buf).await;
            assert_eq!(r.unwrap(), 1);
            let (w, b) = s.write_all(b).await;
            w.unwrap();
            buf = b;
            buf.clear();
        }
        let median = client.join().unwrap();
        assert!(
            median < Duration::from_millis(5),
            "median round trip through a sleeping worker {median:?}: its wake-up comes late"
        );
    })
    .unwrap();
}
