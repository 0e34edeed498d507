//! `GET /v1/events`: Server-Sent Events of the changes the caller may read
//! (`corral_actors::events` makes them; this module only speaks SSE).
//!
//! Each message is `id: R-W` and `data: {JSON event}`; a comment line
//! (`: keep-alive`) goes out every `events_keep_alive` without events, so
//! that proxies keep the connection and a vanished client is noticed. A
//! stream holds one of the caller's `max_streams_per_user` slots until it
//! ends.

use std::convert::Infallible;
use std::time::Duration;

use actix_web::web::Bytes;
use actix_web::{HttpRequest, HttpResponse, web};
use corral_actors::events::Subscription;
use corral_proto::error::ErrorBody;
use corral_proto::events::EventId;

use crate::AppState;
use crate::auth::Auth;
use crate::error::ApiError;
use crate::limits::Slot;
use crate::query::Query;
use crate::routes::Family;

/// How long a client waits before reconnecting after the stream drops
/// (the SSE `retry:` field), in milliseconds.
const RECONNECT_MS: u32 = 2000;

pub(crate) const ROUTES: Family = crate::family! {
    { "/v1/events" => [get => events] }
};

/// The `Last-Event-ID` header: absent or empty (what `EventSource` sends
/// after a reset) means "from now"; anything else must be an event id.
fn last_event_id(req: &HttpRequest) -> Result<Option<EventId>, ApiError> {
    let Some(value) = req.headers().get("Last-Event-ID") else { return Ok(None) };
    let text = value.to_str().map_err(|_| ApiError::bad_request("Last-Event-ID must be ASCII text"))?.trim();
    if text.is_empty() {
        return Ok(None);
    }
    text.parse().map(Some).map_err(|e| ApiError::bad_request(format!("bad Last-Event-ID: {e}")))
}

/// A Server-Sent Events stream of the changes the caller may see: each
/// message has an `id:` (`R-W`) and one `Event` as JSON in `data:`.
#[utoipa::path(
    get, path = "/v1/events", operation_id = "events", tag = "events",
    params(("Last-Event-ID" = Option<String>, Header, description = "The `id:` of the last event received: the stream resumes after it")),
    responses(
        (status = 200, description = "The stream (it does not end); `data:` lines hold an `Event`", content_type = "text/event-stream", body = String),
        (status = 429, description = "`too_many_requests`: a per-user limit is reached", body = ErrorBody,
         headers(("Retry-After" = u32, description = "Seconds to wait before retrying"))),
    ),
)]
#[tracing::instrument(skip_all, fields(user = %auth.0.name))]
async fn events(state: web::Data<AppState>, auth: Auth, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let caller = auth.require_person()?;
    Query::parse(&req)?.only(&[])?;
    let after = last_event_id(&req)?;
    let slot = state.limits.streams.acquire(caller)?;
    let subscription = state.corral.events(caller, after).await?;
    let body = sse_body(subscription, slot, state.config.events_keep_alive);
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-cache"))
        // Tells nginx not to buffer the stream.
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(body))
}

struct Stream {
    subscription: Subscription,
    keep_alive: tokio::time::Interval,
    /// Freed when the stream is dropped (the client left or it ended).
    _slot: Slot,
    started: bool,
}

/// The response body: a first comment (the client knows the stream is
/// open), then each event, with keep-alive comments between.
fn sse_body(
    subscription: Subscription,
    slot: Slot,
    keep_alive: Duration,
) -> impl futures_util::Stream<Item = Result<Bytes, Infallible>> {
    let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + keep_alive, keep_alive);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let state = Stream { subscription, keep_alive: interval, _slot: slot, started: false };
    futures_util::stream::unfold(state, |mut state| async move {
        if !state.started {
            state.started = true;
            return Some((Ok(Bytes::from(format!("retry: {RECONNECT_MS}\n: corral events\n\n"))), state));
        }
        let frame = tokio::select! {
            event = state.subscription.next() => {
                let event = event?;
                state.keep_alive.reset();
                format!("id: {}\ndata: {}\n\n", event.id, event.json)
            }
            _ = state.keep_alive.tick() => ": keep-alive\n\n".to_string(),
        };
        Some((Ok(Bytes::from(frame)), state))
    })
}
