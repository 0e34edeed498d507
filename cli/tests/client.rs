//! End-to-end test of the client commands: the real `corral serve` (on a
//! fresh test database), a real `corral agent --simulate 2`, and the
//! `corral` CLI driven as a user would drive it, token discovery included.
//!
//! Every child process is killed when the test ends, also when it fails;
//! every wait is bounded.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use corral_testkit::{CorralServer, Process, TempDir};
use serde_json::Value;

const CORRAL: &str = env!("CARGO_BIN_EXE_corral");

/// How long one CLI invocation may take.
const CLI_TIMEOUT: Duration = Duration::from_secs(60);

/// `corral ARGS` in the background, without the user's CORRAL_URL and
/// CORRAL_TOKEN.
fn corral(args: &[&str]) -> Command {
    let mut command = Command::new(CORRAL);
    command.args(args).env_remove("CORRAL_URL").env_remove("CORRAL_TOKEN");
    command
}

/// The test's directories (data, home, runtime, cwd, empty), removed when
/// it ends.
struct Scratch(TempDir);

impl Scratch {
    fn new() -> Scratch {
        let dir = corral_testkit::temp_dir("cli-test");
        for sub in ["data", "home", "runtime", "cwd", "empty"] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        }
        std::fs::set_permissions(dir.path().join("runtime"), std::fs::Permissions::from_mode(0o700)).unwrap();
        Scratch(dir)
    }

    fn path(&self, sub: &str) -> PathBuf {
        self.0.path().join(sub)
    }
}

/// Runs the CLI with a clean environment: its own HOME (no config file
/// unless the test writes one), XDG_RUNTIME_DIR, and an empty working
/// directory (no ./corral-data).
struct Cli<'a> {
    scratch: &'a Scratch,
}

impl Cli<'_> {
    async fn run<A: AsRef<str>>(&self, args: &[A]) -> Output {
        let args: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
        let mut command = tokio::process::Command::new(CORRAL);
        command
            .args(&args)
            .current_dir(self.scratch.path("cwd"))
            .env("HOME", self.scratch.path("home"))
            .env("XDG_RUNTIME_DIR", self.scratch.path("runtime"))
            .env_remove("CORRAL_URL")
            .env_remove("CORRAL_TOKEN")
            .env_remove("CORRAL_CONFIG")
            .env_remove("CORRAL_SSH")
            .env_remove("XDG_CONFIG_HOME")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        match tokio::time::timeout(CLI_TIMEOUT, command.output()).await {
            Ok(output) => output.unwrap_or_else(|e| panic!("running corral {args:?}: {e}")),
            Err(_) => panic!("corral {args:?} did not finish within {CLI_TIMEOUT:?}"),
        }
    }

    /// Runs a command that must succeed; returns its standard output.
    async fn ok<A: AsRef<str>>(&self, args: &[A]) -> String {
        let output = self.run(args).await;
        let args: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
        let (stdout, stderr) = texts(&output);
        assert!(output.status.success(), "corral {args:?} failed ({}):\n{stderr}\n{stdout}", output.status);
        stdout
    }

    async fn json<A: AsRef<str>>(&self, args: &[A]) -> Value {
        let stdout = self.ok(args).await;
        let args: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("corral {args:?} printed no JSON ({e}):\n{stdout}"))
    }

    /// Runs a command that must fail; returns its standard error.
    async fn fails<A: AsRef<str>>(&self, args: &[A]) -> String {
        let output = self.run(args).await;
        let args: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
        let (stdout, stderr) = texts(&output);
        assert!(!output.status.success(), "corral {args:?} succeeded:\n{stdout}");
        assert_eq!(output.status.code(), Some(1), "corral {args:?}: {stderr}");
        stderr
    }
}

fn texts(output: &Output) -> (String, String) {
    (String::from_utf8_lossy(&output.stdout).into_owned(), String::from_utf8_lossy(&output.stderr).into_owned())
}

fn items(list: &Value) -> &Vec<Value> {
    list["items"].as_array().unwrap_or_else(|| panic!("no items in {list}"))
}

fn text<'v>(value: &'v Value, field: &str) -> &'v str {
    value[field].as_str().unwrap_or_else(|| panic!("no string {field} in {value}"))
}

#[tokio::test]
async fn the_cli_drives_a_real_server_and_agent() {
    let db = corral_testkit::test_database().await;
    let scratch = Scratch::new();
    let data = scratch.path("data");
    let data_dir = data.to_str().unwrap().to_string();
    let serve = ["serve", "--listen", "127.0.0.1:0", "--data-dir", &data_dir, "--database-url", &db.url];
    let start = Duration::from_secs(60);
    let mut server = CorralServer::start(&mut corral(&serve), None, start).await.expect("corral serve starts");
    server.wait_ready(start).await.expect("corral serve gets ready");
    let url = server.url().to_string();
    let agent_token = data.join("agent.token");
    let agent = Process::spawn(
        "corral agent",
        &mut corral(&[
            "agent",
            "--simulate",
            "2",
            "--server",
            &url,
            "--token-file",
            agent_token.to_str().unwrap(),
            "--caps",
            "device_type=x",
            "--name",
            "cli-host",
        ]),
        None,
    )
    .expect("corral agent starts");

    let cli = Cli { scratch: &scratch };
    let admin = |args: &[&str]| -> Vec<String> {
        args.iter()
            .map(|a| a.to_string())
            .chain(["--server".into(), url.clone(), "--data-dir".into(), data_dir.clone()])
            .collect()
    };

    // The admin finds its token in the server's data directory.
    let workers = corral_testkit::wait_until("the agent registers 2 workers", Duration::from_secs(30), || async {
        let list = cli.json(&admin(&["worker", "list", "--json"])).await;
        let found: Vec<String> = items(&list).iter().map(|w| text(w, "uuid").to_string()).collect();
        (found.len() == 2).then_some(found)
    })
    .await;
    for uuid in &workers {
        let shown = cli.ok(&admin(&["worker", "idle", uuid, "--reason", "cli test"])).await;
        assert!(shown.starts_with("uuid:") && shown.contains(uuid.as_str()), "{shown}");
    }
    corral_testkit::wait_until("both workers are idle", Duration::from_secs(30), || async {
        let list = cli.json(&admin(&["worker", "list", "--state", "idle", "--json"])).await;
        (items(&list).len() == 2).then_some(())
    })
    .await;
    let table = cli.ok(&admin(&["worker", "list", "--cap", "device_type=x"])).await;
    assert!(table.starts_with("UUID") && table.matches("cli-host").count() == 2, "{table}");

    // Users.
    let alice = cli.json(&admin(&["user", "add", "alice", "--json"])).await;
    let token = text(&alice, "token").to_string();
    assert_eq!(text(&alice, "name"), "alice");
    let bob = cli.ok(&admin(&["user", "add", "bob", "--group", "lab-a"])).await;
    assert!(bob.contains("shown this once") && bob.contains("lab-a"), "{bob}");
    let users = cli.ok(&admin(&["user", "list"])).await;
    assert!(users.contains("alice") && users.contains("bob"), "{users}");
    cli.ok(&admin(&["user", "remove", "bob"])).await;
    assert!(!cli.ok(&admin(&["user", "list"])).await.contains("bob"));

    // Alice's request, from submission to close.
    let as_alice = |args: &[&str]| -> Vec<String> {
        args.iter()
            .map(|a| a.to_string())
            .chain(["--server".into(), url.clone(), "--token".into(), token.clone()])
            .collect()
    };
    let request = cli.json(&as_alice(&["request", "new", "--caps", "device_type=x", "--lease", "1h", "--json"])).await;
    let id = request["id"].as_i64().unwrap_or_else(|| panic!("no id in {request}"));
    let id_text = id.to_string();
    assert_eq!(text(&request, "owner"), "alice");
    let shown = cli.ok(&as_alice(&["request", "show", &id_text])).await;
    assert!(shown.starts_with("id:") && shown.lines().next().unwrap().ends_with(&id_text), "{shown}");

    let access = cli.json(&as_alice(&["request", "acquire", &id_text, "--wait", "10s", "--json"])).await;
    assert_eq!(access["request_id"].as_i64(), Some(id));
    assert!(workers.iter().any(|w| w == text(&access, "worker")), "{access}");
    assert_eq!(text(&access, "host"), "127.0.0.1");
    assert_eq!(text(&access, "username"), "lab");
    let tunnel_port = access["port"].as_u64().unwrap_or_else(|| panic!("no port in {access}"));
    assert!(tunnel_port > 0);
    assert!(text(&access, "private_key").contains("BEGIN OPENSSH PRIVATE KEY"), "{access}");
    assert!(access["host_key"].is_null(), "simulated workers have no host key: {access}");
    let details = cli.ok(&as_alice(&["request", "acquire", &id_text])).await;
    assert!(details.contains("not shown") && details.contains("port:"), "{details}");
    assert!(!details.contains("PRIVATE KEY"), "the text output must not print the key: {details}");

    // --ssh: no host key to pin, so it refuses unless told; then it becomes
    // the ssh program (here `echo`, which prints the command line).
    let refused = cli.fails(&as_alice(&["request", "acquire", &id_text, "--ssh"])).await;
    assert!(refused.contains("--insecure-host-key"), "{refused}");
    let mut ssh_args =
        as_alice(&["request", "acquire", &id_text, "--ssh", "--insecure-host-key", "--ssh-program", "echo"]);
    ssh_args.extend(["--", "uname", "-a"].map(String::from));
    let line = cli.ok(&ssh_args).await;
    let words: Vec<&str> = line.split_whitespace().collect();
    let expected_port = tunnel_port.to_string();
    assert!(words.windows(2).any(|w| w == ["-p", expected_port.as_str()]), "{line}");
    assert!(words.ends_with(&["--", "lab@127.0.0.1", "uname", "-a"]), "{line}");
    let key_file =
        words.windows(2).find(|w| w[0] == "-i").map(|w| PathBuf::from(w[1])).unwrap_or_else(|| panic!("{line}"));
    assert!(key_file.starts_with(scratch.path("runtime")), "{line}");
    let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "key file mode");
    assert!(std::fs::read_to_string(&key_file).unwrap().contains("BEGIN OPENSSH PRIVATE KEY"));

    let prolonged = cli.ok(&as_alice(&["request", "prolong", &id_text, "--by", "30m"])).await;
    assert!(prolonged.contains("the lease now ends at"), "{prolonged}");
    let explained = cli.ok(&as_alice(&["request", "explain", &id_text])).await;
    assert!(explained.contains("in_progress") && explained.contains("not waiting"), "{explained}");
    let history = cli.ok(&as_alice(&["request", "history", &id_text])).await;
    assert!(history.contains("in_progress"), "{history}");
    let closed = cli.ok(&as_alice(&["request", "close", &id_text])).await;
    assert_eq!(closed.trim(), format!("request {id} is done"));
    assert!(!key_file.exists(), "close removes the lease's key files");
    let list = cli.json(&as_alice(&["request", "list", "--json"])).await;
    let listed = items(&list).iter().find(|r| r["id"].as_i64() == Some(id)).unwrap_or_else(|| panic!("{list}"));
    assert_eq!(text(listed, "state"), "done");

    // Errors: the server's message, a non-zero exit.
    let again = cli.fails(&as_alice(&["request", "close", &id_text])).await;
    assert!(again.contains("corral: conflict: ") && again.contains(&id_text), "{again}");
    let forbidden = cli.fails(&as_alice(&["user", "list"])).await;
    assert!(forbidden.contains("forbidden"), "{forbidden}");

    // A request no worker can serve: explain says why, a bounded acquire
    // gives up, close cancels it.
    let hopeless = cli
        .json(&as_alice(&[
            "request",
            "new",
            "--caps",
            "device_type=nope",
            "--allow-unsatisfiable",
            "--priority",
            "3",
            "--json",
        ]))
        .await;
    let hopeless_id = hopeless["id"].as_i64().unwrap().to_string();
    let explained = cli.ok(&as_alice(&["request", "explain", &hopeless_id])).await;
    assert!(explained.contains("waiting") && explained.contains("no registered worker"), "{explained}");
    let gave_up = cli.fails(&as_alice(&["request", "acquire", &hopeless_id, "--wait", "2s"])).await;
    assert!(gave_up.contains("still waiting after 2s"), "{gave_up}");
    let updated = cli.json(&as_alice(&["request", "update", &hopeless_id, "--priority", "5", "--json"])).await;
    assert_eq!(updated["priority"].as_i64(), Some(5));
    let waiting = cli.ok(&as_alice(&["request", "list", "--state", "waiting"])).await;
    assert!(waiting.starts_with("ID") && waiting.contains("device_type=nope"), "{waiting}");
    assert_eq!(
        cli.ok(&as_alice(&["request", "close", &hopeless_id])).await.trim(),
        format!("request {hopeless_id} is cancelled")
    );

    // Token discovery: a config file; an empty data directory; nothing at all.
    let config_dir = scratch.path("home").join(".config").join("corral");
    std::fs::create_dir_all(&config_dir).unwrap();
    std::fs::write(config_dir.join("client.toml"), format!("server = \"{url}\"\ntoken = \"{token}\"\n")).unwrap();
    let from_config = cli.json(&["request", "list", "--json"]).await;
    assert_eq!(items(&from_config).len(), 2, "{from_config}");
    std::fs::remove_file(config_dir.join("client.toml")).unwrap();
    let empty = scratch.path("empty");
    let no_admin = cli.fails(&["request", "list", "--server", &url, "--data-dir", empty.to_str().unwrap()]).await;
    assert!(no_admin.contains("no admin.token in --data-dir"), "{no_admin}");
    let nothing = cli.fails(&["request", "list", "--server", &url]).await;
    assert!(nothing.contains("no token found") && nothing.contains("CORRAL_TOKEN"), "{nothing}");
    let wrong = cli.fails(&["request", "list", "--server", &url, "--token", "not-a-token"]).await;
    assert!(wrong.contains("unauthorized"), "{wrong}");

    // Admin actions on a worker.
    let target = &workers[1];
    let grouped = cli.json(&admin(&["worker", "groups", target, "lab-a", "lab-b", "--json"])).await;
    assert_eq!(grouped["groups"], serde_json::json!(["lab-a", "lab-b"]));
    let cleared = cli.json(&admin(&["worker", "groups", target, "--clear", "--json"])).await;
    assert_eq!(cleared["groups"], serde_json::json!([]));
    cli.ok(&admin(&["worker", "maintenance", target, "--reason", "cli test"])).await;
    corral_testkit::wait_until("the worker reaches maintenance", Duration::from_secs(30), || async {
        let shown = cli.json(&admin(&["worker", "show", target, "--json"])).await;
        (text(&shown, "state") == "maintenance").then_some(())
    })
    .await;
    // Issue 16: a power cycle on demand; its outcome lands in the history.
    let cycled = cli.ok(&admin(&["worker", "power-cycle", target])).await;
    assert!(cycled.contains("power cycle of worker") && cycled.contains("asked"), "{cycled}");
    corral_testkit::wait_until("the power cycle is done", Duration::from_secs(30), || async {
        let history = cli.ok(&admin(&["worker", "history", target])).await;
        history.contains("power cycle asked by user:admin: done").then_some(())
    })
    .await;
    let shown = cli.ok(&admin(&["worker", "show", target])).await;
    assert!(shown.contains("power_cycle") && shown.contains("available"), "{shown}");
    // Issue 13: an admin hands a worker over to an agent user.
    let handed =
        cli.json(&admin(&["worker", "hand-over", target, "--principal", "agent", "--agent", "host-x", "--json"])).await;
    assert_eq!(text(&handed, "agent"), "host-x", "{handed}");
    // Issue 16: a note on the worker, shown and cleared; the audit log
    // lists every admin action above, newest first.
    let held = cli.json(&admin(&["worker", "quarantine", target, "--reason", "bad relay", "--json"])).await;
    assert_eq!(text(&held, "quarantine"), "bad relay", "{held}");
    let listed = cli.ok(&admin(&["worker", "list", "--hold", "quarantine"])).await;
    assert!(listed.contains(target.as_str()) && listed.contains("quarantine"), "{listed}");
    let lifted = cli.json(&admin(&["worker", "quarantine", target, "--clear", "--json"])).await;
    assert!(lifted["quarantine"].is_null(), "{lifted}");
    let noted = cli.json(&admin(&["worker", "note", target, "flaky USB", "--json"])).await;
    assert_eq!(text(&noted, "note"), "flaky USB", "{noted}");
    let shown = cli.ok(&admin(&["worker", "show", target])).await;
    assert!(shown.contains("flaky USB") && shown.contains("user:admin"), "{shown}");
    let unnoted = cli.json(&admin(&["worker", "note", target, "--clear", "--json"])).await;
    assert!(unnoted["note"].is_null(), "{unnoted}");
    let gone = cli.ok(&admin(&["worker", "deregister", target])).await;
    assert!(gone.contains("deregistered"), "{gone}");
    let audit = cli.json(&admin(&["audit", "--json"])).await;
    let actions: Vec<&str> = audit["items"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(
        actions[..7],
        [
            "worker.deregister",
            "worker.note",
            "worker.note",
            "worker.unquarantine",
            "worker.quarantine",
            "worker.hand_over",
            "worker.power_cycle"
        ],
        "{audit}"
    );
    let table = cli.ok(&admin(&["audit", "--limit", "2"])).await;
    assert!(table.contains("worker.deregister") && table.contains("127.0.0.1"), "{table}");
    let missing = cli.fails(&admin(&["worker", "show", target])).await;
    assert!(missing.contains("not_found"), "{missing}");

    assert_no_leftover_files(&scratch.path("cwd"));
    drop((agent, server));
}

/// The CLI writes nothing into the working directory unless asked to.
fn assert_no_leftover_files(dir: &Path) {
    let entries: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(entries.is_empty(), "files left in the working directory: {entries:?}");
}
