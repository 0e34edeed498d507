//! `corral`: one binary for the server, the agent, the client commands and
//! the benchmarks. Thin: it parses arguments, builds what the libraries
//! need and calls them.

mod client;

use std::path::PathBuf;
use std::rc::Rc;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use corral_actors::Clock;
use corral_api::Config;

/// mimalloc rather than the system allocator, for the server and the
/// benchmarks alike: the matcher's decisions are bound by memory latency
/// over large hash maps and queues, and with mimalloc they ran 13-18 %
/// faster than with glibc's malloc in interleaved runs on the benchmark
/// machine (see bench/results/2026-11-22-matcher-memory.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(name = "corral", version, about = "Scheduler and lease service for device test labs")]
struct Cli {
    /// Log format: plain or json.
    #[arg(long, global = true, env = "CORRAL_LOG_FORMAT")]
    log_format: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the server (embedded PostgreSQL unless a database URL is given).
    Serve(ServeArgs),
    /// Run an agent for a hardware host (--config) or N simulated workers (--simulate).
    Agent(AgentArgs),
    /// Submit and manage requests.
    #[command(subcommand)]
    Request(client::RequestCommand),
    /// Inspect and administer workers.
    #[command(subcommand)]
    Worker(client::WorkerCommand),
    /// Manage users (admin).
    #[command(subcommand)]
    User(client::UserCommand),
    /// Follow the changes you may see (requests, workers) as they happen;
    /// reconnects by itself without missing any.
    Events(client::EventsArgs),
    /// Print a shell completion script: `corral completions bash > /etc/bash_completion.d/corral`.
    Completions(CompletionsArgs),
    /// The audit log of admin actions, newest first (admin).
    Audit(client::AuditArgs),
    /// Run a benchmark scenario: matcher, lifecycle, heartbeats, scale, chaos, restart, events,
    /// dashboard.
    Bench(corral_bench::Bench),
}

#[derive(Args, Debug)]
struct ServeArgs {
    /// TOML configuration file.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Address to listen on (default 127.0.0.1:8487).
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// Data directory (embedded database, first-start tokens); default ./corral-data.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// External PostgreSQL URL instead of the embedded cluster; for a
    /// Patroni cluster name every node: `host=a,b,c port=5432
    /// target_session_attrs=read-write ...`.
    #[arg(long, env = "CORRAL_DATABASE_URL")]
    database_url: Option<String>,
    /// Check the configuration (file, flags, TLS files, database URL) and
    /// exit: 0 and a summary when it is usable, 1 and what is wrong when
    /// not. Starts nothing.
    #[arg(long)]
    check_config: bool,
}

#[derive(Args, Debug)]
struct AgentArgs {
    /// Agent configuration file (TOML) for a hardware host.
    #[arg(long, conflicts_with = "simulate")]
    config: Option<PathBuf>,
    /// Run N simulated workers whose preparation succeeds at once.
    #[arg(long, value_name = "N")]
    simulate: Option<usize>,
    /// Server URL, e.g. http://127.0.0.1:8487.
    #[arg(long, env = "CORRAL_URL")]
    server: Option<String>,
    /// File holding the agent token (default ./corral-data/agent.token).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// PEM file of a CA to trust for an https:// server, besides the system's
    /// roots (with --config: instead of the file's `ca_file`).
    #[arg(long, value_name = "FILE", env = "CORRAL_CA_FILE")]
    ca_file: Option<PathBuf>,
    /// Caps of each simulated worker, key=value (repeatable).
    #[arg(long = "caps", value_name = "KEY=VALUE", num_args = 1..)]
    caps: Vec<String>,
    /// SSH address simulated leases tunnel to.
    #[arg(long, default_value = "127.0.0.1:22")]
    ssh_addr: String,
    /// Lab user of simulated workers.
    #[arg(long, default_value = "lab")]
    user: String,
    /// Agent name of simulated workers (default: this host's name); also
    /// seeds their UUIDs, so a restarted agent registers the same workers.
    #[arg(long)]
    name: Option<String>,
    /// Faults simulated workers play, e.g.
    /// `fail=prepare:3,lose=start_lease,slow=maintenance:5s,fail-every=10,no-heartbeats`.
    #[arg(long, value_name = "SPEC", requires = "simulate")]
    faults: Option<String>,
}

#[derive(Args, Debug)]
struct CompletionsArgs {
    /// The shell: bash, zsh or fish.
    shell: CompletionShell,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum CompletionShell {
    Bash,
    Zsh,
    Fish,
}

fn init_logs(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,actix_server=warn,actix_web=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() {
    let cli = Cli::parse();
    if let Err(err) = run(cli) {
        eprintln!("corral: {}", client::describe_error(&err));
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => {
            let mut config = match &args.config {
                Some(path) => Config::load(path)?,
                None => Config::default(),
            };
            if let Some(listen) = args.listen {
                config.listen = listen;
            }
            if let Some(dir) = args.data_dir {
                config.data_dir = dir;
            }
            if let Some(url) = args.database_url.filter(|u| !u.is_empty()) {
                config.database_url = Some(url);
            }
            if args.check_config {
                for line in corral_api::check_config(&config)? {
                    println!("{line}");
                }
                println!("configuration OK");
                return Ok(());
            }
            init_logs(cli.log_format.as_deref().unwrap_or(&config.log_format));
            config.settings()?;
            actix_rt::System::new().block_on(async move {
                // `corral listening on URL` is printed by serve once bound.
                let running = corral_api::serve(config, Clock::System).await?;
                if !running.tls && !running.addr.ip().is_loopback() {
                    eprintln!(
                        "corral: WARNING: no TLS on a non-loopback address: tokens and keys cross the network in clear"
                    );
                }
                running.wait().await
            })
        }
        Command::Agent(args) => {
            init_logs(cli.log_format.as_deref().unwrap_or("plain"));
            run_agent(args)
        }
        Command::Request(command) => client::request(command),
        Command::Worker(command) => client::worker(command),
        Command::User(command) => client::user(command),
        Command::Events(args) => client::events(args),
        Command::Completions(args) => {
            use clap::CommandFactory;
            let shell = match args.shell {
                CompletionShell::Bash => clap_complete::Shell::Bash,
                CompletionShell::Zsh => clap_complete::Shell::Zsh,
                CompletionShell::Fish => clap_complete::Shell::Fish,
            };
            clap_complete::generate(shell, &mut Cli::command(), "corral", &mut std::io::stdout());
            Ok(())
        }
        Command::Audit(args) => client::audit(args),
        Command::Bench(args) => {
            init_logs(cli.log_format.as_deref().unwrap_or("plain"));
            corral_bench::run(args)
        }
    }
}

fn run_agent(args: AgentArgs) -> anyhow::Result<()> {
    /// Runs the agent until SIGINT or SIGTERM, then closes its session.
    fn run_until_stopped<B: corral_agent::Backend + 'static>(
        backend: B,
        options: corral_agent::AgentOptions,
    ) -> anyhow::Result<()> {
        actix_rt::System::new().block_on(async move {
            let (stop, stopped) = tokio::sync::watch::channel(false);
            let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .context("listening for SIGTERM")?;
            actix_rt::spawn(async move {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = terminate.recv() => {}
                }
                let _ = stop.send(true);
            });
            corral_agent::run(Rc::new(backend), options, stopped).await?;
            Ok(())
        })
    }

    if let Some(path) = &args.config {
        if args.token_file.is_some() || !args.caps.is_empty() || args.name.is_some() {
            bail!("--token-file, --caps and --name go with --simulate; with --config the file says them");
        }
        let config = corral_agent::AgentConfig::load(path)?;
        if let Some(server) = args.server.as_deref().filter(|s| s.trim_end_matches('/') != config.server) {
            let why = "--server/CORRAL_URL ignored: the config file names the server";
            tracing::warn!(ignored = %server, server = %config.server, "{why}");
        }
        let token = config.token.read(path)?;
        let workers = config.workers.len();
        let (agent, server) = (&config.name, &config.server);
        tracing::info!(config = %path.display(), agent = %agent, workers, server = %server, "agent starting");
        let mut options = corral_agent::AgentOptions::new(config.server.clone(), token);
        options.tls = corral_agent::ClientTls::with_ca_file(args.ca_file.or_else(|| config.ca_file.clone()));
        let host = corral_agent::Host::new(&config)?;
        return run_until_stopped(host, options);
    }
    let Some(count) = args.simulate else {
        bail!("give --config FILE for a hardware host, or --simulate N for simulated workers");
    };
    let server = args.server.unwrap_or_else(|| "http://127.0.0.1:8487".to_string());
    let token_file = args.token_file.unwrap_or_else(|| PathBuf::from("./corral-data/agent.token"));
    let token = std::fs::read_to_string(&token_file)
        .with_context(|| format!("reading the agent token from {}", token_file.display()))?
        .trim()
        .to_string();
    let caps = corral_agent::simulated::parse_caps(&args.caps)?;
    let name = args.name.unwrap_or_else(corral_agent::config::host_name);
    let faults = corral_agent::SimFaults::parse(args.faults.as_deref().unwrap_or(""))?;
    let backend = corral_agent::Simulated::new(&name, count, &caps, &args.ssh_addr, &args.user).with_faults(faults);
    let mut options = corral_agent::AgentOptions::new(server, token);
    options.tls = corral_agent::ClientTls::with_ca_file(args.ca_file);
    run_until_stopped(backend, options)
}
