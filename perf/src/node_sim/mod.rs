//! A BitShares API node simulator (`witness_node` look-alike) for tests, the demo
//! and benchmarks.
//!
//! One TCP port serves both transports of a real public API node: JSON-RPC over
//! HTTP `POST` and over a WebSocket (`GET /` or `/ws` with an RFC 6455 upgrade).
//! The chain is the proxy's chain model (`proxy::chain`, numbered in [`chain`]):
//! a block every `block_interval`, a maintenance block every
//! `maintenance_interval` followed by `maintenance_skip_slots` skipped slots,
//! the head a pure function of the clock. Instances with the same parameters and clock therefore agree on the
//! head, like nodes in sync.
//!
//! Faults are switched at run time, from the [`NodeSimHandle`] in process or from
//! a small HTTP control endpoint (see [`control`]): stall, lag, flap, slow,
//! refuse/accept, die, heavy push.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use proxy_perf::node_sim::{Control, NodeSim, NodeSimConfig};
//! let node = NodeSim::spawn(NodeSimConfig::fast(100, 2)).await?;
//! println!("ws://{}/ws, head {}", node.addr, node.head().num);
//! node.set_mode(Control::Lag(5)).await?;
//! node.shutdown().await;
//! # Ok(()) }
//! ```

pub mod chain;
pub mod control;
mod http;
mod push;
mod rpc;
mod server;
#[cfg(test)]
mod tests;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio::task::JoinHandle;

pub use chain::{Block, Chain, ChainParams, MAINNET_CHAIN_ID};

/// How to start a simulated node.
#[derive(Debug, Clone)]
pub struct NodeSimConfig {
    /// Name shown in logs and in `/control/state`; RPC clients only see it if they ask
    /// with the simulator-only `node_sim_name` method (login API).
    pub name: String,
    /// The API port (HTTP POST and WebSocket). Port 0 picks a free port.
    pub listen: SocketAddr,
    /// The control endpoint, if any. Port 0 picks a free port.
    pub control: Option<SocketAddr>,
    /// Chain timing.
    pub chain: ChainParams,
    /// Added to the wall clock to get the chain's "now" (seconds, may be negative).
    pub time_offset_secs: i64,
    /// Faults to switch on at start, in order (e.g. `[Control::Lag(5)]`).
    pub initial: Vec<Control>,
}

impl Default for NodeSimConfig {
    fn default() -> Self {
        NodeSimConfig {
            name: "node-sim".into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            control: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            chain: ChainParams::BITSHARES_MAINNET,
            time_offset_secs: 0,
            initial: Vec::new(),
        }
    }
}

impl NodeSimConfig {
    /// A fast chain on 127.0.0.1 (free ports, control endpoint on): blocks every
    /// `block_interval_ms`, maintenance every `maintenance_interval_secs`, 3 skipped slots.
    pub fn fast(block_interval_ms: u64, maintenance_interval_secs: u32) -> Self {
        NodeSimConfig {
            chain: ChainParams::simulated(block_interval_ms, maintenance_interval_secs),
            ..Self::default()
        }
    }
}

/// A run-time fault switch (the same set the control endpoint offers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// The head stops advancing; answers keep coming with the old head.
    Stall,
    /// Back to a healthy head (clears stall, lag and flap); the node catches up at once.
    Resume,
    /// Report the block `n` behind the chain head (0 = healthy).
    Lag(u64),
    /// Alternate healthy and stalled every period, starting healthy.
    Flap(Duration),
    /// Delay every answer (not the pushed notices) by this much (0 = off).
    Slow(Duration),
    /// Close the API listener: new connects are refused; live connections stay.
    Refuse,
    /// Listen again on the same address.
    Accept,
    /// Reset every live API connection at once (RST), mid-stream.
    Die,
    /// Push many extra subscription notices per block.
    Heavy(HeavyPush),
    /// Back to one notice per block for subscribers.
    Normal,
    /// Everything back to defaults (healthy, fast, accepting, normal push).
    Reset,
}

/// Server-push-heavy traffic: extra objects pushed to subscribers every block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct HeavyPush {
    /// Extra objects (operation history objects, `1.11.N`) per block.
    pub objects_per_block: u32,
    /// Approximate serialized size of each object, bytes.
    pub object_bytes: u32,
    /// Objects per notice message (1 = one notice per object).
    pub objects_per_notice: u32,
}

/// The current head behaviour, as reported by [`NodeSimHandle::mode`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum HeadMode {
    Healthy,
    Stalled { at_block: u64 },
    Lagging { blocks: u64 },
    Flapping { period_ms: u64 },
}

/// All switches, as reported by [`NodeSimHandle::mode`] and `/control/state`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Mode {
    pub head: HeadMode,
    pub slow_ms: u64,
    pub accepting: bool,
    /// `Some` in heavy-push mode.
    pub heavy: Option<HeavyPush>,
}

/// Starts simulated nodes.
pub struct NodeSim;

impl NodeSim {
    /// Binds the API (and control) listeners and starts the node on the current
    /// tokio runtime.
    pub async fn spawn(config: NodeSimConfig) -> io::Result<NodeSimHandle> {
        config
            .chain
            .validate()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let listener = TcpListener::bind(config.listen).await?;
        let addr = listener.local_addr()?;
        let control = match config.control {
            Some(a) => Some(TcpListener::bind(a).await?),
            None => None,
        };
        let control_addr = control.as_ref().map(|l| l.local_addr()).transpose()?;

        let chain = Chain::new(config.chain);
        let time_offset_ms = config.time_offset_secs.saturating_mul(1000);
        let first = HeadUpdate::new(chain.head_at(wall_ms() + time_offset_ms), None);
        let (head_tx, _) = watch::channel(Arc::new(first));
        let (die_tx, _) = watch::channel(0u64);
        let (shutdown_tx, _) = watch::channel(false);
        let (acceptor_tx, acceptor_rx) = mpsc::channel(8);
        let shared = Arc::new(Shared {
            name: config.name.clone(),
            addr,
            chain,
            time_offset_ms,
            statics: rpc::Statics::new(config.chain),
            mode: Mutex::new(ModeState::default()),
            slow_ms: AtomicU64::new(0),
            head_tx,
            wake: Notify::new(),
            die_tx,
            shutdown_tx,
            acceptor_tx,
            connections: AtomicUsize::new(0),
            connections_total: AtomicU64::new(0),
            subscribers: Arc::new(AtomicUsize::new(0)),
        });

        let mut tasks = vec![
            tokio::spawn(server::acceptor(shared.clone(), listener, acceptor_rx)),
            tokio::spawn(server::ticker(shared.clone())),
        ];
        if let Some(l) = control {
            tasks.push(tokio::spawn(control::serve(l, shared.clone())));
        }
        tracing::debug!(node = %config.name, %addr, ?control_addr, "node simulator started");
        let handle = NodeSimHandle {
            addr,
            control_addr,
            shared,
            tasks,
        };
        for c in config.initial {
            handle.set_mode(c).await?;
        }
        Ok(handle)
    }
}

/// A running simulated node. Dropping it stops the node (without waiting);
/// [`NodeSimHandle::shutdown`] stops it and waits.
pub struct NodeSimHandle {
    /// The API address (HTTP POST and WebSocket).
    pub addr: SocketAddr,
    /// The control endpoint, when configured.
    pub control_addr: Option<SocketAddr>,
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

impl NodeSimHandle {
    /// Applies a fault switch; returns the resulting mode. `Refuse`/`Accept`
    /// have taken effect on the listener when this returns.
    pub async fn set_mode(&self, control: Control) -> io::Result<Mode> {
        self.shared.apply(control).await
    }

    /// Current switches.
    pub fn mode(&self) -> Mode {
        self.shared.mode().public()
    }

    /// The head block this node reports now (after stall/lag/flap).
    pub fn head(&self) -> Block {
        self.shared.head_tx.borrow().block.clone()
    }

    /// The head of the simulated network now (what a healthy node reports).
    pub fn chain_head(&self) -> Block {
        self.shared.chain.head_at(self.shared.now_ms())
    }

    /// The chain model (e.g. to look blocks up by number).
    pub fn chain(&self) -> Chain {
        self.shared.chain
    }

    /// Live API connections.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::Relaxed)
    }

    /// Live WebSocket sessions with a subscription callback.
    pub fn subscribers(&self) -> usize {
        self.shared.subscribers.load(Ordering::Relaxed)
    }

    /// The `/control/state` document.
    pub fn state(&self) -> Value {
        self.shared.state_json()
    }

    /// `ws://addr/ws`.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// `http://addr/`.
    pub fn http_url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// Stops the listeners and every connection, and waits for the node's tasks.
    pub async fn shutdown(mut self) {
        self.shared.shutdown_tx.send_replace(true);
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
    }
}

impl Drop for NodeSimHandle {
    fn drop(&mut self) {
        self.shared.shutdown_tx.send_replace(true);
    }
}

/// What connections see of the head: the block and its pre-serialized notices.
#[derive(Debug)]
pub(crate) struct HeadUpdate {
    pub block: Block,
    /// The `2.1.0` object, serialized.
    pub dgp_json: String,
    /// Heavy-push notice bodies (`[[obj, ...]]`), empty in normal mode.
    pub heavy: Vec<String>,
}

impl HeadUpdate {
    fn new(block: Block, heavy: Option<HeavyPush>) -> Self {
        let dgp_json =
            serde_json::to_string(&block.dynamic_global_properties()).expect("dgp serializes");
        let heavy = heavy
            .map(|h| push::heavy_bodies(&block, &h))
            .unwrap_or_default();
        HeadUpdate {
            block,
            dgp_json,
            heavy,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HeadState {
    Healthy,
    Stalled(Block),
    Lagging(u64),
    Flapping { period_ms: i64, since_ms: i64 },
}

#[derive(Debug, Clone)]
pub(crate) struct ModeState {
    head: HeadState,
    slow_ms: u64,
    accepting: bool,
    heavy: Option<HeavyPush>,
}

impl Default for ModeState {
    fn default() -> Self {
        ModeState {
            head: HeadState::Healthy,
            slow_ms: 0,
            accepting: true,
            heavy: None,
        }
    }
}

impl ModeState {
    /// The head this node reports at chain time `now`.
    fn view(&self, chain: &Chain, now: i64) -> Block {
        match &self.head {
            HeadState::Healthy => chain.head_at(now),
            HeadState::Stalled(b) => b.clone(),
            HeadState::Lagging(n) => chain.block_by_num(chain.head_at(now).num.saturating_sub(*n)),
            HeadState::Flapping {
                period_ms,
                since_ms,
            } => {
                let phase = (now - since_ms).div_euclid(*period_ms);
                if phase % 2 == 0 {
                    chain.head_at(now)
                } else {
                    // Stalled since the phase began: the head of that moment.
                    chain.head_at(since_ms + phase * period_ms)
                }
            }
        }
    }

    /// When the reported head may change next (chain time, ms).
    fn next_change(&self, chain: &Chain, now: i64) -> i64 {
        let next_block = chain.next_block_time(now);
        match &self.head {
            HeadState::Flapping {
                period_ms,
                since_ms,
            } => {
                let phase = (now - since_ms).div_euclid(*period_ms);
                next_block.min(since_ms + (phase + 1) * period_ms)
            }
            _ => next_block,
        }
    }

    fn public(&self) -> Mode {
        Mode {
            head: match &self.head {
                HeadState::Healthy => HeadMode::Healthy,
                HeadState::Stalled(b) => HeadMode::Stalled { at_block: b.num },
                HeadState::Lagging(n) => HeadMode::Lagging { blocks: *n },
                HeadState::Flapping { period_ms, .. } => HeadMode::Flapping {
                    period_ms: *period_ms as u64,
                },
            },
            slow_ms: self.slow_ms,
            accepting: self.accepting,
            heavy: self.heavy,
        }
    }
}

/// Commands for the acceptor task, which owns the API listener.
pub(crate) enum AcceptorCmd {
    Refuse(oneshot::Sender<io::Result<()>>),
    Accept(oneshot::Sender<io::Result<()>>),
}

/// State shared by the node's tasks.
pub(crate) struct Shared {
    pub name: String,
    pub addr: SocketAddr,
    pub chain: Chain,
    pub time_offset_ms: i64,
    pub statics: rpc::Statics,
    mode: Mutex<ModeState>,
    /// Copy of `mode.slow_ms`, read on every answer without the lock.
    pub slow_ms: AtomicU64,
    pub head_tx: watch::Sender<Arc<HeadUpdate>>,
    /// Wakes the ticker after a mode change.
    pub wake: Notify,
    /// Bumped by `Die`.
    pub die_tx: watch::Sender<u64>,
    pub shutdown_tx: watch::Sender<bool>,
    pub acceptor_tx: mpsc::Sender<AcceptorCmd>,
    pub connections: AtomicUsize,
    pub connections_total: AtomicU64,
    pub subscribers: Arc<AtomicUsize>,
}

fn wall_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Shared {
    /// The chain's "now": wall clock plus the configured offset, Unix ms.
    pub fn now_ms(&self) -> i64 {
        wall_ms() + self.time_offset_ms
    }

    fn mode(&self) -> MutexGuard<'_, ModeState> {
        self.mode.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Recomputes the reported head and publishes it if it changed. Returns
    /// the chain time of the next possible change.
    pub fn publish(&self) -> i64 {
        let mode = self.mode();
        let now = self.now_ms();
        let view = mode.view(&self.chain, now);
        let changed = self.head_tx.borrow().block != view;
        if changed {
            let heavy = mode
                .heavy
                .filter(|_| self.subscribers.load(Ordering::Relaxed) > 0);
            self.head_tx
                .send_replace(Arc::new(HeadUpdate::new(view, heavy)));
        }
        mode.next_change(&self.chain, now)
    }

    /// Applies a fault switch (handle and control endpoint).
    pub async fn apply(&self, control: Control) -> io::Result<Mode> {
        let invalid = |m: &str| io::Error::new(io::ErrorKind::InvalidInput, m.to_string());
        match &control {
            Control::Refuse => self.acceptor(AcceptorCmd::Refuse).await?,
            Control::Accept | Control::Reset => self.acceptor(AcceptorCmd::Accept).await?,
            Control::Die => {
                self.die_tx.send_modify(|g| *g += 1);
            }
            Control::Flap(p) if p.is_zero() => return Err(invalid("flap period must be > 0")),
            Control::Heavy(h) if h.objects_per_block == 0 || h.objects_per_notice == 0 => {
                return Err(invalid(
                    "objects_per_block and objects_per_notice must be > 0",
                ))
            }
            _ => {}
        }
        {
            let mut m = self.mode();
            let now = self.now_ms();
            match control {
                Control::Stall => {
                    if !matches!(m.head, HeadState::Stalled(_)) {
                        m.head = HeadState::Stalled(m.view(&self.chain, now));
                    }
                }
                Control::Resume | Control::Lag(0) => m.head = HeadState::Healthy,
                Control::Lag(n) => m.head = HeadState::Lagging(n),
                Control::Flap(p) => {
                    m.head = HeadState::Flapping {
                        period_ms: (p.as_millis() as i64).max(1),
                        since_ms: now,
                    }
                }
                Control::Slow(d) => m.slow_ms = d.as_millis() as u64,
                Control::Refuse => m.accepting = false,
                Control::Accept => m.accepting = true,
                Control::Die => {}
                Control::Heavy(h) => m.heavy = Some(h),
                Control::Normal => m.heavy = None,
                Control::Reset => *m = ModeState::default(),
            }
            self.slow_ms.store(m.slow_ms, Ordering::Relaxed);
            tracing::debug!(node = %self.name, mode = ?m.public(), "mode changed");
        }
        self.publish();
        self.wake.notify_one();
        Ok(self.mode().public())
    }

    async fn acceptor(
        &self,
        cmd: fn(oneshot::Sender<io::Result<()>>) -> AcceptorCmd,
    ) -> io::Result<()> {
        let (tx, rx) = oneshot::channel();
        let gone = || io::Error::other("node simulator is shut down");
        self.acceptor_tx.send(cmd(tx)).await.map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }

    /// The `/control/state` document.
    pub fn state_json(&self) -> Value {
        let mode = self.mode().public();
        let head = self.head_tx.borrow().block.clone();
        let chain_head = self.chain.head_at(self.now_ms());
        let p = self.chain.params();
        json!({
            "name": self.name,
            "addr": self.addr.to_string(),
            "mode": mode,
            "head": block_summary(&head),
            "chain_head": block_summary(&chain_head),
            "params": {
                "block_interval_ms": p.block_interval_ms,
                "maintenance_interval_secs": p.maintenance_interval_secs,
                "maintenance_skip_slots": p.maintenance_skip_slots,
                "time_offset_secs": self.time_offset_ms / 1000,
            },
            "connections": self.connections.load(Ordering::Relaxed),
            "connections_total": self.connections_total.load(Ordering::Relaxed),
            "subscribers": self.subscribers.load(Ordering::Relaxed),
        })
    }
}

fn block_summary(b: &Block) -> Value {
    let d = b.dynamic_global_properties();
    json!({
        "head_block_number": d.head_block_number,
        "head_block_id": d.head_block_id,
        "time": d.time,
        "next_maintenance_time": d.next_maintenance_time,
        "dynamic_flags": d.dynamic_flags,
        "last_irreversible_block_num": d.last_irreversible_block_num,
    })
}
