//! The throughput cases: measurement windows of connection cycles (TCP + TLS handshake +
//! upgrade + echo + close) and of ping-pong messages, and their medians.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{ensure, Context, Result};
use proxy::terminator::io::IoMode;
use proxy_tests::procfs::cpu_seconds;
use tokio::task::JoinSet;
use tokio_rustls::TlsConnector;

use super::{
    child::ProxyProc,
    client::{full_cycle, WsClient},
    mode_name,
};

/// One measurement window.
pub struct Window {
    pub count: u64,
    pub errors: u64,
    pub secs: f64,
    /// Proxy CPU time over wall time (1.0 = one core busy).
    pub proxy_cpu: f64,
    /// The same for the load generator (clients and node).
    pub client_cpu: f64,
    pub first_error: Option<String>,
}

impl Window {
    pub fn rate(&self) -> f64 {
        self.count as f64 / self.secs
    }
}

/// Wall and CPU time (the proxy's and ours) from the start of a window.
struct WindowClock {
    proxy_pid: u32,
    started: Instant,
    proxy_cpu0: f64,
    own_cpu0: f64,
}

impl WindowClock {
    fn start(proxy: &ProxyProc) -> Result<Self> {
        Ok(WindowClock {
            proxy_pid: proxy.pid(),
            proxy_cpu0: cpu_seconds(proxy.pid())?,
            own_cpu0: cpu_seconds(std::process::id())?,
            started: Instant::now(),
        })
    }

    fn deadline(&self, secs: f64) -> Instant {
        self.started + Duration::from_secs_f64(secs)
    }

    fn stop(self, count: u64, errors: u64, first_error: Option<String>) -> Result<Window> {
        let secs = self.started.elapsed().as_secs_f64();
        let cpu = cpu_seconds(self.proxy_pid)? - self.proxy_cpu0;
        let own = cpu_seconds(std::process::id())? - self.own_cpu0;
        Ok(Window {
            count,
            errors,
            secs,
            proxy_cpu: cpu / secs,
            client_cpu: own / secs,
            first_error,
        })
    }
}

/// Connection cycles with `concurrency` in flight for `secs`.
pub async fn handshake_window(
    proxy: &ProxyProc,
    tls: &TlsConnector,
    concurrency: usize,
    secs: f64,
) -> Result<Window> {
    let addr = proxy.addr;
    let count = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let clock = WindowClock::start(proxy)?;
    let deadline = clock.deadline(secs);
    let mut tasks = JoinSet::new();
    for _ in 0..concurrency {
        let (tls, count, errors) = (tls.clone(), count.clone(), errors.clone());
        tasks.spawn(async move {
            let mut first_error = None;
            while Instant::now() < deadline {
                match tokio::time::timeout(Duration::from_secs(5), full_cycle(addr, &tls)).await {
                    Ok(Ok(())) => {
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                    other => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        if first_error.is_none() {
                            first_error = Some(match other {
                                Ok(Err(e)) => format!("{e:#}"),
                                _ => "cycle timed out".to_string(),
                            });
                        }
                    }
                }
            }
            first_error
        });
    }
    let mut first_error = None;
    while let Some(r) = tasks.join_next().await {
        if let Some(e) = r? {
            first_error.get_or_insert(e);
        }
    }
    clock.stop(
        count.load(Ordering::Relaxed),
        errors.load(Ordering::Relaxed),
        first_error,
    )
}

/// Ping-pong on established connections for `secs` or `max` messages in total.
pub async fn message_window(
    proxy: &ProxyProc,
    conns: Vec<WsClient>,
    secs: f64,
    max: u64,
) -> Result<(Window, Vec<WsClient>)> {
    let count = Arc::new(AtomicU64::new(0));
    let clock = WindowClock::start(proxy)?;
    let deadline = clock.deadline(secs);
    let per_conn = max.div_ceil(conns.len().max(1) as u64);
    let mut tasks = JoinSet::new();
    for mut c in conns {
        let count = count.clone();
        tasks.spawn(async move {
            let mut n = 0u64;
            while n < per_conn && Instant::now() < deadline {
                c.echo().await?;
                n += 1;
                count.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(c)
        });
    }
    let mut back = Vec::new();
    let mut errors = 0;
    let mut first_error = None;
    while let Some(r) = tasks.join_next().await {
        match r? {
            Ok(c) => back.push(c),
            Err(e) => {
                errors += 1;
                first_error.get_or_insert(format!("{e:#}"));
            }
        }
    }
    let window = clock.stop(count.load(Ordering::Relaxed), errors, first_error)?;
    Ok((window, back))
}

/// Opens `n` connections (handshake, upgrade, one echo each), `parallel` at a time.
pub async fn open_many(
    proxy: SocketAddr,
    tls: &TlsConnector,
    n: usize,
    parallel: usize,
) -> Result<Vec<WsClient>> {
    let mut out = Vec::with_capacity(n);
    let mut tasks = JoinSet::new();
    let mut started = 0;
    while out.len() < n {
        while started < n && tasks.len() < parallel {
            let tls = tls.clone();
            tasks.spawn(async move {
                let mut c = WsClient::open(proxy, &tls).await?;
                c.echo().await?;
                anyhow::Ok(c)
            });
            started += 1;
        }
        let c = tasks.join_next().await.context("no task")??;
        out.push(c.context("opening an idle connection")?);
    }
    Ok(out)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        0.0
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The medians of a case's windows.
pub struct Throughput {
    pub rate: f64,
    pub proxy_cpu: f64,
}

pub fn summarize(windows: &[Window], what: &str, mode: IoMode) -> Result<Throughput> {
    for w in windows {
        ensure!(
            w.errors * 100 <= w.count,
            "{} {what}: {} errors for {} successes (first: {})",
            mode_name(mode),
            w.errors,
            w.count,
            w.first_error.as_deref().unwrap_or("-")
        );
        if let Some(e) = &w.first_error {
            eprintln!(
                "warning: {} {what}: {} errors, first: {e}",
                mode_name(mode),
                w.errors
            );
        }
    }
    let mut rates: Vec<f64> = windows.iter().map(Window::rate).collect();
    let mut cpus: Vec<f64> = windows.iter().map(|w| w.proxy_cpu).collect();
    Ok(Throughput {
        rate: median(&mut rates),
        proxy_cpu: median(&mut cpus),
    })
}
