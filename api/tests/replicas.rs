//! Two server replicas on one database: exactly one leads scheduling; the
//! other waits and takes over when the leader stops; a deposed leader's
//! bindings are refused by the database.

mod common;

use std::time::{Duration, SystemTime};

use common::{TestServer, caps, sql, test_config, wait_for_request};
use corral_actors::Clock;
use corral_core::RequestId;
use corral_db::BindOutcome;
use serde_json::json;

#[actix_rt::test]
async fn a_standby_takes_over_when_the_leader_stops_and_a_deposed_leader_binds_nothing() {
    let first = TestServer::start(Clock::System).await;
    let agent = first.agent("host-r", 1, &caps(&[("device_type", "x")]));
    first.make_idle(&agent.uuids).await;
    let nina_token = first.user("nina", &[]).await;
    let nina = first.api(&nina_token);
    let held = nina.submit(json!({"caps": {"device_type": "x"}})).await;
    wait_for_request(&nina, held, |r| r["state"] == "in_progress").await;
    let waiting = nina.submit(json!({"caps": {"device_type": "x"}})).await;

    // The second replica waits while the first leads; on a port the
    // kernel picks (test_config listens on 127.0.0.1:0).
    let config = test_config(&first.db_url);
    let data_dir = config.data_dir.clone();
    let standby = actix_rt::spawn(corral_api::serve(config, Clock::System));
    // The standby heartbeats its own session only after a try to lead
    // failed: once it has, it has seen the leader and is waiting. Its
    // session is named `HOST/ADDRESS` after the address it has bound (and
    // answers on as a standby): that is how this test, running it in
    // process, learns its URL.
    let db_sql = sql(&first.db_url).await;
    let mut waited = 0;
    let standby_name: String = loop {
        let row = db_sql
            .query_opt(
                "SELECT name FROM sessions WHERE component = 'server' AND id <> $1 \
                 AND deadline > created_at + timeout_ms * interval '1 millisecond'",
                &[&first.corral.shared().leader.0],
            )
            .await
            .unwrap();
        if let Some(row) = row {
            break row.get(0);
        }
        waited += 1;
        assert!(waited < 200, "the standby never tried to lead");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let standby_addr: std::net::SocketAddr = standby_name
        .rsplit_once('/')
        .and_then(|(_, addr)| addr.parse().ok())
        .unwrap_or_else(|| panic!("the standby's session name {standby_name:?} ends with its address"));
    assert_ne!(standby_addr.port(), 0, "the bound port, not the configured 0");
    let standby_url = format!("http://{standby_addr}");
    assert!(!standby.is_finished(), "the second replica must not start while the first leads");
    // Sent: GET a request through the typed client given [standby,
    // leader]. Must happen: the standby's 503 `standby` sends it on to the
    // leader (issue 18: clients reach whichever replica leads).
    let alone = corral_client::Client::plain(&standby_url, Some(&nina_token)).unwrap();
    let refused = alone.request(RequestId(held)).await.unwrap_err();
    assert!(refused.refused().is_some_and(corral_client::Refused::is_standby), "the standby answers: {refused}");
    let both = corral_client::Client::plain(&format!("{standby_url},{}", first.url), Some(&nina_token)).unwrap();
    let through_standby = both.request(RequestId(held)).await.unwrap();
    assert_eq!(through_standby.state, corral_core::RequestState::InProgress);

    // The leader stops; the standby takes over at once (the leader closed
    // its session), not after the session timeout.
    let old_session = first.corral.shared().leader;
    let db = first.corral.db().clone();
    first.halt().await;
    let second = tokio::time::timeout(Duration::from_secs(20), standby)
        .await
        .expect("the standby takes over")
        .expect("the task ends")
        .expect("the standby starts");

    // A deposed leader cannot bind anything: the database checks the
    // leader row.
    let refused =
        db.bind_leases(&[(RequestId(waiting), agent.uuids[0])], SystemTime::now(), old_session).await.unwrap();
    assert!(matches!(refused[0], BindOutcome::Refused(_)), "{refused:?}");

    // The new leader has every request as it was.
    let nina2 = nina.at(&format!("http://{}", second.addr));
    let handle = second.handle();
    actix_rt::spawn(async move {
        let _ = second.wait().await;
    });
    let (_, held_now) = nina2.get(&format!("/v1/requests/{held}")).await;
    assert_eq!(held_now["state"], "in_progress", "{held_now}");
    let (_, waiting_now) = nina2.get(&format!("/v1/requests/{waiting}")).await;
    assert_eq!(waiting_now["state"], "waiting", "{waiting_now}");
    // The same typed client, which last reached the old leader, now finds
    // its address closed and moves on to the new leader.
    let after_takeover = both.request(RequestId(waiting)).await.unwrap();
    assert_eq!(after_takeover.state, corral_core::RequestState::Waiting);

    handle.stop(false).await;
    agent.kill();
    let _ = std::fs::remove_dir_all(&data_dir);
}
