//! `corral events` against the real `corral serve` binary (on a test
//! database): it prints each change once, keeps following across a
//! `kill -9` and restart of the server (reconnecting with
//! `Last-Event-ID`), and `--count` ends it. Also `corral completions`.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use corral_testkit::CorralServer;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

const CORRAL: &str = env!("CARGO_BIN_EXE_corral");

/// How long one line of `corral events` may take.
const LINE_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the server may take to print its address, and to get ready.
const START: Duration = Duration::from_secs(60);

/// `corral serve` on `db_url` with its data in `data`, listening on
/// `listen` (`127.0.0.1:0`: a port the kernel picks); ready when this
/// returns.
async fn serve(data: &Path, db_url: &str, listen: &str) -> CorralServer {
    let mut command = Command::new(CORRAL);
    command.args(["serve", "--listen", listen, "--database-url", db_url, "--data-dir"]).arg(data);
    let mut server = CorralServer::start(&mut command, None, START).await.expect("corral serve starts");
    server.wait_ready(START).await.expect("corral serve gets ready");
    server
}

/// A client command that must succeed: its standard output.
async fn corral(args: &[&str]) -> String {
    let mut command = tokio::process::Command::new(CORRAL);
    command.args(args).env_remove("CORRAL_URL").env_remove("CORRAL_TOKEN").stdin(Stdio::null()).kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(60), command.output())
        .await
        .unwrap_or_else(|_| panic!("corral {args:?} did not finish"))
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "corral {args:?}: {}\n{stdout}", String::from_utf8_lossy(&output.stderr));
    stdout
}

/// Submits a request that may wait forever; its id.
async fn submit(url: &str, data: &str) -> i64 {
    let args = [
        "request",
        "new",
        "--caps",
        "device_type=none",
        "--allow-unsatisfiable",
        "--json",
        "--server",
        url,
        "--data-dir",
        data,
    ];
    let answer: Value = serde_json::from_str(&corral(&args).await).unwrap();
    answer["id"].as_i64().unwrap()
}

async fn next_line(lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>) -> Value {
    let line = tokio::time::timeout(LINE_TIMEOUT, lines.next_line())
        .await
        .expect("corral events prints the next event in time")
        .unwrap()
        .expect("corral events is still running");
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
}

#[tokio::test]
async fn corral_events_follows_across_a_server_restart_without_gaps_or_repeats() {
    let db = corral_testkit::test_database().await;
    let dir = corral_testkit::temp_dir("cli-events");
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let data_arg = data.to_str().unwrap().to_string();
    let mut server = serve(&data, &db.url, "127.0.0.1:0").await;
    let url = server.url().to_string();

    let mut follower = tokio::process::Command::new(CORRAL)
        .args(["events", "--json", "--ids", "--server", &url, "--data-dir", &data_arg, "--idle-timeout", "5s"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(follower.stdout.take().unwrap()).lines();
    // Wait until it follows: a request submitted after it connected is
    // printed (earlier ones are not: it starts from now).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let first = 'following: loop {
        assert!(tokio::time::Instant::now() < deadline, "corral events did not start following");
        let id = submit(&url, &data_arg).await;
        while let Ok(Ok(Some(line))) = tokio::time::timeout(Duration::from_secs(2), lines.next_line()).await {
            let line: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
            if line["event"]["request"] == id {
                break 'following line;
            }
        }
    };
    assert_eq!(first["event"]["type"], "request.state");
    assert_eq!(first["event"]["to"], "waiting");
    assert!(first["id"].as_str().is_some_and(|id| id.contains('-')), "{first}");

    // The server dies and comes back; changes are made as soon as it is up.
    // The same address, which `corral events` was given: the kernel picked
    // the port at the first start, and binding it again is a plain restart.
    server.kill();
    let server = serve(&data, &db.url, &server.listen()).await;
    assert_eq!(server.url(), url);
    let after_restart = [submit(&url, &data_arg).await, submit(&url, &data_arg).await];
    let mut printed = Vec::new();
    for _ in 0..2 {
        printed.push(next_line(&mut lines).await);
    }
    let requests: Vec<Value> = printed.iter().map(|l| l["event"]["request"].clone()).collect();
    assert_eq!(requests, vec![Value::from(after_restart[0]), Value::from(after_restart[1])], "{printed:#?}");
    // Nothing else was printed in between or after (a repeat of the first
    // request would show here before this marker).
    let marker = submit(&url, &data_arg).await;
    assert_eq!(next_line(&mut lines).await["event"]["request"], marker);
    follower.kill().await.unwrap();
    let mut stderr = String::new();
    follower.stderr.take().unwrap().read_to_string(&mut stderr).await.unwrap();
    assert!(stderr.contains("reconnecting"), "it said it reconnected: {stderr}");

    // From the start of the history, for people, ending after --count.
    let text = corral(&["events", "--after", "0-0", "--count", "2", "--server", &url, "--data-dir", &data_arg]).await;
    let text_lines: Vec<&str> = text.lines().collect();
    assert_eq!(text_lines.len(), 2, "{text}");
    assert!(text_lines[0].contains("request ") && text_lines[0].contains("(new) -> waiting by user:"), "{text}");
    drop(server);
}

#[tokio::test]
async fn completions_name_the_subcommands_for_each_shell() {
    for shell in ["bash", "zsh", "fish"] {
        let script = corral(&["completions", shell]).await;
        assert!(!script.trim().is_empty(), "{shell}");
        for subcommand in ["request", "events", "completions"] {
            assert!(script.contains(subcommand), "{shell} completions name {subcommand}");
        }
    }
    let mut refused = tokio::process::Command::new(CORRAL);
    let output = refused.args(["completions", "tcsh"]).output().await.unwrap();
    assert!(!output.status.success(), "an unknown shell is refused");
}
