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
    pub fn on_reload(&mut self, config: &Config, now: i64) -> Result<ReloadChanges, ReloadError> {
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
        self.grace_secs = config.terminator.shutdown_grace_secs;
        self.configured_pools = config.pools.keys().cloned().collect();
        for change in diff_listeners(self.listeners.configs(), &config.listeners) {
            match self.apply_listener_change(&change, config, now) {
                Ok(()) => changes.listeners.push(change),
                Err(error) => changes.failures.push(ListenerFailure { change, error }),
            }
        }
        changes.pools.extend(self.remove_unused_pools());
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

    /// Pools gone from the file leave once no listener (draining ones included) uses them.
    fn remove_unused_pools(&mut self) -> Vec<PoolChange> {
        let in_use: BTreeSet<String> = self
            .balancer
            .vips()
            .map(|(_, _, p)| p)
            .chain(self.balancer.draining().map(|(_, p)| p))
            .map(str::to_string)
            .collect();
        let gone: Vec<String> = self
            .balancer
            .pools()
            .map(|(p, _)| p.to_string())
            .filter(|p| !self.configured_pools.contains(p) && !in_use.contains(p))
            .collect();
        let mut removed = Vec::new();
        for pool in gone {
            match self.balancer.remove_pool(&pool, &mut self.maps) {
                Ok(()) => removed.push(PoolChange {
                    pool,
                    kind: PoolChangeKind::PoolRemoved,
                }),
                Err(e) => error!(pool, "removing the pool failed: {e:#}"),
            }
        }
        removed
    }

    /// Ends the drains of removed `l4` listeners whose grace is over, and removes the pools
    /// only they still used.
    pub(super) fn finish_l4_drains(&mut self, now: i64) {
        let (over, live): (Vec<_>, Vec<_>) = std::mem::take(&mut self.l4_drains)
            .into_iter()
            .partition(|(_, until)| now >= *until);
        self.l4_drains = live;
        if over.is_empty() {
            return;
        }
        for (name, _) in over {
            match self.balancer.finish_drain(&name, &mut self.maps) {
                Ok(()) => info!(listener = %name, "drain over: the VIP is gone"),
                Err(e) => error!(listener = %name, "ending the drain failed: {e:#}"),
            }
        }
        for c in self.remove_unused_pools() {
            info!("{c}");
        }
        self.supervisor.sync(&self.balancer, &self.board);
    }

    fn apply_listener_change(
        &mut self,
        change: &ListenerChange,
        config: &Config,
        now: i64,
    ) -> Result<(), ListenerError> {
        let new = config.listeners.iter().find(|l| l.name == change.name);
        match (change.kind, new) {
            (ListenerChangeKind::Removed, _) => {
                self.listeners.remove(&change.name);
                // A drain already running for this name (removed, re-added, removed) restarts.
                self.l4_drains.retain(|(n, _)| *n != change.name);
                let drains = self
                    .balancer
                    .drain_listener(&change.name, &mut self.maps)
                    .map_err(ListenerError::Balancer)?;
                if drains {
                    info!(listener = %change.name, grace_secs = self.grace_secs, "l4 listener takes no new flows; live ones finish");
                    self.l4_drains
                        .push((change.name.clone(), now + self.grace_secs as i64));
                }
                Ok(())
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
        config::{tests::config_with_rpc, IoChoice},
        plane::{Event, Outcome, PlaneOptions},
    };

    /// `rpc` and `old` on pool `eu` of one backend; pool `retired` unused.
    fn before_text() -> String {
        config_with_rpc(
            "eu",
            r#"
[[listener]]
name = "old"
address = "203.0.113.11:8090"
mode = "l4"
pool = "eu"

[pools.eu]
backends = [{ name = "a", address = "192.0.2.11:8090" }]

[pools.retired]
backends = [{ name = "z", address = "192.0.2.19:8090" }]
"#,
        )
    }

    /// `rpc` moved to the new pool `us`, `old` replaced by `new`, `eu`'s backend reweighted,
    /// `retired` gone.
    fn after_text() -> String {
        config_with_rpc(
            "us",
            r#"
[[listener]]
name = "new"
address = "203.0.113.12:8090"
mode = "l4"
pool = "eu"

[pools.eu]
backends = [{ name = "a", address = "192.0.2.11:8090", weight = 50 }]

[pools.us]
backends = [{ name = "b", address = "192.0.2.21:8090" }]
"#,
        )
    }

    /// A plane on in-memory maps (`l4` listeners only: no terminator starts).
    fn memory_plane(config: &Config) -> ControlPlane<MemoryMaps> {
        let options = PlaneOptions {
            io: IoChoice::Epoll,
            stats_interval_secs: 0,
        };
        ControlPlane::new(config, MemoryMaps::default(), options, 0)
            .unwrap()
            .0
    }

    fn reload(plane: &mut ControlPlane<MemoryMaps>, text: &str) -> ReloadChanges {
        let config = Config::parse(text, "t").unwrap();
        match plane.handle(Event::Reload(Box::new(config)), 0) {
            Outcome::Reloaded(Ok(c)) => c,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn listener_diff_names_added_changed_and_removed() {
        let before = Config::parse(&before_text(), "t").unwrap();
        let after = Config::parse(&after_text(), "t").unwrap();
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
        let before = Config::parse(&before_text(), "t").unwrap();
        let mut plane = memory_plane(&before);
        let z = plane.balancer().backends("retired").unwrap()[0].id;
        let changes = reload(&mut plane, &after_text());
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
        let draining: Vec<u32> = maps
            .vips
            .values()
            .filter(|m| m.flags & proxy_common::VIP_DRAINING != 0)
            .map(|m| m.vip_num)
            .collect();
        assert_eq!(
            (maps.vips.len(), draining.len()),
            (3, 1),
            "the removed l4 listener's VIP drains"
        );
        assert_eq!(
            maps.backends[&z].flags, 0,
            "the retired pool's backend is cleared"
        );
        // The re-pooled listener's ring now names only the other pool's backend.
        let us = plane.balancer().backends("us").unwrap()[0].id;
        let rpc = plane.balancer().vips().find(|v| v.0 == "rpc").unwrap().1;
        assert!(plane.maps().active_ring(rpc).values().all(|id| *id == us));

        assert!(
            reload(&mut plane, &after_text()).is_empty(),
            "a second reload changes nothing"
        );
    }

    /// A removed `l4` listener takes no new flows but keeps its VIP (and its pool, even one
    /// gone from the file) for the shutdown grace, then both leave.
    #[test]
    fn removed_l4_listener_drains_for_the_grace_then_leaves_with_its_pool() {
        let before = Config::parse(&before_text(), "t").unwrap();
        let mut plane = memory_plane(&before);
        let grace = before.terminator.shutdown_grace_secs as i64;
        // `old` moves to pool `retired`, then both leave the file at t=100.
        let moved = before_text().replace(
            "203.0.113.11:8090\"\nmode = \"l4\"\npool = \"eu\"",
            "203.0.113.11:8090\"\nmode = \"l4\"\npool = \"retired\"",
        );
        assert_ne!(moved, before_text());
        reload(&mut plane, &moved);
        let old_listener = "[[listener]]\nname = \"old\"\naddress = \"203.0.113.11:8090\"\nmode = \"l4\"\npool = \"retired\"\n";
        let retired =
            "[pools.retired]\nbackends = [{ name = \"z\", address = \"192.0.2.19:8090\" }]\n";
        assert!(moved.contains(old_listener) && moved.contains(retired));
        let gone = moved.replace(old_listener, "").replace(retired, "");
        let config = Config::parse(&gone, "t").unwrap();
        let Outcome::Reloaded(Ok(changes)) = plane.handle(Event::Reload(Box::new(config)), 100)
        else {
            panic!("reload failed");
        };
        assert!(
            changes.pools.is_empty(),
            "a pool a draining listener uses stays: {changes:?}"
        );
        let key_of_old = |plane: &ControlPlane<MemoryMaps>| {
            plane
                .maps()
                .vips
                .iter()
                .find(|(_, m)| m.flags & proxy_common::VIP_DRAINING != 0)
                .map(|(k, _)| *k)
        };
        assert!(key_of_old(&plane).is_some(), "the VIP drains");
        assert_eq!(plane.balancer().vips().count(), 1, "no longer served");
        let (_, draining_pool) = plane.balancer().draining().next().unwrap();
        assert_eq!(draining_pool, "retired");

        plane.handle(Event::Tick, 100 + grace - 1);
        assert!(
            key_of_old(&plane).is_some(),
            "still draining before the grace ends"
        );
        assert!(plane.balancer().backends("retired").is_some());

        plane.handle(Event::Tick, 100 + grace);
        assert!(key_of_old(&plane).is_none(), "drain over");
        assert_eq!(plane.maps().vips.len(), 1, "only `rpc` is left");
        assert!(
            plane.balancer().backends("retired").is_none(),
            "the pool only the drained listener used left with it"
        );
    }
}
