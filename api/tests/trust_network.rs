//! Issue 13, classes 8 and 9 (SPEC §12 "Network", "Secrets"), against the
//! real server: TLS with a lab CA made here (rcgen), secrets that stay out
//! of answers and logs, token files that are never written through links.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use actix_web::ResponseError;
use awc::http::StatusCode;
use common::{TestServer, caps};
use corral_actors::Clock;
use corral_agent::{AgentOptions, ClientTls, Simulated};
use corral_core::{Groups, Role};
use corral_testkit::TempDir;
use serde_json::{Value, json};

/// Every log line of this test process, besides stderr, so that a test can
/// look for secrets in what the server logged. Installed before any server
/// starts (the common module's `try_init` then finds it in place); nextest
/// runs each test in its own process.
fn captured_logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = logs.clone();
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(
                "debug,actix_server=warn,actix_http=info,tokio_postgres=info,rustls=info",
            ))
            .with_ansi(false)
            .with_writer(move || Capture(sink.clone()))
            .try_init();
        logs
    })
    .clone()
}

struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).extend_from_slice(buf);
        std::io::stderr().write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

fn logs_text() -> String {
    String::from_utf8_lossy(&captured_logs().lock().unwrap()).into_owned()
}

/// Writes `text` to the file `name` in `dir`; its path.
fn write(dir: &TempDir, name: &str, text: &str) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// A lab CA and a server certificate it signed for `127.0.0.1` and
/// `localhost`, as PEM files.
struct Pki {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    _dir: TempDir,
}

impl Pki {
    fn new() -> Pki {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

        let dir = corral_testkit::temp_dir("pki");
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(DnType::CommonName, "corral test lab CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let server_key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, "corral test server");
        let server = params.signed_by(&server_key, &ca, &ca_key).unwrap();
        Pki {
            ca: write(&dir, "ca.pem", &ca.pem()),
            cert: write(&dir, "cert.pem", &server.pem()),
            key: write(&dir, "key.pem", &server_key.serialize_pem()),
            _dir: dir,
        }
    }
}

/// GET `url` with `client`: the status and JSON body, or the client's error.
async fn get(client: &awc::Client, url: &str) -> Result<(StatusCode, Value), String> {
    let mut response = client.get(url).send().await.map_err(|e| e.to_string())?;
    let body = response.body().await.map_err(|e| e.to_string())?;
    Ok((response.status(), serde_json::from_slice(&body).unwrap_or(Value::Null)))
}

async fn send(client: &awc::Client, method: awc::http::Method, url: &str, body: Value) -> (StatusCode, Value) {
    let mut response = client.request(method, url).send_json(&body).await.unwrap_or_else(|e| panic!("{url}: {e}"));
    let bytes = response.body().await.unwrap_or_else(|e| panic!("{url}: {e}"));
    (response.status(), serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

/// The server runs with `tls_cert`/`tls_key` of a lab CA. A simulated agent
/// and an admin client given that CA (`ca_file`) register a worker and get a
/// request leased over https; a client trusting only the system's roots
/// fails the handshake; plain http to the TLS port gets no answer.
#[actix_rt::test]
async fn class8_tls_server_agent_and_clients_need_the_lab_ca() {
    captured_logs();
    let pki = Pki::new();
    let (cert, key) = (pki.cert.clone(), pki.key.clone());
    let server = TestServer::start_with(Clock::System, move |config| {
        config.tls_cert = Some(cert);
        config.tls_key = Some(key);
    })
    .await;
    let port = server.url.rsplit(':').next().unwrap().to_string();
    let https = format!("https://127.0.0.1:{port}");
    let trusted = ClientTls::with_ca_file(Some(pki.ca.clone()));
    let admin = trusted.http_client(&https, &server.admin, Duration::from_secs(30)).unwrap();

    // Trusting the lab CA: health over https.
    let (status, _) = get(&admin, &format!("{https}/readyz")).await.expect("https with the lab CA works");
    assert_eq!(status, StatusCode::OK);

    // The agent registers over https with ca_file, and a request is leased.
    let backend = Simulated::new("tls-host", 1, &caps(&[("board", "tls")]), "127.0.0.1:9", "lab");
    let worker = backend.uuids()[0];
    let mut options = AgentOptions::new(https.clone(), server.agent_token.clone());
    options.tls = trusted.clone();
    options.poll_wait = Duration::from_secs(5);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let agent = actix_rt::spawn(async move { corral_agent::run(Rc::new(backend), options, stopped).await });
    let url = format!("{https}/v1/workers/{worker}");
    corral_testkit::wait_until("the agent registers over https", Duration::from_secs(20), || async {
        matches!(get(&admin, &url).await, Ok((StatusCode::OK, _))).then_some(())
    })
    .await;
    let (status, body) = send(&admin, awc::http::Method::PUT, &format!("{url}/state"), json!({"state": "idle"})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let (status, created) =
        send(&admin, awc::http::Method::POST, &format!("{https}/v1/requests"), json!({"caps": {"board": "tls"}})).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let request = format!("{https}/v1/requests/{}", created["id"]);
    let leased = corral_testkit::wait_until("the request is leased over https", Duration::from_secs(20), || async {
        match get(&admin, &request).await {
            Ok((StatusCode::OK, body)) if body["state"] == "in_progress" => Some(body),
            _ => None,
        }
    })
    .await;
    assert_eq!(leased["worker"], json!(worker.to_string()));

    // Without the lab CA: the handshake fails, nothing is answered.
    let untrusting = ClientTls::default().http_client(&https, &server.admin, Duration::from_secs(10)).unwrap();
    let refused = get(&untrusting, &format!("{https}/v1/workers")).await;
    assert!(
        refused.as_ref().is_err_and(|e| e.contains("certificate")),
        "a client without the lab CA must fail the handshake: {refused:?}"
    );

    // Plain http to the TLS port: no HTTP answer.
    let plain = awc::Client::builder().timeout(Duration::from_secs(10)).finish();
    let answered = get(&plain, &format!("http://127.0.0.1:{port}/readyz")).await;
    assert!(answered.is_err(), "plain http to the TLS port must get no answer: {answered:?}");

    let _ = stop.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(10), agent).await;
    server.stop().await;
}

/// Plain HTTP on a wildcard address (beyond loopback): the server still
/// starts, and says loudly in its start-up line that it runs without TLS.
#[actix_rt::test]
async fn class8_plain_http_beyond_loopback_warns_at_start() {
    captured_logs();
    let server = TestServer::start_with(Clock::System, |config| {
        config.listen = "0.0.0.0:0".parse().unwrap();
    })
    .await;
    let logs = logs_text();
    let ready = logs.lines().find(|line| line.contains("corral is ready")).expect("a start-up line");
    assert!(ready.contains("WARN") && ready.contains("WITHOUT TLS") && ready.contains("scheme=http"), "{ready}");
    server.stop().await;
}

/// A `tls_cert` that does not exist, or a `tls_key` that is not a key:
/// the server does not start, and the error names the file.
#[actix_rt::test]
async fn class8_tls_bad_files_stop_the_start_with_the_file_named() {
    captured_logs();
    let pki = Pki::new();
    let db = corral_testkit::test_database().await;
    let mut config = common::test_config(&db.url);
    let missing = pki.cert.with_file_name("missing.pem");
    config.tls_cert = Some(missing.clone());
    config.tls_key = Some(pki.key.clone());
    let err = format!("{:#}", corral_api::serve(config.clone(), Clock::System).await.unwrap_err());
    assert!(err.contains(&missing.display().to_string()), "{err}");

    config.tls_cert = Some(pki.cert.clone());
    config.tls_key = Some(pki.ca.clone());
    let err = format!("{:#}", corral_api::serve(config, Clock::System).await.unwrap_err());
    assert!(err.contains(&pki.ca.display().to_string()) && err.contains("tls_key"), "{err}");
}

/// A uniqueness conflict in PostgreSQL (two users given the same token, so
/// the same `token_hash`): neither the error, nor the 409 answer made from
/// it, nor anything logged holds the row's values (PostgreSQL's `DETAIL`:
/// `Key (token_hash)=(\x...) already exists`); they name the SQLSTATE and
/// the constraint instead.
#[actix_rt::test]
async fn class9_database_error_details_never_reach_clients() {
    captured_logs();
    let server = TestServer::start(Clock::System).await;
    let db = server.corral.db();
    let token = "the-same-token-for-both";
    db.create_user("first", Role::User, &Groups::default(), token).await.unwrap();
    let err = db.create_user("second", Role::User, &Groups::default(), token).await.unwrap_err();
    assert!(matches!(err, corral_db::DbError::Conflict { .. }), "{err:?}");
    let hash = corral_db::hash_token(token).iter().map(|b| format!("{b:02x}")).collect::<String>();

    let shown = format!("{err} {err:?}");
    // The error sent on as the server does: a 409 answer, and a logged cause.
    let answer = corral_api::error::ApiError::from(corral_actors::ActorError::from(err));
    let response = answer.error_response();
    assert_eq!(response.status(), StatusCode::CONFLICT);
    let body = actix_web::body::to_bytes(response.into_body()).await.unwrap();
    let body = String::from_utf8_lossy(&body).into_owned();
    corral_api::error::ApiError::internal(&shown);
    // A 409 through HTTP too: a user created twice.
    let (status, _) = server.admin().post("/v1/users", json!({"name": "first"})).await;
    assert_eq!(status, StatusCode::CONFLICT);

    assert!(shown.contains("23505") && shown.contains("users_token_hash_key"), "{shown}");
    for text in [&shown, &body, &logs_text()] {
        assert!(!text.contains(&hash), "the row's token hash leaked: {text}");
        assert!(!text.contains("Key (") && !text.contains("already exists."), "PostgreSQL's DETAIL leaked: {text}");
    }
    server.stop().await;
}

/// A symbolic link planted where the server keeps a token (`admin.token`,
/// or the `.admin.token.new` it writes first), pointing at another file:
/// the start fails with a message naming the link, and the file it points
/// at is untouched.
#[actix_rt::test]
async fn class9_token_file_symlink_is_refused() {
    captured_logs();
    for planted in ["admin.token", ".admin.token.new"] {
        let db = corral_testkit::test_database().await;
        let config = common::test_config(&db.url);
        let outside = corral_testkit::temp_dir("victim");
        let victim = write(&outside, "victim", "precious\n");
        std::fs::create_dir_all(&config.data_dir).unwrap();
        let link = config.data_dir.join(planted);
        std::os::unix::fs::symlink(&victim, &link).unwrap();

        let err = format!("{:#}", corral_api::serve(config.clone(), Clock::System).await.unwrap_err());
        assert!(err.contains("symbolic link") && err.contains(&link.display().to_string()), "{planted}: {err}");
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n", "{planted}: written through");
        let _ = std::fs::remove_dir_all(&config.data_dir);
    }
}

/// Token files are created mode 0600.
#[actix_rt::test]
async fn class9_token_files_are_private() {
    use std::os::unix::fs::PermissionsExt;

    captured_logs();
    let db = corral_testkit::test_database().await;
    let config = common::test_config(&db.url);
    let data_dir = config.data_dir.clone();
    let server = TestServer::start_on(Clock::System, config, db.url.clone()).await;
    for name in ["admin.token", "agent.token"] {
        let meta = std::fs::symlink_metadata(data_dir.join(name)).unwrap();
        assert!(meta.is_file());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{name}");
    }
    assert!(!Path::new(&data_dir.join(".admin.token.new")).exists());
    server.stop().await;
}
