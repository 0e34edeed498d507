//! The web dashboard at `/`, in a real headless Chromium driven through
//! WebDriver (`corral_testkit::browser`), against a real server with
//! simulated agents; and the API it reads besides the resources
//! (`/v1/me`, `/v1/queue`, `/v1/leases`) and its static files.
//!
//! The browser tests fail, naming what is missing, when chromium or
//! chromedriver is not installed (`scripts/test` installs both). They
//! leave screenshots of the workers page and of the queue in
//! `<target dir>/dashboard-screenshots/`.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use awc::http::StatusCode;
use common::{TestServer, caps, wait_for_request, wait_for_worker};
use corral_actors::Clock;
use corral_core::WorkerId;
use corral_testkit::browser::{Browser, Client, Locator};
use serde_json::{Value, json};

/// How long the page may take to show what a test waits for (sign-in,
/// the first rows); the live-update bound is separate and much shorter.
const PAGE_TIMEOUT: Duration = Duration::from_secs(15);

/// The bound of the issue: a change shows within a second.
const LIVE_BOUND: Duration = Duration::from_secs(1);

fn screenshot_dir() -> PathBuf {
    corral_testkit::target_dir().join("dashboard-screenshots")
}

async fn js(browser: &Client, script: &str) -> Value {
    browser.execute(script, vec![]).await.unwrap_or_else(|e| panic!("running {script:?} in the page: {e}"))
}

/// Runs `script` in the page every 20 ms until it returns something other
/// than null or false; that value. Panics after `timeout` saying `what`.
async fn wait_js(browser: &Client, what: &str, timeout: Duration, script: &str) -> Value {
    let started = Instant::now();
    loop {
        let value = js(browser, script).await;
        if !value.is_null() && value != json!(false) {
            return value;
        }
        if started.elapsed() > timeout {
            let text = js(browser, "return document.body.innerText").await;
            panic!("{what}: not within {timeout:?}; the page shows:\n{}", text.as_str().unwrap_or(""));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Clicks the element `css`; finds it again (at most 5 times) when the page
/// drew it anew between finding and clicking (a stale element).
async fn click(browser: &Client, css: &str) {
    let mut last = String::new();
    for _ in 0..5 {
        let element = browser.find(Locator::Css(css)).await.unwrap_or_else(|e| panic!("no {css} on the page: {e}"));
        match element.click().await {
            Ok(()) => return,
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("clicking {css}: {last}");
}

async fn type_into(browser: &Client, css: &str, text: &str) {
    let input = browser.find(Locator::Css(css)).await.unwrap_or_else(|e| panic!("no {css} on the page: {e}"));
    input.clear().await.unwrap_or_else(|e| panic!("clearing {css}: {e}"));
    input.send_keys(text).await.unwrap_or_else(|e| panic!("typing into {css}: {e}"));
}

async fn screenshot(browser: &Client, name: &str) {
    let png = browser.screenshot().await.unwrap_or_else(|e| panic!("screenshot {name}: {e}"));
    assert!(png.starts_with(b"\x89PNG"), "a screenshot is a PNG");
    let dir = screenshot_dir();
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    let path = dir.join(name);
    std::fs::write(&path, png).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

/// Opens the dashboard and signs in with `token` through the form.
async fn sign_in(browser: &Client, url: &str, token: &str) {
    browser.goto(&format!("{url}/")).await.expect("opening the dashboard");
    wait_js(browser, "the sign-in form shows", PAGE_TIMEOUT, "return !document.getElementById('sign-in').hidden").await;
    type_into(browser, "#token", token).await;
    click(browser, "#sign-in-form button[type=submit]").await;
}

/// The uuids of the rows the workers table shows, once it shows `n`.
async fn rows_once(browser: &Client, n: usize) -> Vec<String> {
    let script = format!(
        "const rows = [...document.querySelectorAll('#workers-body tr[data-uuid]')].map(r => r.dataset.uuid);
         return rows.length === {n} ? rows : null;"
    );
    let rows = wait_js(browser, &format!("the workers table shows {n} rows"), PAGE_TIMEOUT, &script).await;
    let mut uuids: Vec<String> = serde_json::from_value(rows).expect("uuids");
    uuids.sort();
    uuids
}

async fn page_state(browser: &Client, worker: WorkerId) -> Value {
    js(browser, &format!("const r = document.getElementById('worker-{worker}'); return r ? r.dataset.state : null"))
        .await
}

#[actix_rt::test]
async fn an_admin_signs_in_sees_changes_live_and_acts_from_the_page() {
    let server = TestServer::start(Clock::System).await;
    let admin = server.admin();
    let agent = server.agent("bench-a", 3, &caps(&[("device_type", "rpi4")]));
    let workers = agent.uuids.clone();
    server.make_idle(&workers).await;
    // A lease (the holder column), and a request that waits (the queue).
    let ann = server.api(&server.user("ann", &[]).await);
    let leased = ann.submit(json!({"caps": {"device_type": "rpi4"}})).await;
    let lease = wait_for_request(&ann, leased, |r| r["state"] == "in_progress").await;
    let held: WorkerId = lease["worker"].as_str().unwrap().parse().unwrap();
    let waiting = ann.submit(json!({"caps": {"device_type": "nano"}, "allow_unsatisfiable": true})).await;
    let free: Vec<WorkerId> = workers.iter().copied().filter(|w| *w != held).collect();

    let browser = Browser::start(1400, 900).await.expect("headless Chromium through chromedriver");
    let page = &browser.client;
    sign_in(page, &server.url, &server.admin).await;
    let mut expected: Vec<String> = workers.iter().map(ToString::to_string).collect();
    expected.sort();
    assert_eq!(rows_once(page, 3).await, expected, "the admin sees every worker");
    let url = page.current_url().await.expect("url");
    assert!(!url.as_str().contains(&server.admin), "the token never goes in a URL: {url}");
    assert_eq!(js(page, "return sessionStorage.getItem('corral.token')").await, json!(server.admin));
    assert_eq!(js(page, "return localStorage.length").await, json!(0), "nothing is kept beyond the tab");
    wait_js(
        page,
        "the event stream is live",
        PAGE_TIMEOUT,
        "return document.getElementById('live').dataset.state === 'live'",
    )
    .await;
    let holder = format!("ann · #{leased}");
    wait_js(
        page,
        "the holder shows",
        PAGE_TIMEOUT,
        &format!("return document.getElementById('worker-{held}').innerText.includes('{holder}')"),
    )
    .await;
    assert_eq!(js(page, "return !!document.querySelector('nav a[href=\"#users\"]')").await, json!(true));

    // A change made through the API shows within a second, without a reload.
    js(page, "window.corralMarker = 42; return null").await;
    let target = free[0];
    assert_eq!(page_state(page, target).await, json!("idle"));
    let (status, body) =
        admin.put(&format!("/v1/workers/{target}/state"), json!({"state": "maintenance", "reason": "api"})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let changed = Instant::now();
    let shown = wait_js(
        page,
        "the worker's new state shows",
        LIVE_BOUND,
        &format!("const r = document.getElementById('worker-{target}'); return r && r.dataset.state !== 'idle' ? r.dataset.state : null"),
    )
    .await;
    let took = changed.elapsed();
    assert!(took <= LIVE_BOUND, "shown after {took:?}");
    assert!(shown == json!("busy") || shown == json!("maintenance"), "shown as {shown}");
    assert_eq!(js(page, "return window.corralMarker").await, json!(42), "the page was not reloaded");
    wait_for_worker(&admin, target, |w| w["state"] == "maintenance").await;
    wait_js(
        page,
        "maintenance shows",
        PAGE_TIMEOUT,
        &format!("return document.getElementById('worker-{target}').dataset.state === 'maintenance'"),
    )
    .await;
    screenshot(page, "workers.png").await;

    // An admin action from the page: idle from the worker's details.
    click(page, &format!("#worker-{target} button.link")).await;
    wait_js(page, "the worker dialog opens", PAGE_TIMEOUT, "return document.getElementById('worker-dialog').open")
        .await;
    wait_js(
        page,
        "its history shows",
        PAGE_TIMEOUT,
        "return document.querySelectorAll('#worker-dialog .history tbody tr').length > 0",
    )
    .await;
    screenshot(page, "worker-details.png").await;
    click(page, "#idle-submit").await;
    wait_for_worker(&admin, target, |w| w["state"] == "idle").await;
    wait_js(
        page,
        "idle shows",
        PAGE_TIMEOUT,
        &format!("return document.getElementById('worker-{target}').dataset.state === 'idle'"),
    )
    .await;
    // Maintenance with a reason, from the page.
    type_into(page, "#maintenance-reason", "firmware update").await;
    click(page, "#maintenance-submit").await;
    let worker = wait_for_worker(&admin, target, |w| w["state"] == "maintenance").await;
    assert_eq!(worker["reason"], "firmware update", "{worker}");
    // Groups, from the page.
    type_into(page, "#groups-input", "lab, night").await;
    click(page, "#groups-submit").await;
    wait_for_worker(&admin, target, |w| w["groups"] == json!(["lab", "night"])).await;
    click(page, "#worker-dialog button.close").await;

    // The queue: position, explain on click.
    click(page, "nav a[href=\"#queue\"]").await;
    wait_js(
        page,
        "the queue shows the waiting request",
        PAGE_TIMEOUT,
        &format!("return !!document.querySelector('#queue-body tr[data-request=\"{waiting}\"]')"),
    )
    .await;
    let row =
        js(page, &format!("return document.querySelector('#queue-body tr[data-request=\"{waiting}\"]').innerText"))
            .await;
    assert!(row.as_str().unwrap().starts_with('1'), "position 1: {row}");
    click(page, &format!("button[data-explain=\"{waiting}\"]")).await;
    let explained = wait_js(
        page,
        "the explanation shows",
        PAGE_TIMEOUT,
        &format!("const e = document.querySelector('#explain-{waiting} .summary-line'); return e ? e.innerText : null"),
    )
    .await;
    assert!(explained.as_str().unwrap().contains("no registered worker"), "{explained}");
    let explain_row = js(page, &format!("return document.getElementById('explain-{waiting}').innerText")).await;
    assert!(!explain_row.as_str().unwrap().contains("null"), "nothing shows as null: {explain_row}");
    screenshot(page, "queue.png").await;

    // Close from "my requests": the admin's own request.
    let mine = admin.submit(json!({"caps": {"device_type": "nano"}, "allow_unsatisfiable": true})).await;
    click(page, "nav a[href=\"#requests\"]").await;
    wait_js(
        page,
        "the admin's request shows",
        PAGE_TIMEOUT,
        &format!("return !!document.querySelector('button[data-close=\"{mine}\"]')"),
    )
    .await;
    let others =
        js(page, &format!("return !!document.querySelector('#requests-body tr[data-request=\"{leased}\"]')")).await;
    assert_eq!(others, json!(false), "my requests are only mine");
    click(page, &format!("button[data-close=\"{mine}\"]")).await;
    wait_for_request(&admin, mine, |r| r["state"] == "cancelled").await;
    browser.stop().await;
}

#[actix_rt::test]
async fn a_user_sees_only_their_groups_workers_and_no_admin_action() {
    let server = TestServer::start(Clock::System).await;
    let admin = server.admin();
    let lab = server.agent("lab-host", 2, &caps(&[("device_type", "rpi4")]));
    let other = server.agent("other-host", 2, &caps(&[("device_type", "rpi4")]));
    for (workers, group) in [(&lab.uuids, "lab"), (&other.uuids, "secret")] {
        for worker in workers {
            wait_for_worker(&admin, *worker, |w| w["state"].is_string()).await;
            let (status, body) = admin.put(&format!("/v1/workers/{worker}/groups"), json!([group])).await;
            assert_eq!(status, StatusCode::OK, "{body}");
        }
    }
    let bob = server.user("bob", &["lab"]).await;

    let browser = Browser::start(1200, 800).await.expect("headless Chromium through chromedriver");
    let page = &browser.client;
    // A wrong token is refused on the sign-in page and not kept.
    sign_in(page, &server.url, "not-a-token").await;
    wait_js(
        page,
        "the refusal shows",
        PAGE_TIMEOUT,
        "return document.getElementById('sign-in-error').innerText.includes('refused')",
    )
    .await;
    assert_eq!(js(page, "return sessionStorage.getItem('corral.token')").await, Value::Null);

    type_into(page, "#token", &bob).await;
    click(page, "#sign-in-form button[type=submit]").await;
    let mut expected: Vec<String> = lab.uuids.iter().map(ToString::to_string).collect();
    expected.sort();
    assert_eq!(rows_once(page, 2).await, expected, "bob sees the lab's workers only");
    let text = js(page, "return document.body.innerText + document.body.innerHTML").await;
    for hidden in &other.uuids {
        assert!(!text.as_str().unwrap().contains(&hidden.to_string()), "worker {hidden} outside bob's groups shows");
    }
    assert_eq!(
        js(page, "return !!document.querySelector('nav a[href=\"#users\"]')").await,
        json!(false),
        "no users page"
    );
    // Keyboard and labels: every field has a label; a worker's details open
    // with Enter on its button and close with Escape, giving focus back.
    let unlabelled = js(
        page,
        "return [...document.querySelectorAll('input, select')]
           .filter(e => e.type !== 'hidden' && e.labels.length === 0 && !e.getAttribute('aria-label'))
           .map(e => e.id)",
    )
    .await;
    assert_eq!(unlabelled, json!([]), "fields without a label");
    let worker = lab.uuids[0];
    js(page, &format!("document.querySelector('#worker-{worker} button.link').focus(); return null")).await;
    page.active_element().await.expect("focused").send_keys("\u{E007}").await.expect("Enter");
    wait_js(
        page,
        "Enter opens the worker dialog",
        PAGE_TIMEOUT,
        "return document.getElementById('worker-dialog').open",
    )
    .await;
    page.active_element().await.expect("focused").send_keys("\u{E00C}").await.expect("Escape");
    wait_js(
        page,
        "Escape closes the dialog and focus is back on the worker's button",
        PAGE_TIMEOUT,
        &format!(
            "const a = document.activeElement; return !document.getElementById('worker-dialog').open
               && !!a.closest('tr') && a.closest('tr').dataset.uuid === '{worker}'"
        ),
    )
    .await;
    click(page, &format!("#worker-{worker} button.link")).await;
    wait_js(page, "the worker dialog opens", PAGE_TIMEOUT, "return document.getElementById('worker-dialog').open")
        .await;
    let admin_controls = js(
        page,
        "return document.querySelectorAll('#maintenance-submit, #idle-submit, #groups-submit, .admin').length",
    )
    .await;
    assert_eq!(admin_controls, json!(0), "a plain user gets no admin action");
    let dialog = js(page, "return document.getElementById('worker-dialog').innerText").await;
    assert!(!dialog.as_str().unwrap().contains("null"), "nothing shows as null: {dialog}");
    click(page, "#worker-dialog button.close").await;

    // A worker moved into bob's group appears without a reload.
    let moved = other.uuids[0];
    let (status, body) = admin.put(&format!("/v1/workers/{moved}/groups"), json!(["lab"])).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    wait_js(
        page,
        "the moved worker appears",
        PAGE_TIMEOUT,
        &format!("return !!document.getElementById('worker-{moved}')"),
    )
    .await;

    // Sign-out forgets the token.
    click(page, "#sign-out").await;
    wait_js(page, "the sign-in form shows again", PAGE_TIMEOUT, "return !document.getElementById('sign-in').hidden")
        .await;
    assert_eq!(js(page, "return sessionStorage.getItem('corral.token')").await, Value::Null);
    assert_eq!(js(page, "return document.querySelectorAll('#workers-body tr').length").await, json!(0));
    browser.stop().await;
}

#[actix_rt::test]
async fn the_dashboard_files_are_served_without_a_token_with_their_types() {
    let server = TestServer::start(Clock::System).await;
    let http = awc::Client::default();
    for (path, content_type) in [
        ("/", "text/html; charset=utf-8"),
        ("/dashboard/app.js", "text/javascript; charset=utf-8"),
        ("/dashboard/events.js", "text/javascript; charset=utf-8"),
        ("/dashboard/style.css", "text/css; charset=utf-8"),
        ("/dashboard/icon.svg", "image/svg+xml"),
    ] {
        let mut response = http.get(format!("{}{path}", server.url)).send().await.expect(path);
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        assert_eq!(response.headers().get("content-type").unwrap(), content_type, "{path}");
        let csp = response.headers().get("content-security-policy").expect("a CSP").to_str().unwrap().to_string();
        assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"), "{csp}");
        assert!(!response.body().await.unwrap().is_empty(), "{path} has a body");
    }
    let response = http.head(format!("{}/", server.url)).send().await.expect("HEAD /");
    assert_eq!(response.status(), StatusCode::OK);
    // Anything else under /dashboard is the JSON 404 of unknown paths.
    let (status, body) = server.anonymous().get("/dashboard/nothing.js").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    // POST to the page is not a route.
    let (status, body) = server.anonymous().post("/", json!({})).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{body}");
}

#[actix_rt::test]
async fn me_names_the_caller_and_refuses_agents_and_strangers() {
    let server = TestServer::start(Clock::System).await;
    let (status, me) = server.admin().get("/v1/me").await;
    assert_eq!(status, StatusCode::OK, "{me}");
    assert_eq!((me["admin"].clone(), me["role"].clone()), (json!(true), json!("admin")), "{me}");
    let carol = server.api(&server.user("carol", &["lab", "night"]).await);
    let (status, me) = carol.get("/v1/me").await;
    assert_eq!(status, StatusCode::OK, "{me}");
    assert_eq!(me, json!({"name": "carol", "admin": false, "role": "user", "groups": ["lab", "night"]}));
    let (status, body) = server.api(&server.agent_token).get("/v1/me").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "an agent token is not a person: {body}");
    let (status, body) = server.anonymous().get("/v1/me").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let (status, body) = carol.get("/v1/me?x=1").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "an unknown parameter is refused: {body}");
}

#[actix_rt::test]
async fn the_queue_lists_waiting_requests_in_matching_order_with_positions() {
    let server = TestServer::start(Clock::System).await;
    let ann = server.api(&server.user("ann", &[]).await);
    let bob = server.api(&server.user("bob", &[]).await);
    let unsatisfiable =
        |priority: u8| json!({"caps": {"device_type": "nano"}, "priority": priority, "allow_unsatisfiable": true});
    // Matching order: priority, then submission.
    let a8 = ann.submit(unsatisfiable(8)).await;
    let b2 = bob.submit(unsatisfiable(2)).await;
    let a2 = ann.submit(unsatisfiable(2)).await;
    let b16 = bob.submit(unsatisfiable(16)).await;
    let closed = ann.submit(unsatisfiable(1)).await;
    let (status, body) = ann.post_empty(&format!("/v1/requests/{closed}/close")).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let positions = |page: &Value| -> Vec<(i64, i64)> {
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| (r["position"].as_i64().unwrap(), r["id"].as_i64().unwrap()))
            .collect()
    };
    let (status, page) = server.admin().get("/v1/queue").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(positions(&page), vec![(1, b2), (2, a2), (3, a8), (4, b16)], "{page}");
    assert_eq!(page["items"][0]["owner"], "bob");
    // A user gets their own, with their places among everyone's.
    let (status, page) = ann.get("/v1/queue").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(positions(&page), vec![(2, a2), (3, a8)], "{page}");
    // Paging by position.
    let (status, first) = server.admin().get("/v1/queue?limit=3").await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert_eq!(positions(&first), vec![(1, b2), (2, a2), (3, a8)]);
    let cursor = first["next_cursor"].as_str().expect("a next page").to_string();
    let (status, rest) = server.admin().get(&format!("/v1/queue?limit=3&cursor={cursor}")).await;
    assert_eq!(status, StatusCode::OK, "{rest}");
    assert_eq!(positions(&rest), vec![(4, b16)]);
    assert!(rest["next_cursor"].is_null(), "{rest}");
    // Bad input: 400, says why.
    for bad in ["/v1/queue?limit=0", "/v1/queue?cursor=zz", "/v1/queue?state=waiting"] {
        let (status, body) = ann.get(bad).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
    }
}

#[actix_rt::test]
async fn leases_name_their_holder_only_to_the_owner_and_admins() {
    let server = TestServer::start(Clock::System).await;
    let admin = server.admin();
    let lab = server.agent("lab-host", 1, &caps(&[("device_type", "rpi4")]));
    let secret = server.agent("secret-host", 1, &caps(&[("device_type", "jetson")]));
    server.make_idle(&[lab.uuids[0], secret.uuids[0]]).await;
    let (status, body) = admin.put(&format!("/v1/workers/{}/groups", secret.uuids[0]), json!(["secret"])).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let ann = server.api(&server.user("ann", &["secret"]).await);
    let bob = server.api(&server.user("bob", &[]).await);
    let on_lab = ann.submit(json!({"caps": {"device_type": "rpi4"}})).await;
    let on_secret = ann.submit(json!({"caps": {"device_type": "jetson"}})).await;
    for id in [on_lab, on_secret] {
        wait_for_request(&ann, id, |r| r["state"] == "in_progress").await;
    }
    let summary = |leases: &Value| -> Vec<(i64, String, Value)> {
        leases
            .as_array()
            .unwrap()
            .iter()
            .map(|l| (l["request"].as_i64().unwrap(), l["worker"].as_str().unwrap().to_string(), l["owner"].clone()))
            .collect()
    };
    let (lab_worker, secret_worker) = (lab.uuids[0].to_string(), secret.uuids[0].to_string());
    let (status, leases) = admin.get("/v1/leases").await;
    assert_eq!(status, StatusCode::OK, "{leases}");
    assert_eq!(
        summary(&leases),
        vec![(on_lab, lab_worker.clone(), json!("ann")), (on_secret, secret_worker.clone(), json!("ann"))]
    );
    assert!(leases[0]["expires_at"].is_string(), "{leases}");
    let (status, leases) = ann.get("/v1/leases").await;
    assert_eq!(status, StatusCode::OK, "{leases}");
    assert_eq!(
        summary(&leases),
        vec![(on_lab, lab_worker.clone(), json!("ann")), (on_secret, secret_worker, json!("ann"))]
    );
    // bob may see the public worker (not whose lease it is), not the
    // secret one at all.
    let (status, leases) = bob.get("/v1/leases").await;
    assert_eq!(status, StatusCode::OK, "{leases}");
    assert_eq!(summary(&leases), vec![(on_lab, lab_worker, Value::Null)]);
    let (status, body) = bob.get("/v1/leases?limit=5").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}
