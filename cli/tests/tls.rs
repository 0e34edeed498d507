//! The real binaries over TLS (issue 13, class 8): `corral serve` with
//! `tls_cert`/`tls_key` signed by a lab CA made here (rcgen), a real
//! `corral agent --simulate` given that CA with `--ca-file`, and the CLI,
//! which trusts the server only when given the CA (`--ca-file` or
//! `CORRAL_CA_FILE`).
//!
//! Every child process is killed when the test ends; every wait is bounded.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use corral_testkit::{CorralServer, Process, TempDir};

const CORRAL: &str = env!("CARGO_BIN_EXE_corral");

/// A scratch directory with the lab CA, the server's certificate and key,
/// and the server's data directory.
struct Lab {
    dir: TempDir,
}

impl Lab {
    fn new() -> Lab {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

        let scratch = corral_testkit::temp_dir("cli-tls");
        let dir = scratch.path();
        std::fs::create_dir_all(dir.join("data")).unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(DnType::CommonName, "corral test lab CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let key = KeyPair::generate().unwrap();
        let params = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
        let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
        std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
        Lab { dir: scratch }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_str().unwrap().to_string()
    }

    /// `corral ARGS` without the user's CORRAL_URL, CORRAL_TOKEN and
    /// CORRAL_CA_FILE.
    fn corral(args: &[&str]) -> Command {
        let mut command = Command::new(CORRAL);
        command.args(args).env_remove("CORRAL_URL").env_remove("CORRAL_TOKEN").env_remove("CORRAL_CA_FILE");
        command
    }

    /// Runs the CLI in a clean environment (no config file, no token but
    /// the flags), with `extra` environment variables.
    async fn cli(&self, args: &[&str], extra: &[(&str, &str)]) -> Output {
        let mut command = tokio::process::Command::new(CORRAL);
        command
            .args(args)
            .current_dir(self.dir.path())
            .env("HOME", self.dir.path().join("home"))
            .env_remove("CORRAL_URL")
            .env_remove("CORRAL_TOKEN")
            .env_remove("CORRAL_CONFIG")
            .env_remove("CORRAL_CA_FILE")
            .env_remove("XDG_CONFIG_HOME")
            .envs(extra.iter().copied())
            .stdin(Stdio::null())
            .kill_on_drop(true);
        match tokio::time::timeout(Duration::from_secs(60), command.output()).await {
            Ok(output) => output.unwrap(),
            Err(_) => panic!("corral {args:?} did not finish within 60 s"),
        }
    }
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

#[tokio::test]
async fn class8_tls_real_server_agent_and_cli_with_the_lab_ca() {
    let db = corral_testkit::test_database().await;
    let lab = Lab::new();
    let config = format!(
        "listen = \"127.0.0.1:0\"\ndatabase_url = {:?}\ndata_dir = {:?}\ntls_cert = {:?}\ntls_key = {:?}\n",
        db.url,
        lab.path("data"),
        lab.path("cert.pem"),
        lab.path("key.pem"),
    );
    std::fs::write(lab.dir.path().join("corral.toml"), config).unwrap();
    let (config, ca, data) = (lab.path("corral.toml"), lab.path("ca.pem"), lab.path("data"));
    let start = Duration::from_secs(60);
    let server = CorralServer::start(&mut Lab::corral(&["serve", "--config", &config]), None, start)
        .await
        .expect("corral serve starts");
    // Port 0 of the configuration file: the printed URL names the port
    // the kernel picked, with the https scheme.
    let url = server.url().to_string();
    assert!(url.starts_with("https://127.0.0.1:") && server.addr().port() != 0, "{url}");
    let list = ["worker", "list", "--json", "--server", &url, "--data-dir", &data];
    let with_ca: Vec<&str> = list.iter().copied().chain(["--ca-file", &ca]).collect();
    corral_testkit::wait_until("the server answers over https", Duration::from_secs(60), || async {
        lab.cli(&with_ca, &[]).await.status.success().then_some(())
    })
    .await;

    // The agent registers over https, trusting the lab CA.
    let token = Path::new(&data).join("agent.token");
    let token = token.to_str().unwrap();
    let agent = ["agent", "--simulate", "1", "--server", &url, "--token-file", token, "--name", "tls-host"];
    let agent = Process::spawn("corral agent", &mut Lab::corral(&[&agent[..], &["--ca-file", &ca]].concat()), None)
        .expect("corral agent starts");
    corral_testkit::wait_until("the agent registers over https", Duration::from_secs(30), || async {
        let output = lab.cli(&with_ca, &[]).await;
        let list: serde_json::Value = serde_json::from_slice(&output.stdout).ok()?;
        (list["items"].as_array()?.len() == 1).then_some(())
    })
    .await;

    // CORRAL_CA_FILE does what --ca-file does.
    let by_env = lab.cli(&list, &[("CORRAL_CA_FILE", &ca)]).await;
    assert!(by_env.status.success(), "{}", text(&by_env));

    // Without the CA: the handshake fails, with a message that says so.
    let refused = lab.cli(&list, &[]).await;
    assert!(!refused.status.success(), "{}", text(&refused));
    assert!(text(&refused).contains("certificate"), "{}", text(&refused));
    drop((agent, server));
}
