//! The server list: one URL, or the URLs of several replicas separated by
//! commas (`--server`, `CORRAL_URL`, a config file's `server`).
//!
//! Only the leading replica serves; a standby answers every call with
//! `503 {"error": "standby"}` before reading it, so a call it refused, or
//! one whose connection failed, never reached a server and goes to the next
//! URL (the rule of the agent's client, `corral_agent::client`). Each URL
//! is tried at most once per call; then the call fails with the last
//! error. The URL that answered is tried first by the next call.

use std::cell::Cell;

use crate::error::SetupError;

/// The URLs of one corral server (its replicas), in the order given.
#[derive(Debug)]
pub struct ServerList {
    urls: Vec<String>,
    /// The URL to try first: the one that last answered.
    current: Cell<usize>,
}

impl ServerList {
    /// Parses `text`: URLs separated by commas; `host:port` means
    /// `http://host:port`; trailing slashes go.
    pub fn parse(text: &str) -> Result<ServerList, SetupError> {
        let urls = text.split(',').map(normalize).collect::<Result<Vec<_>, _>>()?;
        Ok(ServerList { urls, current: Cell::new(0) })
    }

    /// The URLs, normalized.
    pub fn urls(&self) -> &[String] {
        &self.urls
    }

    /// The URLs joined with commas, as the user gives them.
    pub fn joined(&self) -> String {
        self.urls.join(",")
    }

    /// Whether any URL is `https://` (the client then sets up TLS).
    pub fn any_https(&self) -> bool {
        self.urls.iter().any(|u| u.starts_with("https://"))
    }

    /// The indexes of the URLs in the order one call tries them: the last
    /// one that answered, then the others in order, each once.
    pub(crate) fn order(&self) -> impl Iterator<Item = usize> + use<> {
        let n = self.urls.len();
        let first = self.current.get() % n;
        (0..n).map(move |i| (first + i) % n)
    }

    pub(crate) fn url(&self, at: usize) -> &str {
        &self.urls[at]
    }

    /// `at` answered: the next call starts there.
    pub(crate) fn answered(&self, at: usize) {
        self.current.set(at);
    }
}

/// `host:port` becomes `http://host:port`; trailing slashes go.
fn normalize(server: &str) -> Result<String, SetupError> {
    let server = server.trim().trim_end_matches('/');
    if server.is_empty() {
        return Err(SetupError::NoServer);
    }
    if server.starts_with("http://") || server.starts_with("https://") {
        return Ok(server.to_string());
    }
    if server.contains("://") {
        return Err(SetupError::BadScheme(server.to_string()));
    }
    Ok(format!("http://{server}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_urls_are_normalized() {
        let one = |text: &str| ServerList::parse(text).map(|l| l.joined()).map_err(|e| e.to_string());
        assert_eq!(one("127.0.0.1:8487").unwrap(), "http://127.0.0.1:8487");
        assert_eq!(one("http://a:1//").unwrap(), "http://a:1");
        assert_eq!(one("https://a:1/").unwrap(), "https://a:1");
        assert_eq!(one(" a:1 , https://b:2/").unwrap(), "http://a:1,https://b:2");
        assert!(one("ftp://a").unwrap_err().contains("must start with http://"));
        assert!(one(" ").is_err());
        assert!(one("a:1,,b:2").is_err(), "an empty entry in a list is a mistake, not skipped");
    }

    #[test]
    fn each_url_is_tried_once_per_call_starting_with_the_last_that_answered() {
        let list = ServerList::parse("a:1,b:2,c:3").unwrap();
        assert_eq!(list.order().collect::<Vec<_>>(), [0, 1, 2]);
        list.answered(2);
        assert_eq!(list.order().collect::<Vec<_>>(), [2, 0, 1]);
    }
}
