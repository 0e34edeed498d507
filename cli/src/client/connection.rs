//! Which server to talk to and which token to present (SPEC §8).
//!
//! The server, first found wins: `--server`, `CORRAL_URL`, `server` in the
//! client config file, `http://127.0.0.1:8487`. Each may list the URLs of
//! several replicas separated by commas; a call goes to the one that leads
//! (`corral_client::servers`).
//!
//! The token, first found wins:
//! 1. `--token TOKEN`;
//! 2. `--token-file FILE`;
//! 3. `--data-dir DIR`: the `DIR/admin.token` that `corral serve --data-dir
//!    DIR` wrote on this machine;
//! 4. `CORRAL_TOKEN`;
//! 5. `token`, then `token_file`, in the client config file:
//!    `$CORRAL_CONFIG` (which must then exist), else
//!    `$XDG_CONFIG_HOME/corral/client.toml` or `~/.config/corral/client.toml`;
//! 6. `./corral-data/admin.token`, where a `corral serve` started in the
//!    current directory keeps it.
//!
//! The CA to trust for an `https://` server besides the system's roots:
//! `--ca-file`, `CORRAL_CA_FILE`, `ca_file` in the client config file
//! (relative to its directory).
//!
//! A source that is named explicitly (a flag, `CORRAL_CONFIG`, a
//! `token_file` of the config file) but cannot be read is an error, not a
//! reason to look further.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Args;
use serde::Deserialize;

/// Where a server listens when nothing else says.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:8487";

/// The data directory of a `corral serve` that was not given `--data-dir`.
pub const DEFAULT_DATA_DIR: &str = "./corral-data";

/// The file in a data directory that holds the first admin's token.
const ADMIN_TOKEN_FILE: &str = "admin.token";

/// Connection flags shared by every client command.
#[derive(Args, Clone, Default)]
#[command(next_help_heading = "Connection")]
pub struct Connection {
    /// Server URL, or the URLs of the replicas separated by commas
    /// [default: `server` of the config file, else http://127.0.0.1:8487].
    #[arg(long, env = "CORRAL_URL", value_name = "URL")]
    pub server: Option<String>,
    /// Bearer token (or set CORRAL_TOKEN; the flag is visible to other local users in `ps`).
    #[arg(long, value_name = "TOKEN", conflicts_with_all = ["token_file", "data_dir"])]
    pub token: Option<String>,
    /// File holding the bearer token.
    #[arg(long, value_name = "FILE", conflicts_with = "data_dir")]
    pub token_file: Option<PathBuf>,
    /// Data directory of a `corral serve` on this machine; its admin.token is used
    /// [tried last: ./corral-data].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// PEM file of a CA to trust for an https:// server, besides the system's roots
    /// [default: `ca_file` of the config file].
    #[arg(long, env = "CORRAL_CA_FILE", value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
}

/// A token shown by `Debug`: whether there is one, never what it is.
fn redacted(token: &Option<String>) -> Option<&'static str> {
    token.as_ref().map(|_| "<redacted>")
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("server", &self.server)
            .field("token", &redacted(&self.token))
            .field("token_file", &self.token_file)
            .field("data_dir", &self.data_dir)
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

/// What the process environment contributes to the search; a value of its
/// own so that tests can supply one.
#[derive(Clone, Default)]
pub struct Environment {
    /// `CORRAL_TOKEN`.
    pub token: Option<String>,
    /// `CORRAL_CONFIG`: the client config file to use.
    pub config: Option<PathBuf>,
    /// `XDG_CONFIG_HOME`.
    pub config_home: Option<PathBuf>,
    /// `HOME`.
    pub home: Option<PathBuf>,
    /// The data directory tried last ([`DEFAULT_DATA_DIR`]).
    pub default_data_dir: PathBuf,
}

impl std::fmt::Debug for Environment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Environment")
            .field("token", &redacted(&self.token))
            .field("config", &self.config)
            .field("config_home", &self.config_home)
            .field("home", &self.home)
            .field("default_data_dir", &self.default_data_dir)
            .finish()
    }
}

impl Environment {
    pub fn from_process() -> Environment {
        let text = |name: &str| std::env::var(name).ok().map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        let path = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
        Environment {
            token: text("CORRAL_TOKEN"),
            config: path("CORRAL_CONFIG"),
            config_home: path("XDG_CONFIG_HOME"),
            home: path("HOME"),
            default_data_dir: PathBuf::from(DEFAULT_DATA_DIR),
        }
    }

    /// The client config file to read, and whether it was named explicitly.
    fn config_path(&self) -> Option<(PathBuf, bool)> {
        if let Some(path) = &self.config {
            return Some((path.clone(), true));
        }
        let base = match (&self.config_home, &self.home) {
            (Some(config_home), _) => config_home.clone(),
            (None, Some(home)) => home.join(".config"),
            (None, None) => return None,
        };
        Some((base.join("corral").join("client.toml"), false))
    }
}

/// The client config file (`client.toml`).
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientConfig {
    /// Server URL.
    server: Option<String>,
    /// Bearer token.
    token: Option<String>,
    /// File holding the bearer token; relative to the config file's directory.
    token_file: Option<PathBuf>,
    /// PEM file of a CA to trust for an `https://` server; relative to the
    /// config file's directory.
    ca_file: Option<PathBuf>,
}

impl std::fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientConfig")
            .field("server", &self.server)
            .field("token", &redacted(&self.token))
            .field("token_file", &self.token_file)
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

/// What a config file search found.
#[derive(Debug)]
enum ConfigLookup {
    /// No place to look (no `HOME`).
    Nowhere,
    /// The default file does not exist.
    Missing(PathBuf),
    Found(PathBuf, ClientConfig),
}

impl ConfigLookup {
    fn load(env: &Environment) -> anyhow::Result<ConfigLookup> {
        let Some((path, explicit)) = env.config_path() else {
            return Ok(ConfigLookup::Nowhere);
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound && !explicit => {
                return Ok(ConfigLookup::Missing(path));
            }
            Err(err) => {
                return Err(err).with_context(|| format!("reading the client config file {}", path.display()));
            }
        };
        let config: ClientConfig = toml::from_str(&text).with_context(|| {
            format!("reading the client config file {} (fields: server, token, token_file, ca_file)", path.display())
        })?;
        Ok(ConfigLookup::Found(path, config))
    }

    fn config(&self) -> Option<&ClientConfig> {
        match self {
            ConfigLookup::Found(_, config) => Some(config),
            _ => None,
        }
    }

    /// For the "no token found" message.
    fn describe(&self) -> String {
        match self {
            ConfigLookup::Nowhere => "the client config file (HOME is not set)".to_string(),
            ConfigLookup::Missing(path) => format!("{} (not found)", path.display()),
            ConfigLookup::Found(path, _) => format!("{} (has neither token nor token_file)", path.display()),
        }
    }
}

/// The server and token a client command uses.
#[derive(Clone, PartialEq, Eq)]
pub struct Target {
    /// Base URLs without a trailing slash, separated by commas, e.g.
    /// `http://127.0.0.1:8487`.
    pub server: String,
    pub token: String,
    /// Where the token came from, for error messages (never the token).
    pub token_source: String,
    /// CA to trust for an `https://` server, besides the system's roots.
    pub ca_file: Option<PathBuf>,
}

/// The token never shows.
impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("server", &self.server)
            .field("token", &redacted(&Some(String::new())))
            .field("token_source", &self.token_source)
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

impl Connection {
    /// Finds the server and the token; see the module documentation for
    /// the order.
    pub fn resolve(&self, env: &Environment) -> anyhow::Result<Target> {
        let early = self.token_from_flags_or_environment(env)?;
        let https_without_ca = self.ca_file.is_none() && self.server.as_deref().is_some_and(|s| s.contains("https://"));
        let config = if self.server.is_none() || early.is_none() || https_without_ca {
            ConfigLookup::load(env)?
        } else {
            ConfigLookup::Nowhere
        };
        let server = match (&self.server, config.config().and_then(|c| c.server.as_ref())) {
            (Some(server), _) => server.clone(),
            (None, Some(server)) => server.clone(),
            (None, None) => DEFAULT_SERVER.to_string(),
        };
        let server = corral_client::ServerList::parse(&server)?.joined();
        let (token, token_source) = match early {
            Some(found) => found,
            None => token_from_config_or_default(&config, env)?,
        };
        let ca_file = match (&self.ca_file, &config) {
            (Some(file), _) => Some(file.clone()),
            (None, ConfigLookup::Found(path, config)) => config.ca_file.as_ref().map(|file| match path.parent() {
                Some(dir) if file.is_relative() => dir.join(file),
                _ => file.clone(),
            }),
            (None, _) => None,
        };
        Ok(Target { server, token, token_source, ca_file })
    }

    fn token_from_flags_or_environment(&self, env: &Environment) -> anyhow::Result<Option<(String, String)>> {
        if let Some(token) = &self.token {
            let token = token.trim();
            if token.is_empty() {
                bail!("--token is empty");
            }
            return Ok(Some((token.to_string(), "--token".to_string())));
        }
        if let Some(path) = &self.token_file {
            return Ok(Some((read_token(path)?, path.display().to_string())));
        }
        if let Some(dir) = &self.data_dir {
            let path = dir.join(ADMIN_TOKEN_FILE);
            if !path.exists() {
                bail!(
                    "no {ADMIN_TOKEN_FILE} in --data-dir {}: `corral serve --data-dir {}` writes it there on its \
                     first start; give another --data-dir, or --token / --token-file",
                    dir.display(),
                    dir.display()
                );
            }
            return Ok(Some((read_token(&path)?, path.display().to_string())));
        }
        Ok(env.token.clone().map(|token| (token, "CORRAL_TOKEN".to_string())))
    }
}

fn token_from_config_or_default(config: &ConfigLookup, env: &Environment) -> anyhow::Result<(String, String)> {
    if let ConfigLookup::Found(path, config) = config {
        if let Some(token) = config.token.as_deref().map(str::trim).filter(|t| !t.is_empty()) {
            return Ok((token.to_string(), format!("token in {}", path.display())));
        }
        if let Some(file) = &config.token_file {
            let file = match path.parent() {
                Some(dir) if file.is_relative() => dir.join(file),
                _ => file.clone(),
            };
            let token = read_token(&file).with_context(|| format!("following token_file of {}", path.display()))?;
            return Ok((token, file.display().to_string()));
        }
    }
    let path = env.default_data_dir.join(ADMIN_TOKEN_FILE);
    if path.exists() {
        return Ok((read_token(&path)?, path.display().to_string()));
    }
    bail!(
        "no token found; looked at --token, --token-file and --data-dir (none given), CORRAL_TOKEN (not set), {}, \
         and {} (not found). Give --token or --token-file, set CORRAL_TOKEN, put `token` in the config file, or \
         point --data-dir at the data directory of a `corral serve` on this machine",
        config.describe(),
        path.display()
    )
}

fn read_token(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading the token from {}", path.display()))?;
    let token = text.trim();
    if token.is_empty() {
        bail!("the token file {} is empty", path.display());
    }
    Ok(token.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Scratch(PathBuf);

    impl Scratch {
        fn new() -> Scratch {
            let dir = std::env::temp_dir().join(format!("corral-cli-conn-{}", uuid::Uuid::new_v4().simple()));
            std::fs::create_dir_all(&dir).unwrap();
            Scratch(dir)
        }

        fn write(&self, name: &str, text: &str) -> PathBuf {
            let path = self.0.join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, text).unwrap();
            path
        }

        fn env(&self) -> Environment {
            Environment {
                home: Some(self.0.join("home")),
                default_data_dir: self.0.join("corral-data"),
                ..Default::default()
            }
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn flags_beat_the_environment_and_the_environment_beats_the_config_file() {
        let scratch = Scratch::new();
        scratch.write("home/.config/corral/client.toml", "server = \"10.0.0.1:1\"\ntoken = \"from-config\"\n");
        let file = scratch.write("t", "from-file\n");
        let mut env = scratch.env();
        env.token = Some("from-env".to_string());

        let flag = Connection { token: Some("from-flag".into()), ..Default::default() };
        assert_eq!(flag.resolve(&env).unwrap().token, "from-flag");
        assert_eq!(flag.resolve(&env).unwrap().server, "http://10.0.0.1:1");
        let by_file = Connection { token_file: Some(file), ..Default::default() };
        assert_eq!(by_file.resolve(&env).unwrap().token, "from-file");
        let none = Connection::default();
        assert_eq!(none.resolve(&env).unwrap().token, "from-env");
        env.token = None;
        assert_eq!(none.resolve(&env).unwrap().token, "from-config");
        let server = Connection { server: Some("http://h:2/".into()), ..Default::default() };
        assert_eq!(server.resolve(&env).unwrap().server, "http://h:2");
    }

    #[test]
    fn config_token_file_is_relative_to_the_config_file() {
        let scratch = Scratch::new();
        let config = scratch.write("elsewhere/client.toml", "token_file = \"secret\"\n");
        scratch.write("elsewhere/secret", " abc \n");
        let env = Environment { config: Some(config), ..scratch.env() };
        let target = Connection::default().resolve(&env).unwrap();
        assert_eq!(target.token, "abc");
        assert_eq!(target.server, DEFAULT_SERVER);
    }

    #[test]
    fn the_admin_token_of_a_local_server_is_the_last_resort() {
        let scratch = Scratch::new();
        let env = scratch.env();
        let err = format!("{:#}", Connection::default().resolve(&env).unwrap_err());
        assert!(err.contains("no token found") && err.contains("admin.token") && err.contains("client.toml"), "{err}");
        scratch.write("corral-data/admin.token", "admin-token\n");
        assert_eq!(Connection::default().resolve(&env).unwrap().token, "admin-token");
    }

    #[test]
    fn explicit_sources_that_cannot_be_read_are_errors() {
        let scratch = Scratch::new();
        let mut env = scratch.env();
        env.token = Some("from-env".to_string());
        let dir = Connection { data_dir: Some(scratch.0.join("empty")), ..Default::default() };
        assert!(format!("{:#}", dir.resolve(&env).unwrap_err()).contains("no admin.token in --data-dir"));
        let file = Connection { token_file: Some(scratch.0.join("missing")), ..Default::default() };
        assert!(file.resolve(&env).is_err());
        env.config = Some(scratch.0.join("missing.toml"));
        assert!(Connection::default().resolve(&env).is_err());
        let bad = scratch.write("bad.toml", "tokn = \"x\"\n");
        env.config = Some(bad);
        assert!(format!("{:#}", Connection::default().resolve(&env).unwrap_err()).contains("unknown field"));
    }

    #[test]
    fn class9_debug_redacts_client_tokens() {
        let scratch = Scratch::new();
        let config = scratch.write("c.toml", "token = \"config-secret\"\nca_file = \"ca.pem\"\n");
        let env = Environment { config: Some(config), token: Some("env-secret".into()), ..scratch.env() };
        let flags = Connection { token: Some("flag-secret".into()), ..Default::default() };
        let target = flags.resolve(&env).unwrap();
        let lookup = ConfigLookup::load(&env).unwrap();
        let shown = format!("{flags:?} {env:?} {target:?} {lookup:?}");
        for secret in ["config-secret", "env-secret", "flag-secret"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(shown.contains("<redacted>"), "{shown}");
    }

    #[test]
    fn the_ca_file_comes_from_the_flag_else_the_config_file() {
        let scratch = Scratch::new();
        let config =
            scratch.write("dir/client.toml", "server = \"https://h:1\"\ntoken = \"t\"\nca_file = \"ca.pem\"\n");
        let env = Environment { config: Some(config), ..scratch.env() };
        let target = Connection::default().resolve(&env).unwrap();
        assert_eq!(target.server, "https://h:1");
        assert_eq!(target.ca_file, Some(scratch.0.join("dir/ca.pem")));
        let flag = Connection { ca_file: Some("/etc/lab-ca.pem".into()), ..Default::default() };
        assert_eq!(flag.resolve(&env).unwrap().ca_file, Some(PathBuf::from("/etc/lab-ca.pem")));
        let explicit = Connection { server: Some("https://h:2".into()), token: Some("t".into()), ..Default::default() };
        assert_eq!(explicit.resolve(&env).unwrap().ca_file, Some(scratch.0.join("dir/ca.pem")));
    }

    #[test]
    fn server_lists_are_normalized() {
        let env = Scratch::new().env();
        let both =
            Connection { server: Some("a:1, https://b:2/".into()), token: Some("t".into()), ..Default::default() };
        assert_eq!(both.resolve(&env).unwrap().server, "http://a:1,https://b:2");
        let bad = Connection { server: Some("ftp://a".into()), token: Some("t".into()), ..Default::default() };
        assert!(format!("{:#}", bad.resolve(&env).unwrap_err()).contains("must start with http://"));
    }
}
