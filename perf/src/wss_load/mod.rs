//! `wss-load`: a load generator for `wss://` (and `ws://`) JSON-RPC services such as
//! BitShares API nodes and the proxies in front of them. The bench (`cargo xtask bench
//! tls-ws`) drives it in-process against every peer; `wss-load` (src/bin/wss_load.rs) is
//! the same code as a standalone tool.
//!
//! Three kinds of load, each over `concurrency` clients:
//! - [`cycles`]: full connection cycles (TCP connect, TLS 1.3 full handshake with no
//!   resumption, upgrade, one call, WebSocket close both ways, TLS/TCP close); latency is
//!   the whole cycle.
//! - [`pingpong`]: established connections, each sending a call and waiting for its answer;
//!   latency is the round trip.
//! - [`subscribe`] then [`push`]: each connection subscribes
//!   (`set_subscribe_callback` + `get_objects ["2.1.0"]`, which a node answers with a
//!   notice for every change of the global properties object) and counts the notices the
//!   server pushes.
//!
//! With a `rate`, each client sends on a fixed schedule (`concurrency / rate` apart) and a
//! call's latency counts from when it was due, not from when it was sent, so a stalled
//! server cannot hide its stall by slowing the load down (coordinated omission).

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use tokio::task::JoinSet;

pub mod client;
pub mod hist;
pub mod target;

pub use client::WsClient;
pub use hist::Latency;
pub use target::{Target, Trust, WsUrl};

/// The default call: what a wallet asks a BitShares node most.
pub const DEFAULT_CALL: &str =
    r#"{"id":1,"method":"call","params":["database","get_dynamic_global_properties",[]]}"#;
/// How long one connection cycle or call may take before it counts as failed.
pub const OP_TIMEOUT: Duration = Duration::from_secs(10);

/// What to send and how.
#[derive(Clone)]
pub struct Load {
    pub concurrency: usize,
    pub duration: Duration,
    /// Stop after this many operations in total (all clients), if given.
    pub max_ops: Option<u64>,
    /// Operations per second over all clients; `None`: as fast as answers come.
    pub rate: Option<f64>,
    /// Calls, used in turn (the message mix).
    pub messages: Arc<Vec<Vec<u8>>>,
    /// Require each answer to be the call itself (an echo node behind the proxy).
    pub expect_echo: bool,
}

impl Load {
    pub fn new(concurrency: usize, duration: Duration) -> Load {
        Load {
            concurrency,
            duration,
            max_ops: None,
            rate: None,
            messages: Arc::new(vec![DEFAULT_CALL.as_bytes().to_vec()]),
            expect_echo: false,
        }
    }

    fn interval(&self) -> Option<Duration> {
        self.rate
            .filter(|r| *r > 0.0)
            .map(|r| Duration::from_secs_f64(self.concurrency as f64 / r))
    }
}

/// What a run measured.
#[derive(Clone, Default)]
pub struct Report {
    pub ops: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub secs: f64,
    pub latency: Latency,
}

impl Report {
    pub fn rate(&self) -> f64 {
        if self.secs > 0.0 {
            self.ops as f64 / self.secs
        } else {
            0.0
        }
    }

    fn merge(&mut self, w: Worker) {
        self.ops += w.ops;
        self.errors += w.errors;
        if self.first_error.is_none() {
            self.first_error = w.first_error;
        }
        self.latency.add(&w.latency);
    }
}

#[derive(Default)]
struct Worker {
    ops: u64,
    errors: u64,
    first_error: Option<String>,
    latency: Latency,
}

impl Worker {
    fn failed(&mut self, e: anyhow::Error) {
        self.errors += 1;
        self.first_error.get_or_insert_with(|| format!("{e:#}"));
    }
}

/// Shared stop conditions: the deadline and the total operation budget.
struct Budget {
    deadline: Instant,
    left: Option<AtomicU64>,
}

impl Budget {
    fn new(load: &Load) -> Arc<Budget> {
        Arc::new(Budget {
            deadline: Instant::now() + load.duration,
            left: load.max_ops.map(AtomicU64::new),
        })
    }

    /// Takes one operation from the budget; `false` when the run is over.
    fn take(&self) -> bool {
        if Instant::now() >= self.deadline {
            return false;
        }
        match &self.left {
            None => true,
            Some(left) => left
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok(),
        }
    }
}

/// Waits for the next slot of a paced client; returns the instant latency counts from:
/// when the operation was due if the client is behind schedule (the server made it late),
/// else when it was really sent (so the timer's own lateness, up to a millisecond, is not
/// blamed on the server).
async fn pace(next: &mut Option<Instant>, interval: Option<Duration>) -> Instant {
    let now = Instant::now();
    match (next.as_mut(), interval) {
        (Some(due), Some(iv)) => {
            let at = *due;
            *due += iv;
            if at > now {
                tokio::time::sleep_until(at.into()).await;
                Instant::now()
            } else {
                at
            }
        }
        _ => now,
    }
}

/// Spreads the clients' first slots over one interval, so a paced load is smooth.
fn first_slot(i: usize, load: &Load) -> Option<Instant> {
    load.interval()
        .map(|iv| Instant::now() + iv.mul_f64(i as f64 / load.concurrency.max(1) as f64))
}

/// Full connection cycles for `load.duration`.
pub async fn cycles(target: Arc<Target>, load: &Load) -> Result<Report> {
    let started = Instant::now();
    let budget = Budget::new(load);
    let mut tasks = JoinSet::new();
    for i in 0..load.concurrency {
        let (target, budget, load) = (target.clone(), budget.clone(), load.clone());
        tasks.spawn(async move {
            let mut w = Worker::default();
            let mut next = first_slot(i, &load);
            let mut k = i;
            while budget.take() {
                let due = pace(&mut next, load.interval()).await;
                let msg = &load.messages[k % load.messages.len()];
                k += 1;
                match tokio::time::timeout(OP_TIMEOUT, cycle(&target, msg, load.expect_echo)).await
                {
                    Ok(Ok(())) => {
                        w.ops += 1;
                        w.latency.record(due.elapsed());
                    }
                    Ok(Err(e)) => w.failed(e),
                    Err(_) => w.failed(anyhow::anyhow!("connection cycle timed out")),
                }
            }
            w
        });
    }
    let mut r = Report::default();
    while let Some(w) = tasks.join_next().await {
        r.merge(w?);
    }
    r.secs = started.elapsed().as_secs_f64();
    Ok(r)
}

async fn cycle(target: &Target, msg: &[u8], expect_echo: bool) -> Result<()> {
    let mut c = WsClient::open(target).await?;
    let answer = c.call(msg).await?;
    check_answer(msg, &answer, expect_echo)?;
    c.close(OP_TIMEOUT).await
}

fn check_answer(msg: &[u8], answer: &[u8], expect_echo: bool) -> Result<()> {
    if expect_echo {
        anyhow::ensure!(answer == msg, "the answer is not the echo of the call");
    }
    Ok(())
}

/// Opens `n` connections, `parallel` at a time (each upgraded and answering one call).
pub async fn open_many(target: Arc<Target>, n: usize, parallel: usize) -> Result<Vec<WsClient>> {
    let mut out = Vec::with_capacity(n);
    let mut tasks = JoinSet::new();
    let mut started = 0;
    while out.len() < n {
        while started < n && tasks.len() < parallel.max(1) {
            let target = target.clone();
            tasks.spawn(async move {
                tokio::time::timeout(OP_TIMEOUT, async {
                    let mut c = WsClient::open(&target).await?;
                    c.call(DEFAULT_CALL.as_bytes()).await?;
                    anyhow::Ok(c)
                })
                .await
                .context("opening a connection timed out")?
            });
            started += 1;
        }
        let c = tasks.join_next().await.context("no task")??;
        out.push(c.with_context(|| format!("opening connection {} of {n}", out.len() + 1))?);
    }
    Ok(out)
}

/// Request/response on established connections (one client each) for `load.duration`;
/// the connections that are still healthy come back.
pub async fn pingpong(conns: Vec<WsClient>, load: &Load) -> Result<(Report, Vec<WsClient>)> {
    let started = Instant::now();
    let budget = Budget::new(load);
    let n = conns.len();
    let load = Load {
        concurrency: n,
        ..load.clone()
    };
    let mut tasks = JoinSet::new();
    for (i, mut c) in conns.into_iter().enumerate() {
        let (budget, load) = (budget.clone(), load.clone());
        tasks.spawn(async move {
            let mut w = Worker::default();
            let mut next = first_slot(i, &load);
            let mut k = i;
            while budget.take() {
                let due = pace(&mut next, load.interval()).await;
                let msg = &load.messages[k % load.messages.len()];
                k += 1;
                let r = tokio::time::timeout(OP_TIMEOUT, c.call(msg)).await;
                match r {
                    Ok(Ok(answer)) => {
                        if let Err(e) = check_answer(msg, &answer, load.expect_echo) {
                            w.failed(e);
                            return (w, None);
                        }
                        w.ops += 1;
                        w.latency.record(due.elapsed());
                    }
                    Ok(Err(e)) => {
                        w.failed(e);
                        return (w, None);
                    }
                    Err(_) => {
                        w.failed(anyhow::anyhow!("no answer within {OP_TIMEOUT:?}"));
                        return (w, None);
                    }
                }
            }
            (w, Some(c))
        });
    }
    let mut r = Report::default();
    let mut back = Vec::with_capacity(n);
    while let Some(res) = tasks.join_next().await {
        let (w, c) = res?;
        r.merge(w);
        back.extend(c);
    }
    r.secs = started.elapsed().as_secs_f64();
    Ok((r, back))
}

/// The BitShares subscription: a callback id, then the object whose changes are pushed.
pub const SUBSCRIBE: &str =
    r#"{"id":101,"method":"call","params":["database","set_subscribe_callback",[7,false]]}"#;
pub const GET_OBJECTS: &str =
    r#"{"id":102,"method":"call","params":["database","get_objects",[["2.1.0"]]]}"#;

/// Subscribes every connection (`parallel` at a time).
pub async fn subscribe(conns: Vec<WsClient>, parallel: usize) -> Result<Vec<WsClient>> {
    let mut out = Vec::with_capacity(conns.len());
    let mut it = conns.into_iter();
    let mut tasks = JoinSet::new();
    loop {
        while tasks.len() < parallel.max(1) {
            let Some(mut c) = it.next() else { break };
            tasks.spawn(async move {
                tokio::time::timeout(OP_TIMEOUT, async {
                    c.call_id(101, SUBSCRIBE.as_bytes()).await?;
                    c.call_id(102, GET_OBJECTS.as_bytes()).await?;
                    anyhow::Ok(c)
                })
                .await
                .context("subscribing timed out")?
            });
        }
        match tasks.join_next().await {
            None => return Ok(out),
            Some(r) => out.push(r?.context("subscribing")?),
        }
    }
}

/// Counts the notices pushed to subscribed connections: every connection reads for
/// `lead_in` first (uncounted: it drains what piled up in socket buffers while nobody read,
/// so the count is the steady rate, not a buffer flush), then `duration` is counted.
/// `mark` is called when counting starts and when it stops (the bench samples CPU time
/// there). Connections come back for more windows.
pub async fn push(
    conns: Vec<WsClient>,
    lead_in: Duration,
    duration: Duration,
    mark: &mut dyn FnMut(),
) -> Result<(Report, Vec<WsClient>)> {
    let count = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = JoinSet::new();
    for mut c in conns {
        let (stop, count) = (stop.clone(), count.clone());
        tasks.spawn(async move {
            let mut w = Worker::default();
            loop {
                if stop.load(Ordering::Relaxed) {
                    return (w, Some(c));
                }
                // Short timeouts: a reader parked on a quiet connection sees `stop` soon.
                match tokio::time::timeout(Duration::from_millis(50), c.recv()).await {
                    Err(_) => {}
                    Ok(Ok(f)) => {
                        if contains(&f.payload, b"\"notice\"") {
                            count.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Ok(Err(e)) => {
                        w.failed(e);
                        return (w, None);
                    }
                }
            }
        });
    }
    tokio::time::sleep(lead_in).await;
    mark();
    let started = Instant::now();
    let c0 = count.load(Ordering::Relaxed);
    tokio::time::sleep(duration).await;
    let ops = count.load(Ordering::Relaxed) - c0;
    let secs = started.elapsed().as_secs_f64();
    mark();
    stop.store(true, Ordering::Relaxed);
    let mut r = Report::default();
    let mut back = Vec::new();
    while let Some(res) = tasks.join_next().await {
        let (w, c) = res?;
        r.merge(w);
        back.extend(c);
    }
    r.ops = ops;
    r.secs = secs;
    Ok((r, back))
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Closes every connection (WebSocket close both ways), all at once (a connection that is
/// being pushed to must read what is queued before the server's close frame); how many
/// failed to close cleanly, and the first error.
pub async fn close_all(conns: Vec<WsClient>) -> (usize, Option<String>) {
    let mut tasks = JoinSet::new();
    for c in conns {
        tasks.spawn(c.close(Duration::from_secs(30)));
    }
    let mut failed = 0;
    let mut first = None;
    while let Some(r) = tasks.join_next().await {
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                failed += 1;
                first.get_or_insert(format!("{e:#}"));
            }
            Err(e) => {
                failed += 1;
                first.get_or_insert(e.to_string());
            }
        }
    }
    (failed, first)
}
