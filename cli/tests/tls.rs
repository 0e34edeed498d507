//! The real binaries over TLS (issue 13, class 8): `corral serve` with
//! `tls_cert`/`tls_key` signed by a lab CA made here (rcgen), a real
//! `corral agent --simulate` given that CA with `--ca-file`, and the CLI,
//! which trusts the server only when given the CA (`--ca-file` or
//! `CORRAL_CA_FILE`).
//!
//! Every child process is killed when the test ends; every wait is bounded.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

const CORRAL: &str = env!("CARGO_BIN_EXE_corral");

/// A scratch directory with the lab CA, the server's certificate and key,
/// and the server's data directory; children killed, directory removed.
struct Lab {
    dir: PathBuf,
    children: Vec<Child>,
}

impl Lab {
    fn new() -> Lab {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

        let dir = std::env::temp_dir().join(format!("corral-cli-tls-{}", uuid::Uuid::new_v4().simple()));
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
        Lab { dir, children: Vec::new() }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).to_str().unwrap().to_string()
    }

    fn spawn(&mut self, args: &[&str], log: &str) {
        let out = std::fs::File::create(self.dir.join(log)).unwrap();
        let err = out.try_clone().unwrap();
        let child = Command::new(CORRAL)
            .args(args)
            .env_remove("CORRAL_URL")
            .env_remove("CORRAL_TOKEN")
            .env_remove("CORRAL_CA_FILE")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("starting corral {args:?}: {e}"));
        self.children.push(child);
    }

    /// Runs the CLI in a clean environment (no config file, no token but
    /// the flags), with `extra` environment variables.
    async fn cli(&self, args: &[&str], extra: &[(&str, &str)]) -> Output {
        let mut command = tokio::process::Command::new(CORRAL);
        command
            .args(args)
            .current_dir(&self.dir)
            .env("HOME", self.dir.join("home"))
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

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(name)).unwrap_or_default()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("---- serve ----\n{}\n---- agent ----\n{}", self.log("serve.log"), self.log("agent.log"));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

#[tokio::test]
async fn class8_tls_real_server_agent_and_cli_with_the_lab_ca() {
    let db = corral_testkit::test_database().await;
    let mut lab = Lab::new();
    let port = corral_testkit::free_port();
    let url = format!("https://127.0.0.1:{port}");
    let config = format!(
        "listen = \"127.0.0.1:{port}\"\ndatabase_url = {:?}\ndata_dir = {:?}\ntls_cert = {:?}\ntls_key = {:?}\n",
        db.url,
        lab.path("data"),
        lab.path("cert.pem"),
        lab.path("key.pem"),
    );
    std::fs::write(lab.dir.join("corral.toml"), config).unwrap();
    let (config, ca, data) = (lab.path("corral.toml"), lab.path("ca.pem"), lab.path("data"));
    lab.spawn(&["serve", "--config", &config], "serve.log");
    let list = ["worker", "list", "--json", "--server", &url, "--data-dir", &data];
    let with_ca: Vec<&str> = list.iter().copied().chain(["--ca-file", &ca]).collect();
    corral_testkit::wait_until("the server answers over https", Duration::from_secs(60), || async {
        lab.cli(&with_ca, &[]).await.status.success().then_some(())
    })
    .await;
    assert!(lab.log("serve.log").contains(&format!("corral listening on https://127.0.0.1:{port}")));

    // The agent registers over https, trusting the lab CA.
    let token = Path::new(&data).join("agent.token");
    let token = token.to_str().unwrap();
    let agent = ["agent", "--simulate", "1", "--server", &url, "--token-file", token, "--name", "tls-host"];
    lab.spawn(&[&agent[..], &["--ca-file", &ca]].concat(), "agent.log");
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
}
