//! `corral events`: follows `GET /v1/events` and prints each change, one
//! line each (`--json`: the event's JSON object). When the stream drops
//! (server restart, network loss, no byte for `--idle-timeout`), it
//! reconnects with `Last-Event-ID` after a backoff that doubles up to
//! [`MAX_BACKOFF`], so nothing is missed or printed twice.

use std::time::{Duration, SystemTime};

use anyhow::Context;
use clap::Args;
use corral_proto::events::{Event, EventId, SseParser};
use futures_util::StreamExt;

use super::output;
use super::{CommonArgs, block_on};

/// First wait before reconnecting; it doubles per failed attempt.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// Longest wait between reconnections.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

#[derive(Args, Debug)]
pub struct EventsArgs {
    /// Start after this event id (an `R-W` id printed by `--json --ids` or
    /// sent as `id:`) instead of now.
    #[arg(long, value_name = "ID")]
    after: Option<EventId>,
    /// Stop after this many events (default: follow until interrupted).
    #[arg(long, value_name = "N")]
    count: Option<u64>,
    /// With --json, print each event as `{"id": ..., "event": {...}}`.
    #[arg(long, requires = "json")]
    ids: bool,
    /// Reconnect when the server sends nothing (not even a keep-alive) for
    /// this long.
    #[arg(long, value_parser = super::parse_duration, default_value = "60s")]
    idle_timeout: Duration,
    #[command(flatten)]
    common: CommonArgs,
}

pub fn run(args: EventsArgs) -> anyhow::Result<()> {
    block_on(follow(args))
}

/// Why one connection ended.
enum Ended {
    /// `--count` events were printed.
    Done,
    /// The stream dropped or could not be opened; try again.
    Retry(String),
}

async fn follow(args: EventsArgs) -> anyhow::Result<()> {
    let client = args.common.client()?;
    let mut last = args.after;
    let mut printed = 0u64;
    let mut backoff = FIRST_BACKOFF;
    loop {
        match connect_once(&client, &args, &mut last, &mut printed, &mut backoff).await? {
            Ended::Done => return Ok(()),
            Ended::Retry(why) => {
                eprintln!(
                    "corral: event stream interrupted ({why}); reconnecting in {}",
                    humantime::format_duration(backoff)
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

async fn connect_once(
    client: &corral_client::Client,
    args: &EventsArgs,
    last: &mut Option<EventId>,
    printed: &mut u64,
    backoff: &mut Duration,
) -> anyhow::Result<Ended> {
    let last_id = last.map(|id| id.to_string());
    let mut response = match client.open_events(last_id.as_deref()).await {
        Ok(response) => response,
        Err(corral_client::Error::Refused(refused)) => {
            // Worth another try: a limit, the server busy or restarting.
            if refused.status == 429 || refused.status >= 500 {
                return Ok(Ended::Retry(refused.to_string()));
            }
            return Err(refused.into());
        }
        Err(err @ corral_client::Error::Transport { .. }) => return Ok(Ended::Retry(err.to_string())),
        Err(err) => return Err(err.into()),
    };
    let mut parser = SseParser::default();
    loop {
        let chunk = match tokio::time::timeout(args.idle_timeout, response.next()).await {
            Err(_) => {
                return Ok(Ended::Retry(format!(
                    "nothing received for {}",
                    humantime::format_duration(args.idle_timeout)
                )));
            }
            Ok(None) => return Ok(Ended::Retry("the server ended the stream".to_string())),
            Ok(Some(Err(err))) => return Ok(Ended::Retry(err)),
            Ok(Some(Ok(chunk))) => chunk,
        };
        // Connected and receiving: the next interruption starts afresh.
        *backoff = FIRST_BACKOFF;
        for message in parser.push(&chunk) {
            let event: Event = serde_json::from_str(&message.data)
                .with_context(|| format!("the server sent an event that is not an event object: {}", message.data))?;
            let id = message.id.as_deref().map(str::parse::<EventId>).transpose().ok().flatten();
            print_event(args, id, &event, &message.data)?;
            if let Some(id) = id {
                *last = Some(id);
            }
            *printed += 1;
            if args.count.is_some_and(|n| *printed >= n) {
                return Ok(Ended::Done);
            }
        }
    }
}

fn print_event(args: &EventsArgs, id: Option<EventId>, event: &Event, raw: &str) -> anyhow::Result<()> {
    if args.common.json {
        let line = if args.ids {
            let id = id.map(|id| id.to_string());
            format!("{{\"id\":{},\"event\":{raw}}}\n", serde_json::to_string(&id).context("formatting the id")?)
        } else {
            format!("{raw}\n")
        };
        return output::emit(&line);
    }
    output::emit(&format!("{}\n", describe(event)))
}

/// One line for people: `TIME request 12 waiting -> in_progress by matcher: reason`.
pub fn describe(event: &Event) -> String {
    let change = |at: &SystemTime, what: String, from: &Option<String>, to: &str, actor: &str, reason: &str| {
        let from = from.as_deref().unwrap_or("(new)");
        format!("{} {what} {from} -> {to} by {actor}: {reason}", corral_core::time::format_rfc3339(*at))
    };
    match event {
        Event::RequestState { request, from, to, reason, actor, at } => {
            change(at, format!("request {}", request.0), from, to, actor, reason)
        }
        Event::WorkerState { worker, from, to, reason, actor, at } => {
            change(at, format!("worker {worker}"), from, to, actor, reason)
        }
        Event::Reload { reason } => format!("reload: {reason} (what was shown before may be stale)"),
    }
}

#[cfg(test)]
mod tests {
    use corral_core::RequestId;

    use super::*;

    #[test]
    fn lines_for_people_name_the_change() {
        let at = corral_core::time::parse_rfc3339("2026-01-02T03:04:05Z").unwrap();
        let event = Event::RequestState {
            request: RequestId(12),
            from: Some("waiting".into()),
            to: "in_progress".into(),
            reason: "lease started".into(),
            actor: "matcher".into(),
            at,
        };
        assert_eq!(
            describe(&event),
            "2026-01-02T03:04:05.000000Z request 12 waiting -> in_progress by matcher: lease started"
        );
        assert!(describe(&Event::Reload { reason: "r".into() }).starts_with("reload: r"));
    }
}
