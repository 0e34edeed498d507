//! `corral request acquire ID [--wait DUR] [--ssh]`: wait for the lease to
//! start, then print the access details or log in.
//!
//! The wait is a bounded series of `POST .../acquire?wait=...` long polls
//! (5 s each with `--ssh`, 30 s otherwise, always within the server's
//! `max_wait`). Between polls the command asks `GET .../explain` why the
//! request still waits and shows that next to a spinner on standard error
//! (a line per change when standard error is not a terminal).

use std::future::Future;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::pin::pin;
use std::time::{Duration, Instant, SystemTime};

use clap::Args;
use corral_client::Client;
use corral_core::{RequestId, RequestState};
use corral_proto::requests::{AccessDetails, Explanation};

use super::output;
use super::ssh::{self, SshOptions};
use super::{CommonArgs, block_on, parse_duration};

/// How long `--ssh` waits for the lease when `--wait` is not given.
const DEFAULT_SSH_WAIT: Duration = Duration::from_secs(600);

/// One long poll with `--ssh`: short, so the progress line stays fresh.
const SSH_POLL: Duration = Duration::from_secs(5);

/// One long poll otherwise.
const PLAIN_POLL: Duration = Duration::from_secs(30);

/// Longest progress line: it must not wrap, or redrawing it in place fails.
const PROGRESS_WIDTH: usize = 79;

/// Least time between two polls, for a server that answers at once.
const MIN_POLL: Duration = Duration::from_secs(1);

#[derive(Args, Debug)]
pub struct AcquireArgs {
    /// Request id.
    id: RequestId,
    /// Wait up to this long for the lease to start, e.g. 30s [default: 0, with --ssh 10m].
    #[arg(long, visible_alias = "timeout", value_name = "DURATION", value_parser = parse_duration)]
    wait: Option<Duration>,
    /// Then open an interactive SSH session with the lease key and the pinned host key.
    #[arg(long)]
    ssh: bool,
    /// With --ssh: connect even though the server knows no host key to pin.
    #[arg(long, requires = "ssh")]
    insecure_host_key: bool,
    /// With --ssh: private key for a request that brought its own public key.
    #[arg(long, value_name = "FILE", requires = "ssh")]
    identity: Option<PathBuf>,
    /// With --ssh: the ssh program.
    #[arg(long, value_name = "PROGRAM", env = "CORRAL_SSH", default_value = "ssh")]
    ssh_program: String,
    /// Write the lease's private key to ./corral-lease-ID.key (mode 0600), the file
    /// the printed ssh command uses.
    #[arg(long, conflicts_with = "ssh")]
    save_key: bool,
    /// With --ssh: remote command to run instead of a login shell (after --).
    #[arg(last = true, value_name = "COMMAND", requires = "ssh")]
    remote: Vec<String>,
    #[command(flatten)]
    common: CommonArgs,
}

pub fn run(args: AcquireArgs) -> anyhow::Result<()> {
    let patience = args.wait.unwrap_or(if args.ssh { DEFAULT_SSH_WAIT } else { Duration::ZERO });
    let terminal = std::io::stderr().is_terminal();
    let (poll, mode) = match (args.ssh, terminal) {
        (true, true) => (SSH_POLL, ProgressMode::Spinner),
        (true, false) => (SSH_POLL, ProgressMode::Lines),
        (false, true) if !patience.is_zero() => (PLAIN_POLL, ProgressMode::Spinner),
        (false, _) => (PLAIN_POLL, ProgressMode::Quiet),
    };
    let mut progress = Progress::new(args.id, mode);
    let details = block_on(async {
        let client = args.common.client()?;
        wait_for_lease(&client, args.id, patience, poll, &mut progress).await
    })?;
    if !args.ssh {
        return print_access(&args, &details);
    }
    let options = SshOptions {
        program: args.ssh_program.clone(),
        insecure_host_key: args.insecure_host_key,
        identity: args.identity.clone(),
        remote: args.remote.clone(),
    };
    let command = ssh::command(&details, &options)?;
    eprintln!(
        "corral: request {}: logging in to {}@{} port {}; the lease ends at {} (`corral request prolong {}` extends it)",
        details.request_id,
        details.username,
        details.host,
        details.port,
        output::time_and_distance(details.expires_at, SystemTime::now()),
        details.request_id
    );
    ssh::exec(command)
}

/// Polls until the lease starts (the access details), the request ends
/// (the server's conflict), or `patience` runs out.
async fn wait_for_lease(
    client: &Client,
    id: RequestId,
    patience: Duration,
    poll: Duration,
    progress: &mut Progress,
) -> anyhow::Result<AccessDetails> {
    let started = Instant::now();
    if progress.mode != ProgressMode::Quiet && !patience.is_zero() {
        // Show where the request stands from the start; acquire reports any error.
        if let Ok(explanation) = progress.during(client.explain(id)).await
            && explanation.state == RequestState::Waiting
        {
            progress.explained(&explanation);
        }
    }
    let result = loop {
        let wait = patience.saturating_sub(started.elapsed()).min(poll);
        let polled_at = Instant::now();
        let err = match progress.during(client.acquire(id, wait)).await {
            Ok(details) => break Ok(details),
            Err(err) if err.is_conflict() && !patience.is_zero() => err,
            Err(err) => break Err(err.into()),
        };
        let explanation = match progress.during(client.explain(id)).await {
            Ok(explanation) => explanation,
            Err(explain_err) => break Err(explain_err.into()),
        };
        if explanation.state.is_terminal() {
            break Err(err.into());
        }
        if started.elapsed() >= patience {
            break Err(anyhow::anyhow!(
                "request {id} is still waiting after {}: {} (`corral request explain {id}` tells more)",
                output::duration(patience),
                explanation.summary
            ));
        }
        progress.explained(&explanation);
        let spent = polled_at.elapsed();
        if spent < MIN_POLL {
            progress.during(tokio::time::sleep(MIN_POLL - spent)).await;
        }
    };
    progress.finish();
    result
}

fn print_access(args: &AcquireArgs, details: &AccessDetails) -> anyhow::Result<()> {
    let key_note = match (&details.private_key, args.save_key) {
        (None, _) => "none from the server: log in with the key whose public half the request brought".to_string(),
        (Some(key), true) => {
            let file = PathBuf::from(format!("corral-lease-{}.key", details.request_id));
            ssh::write_secret(&file, key)?;
            format!("saved to {}", file.display())
        }
        (Some(_), false) => format!(
            "not shown: --save-key writes corral-lease-{}.key for the command below, --json prints it, --ssh logs in",
            details.request_id
        ),
    };
    if args.common.json {
        return output::json(details);
    }
    let known_hosts = match &details.host_key {
        Some(key) => format!("{} {key}", ssh::known_hosts_pattern(&details.host, details.port)),
        None => "- (the server knows no host key for this worker)".to_string(),
    };
    output::emit(&output::fields(&[
        ("request", details.request_id.to_string()),
        ("worker", details.worker.to_string()),
        ("host", details.host.clone()),
        ("port", details.port.to_string()),
        ("username", details.username.clone()),
        ("expires_at", output::time_and_distance(details.expires_at, SystemTime::now())),
        ("known_hosts", known_hosts),
        ("private_key", key_note),
        ("ssh_command", details.ssh_command.clone()),
    ]))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProgressMode {
    /// Print nothing.
    Quiet,
    /// A spinner line, redrawn in place (standard error is a terminal).
    Spinner,
    /// A line whenever the explanation changes.
    Lines,
}

/// The waiting indicator on standard error.
#[derive(Debug)]
struct Progress {
    request: RequestId,
    mode: ProgressMode,
    started: Instant,
    frame: usize,
    status: String,
    drawn: bool,
}

impl Progress {
    fn new(request: RequestId, mode: ProgressMode) -> Progress {
        Progress {
            request,
            mode,
            started: Instant::now(),
            frame: 0,
            status: "(asking the server why)".to_string(),
            drawn: false,
        }
    }

    /// Runs `work`, keeping the spinner turning meanwhile.
    async fn during<F: Future>(&mut self, work: F) -> F::Output {
        if self.mode != ProgressMode::Spinner {
            return work.await;
        }
        let mut work = pin!(work);
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tokio::select! {
                out = &mut work => return out,
                _ = tick.tick() => self.draw(),
            }
        }
    }

    fn explained(&mut self, explanation: &Explanation) {
        if self.mode == ProgressMode::Lines && explanation.summary != self.status {
            eprintln!("corral: request {} waits: {}", self.request, explanation.summary);
        }
        self.status = explanation.summary.clone();
    }

    fn draw(&mut self) {
        const SPINNER: [char; 4] = ['|', '/', '-', '\\'];
        self.frame = (self.frame + 1) % SPINNER.len();
        let elapsed = self.started.elapsed().as_secs();
        let line = format!(
            "{} {}:{:02} request {} waits: {}",
            SPINNER[self.frame],
            elapsed / 60,
            elapsed % 60,
            self.request,
            self.status
        );
        let line = fit(&line, PROGRESS_WIDTH);
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r\x1b[2K{line}");
        let _ = err.flush();
        self.drawn = true;
    }

    fn finish(&mut self) {
        if self.drawn {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K");
            let _ = err.flush();
            self.drawn = false;
        }
    }
}

/// `text` cut to `width` characters, with `...` when cut.
fn fit(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_string();
    }
    let mut cut: String = text.chars().take(width.saturating_sub(3)).collect();
    cut.push_str("...");
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_lines_fit() {
        assert_eq!(fit("short", 79), "short");
        let long = "x".repeat(100);
        assert_eq!(fit(&long, 79).chars().count(), 79);
        assert!(fit(&long, 79).ends_with("..."));
    }
}
