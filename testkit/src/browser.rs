//! Headless Chromium driven through WebDriver, for the dashboard's tests and
//! benchmark: [`Browser::start`] runs `chromedriver` on a loopback port it
//! picks and prints (killed when the [`Browser`] is dropped) and opens a session of a
//! headless Chromium with a fixed window size.
//!
//! The binaries are `chromedriver` and `chromium` from the PATH (Debian's
//! `chromium-driver` and `chromium` packages, which `scripts/test`
//! installs), or `CORRAL_CHROMEDRIVER` and `CORRAL_CHROMIUM`. When one is
//! missing, [`Browser::start`] fails with a message naming it: a browser
//! test never passes without a browser.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::process::Process;
pub use fantoccini::{Client, Locator};

/// Environment variable naming the chromedriver binary.
pub const CHROMEDRIVER_ENV: &str = "CORRAL_CHROMEDRIVER";
/// Environment variable naming the Chromium binary.
pub const CHROMIUM_ENV: &str = "CORRAL_CHROMIUM";

/// How long chromedriver may take to answer, and a session to open.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A chromedriver process and one browser session on it.
pub struct Browser {
    pub client: Client,
    /// chromedriver, leading the process group Chromium joins: dropping it
    /// kills both, also when a test fails.
    driver: Process,
}

impl std::fmt::Debug for Browser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Browser").field("driver", &self.driver).finish()
    }
}

/// `name` on the PATH, or the file named by `env`.
fn find_binary(env: &str, names: &[&str], package: &str) -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os(env).filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        if path.is_file() {
            return Ok(path);
        }
        bail!("{env}={} is not a file", path.display());
    }
    let dirs: Vec<PathBuf> = std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default();
    for name in names {
        for dir in dirs.iter().map(PathBuf::as_path).chain([Path::new("/usr/bin"), Path::new("/usr/lib/chromium")]) {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    bail!(
        "{} not found: the dashboard's browser tests need it (install the Debian package {package}, as \
         scripts/test does, or set {env})",
        names.join(" or ")
    )
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session with a window of
    /// `width` x `height` pixels.
    pub async fn start(width: u32, height: u32) -> anyhow::Result<Browser> {
        let chromium = find_binary(CHROMIUM_ENV, &["chromium", "chromium-browser"], "chromium")?;
        let chromedriver = find_binary(CHROMEDRIVER_ENV, &["chromedriver"], "chromium-driver")?;
        // Port 0: chromedriver binds one the kernel picks and says which.
        // Its own process group, which Chromium joins: dropping the
        // Browser kills both, also when a test fails mid-way.
        let mut command = Command::new(&chromedriver);
        command.arg("--port=0").process_group(0);
        let mut driver = Process::spawn("chromedriver", &mut command, None)?;
        let port: u16 = driver
            .wait_for_line("its port (`ChromeDriver was started successfully on port N.`)", START_TIMEOUT, |line| {
                line.split_once("started successfully on port ")?.1.trim_end_matches('.').trim().parse().ok()
            })
            .await?;
        let url = format!("http://127.0.0.1:{port}");
        let capabilities: serde_json::Map<String, serde_json::Value> = serde_json::from_value(serde_json::json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-background-networking",
                    "--disable-dev-shm-usage",
                    "--no-first-run",
                    "--hide-scrollbars",
                    format!("--window-size={width},{height}"),
                ],
            },
        }))
        .context("chromium capabilities")?;
        let started = Instant::now();
        let client = loop {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match fantoccini::ClientBuilder::new(connector).capabilities(capabilities.clone()).connect(&url).await {
                Ok(client) => break client,
                Err(err) => {
                    if let Some(status) = driver.try_wait() {
                        bail!("{} exited at start ({status}): {}", chromedriver.display(), driver.output());
                    }
                    if started.elapsed() > START_TIMEOUT {
                        bail!("no headless Chromium session within {START_TIMEOUT:?}: {err}");
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        Ok(Browser { client, driver })
    }

    /// Ends the session (Chromium exits), then chromedriver.
    pub async fn stop(mut self) {
        let _ = self.client.clone().close().await;
        self.driver.kill();
    }
}
