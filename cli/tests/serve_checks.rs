//! `corral serve --check-config`, and `corral serve` against a database
//! URL it cannot use yet (issue 18): no host reachable, or only read-only
//! standbys. It must say which, keep trying, and not exit.

use std::process::Command;
use std::time::Duration;

use corral_testkit::Process;

fn corral() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_corral"));
    command.env_remove("CORRAL_DATABASE_URL").env("NO_COLOR", "1");
    command
}

#[test]
fn check_config_summarises_a_usable_configuration_and_exits_0() {
    let url = "host=db1,db2,db3 port=5432 user=corral dbname=corral target_session_attrs=read-write";
    let out = corral().args(["serve", "--check-config", "--database-url", url]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("hosts db1:5432,db2:5432,db3:5432, target_session_attrs=read-write"), "{stdout}");
    assert!(stdout.contains("configuration OK"), "{stdout}");
}

#[test]
fn check_config_refuses_bad_input_and_names_the_problem() {
    // Input: several hosts without target_session_attrs=read-write. Must:
    // exit 1 and name the missing setting.
    let out = corral()
        .args(["serve", "--check-config", "--database-url", "host=db1,db2 user=corral dbname=corral"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("target_session_attrs=read-write"), "{stderr}");

    // Input: a config file with an unknown key. Must: exit 1 naming it.
    let dir = corral_testkit::temp_dir("checkconfig");
    let file = dir.path().join("corral.toml");
    std::fs::write(&file, "listen = \"127.0.0.1:8487\"\nsesion_timeout = \"30s\"\n").unwrap();
    let out = corral().args(["serve", "--check-config", "--config"]).arg(&file).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("sesion_timeout"), "{stderr}");

    // Input: tls_cert and tls_key files that do not exist. Must: exit 1
    // naming the file.
    std::fs::write(&file, "tls_cert = \"/nonexistent/cert.pem\"\ntls_key = \"/nonexistent/key.pem\"\n").unwrap();
    let out = corral().args(["serve", "--check-config", "--config"]).arg(&file).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("/nonexistent/cert.pem"), "{stderr}");
}

/// Starts `corral serve` on `url`, waits until it says `expected` twice
/// (it retried), checks it is still running, and kills it.
async fn serve_keeps_retrying_saying(url: &str, expected: &str) {
    let dir = corral_testkit::temp_dir("retry");
    let mut command = corral();
    command.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"]).arg(dir.path()).args(["--database-url", url]);
    let mut serve = Process::spawn("corral serve", &mut command, None).unwrap();
    let mut said = 0;
    serve
        .wait_for_line(&format!("{expected:?} twice"), Duration::from_secs(30), |line| {
            said += usize::from(line.contains(expected));
            (said == 2).then_some(())
        })
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let text = serve.output();
    assert!(serve.try_wait().is_none(), "corral serve keeps running: {text}");
    assert!(!text.contains("panicked") && !text.contains("stack backtrace"), "{text}");
    assert!(!text.contains("corral listening on"), "it listens only once it has a database: {text}");
    serve.kill();
    assert!(!dir.path().join("admin.token").exists(), "nothing was started");
}

#[tokio::test]
async fn serve_on_a_url_with_no_reachable_host_says_so_and_keeps_retrying() {
    // Ports where nothing listens (racy_free_port: should something take
    // one meanwhile, the message differs and the test fails; it cannot
    // pass by the clash).
    let (a, b) = (corral_testkit::racy_free_port(), corral_testkit::racy_free_port());
    let url =
        format!("host=127.0.0.1,127.0.0.1 port={a},{b} user=corral dbname=corral target_session_attrs=read-write");
    serve_keeps_retrying_saying(&url, "no host of the database URL could be reached").await;
}

#[actix_rt::test]
async fn serve_on_a_url_of_standbys_only_says_no_host_accepts_writes_and_keeps_retrying() {
    // The only server is read-only, as a standby reports.
    let test = corral_testkit::test_database().await;
    let url = format!("{} options='-c default_transaction_read_only=on' target_session_attrs=read-write", test.url);
    serve_keeps_retrying_saying(&url, "no host of the database URL accepts writes").await;
}
