//! The server configuration: one TOML file, every field optional, loaded
//! once and passed down. Defaults follow SPEC §11.

use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

use corral_actors::{KeyKind, Settings};
use corral_core::WorkerState;
use corral_core::request::ScheduleLimits;
use corral_core::time::duration;
use serde::Deserialize;

/// Not `Debug`: `database_url` may carry a password, and nothing should
/// print the whole configuration by accident.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address of the HTTP API.
    pub listen: SocketAddr,
    /// Directory of the embedded PostgreSQL cluster and of the first-start
    /// token files `admin.token` and `agent.token`.
    pub data_dir: PathBuf,
    /// PostgreSQL (or CockroachDB) URL or `key=value` connection string.
    /// Unset: run the embedded cluster under `data_dir`.
    pub database_url: Option<String>,
    /// Host name or address put in access details for reaching tunnels.
    /// Unset: the listen address if it is not a wildcard, else this
    /// machine's host name.
    pub public_host: Option<String>,
    /// Lease length when a request does not say.
    #[serde(with = "duration")]
    pub default_lease: Duration,
    /// Longest lease, and how far a prolonged lease may reach from now.
    #[serde(with = "duration")]
    pub max_lease: Duration,
    /// Who may read `/metrics`: `anyone` or `admin` (an admin token).
    pub metrics_access: String,
    /// How long a lease may last from its start, prolongs included.
    #[serde(with = "duration")]
    pub max_total_lease: Duration,
    /// `max_total_lease` for the workers of some groups (a table of group
    /// names to durations); a worker in several takes the longest.
    #[serde(with = "corral_core::time::duration_map")]
    pub max_total_lease_by_group: std::collections::BTreeMap<String, Duration>,
    /// How long a request may wait when it gives no deadline.
    #[serde(with = "duration")]
    pub default_deadline: Duration,
    /// An agent whose heartbeats stop for this long loses its workers.
    #[serde(with = "duration")]
    pub session_timeout: Duration,
    /// How often agents are told to heartbeat.
    #[serde(with = "duration")]
    pub heartbeat_interval: Duration,
    /// A preparation unanswered for this long is a failed attempt; after
    /// `command_retries` retries the worker fails.
    #[serde(with = "duration")]
    pub prepare_timeout: Duration,
    /// Any other command to an agent (start or extend a lease, maintenance,
    /// health check) unanswered for this long is a failed attempt. Between
    /// 1 s and 1 day, like `prepare_timeout`.
    #[serde(with = "duration")]
    pub command_timeout: Duration,
    /// A power cycle (on demand, or healing a failed worker) unanswered for
    /// this long is a failed attempt: longer than the agent's own
    /// `power_cycle_timeout` (5 min by default), so that a slow hook is not
    /// counted failed while it runs. Between 1 s and 1 day.
    #[serde(with = "duration")]
    pub power_cycle_timeout: Duration,
    /// Retries of a command that timed out or failed (at most 100), each
    /// after a backoff that doubles per failure; then the worker fails with
    /// the reason (a busy worker is assumed in maintenance).
    pub command_retries: u32,
    /// Quarantine a worker after this many failed preparations in a row
    /// (0, the default: never); only an admin lifts a quarantine.
    pub quarantine_after: u32,
    /// A reported `battery` (percent) under this fails the worker.
    pub fail_battery_below: f64,
    /// A reported `temperature` (degrees Celsius) over this fails the
    /// worker.
    pub fail_temperature_above: f64,
    /// A `battery` under this (but not under `fail_battery_below`) holds
    /// the worker in recovery (out of matching, a running lease goes on).
    pub recovery_battery_below: f64,
    /// A `temperature` over this (but not over `fail_temperature_above`)
    /// holds the worker in recovery.
    pub recovery_temperature_above: f64,
    /// What a reported missing device (`device_attached: false` or
    /// `device: "missing"`) does: `fail` the worker (the default) or hold it
    /// in `recovery` until the device is back.
    pub device_missing: String,
    /// Port range of lease tunnels, `FIRST-LAST`.
    pub tunnel_ports: String,
    /// Address the tunnels listen on.
    pub tunnel_bind: IpAddr,
    /// Connections one lease's tunnel carries at once; more are closed at
    /// once.
    pub tunnel_max_connections: usize,
    /// A tunnel connection with no bytes either way for this long is closed.
    #[serde(with = "duration")]
    pub tunnel_idle_timeout: Duration,
    /// PEM certificate chain (own certificate first) served over TLS. With
    /// `tls_key`, the API speaks `https://` only. Unset: plain HTTP, with a
    /// loud warning at start when `listen` is not a loopback address.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// State of newly registered workers: `maintenance` or `idle` (they
    /// then prepare and become idle without an admin).
    pub new_workers: String,
    /// Lease key type: `ed25519` or `rsa`.
    pub lease_key: String,
    /// Largest request body in bytes.
    pub max_body: usize,
    /// Longest `?wait=` of acquire and of the agent long-poll.
    #[serde(with = "duration")]
    pub max_wait: Duration,
    /// `plain` or `json` logs.
    pub log_format: String,
    /// Database connections.
    pub pool_size: usize,
    /// Threads serving HTTP.
    pub http_workers: usize,
    /// Threads running request and worker actors.
    pub actor_threads: usize,
    /// How often timers look at the clock.
    #[serde(with = "duration")]
    pub tick: Duration,
    /// Existing user that calls of the Boruta-compatible API (`/api/v1`)
    /// without an `Authorization` header act as, with that user's groups
    /// and role (Boruta's clients cannot send a token). Unset: such calls
    /// get 401.
    pub boruta_user: Option<String>,
    /// Most waiting requests one user may have (admins are exempt); over
    /// it, submissions get 429.
    pub max_waiting_requests_per_user: usize,
    /// Most concurrent long-polls (`acquire?wait=`) of one user (admins are
    /// exempt); over it, 429.
    pub max_long_polls_per_user: usize,
    /// Most concurrent event streams of one user (admins are exempt); over
    /// it, 429.
    pub max_streams_per_user: usize,
    /// How often an event stream (`GET /v1/events`) without events sends a
    /// keep-alive comment line (`: keep-alive`).
    #[serde(with = "duration")]
    pub events_keep_alive: Duration,
    /// Most changes of requests, and most of workers, that a reconnecting
    /// event stream (`Last-Event-ID`) is sent from the history; a client
    /// further behind gets a `reload` event instead.
    pub events_resume_limit: u32,
    /// Events kept for event streams whose clients read slowly; a stream
    /// further behind gets a `reload` event and is ended.
    pub events_buffer: usize,
    /// How often the reconciler compares the database with the live system
    /// and repairs what a failed commit left behind (a failed commit also
    /// runs it at once).
    #[serde(with = "duration")]
    pub reconcile_interval: Duration,
}

/// The defaults of everything the live system reads come from
/// [`Settings::default`], so that a default is written once; the test
/// `the_default_file_gives_the_default_settings` checks the way back.
impl Default for Config {
    fn default() -> Self {
        let settings = Settings::default();
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8487)),
            data_dir: PathBuf::from("./corral-data"),
            database_url: None,
            // Unset: derived from `listen` (127.0.0.1, the settings' default).
            public_host: None,
            default_lease: settings.limits.default_lease,
            max_lease: settings.limits.max_lease,
            max_total_lease: settings.total_lease.default,
            metrics_access: "anyone".to_string(),
            max_total_lease_by_group: settings.total_lease.by_group,
            default_deadline: settings.limits.default_deadline,
            session_timeout: settings.session_timeout,
            heartbeat_interval: settings.heartbeat_interval,
            prepare_timeout: settings.prepare_timeout,
            command_timeout: settings.command_timeout,
            power_cycle_timeout: settings.power_cycle_timeout,
            command_retries: settings.command_retries,
            quarantine_after: settings.quarantine_after,
            fail_battery_below: settings.health.fail_battery_below,
            fail_temperature_above: settings.health.fail_temperature_above,
            recovery_battery_below: settings.health.recovery_battery_below,
            recovery_temperature_above: settings.health.recovery_temperature_above,
            // The names of `settings.health.device_missing` and
            // `settings.new_worker_state`, as `settings()` reads them.
            device_missing: "fail".to_string(),
            tunnel_ports: format!("{}-{}", settings.tunnel_ports.start(), settings.tunnel_ports.end()),
            tunnel_bind: settings.tunnel_bind,
            tunnel_max_connections: settings.tunnel_max_connections,
            tunnel_idle_timeout: settings.tunnel_idle_timeout,
            tls_cert: None,
            tls_key: None,
            new_workers: "maintenance".to_string(),
            lease_key: settings.lease_key.as_str().to_string(),
            max_body: 256 * 1024,
            max_wait: Duration::from_secs(300),
            log_format: "plain".to_string(),
            pool_size: 32,
            http_workers: corral_actors::settings::default_threads(),
            actor_threads: settings.actor_threads,
            tick: settings.tick,
            boruta_user: None,
            max_waiting_requests_per_user: settings.max_waiting_requests_per_user,
            max_long_polls_per_user: 16,
            max_streams_per_user: 4,
            events_keep_alive: Duration::from_secs(15),
            events_resume_limit: settings.events_resume_limit,
            events_buffer: settings.events_buffer,
            reconcile_interval: settings.reconcile_interval,
        }
    }
}

/// What is wrong with the server configuration. The cause of `Read` and
/// `Parse` is their source: print the chain (`{:#}` of anyhow).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not a valid server configuration", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        let config: Config =
            toml::from_str(&text).map_err(|source| ConfigError::Parse { path: path.to_path_buf(), source })?;
        config.settings()?;
        Ok(config)
    }

    pub fn tunnel_range(&self) -> Result<RangeInclusive<u16>, ConfigError> {
        let bad = || ConfigError::Invalid(format!("tunnel_ports must be FIRST-LAST, got {:?}", self.tunnel_ports));
        let (first, last) = self.tunnel_ports.split_once('-').ok_or_else(bad)?;
        let first: u16 = first.trim().parse().map_err(|_| bad())?;
        let last: u16 = last.trim().parse().map_err(|_| bad())?;
        if first == 0 || first > last {
            return Err(bad());
        }
        Ok(first..=last)
    }

    pub fn public_host(&self) -> String {
        if let Some(host) = &self.public_host {
            return host.clone();
        }
        let ip = self.listen.ip();
        if !ip.is_unspecified() {
            return ip.to_string();
        }
        nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".to_string())
    }

    /// What the actors need, checked.
    pub fn metrics_access(&self) -> Result<crate::metrics::MetricsAccess, ConfigError> {
        self.metrics_access.parse().map_err(ConfigError::Invalid)
    }

    pub fn settings(&self) -> Result<Settings, ConfigError> {
        self.metrics_access()?;
        let new_worker_state = match self.new_workers.as_str() {
            "maintenance" => WorkerState::Maintenance,
            "idle" => WorkerState::Prepare,
            other => {
                return Err(ConfigError::Invalid(format!("new_workers must be maintenance or idle, got {other:?}")));
            }
        };
        let lease_key: KeyKind = self.lease_key.parse().map_err(|e| ConfigError::Invalid(format!("lease_key: {e}")))?;
        if self.default_lease.is_zero() || self.default_lease > self.max_lease {
            return Err(ConfigError::Invalid("default_lease must be positive and at most max_lease".to_string()));
        }
        if self.max_total_lease.is_zero() || self.max_total_lease_by_group.values().any(Duration::is_zero) {
            return Err(ConfigError::Invalid(
                "max_total_lease and max_total_lease_by_group values must be larger than zero".to_string(),
            ));
        }
        if self.heartbeat_interval.is_zero() || self.heartbeat_interval >= self.session_timeout {
            return Err(ConfigError::Invalid(
                "heartbeat_interval must be positive and shorter than session_timeout".to_string(),
            ));
        }
        let (shortest, longest) = (Duration::from_secs(1), Duration::from_secs(24 * 3600));
        for (name, timeout) in [
            ("prepare_timeout", self.prepare_timeout),
            ("command_timeout", self.command_timeout),
            ("power_cycle_timeout", self.power_cycle_timeout),
        ] {
            if timeout < shortest || timeout > longest {
                return Err(ConfigError::Invalid(format!("{name} must be between 1s and 1day")));
            }
        }
        if self.command_retries > 100 {
            return Err(ConfigError::Invalid("command_retries must be at most 100".to_string()));
        }
        if self.max_waiting_requests_per_user == 0
            || self.max_long_polls_per_user == 0
            || self.max_streams_per_user == 0
        {
            return Err(ConfigError::Invalid("per-user limits must be at least 1".to_string()));
        }
        if !matches!(self.log_format.as_str(), "plain" | "json") {
            return Err(ConfigError::Invalid(format!("log_format must be plain or json, got {:?}", self.log_format)));
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(ConfigError::Invalid("tls_cert and tls_key must be given together".to_string()));
        }
        if self.tunnel_max_connections == 0 || self.tunnel_idle_timeout.is_zero() {
            return Err(ConfigError::Invalid(
                "tunnel_max_connections and tunnel_idle_timeout must be larger than zero".to_string(),
            ));
        }
        if self.events_keep_alive < Duration::from_millis(10) || self.events_keep_alive > Duration::from_secs(3600) {
            return Err(ConfigError::Invalid("events_keep_alive must be between 10ms and 1h".to_string()));
        }
        if self.events_buffer == 0 || self.events_buffer > 1_000_000 {
            return Err(ConfigError::Invalid("events_buffer must be between 1 and 1000000".to_string()));
        }
        if self.events_resume_limit == 0 || self.events_resume_limit > 1_000_000 {
            return Err(ConfigError::Invalid("events_resume_limit must be between 1 and 1000000".to_string()));
        }
        if self.reconcile_interval.is_zero() {
            return Err(ConfigError::Invalid("reconcile_interval must be larger than zero".to_string()));
        }
        let device_missing = match self.device_missing.as_str() {
            "fail" => corral_core::health::DeviceMissing::Fail,
            "recovery" => corral_core::health::DeviceMissing::Recovery,
            other => {
                return Err(ConfigError::Invalid(format!("device_missing must be fail or recovery, got {other:?}")));
            }
        };
        let health = corral_core::health::Thresholds {
            fail_battery_below: self.fail_battery_below,
            fail_temperature_above: self.fail_temperature_above,
            recovery_battery_below: self.recovery_battery_below,
            recovery_temperature_above: self.recovery_temperature_above,
            device_missing,
        };
        health.validate().map_err(ConfigError::Invalid)?;
        let public_host = self.public_host();
        if public_host.parse::<IpAddr>().is_ok_and(|ip| ip.is_unspecified()) {
            return Err(ConfigError::Invalid("public_host must not be a wildcard address".to_string()));
        }
        let defaults = Settings::default();
        Ok(Settings {
            limits: ScheduleLimits {
                default_lease: self.default_lease,
                max_lease: self.max_lease,
                default_deadline: self.default_deadline,
            },
            total_lease: corral_actors::settings::TotalLeaseLimit {
                default: self.max_total_lease,
                by_group: self.max_total_lease_by_group.clone(),
            },
            session_timeout: self.session_timeout,
            heartbeat_interval: self.heartbeat_interval,
            prepare_timeout: self.prepare_timeout,
            command_timeout: self.command_timeout,
            power_cycle_timeout: self.power_cycle_timeout,
            command_retries: self.command_retries,
            quarantine_after: self.quarantine_after,
            health,
            new_worker_state,
            tunnel_bind: self.tunnel_bind,
            tunnel_ports: self.tunnel_range()?,
            tunnel_max_connections: self.tunnel_max_connections,
            tunnel_idle_timeout: self.tunnel_idle_timeout,
            public_host,
            lease_key,
            // Not configurable: the one value is the settings' default.
            backoff_base: defaults.backoff_base,
            backoff_cap: defaults.backoff_cap,
            tick: self.tick,
            actor_threads: self.actor_threads.max(1),
            max_waiting_requests_per_user: self.max_waiting_requests_per_user,
            reconcile_interval: self.reconcile_interval,
            events_resume_limit: self.events_resume_limit,
            events_buffer: self.events_buffer,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_spec_defaults() {
        let config: Config = toml::from_str("").unwrap();
        let settings = config.settings().unwrap();
        assert_eq!(config.listen.to_string(), "127.0.0.1:8487");
        assert_eq!(settings.limits.default_lease, Duration::from_secs(3600));
        assert_eq!(settings.limits.max_lease, Duration::from_secs(86400));
        assert_eq!(settings.limits.default_deadline, Duration::from_secs(7 * 86400));
        assert_eq!(settings.session_timeout, Duration::from_secs(30));
        assert_eq!(settings.heartbeat_interval, Duration::from_secs(10));
        assert_eq!(settings.prepare_timeout, Duration::from_secs(120));
        assert_eq!((settings.command_timeout, settings.command_retries), (Duration::from_secs(60), 3));
        assert_eq!(settings.tunnel_ports, 20000..=20999);
        assert_eq!(settings.new_worker_state, WorkerState::Maintenance);
        assert_eq!(settings.public_host, "127.0.0.1");
        assert_eq!(settings.tunnel_max_connections, 8);
        assert_eq!(settings.tunnel_idle_timeout, Duration::from_secs(900));
        assert_eq!((config.tls_cert.as_ref(), config.tls_key.as_ref()), (None, None));
        assert_eq!(config.boruta_user, None);
        assert_eq!(settings.max_waiting_requests_per_user, 1000);
        assert_eq!((config.max_long_polls_per_user, config.max_streams_per_user), (16, 4));
        assert_eq!(settings.reconcile_interval, Duration::from_secs(30));
        assert_eq!(config.events_keep_alive, Duration::from_secs(15));
        assert_eq!(toml::from_str::<Config>("boruta_user = \"weles\"").unwrap().boruta_user.as_deref(), Some("weles"));
    }

    /// The defaults are written once, in `Settings::default()`: an empty
    /// file must give exactly those settings.
    #[test]
    fn the_default_file_gives_the_default_settings() {
        let from_file = toml::from_str::<Config>("").unwrap().settings().unwrap();
        assert_eq!(from_file, Settings::default());
    }

    /// Input: a file that does not exist, and one with a misspelt key.
    /// Must: name the file, and keep the cause as the error's source.
    #[test]
    fn load_errors_name_the_file_and_keep_the_cause() {
        use std::error::Error as _;

        let dir = std::env::temp_dir().join(format!("corral-config-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("corral.toml");
        let missing = Config::load(&path).err().expect("a missing file is refused");
        assert!(matches!(&missing, ConfigError::Read { source, .. } if source.kind() == std::io::ErrorKind::NotFound));
        assert_eq!(missing.to_string(), format!("cannot read {}", path.display()));
        std::fs::write(&path, "sesion_timeout = \"30s\"\n").unwrap();
        let misspelt = Config::load(&path).err().expect("an unknown key is refused");
        assert!(matches!(misspelt, ConfigError::Parse { .. }), "{misspelt:?}");
        assert!(misspelt.to_string().contains(&path.display().to_string()), "{misspelt}");
        let cause = misspelt.source().map(ToString::to_string).unwrap_or_default();
        assert!(cause.contains("unknown field `sesion_timeout`"), "{cause}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unknown_fields_and_bad_values_are_refused() {
        assert!(toml::from_str::<Config>("lisen = \"1.2.3.4:1\"").is_err());
        assert!(toml::from_str::<Config>("default_lease = \"soon\"").is_err());
        let bad_range: Config = toml::from_str("tunnel_ports = \"9-3\"").unwrap();
        assert!(bad_range.settings().is_err());
        let wildcard: Config = toml::from_str("public_host = \"0.0.0.0\"").unwrap();
        assert!(wildcard.settings().is_err());
        let half_tls: Config = toml::from_str("tls_cert = \"/etc/corral/cert.pem\"").unwrap();
        assert!(half_tls.settings().is_err());
        let no_keep_alive: Config = toml::from_str("events_keep_alive = \"0s\"").unwrap();
        assert!(no_keep_alive.settings().is_err());
        let no_tunnel: Config = toml::from_str("tunnel_max_connections = 0").unwrap();
        assert!(no_tunnel.settings().is_err());
        let zero_total: Config = toml::from_str("[max_total_lease_by_group]\nsoak = \"0s\"").unwrap();
        assert!(zero_total.settings().is_err());
        assert!(toml::from_str::<Config>("[max_total_lease_by_group]\nsoak = \"forever\"").is_err());
        assert!(toml::from_str::<Config>("[max_total_lease_by_group]\nsoak = \"1000years\"").is_err());
        let dsa: Config = toml::from_str("lease_key = \"dsa\"").unwrap();
        let refused = dsa.settings().err().map(|e| e.to_string()).unwrap_or_default();
        assert!(refused.contains("lease_key: key type must be ed25519 or rsa, got \"dsa\""), "{refused}");
        for bad in ["command_timeout = \"0s\"", "prepare_timeout = \"2days\"", "command_retries = 101"] {
            let config: Config = toml::from_str(bad).unwrap();
            assert!(config.settings().is_err(), "{bad}");
            let never_reconcile: Config = toml::from_str("reconcile_interval = \"0s\"").unwrap();
            assert!(never_reconcile.settings().is_err());
            assert!(toml::from_str::<Config>("reconcile_interval = \"99999999999 years\"").is_err());
        }
    }

    #[test]
    fn total_lease_limits_per_group_are_a_table_of_durations() {
        let config: Config =
            toml::from_str("max_total_lease = \"3days\"\n[max_total_lease_by_group]\nsoak = \"30days\"").unwrap();
        let settings = config.settings().unwrap();
        assert_eq!(settings.total_lease.default, Duration::from_secs(3 * 86400));
        assert_eq!(settings.total_lease.by_group["soak"], Duration::from_secs(30 * 86400));
    }

    #[test]
    fn health_thresholds_are_settings_checked_for_sense() {
        let config: Config = toml::from_str(
            "recovery_battery_below = 40.0\nfail_battery_below = 10.0\nrecovery_temperature_above = 50.0\n\
             fail_temperature_above = 75.0\ndevice_missing = \"recovery\"\npower_cycle_timeout = \"10m\"",
        )
        .unwrap();
        let settings = config.settings().unwrap();
        assert_eq!((settings.health.recovery_battery_below, settings.health.fail_battery_below), (40.0, 10.0));
        assert_eq!(settings.health.device_missing, corral_core::health::DeviceMissing::Recovery);
        assert_eq!(settings.power_cycle_timeout, Duration::from_secs(600));
        let defaults = Config::default().settings().unwrap();
        assert_eq!(defaults.health, corral_core::health::Thresholds::default());
        for bad in [
            "device_missing = \"ignore\"",
            "recovery_battery_below = 3.0",
            "recovery_temperature_above = 95.0",
            "fail_battery_below = -1.0",
            "power_cycle_timeout = \"0s\"",
        ] {
            let config: Config = toml::from_str(bad).unwrap();
            assert!(config.settings().is_err(), "{bad}");
        }
    }

    #[test]
    fn durations_are_humantime() {
        let config: Config = toml::from_str("default_lease = \"2h 30m\"\nmax_lease = \"1day\"").unwrap();
        assert_eq!(config.default_lease, Duration::from_secs(9000));
    }
}
