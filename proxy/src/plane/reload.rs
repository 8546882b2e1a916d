//! A reload (SIGHUP): a new, validated configuration is applied, not just reported. Pools
//! are reconciled backend by backend; listeners are added, replaced or removed, each alone,
//! so listeners that did not change lose nothing.

use std::{collections::BTreeSet, fmt};

use tracing::{error, info, warn};

use super::{health, ControlPlane, DataPath};
use crate::{
    balancer::{settings_from, BalancerError, PoolChange, PoolChangeKind},
    config::{Config, ListenerConfig},
    terminator::SetupError,
};

/// What a reload did to one listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerChange {
    pub name: String,
    pub kind: ListenerChangeKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerChangeKind {
    /// New in the file: started.
    Added,
    /// Gone from the file: stopped accepting; live connections drain.
    Removed,
    /// Address, certificates, pool, mode or another setting changed: replaced (the old
    /// instance drains).
    Changed,
}

impl fmt::Display for ListenerChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            ListenerChangeKind::Added => "added",
            ListenerChangeKind::Removed => "removed",
            ListenerChangeKind::Changed => "changed, replaced",
        };
        write!(f, "listener {}: {what}", self.name)
    }
}

/// A listener change that could not be applied (the listener keeps its old state).
#[derive(Debug)]
pub struct ListenerFailure {
    pub change: ListenerChange,
    pub error: ListenerError,
}

/// Why a listener change failed.
#[derive(Debug, thiserror::Error)]
pub enum ListenerError {
    #[error("writing its VIP")]
    Balancer(#[source] BalancerError),
    #[error("starting its terminator")]
    Terminator(#[source] SetupError),
}

/// Everything a reload changed.
#[derive(Debug, Default)]
pub struct ReloadChanges {
    pub pools: Vec<PoolChange>,
    pub listeners: Vec<ListenerChange>,
    /// Listener changes that failed; the rest of the reload is applied.
    pub failures: Vec<ListenerFailure>,
}

impl ReloadChanges {
    pub fn is_empty(&self) -> bool {
        self.pools.is_empty() && self.listeners.is_empty() && self.failures.is_empty()
    }
}

/// Why a reload was refused or stopped part way.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The new kernel settings could not be written; nothing was changed.
    #[error("writing the data plane settings")]
    Settings(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A pool change failed; the changes before it are in effect.
    #[error("reconciling pools failed part way")]
    Pools(#[source] BalancerError),
}

/// Listener changes from `old` to `new`, in the order `new` lists them, removals last.
pub fn diff_listeners<'a>(
    old: impl IntoIterator<Item = &'a ListenerConfig>,
    new: &[ListenerConfig],
) -> Vec<ListenerChange> {
    let old: Vec<&ListenerConfig> = old.into_iter().collect();
    let change = |l: &ListenerConfig, kind| ListenerChange {
        name: l.name.clone(),
        kind,
    };
    let mut out = Vec::new();
    for l in new {
        match old.iter().find(|o| o.name == l.name) {
            None => out.push(change(l, ListenerChangeKind::Added)),
            Some(o) if *o != l => out.push(change(l, ListenerChangeKind::Changed)),
            Some(_) => {}
        }
    }
    for o in old {
        if !new.iter().any(|l| l.name == o.name) {
            out.push(change(o, ListenerChangeKind::Removed));
        }
    }
    out
}

impl<M: DataPath> ControlPlane<M> {
    /// Applies a new configuration: kernel settings, pools, health settings, listeners.
    pub fn on_reload(&mut self, config: &Config, _now: i64) -> Result<ReloadChanges, ReloadError> {
        let settings = settings_from(&config.balancer, self.maps.tick_ns());
        if let Err(e) = self.maps.set_settings(&settings) {
            let e = ReloadError::Settings(Box::new(e));
            error!("reload: {}", chain(&e));
            return Err(e);
        }
        let mut changes = ReloadChanges::default();
        let pools = self.balancer.reconcile_pools(config, &mut self.maps);
        self.board.set_configs(health::configs(config));
        match pools {
            Ok(p) => changes.pools = p,
            Err(e) => {
                let e = ReloadError::Pools(e);
                error!("reload: {}", chain(&e));
                self.after_reload();
                return Err(e);
            }
        }
        self.listeners.set_terminator_config(&config.terminator);
        for change in diff_listeners(self.listeners.configs(), &config.listeners) {
            match self.apply_listener_change(&change, config) {
                Ok(()) => changes.listeners.push(change),
                Err(error) => changes.failures.push(ListenerFailure { change, error }),
            }
        }
        // Pools gone from the file leave once no listener uses them.
        let in_use: BTreeSet<&str> = self.balancer.vips().map(|(_, _, p)| p).collect();
        let gone: Vec<String> = self
            .balancer
            .pools()
            .map(|(p, _)| p)
            .filter(|p| !config.pools.contains_key(*p) && !in_use.contains(p))
            .map(str::to_string)
            .collect();
        for pool in gone {
            match self.balancer.remove_pool(&pool, &mut self.maps) {
                Ok(()) => changes.pools.push(PoolChange {
                    pool,
                    kind: PoolChangeKind::PoolRemoved,
                }),
                Err(e) => error!(pool, "reload: removing the pool failed: {e:#}"),
            }
        }
        self.after_reload();
        if changes.is_empty() {
            info!("reload: no changes");
        }
        for c in &changes.pools {
            info!("reload: {c}");
        }
        for c in &changes.listeners {
            info!("reload: {c}");
        }
        for f in &changes.failures {
            warn!("reload: {} not applied: {}", f.change, chain(&f.error));
        }
        Ok(changes)
    }

    fn apply_listener_change(
        &mut self,
        change: &ListenerChange,
        config: &Config,
    ) -> Result<(), ListenerError> {
        let new = config.listeners.iter().find(|l| l.name == change.name);
        match (change.kind, new) {
            (ListenerChangeKind::Removed, _) => {
                self.listeners.remove(&change.name);
                self.balancer
                    .remove_listener(&change.name, &mut self.maps)
                    .map_err(ListenerError::Balancer)
            }
            (ListenerChangeKind::Added, Some(l)) => {
                self.balancer
                    .put_listener(l, &mut self.maps)
                    .map_err(ListenerError::Balancer)?;
                // A failed start leaves the VIP in place; the next reload retries the start.
                self.listeners
                    .add(l, &self.balancer)
                    .map_err(ListenerError::Terminator)
            }
            (ListenerChangeKind::Changed, Some(l)) => {
                let old = self
                    .listeners
                    .config(&l.name)
                    .cloned()
                    .expect("a changed listener is served");
                self.balancer
                    .put_listener(l, &mut self.maps)
                    .map_err(ListenerError::Balancer)?;
                if let Err(e) = self.listeners.replace(l, &self.balancer) {
                    // The old instance keeps serving: give it back its VIP and ring.
                    if let Err(e) = self.balancer.put_listener(&old, &mut self.maps) {
                        error!(listener = %old.name, "reload: restoring the VIP failed: {e:#}");
                    }
                    return Err(ListenerError::Terminator(e));
                }
                Ok(())
            }
            (_, None) => Ok(()),
        }
    }

    /// Whatever the reload changed: terminator tables, probes, and certificates renewed in
    /// place are swapped now rather than at the next poll.
    fn after_reload(&mut self) {
        self.listeners.refresh(&self.balancer);
        self.supervisor.sync(&self.balancer, &self.board);
        self.listeners.reload_certificates();
    }
}

/// An error and its sources on one line, for the log.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(x) = source {
        s += &format!(": {x}");
        source = x.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        balancer::MemoryMaps,
        config::IoChoice,
        plane::{Event, Outcome, PlaneOptions},
    };

    const BEFORE: &str = r#"
[balancer]
interfaces = ["eth0"]
snat_v4 = "192.0.2.254"
ring_size = 1009

[[listener]]
name = "rpc"
address = "203.0.113.10:8090"
mode = "l4"
pool = "eu"

[[listener]]
name = "old"
address = "203.0.113.11:8090"
mode = "l4"
pool = "eu"

[pools.eu]
backends = [{ name = "a", address = "192.0.2.11:8090" }]

[pools.retired]
backends = [{ name = "z", address = "192.0.2.19:8090" }]
"#;

    const AFTER: &str = r#"
[balancer]
interfaces = ["eth0"]
snat_v4 = "192.0.2.254"
ring_size = 1009

[[listener]]
name = "rpc"
address = "203.0.113.10:8090"
mode = "l4"
pool = "us"

[[listener]]
name = "new"
address = "203.0.113.12:8090"
mode = "l4"
pool = "eu"

[pools.eu]
backends = [{ name = "a", address = "192.0.2.11:8090", weight = 50 }]

[pools.us]
backends = [{ name = "b", address = "192.0.2.21:8090" }]
"#;

    fn reload(plane: &mut ControlPlane<MemoryMaps>, text: &str) -> ReloadChanges {
        let config = Config::parse(text, "t").unwrap();
        match plane.handle(Event::Reload(Box::new(config)), 0) {
            Outcome::Reloaded(Ok(c)) => c,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn listener_diff_names_added_changed_and_removed() {
        let before = Config::parse(BEFORE, "t").unwrap();
        let after = Config::parse(AFTER, "t").unwrap();
        let diff: Vec<String> = diff_listeners(&before.listeners, &after.listeners)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            diff,
            [
                "listener rpc: changed, replaced",
                "listener new: added",
                "listener old: removed"
            ]
        );
        assert!(diff_listeners(&after.listeners, &after.listeners).is_empty());
    }

    /// `l4` listeners only: no terminator, so the whole reload runs on in-memory maps.
    #[test]
    fn reload_applies_pools_and_listeners_to_the_maps() {
        let before = Config::parse(BEFORE, "t").unwrap();
        let options = PlaneOptions {
            io: IoChoice::Epoll,
            stats_interval_secs: 0,
        };
        let (mut plane, _inputs) =
            ControlPlane::new(&before, MemoryMaps::default(), options, 0).unwrap();
        let z = plane.balancer().backends("retired").unwrap()[0].id;
        let changes = reload(&mut plane, AFTER);
        let pools: Vec<String> = changes.pools.iter().map(ToString::to_string).collect();
        assert_eq!(
            pools,
            [
                "pool eu: backend a weight 100 -> 50",
                "pool us: added",
                "pool us: backend b added",
                "pool retired: removed"
            ]
        );
        assert_eq!(changes.listeners.len(), 3, "{changes:?}");
        assert!(changes.failures.is_empty());

        let b = plane.balancer();
        let vips: Vec<(&str, &str)> = b.vips().map(|(name, _, pool)| (name, pool)).collect();
        assert_eq!(vips, [("rpc", "us"), ("new", "eu")]);
        assert!(b.backends("retired").is_none());
        let maps = plane.maps();
        assert_eq!(maps.vips.len(), 2, "the removed listener's VIP is gone");
        assert_eq!(
            maps.backends[&z].flags, 0,
            "the retired pool's backend is cleared"
        );
        // The re-pooled listener's ring now names only the other pool's backend.
        let us = plane.balancer().backends("us").unwrap()[0].id;
        let rpc = plane.balancer().vips().find(|v| v.0 == "rpc").unwrap().1;
        assert!(plane.maps().active_ring(rpc).values().all(|id| *id == us));

        assert!(
            reload(&mut plane, AFTER).is_empty(),
            "a second reload changes nothing"
        );
    }
}
