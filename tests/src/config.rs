//! The proxy's TOML configuration for tests, built from parts instead of written out in
//! each test: the `[balancer]` essentials, `[terminator]` settings, listeners (`l4`, `ws`,
//! `tls`) and pools. [`ConfigBuilder::text`] is the file `proxy run --config` reads;
//! [`ConfigBuilder::build`] parses it the way `proxy run` does.

use std::{fmt::Display, path::Path};

use proxy::config::Config;
use toml::{Table, Value};

/// One backend of a pool; the weight is left to the proxy's default unless given.
#[derive(Clone, Debug)]
pub struct Backend {
    pub name: String,
    pub address: String,
    pub weight: Option<u32>,
}

impl Backend {
    pub fn new(name: impl Into<String>, address: impl Display) -> Self {
        Backend {
            name: name.into(),
            address: address.to_string(),
            weight: None,
        }
    }

    pub fn weight(mut self, weight: u32) -> Self {
        self.weight = Some(weight);
        self
    }
}

#[derive(Clone, Debug)]
pub struct ConfigBuilder {
    root: Table,
}

impl ConfigBuilder {
    /// `[balancer]` on these interfaces; everything else is set with [`Self::set`].
    pub fn new<S: AsRef<str>>(interfaces: &[S]) -> Self {
        let interfaces: Vec<&str> = interfaces.iter().map(AsRef::as_ref).collect();
        ConfigBuilder { root: Table::new() }.set("balancer", "interfaces", interfaces)
    }

    /// The balancer on loopback as the in-process tests use it: `lo`, a documentation NAT
    /// address, a 1009-slot ring.
    pub fn loopback() -> Self {
        Self::new(&["lo"])
            .set("balancer", "snat_v4", "192.0.2.254")
            .set("balancer", "ring_size", 1009)
    }

    /// Sets `key` in the table at the dotted `section` path (`"terminator"`,
    /// `"pools.eu.health"`), creating the tables on the way.
    pub fn set(mut self, section: &str, key: &str, value: impl Into<Value>) -> Self {
        let mut t = &mut self.root;
        for part in section.split('.') {
            t = t
                .entry(part)
                .or_insert_with(|| Value::Table(Table::new()))
                .as_table_mut()
                .unwrap_or_else(|| panic!("config builder: {section} is not a table"));
        }
        t.insert(key.into(), value.into());
        self
    }

    /// `[terminator]` worker threads and shutdown grace.
    pub fn terminator(self, workers: u32, shutdown_grace_secs: u32) -> Self {
        self.set("terminator", "workers", workers).set(
            "terminator",
            "shutdown_grace_secs",
            shutdown_grace_secs,
        )
    }

    /// `[terminator]` connection limits: in all, and per client address.
    pub fn connection_limits(self, max: u32, per_client: u32) -> Self {
        self.set("terminator", "max_connections", max).set(
            "terminator",
            "max_connections_per_client",
            per_client,
        )
    }

    /// A `[[listener]]` of `mode` `l4`, `ws` or `tls` (a `tls` one needs [`Self::tls_listener`]).
    pub fn listener(self, name: &str, address: impl Display, mode: &str, pool: &str) -> Self {
        self.push_listener(name, address, mode, pool, None)
    }

    /// Sets `key` on the listener added last (e.g. `hash = "source"`).
    pub fn listener_key(mut self, key: &str, value: impl Into<Value>) -> Self {
        let last = self
            .root
            .get_mut("listener")
            .and_then(Value::as_array_mut)
            .and_then(|l| l.last_mut())
            .and_then(Value::as_table_mut)
            .expect("listener_key after a listener");
        last.insert(key.into(), value.into());
        self
    }

    /// A `tls` listener serving each `(server name, certbot directory)`.
    pub fn tls_listener(
        self,
        name: &str,
        address: impl Display,
        pool: &str,
        certificates: &[(&str, &Path)],
    ) -> Self {
        let certs: Vec<Value> = certificates
            .iter()
            .map(|(server_name, dir)| {
                let mut c = Table::new();
                c.insert("server_name".into(), (*server_name).into());
                c.insert("dir".into(), dir.display().to_string().into());
                Value::Table(c)
            })
            .collect();
        let mut tls = Table::new();
        tls.insert("certificates".into(), Value::Array(certs));
        self.push_listener(name, address, "tls", pool, Some(tls))
    }

    fn push_listener(
        mut self,
        name: &str,
        address: impl Display,
        mode: &str,
        pool: &str,
        tls: Option<Table>,
    ) -> Self {
        let mut l = Table::new();
        l.insert("name".into(), name.into());
        l.insert("address".into(), address.to_string().into());
        l.insert("mode".into(), mode.into());
        l.insert("pool".into(), pool.into());
        if let Some(tls) = tls {
            l.insert("tls".into(), Value::Table(tls));
        }
        self.root
            .entry("listener")
            .or_insert_with(|| Value::Array(Vec::new()))
            .as_array_mut()
            .expect("listener is an array")
            .push(Value::Table(l));
        self
    }

    /// `[pools.<name>]` with these backends.
    pub fn pool(self, name: &str, backends: &[Backend]) -> Self {
        let backends: Vec<Value> = backends
            .iter()
            .map(|b| {
                let mut t = Table::new();
                t.insert("name".into(), b.name.as_str().into());
                t.insert("address".into(), b.address.as_str().into());
                if let Some(w) = b.weight {
                    t.insert("weight".into(), w.into());
                }
                Value::Table(t)
            })
            .collect();
        self.set(&format!("pools.{name}"), "backends", backends)
    }

    /// The configuration file's text.
    pub fn text(&self) -> String {
        toml::to_string(&self.root).expect("a TOML table serializes")
    }

    /// The text parsed by the proxy; panics with the proxy's message (a broken test).
    pub fn build(&self, what: &str) -> Config {
        let text = self.text();
        Config::parse(&text, what).unwrap_or_else(|e| panic!("{what}: {e}\n{text}"))
    }
}
