//! `GET /v1/events`: the Server-Sent Events stream of committed changes.
//!
//! Each SSE message carries one [`Event`] as JSON in its `data:` line and
//! an [`EventId`] in its `id:` line. An event id is a position in the
//! server's durable history: the last `request_history` id and the last
//! `worker_history` id delivered up to and including this event, written
//! `R-W` (two decimal integers). A client that reconnects with
//! `Last-Event-ID: R-W` gets every change after that position, or a
//! [`Event::Reload`] when the position is too far behind to resume from.
//!
//! [`SseParser`] turns the bytes of a stream back into messages (the CLI,
//! the benchmark and the tests read the stream with it).

use std::fmt;
use std::str::FromStr;
use std::time::SystemTime;

use corral_core::schema::Rfc3339;
use corral_core::time::rfc3339;
use corral_core::{RequestId, WorkerId};
use serde::{Deserialize, Serialize};

/// A position in the history: every `request_history` row with an id up
/// to `request` and every `worker_history` row with an id up to `worker`
/// is before it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct EventId {
    pub request: i64,
    pub worker: i64,
}

impl EventId {
    /// Whether every row before `self` is also before `other`.
    pub fn is_at_or_before(self, other: EventId) -> bool {
        self.request <= other.request && self.worker <= other.worker
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.request, self.worker)
    }
}

/// Why a text is not an [`EventId`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadEventId(pub String);

impl fmt::Display for BadEventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "an event id is two non-negative integers R-W as sent in an `id:` line, got {:?}", self.0)
    }
}

impl std::error::Error for BadEventId {}

impl FromStr for EventId {
    type Err = BadEventId;

    fn from_str(text: &str) -> Result<EventId, BadEventId> {
        let bad = || BadEventId(text.chars().take(64).collect());
        let (request, worker) = text.trim().split_once('-').ok_or_else(bad)?;
        let number = |part: &str| -> Result<i64, BadEventId> {
            if part.is_empty() || part.len() > 19 || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            part.parse().map_err(|_| bad())
        };
        Ok(EventId { request: number(request)?, worker: number(worker)? })
    }
}

/// One committed change, as the `data:` of an SSE message.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(tag = "type")]
pub enum Event {
    /// A request's transition (`from` is null when it was created).
    #[serde(rename = "request.state")]
    RequestState {
        request: RequestId,
        from: Option<String>,
        to: String,
        reason: String,
        /// Who or what caused it: `user:NAME`, `matcher`, `agent:HOST`, ...
        actor: String,
        #[serde(with = "rfc3339")]
        #[schema(value_type = Rfc3339)]
        at: SystemTime,
    },
    /// A worker's transition (`from` is null at its first registration;
    /// `to` is `deregistered` when an admin removed it).
    #[serde(rename = "worker.state")]
    WorkerState {
        worker: WorkerId,
        from: Option<String>,
        to: String,
        reason: String,
        actor: String,
        #[serde(with = "rfc3339")]
        #[schema(value_type = Rfc3339)]
        at: SystemTime,
    },
    /// The stream cannot tell what the client missed: fetch the current
    /// state again (`GET /v1/requests`, `GET /v1/workers`), then go on
    /// with the events that follow (their positions follow this one's
    /// `id:`).
    #[serde(rename = "reload")]
    Reload { reason: String },
}

impl Event {
    /// The wire name of the event's kind (`request.state`, ...).
    pub fn kind(&self) -> &'static str {
        match self {
            Event::RequestState { .. } => "request.state",
            Event::WorkerState { .. } => "worker.state",
            Event::Reload { .. } => "reload",
        }
    }
}

/// One SSE message: its `id:` (if any) and its `data:` lines joined.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SseMessage {
    pub id: Option<String>,
    pub data: String,
}

/// Most bytes of one unfinished line kept; a longer line is cut there
/// (a server that never ends a line cannot grow the client's memory).
const MAX_LINE: usize = 1024 * 1024;

/// Splits a Server-Sent Events byte stream into messages (the parts of
/// the format corral sends: `id:`, `data:`, comments and blank lines;
/// other fields are skipped).
#[derive(Debug, Default)]
pub struct SseParser {
    line: Vec<u8>,
    id: Option<String>,
    data: Option<String>,
    /// Comment lines seen so far (keep-alives).
    pub comments: u64,
}

impl SseParser {
    /// Feeds the next bytes; returns the messages they complete.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<SseMessage> {
        let mut done = Vec::new();
        for &byte in bytes {
            if byte == b'\n' {
                let line = std::mem::take(&mut self.line);
                let line = line.strip_suffix(b"\r").unwrap_or(&line);
                self.line_done(&String::from_utf8_lossy(line), &mut done);
            } else if self.line.len() < MAX_LINE {
                self.line.push(byte);
            }
        }
        done
    }

    fn line_done(&mut self, line: &str, done: &mut Vec<SseMessage>) {
        if line.is_empty() {
            if let Some(data) = self.data.take() {
                done.push(SseMessage { id: self.id.take(), data });
            }
            self.id = None;
            return;
        }
        if line.starts_with(':') {
            self.comments += 1;
            return;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "id" => self.id = Some(value.to_string()),
            "data" => match &mut self.data {
                Some(data) => {
                    data.push('\n');
                    data.push_str(value);
                }
                None => self.data = Some(value.to_string()),
            },
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_round_trip_and_refuse_everything_else() {
        let id = EventId { request: 12, worker: 0 };
        assert_eq!(id.to_string(), "12-0");
        assert_eq!("12-0".parse::<EventId>().unwrap(), id);
        assert_eq!("9223372036854775807-1".parse::<EventId>().unwrap().request, i64::MAX);
        for bad in ["", "12", "-1-2", "1--2", "a-b", "1-2-3", "1.5-2", "9223372036854775808-1", "+1-2", "1 -2"] {
            assert!(bad.parse::<EventId>().is_err(), "{bad:?}");
        }
        assert!(EventId { request: 1, worker: 2 }.is_at_or_before(EventId { request: 1, worker: 3 }));
        assert!(!EventId { request: 2, worker: 2 }.is_at_or_before(EventId { request: 1, worker: 3 }));
    }

    #[test]
    fn the_parser_splits_messages_across_chunks() {
        let mut parser = SseParser::default();
        assert!(parser.push(b": keep-alive\n\nid: 1-2\r\ndata: {\"a\"").is_empty());
        let got = parser.push(b":1}\ndata: x\n\nevent: y\ndata: z\n\n");
        assert_eq!(
            got,
            vec![
                SseMessage { id: Some("1-2".into()), data: "{\"a\":1}\nx".into() },
                SseMessage { id: None, data: "z".into() }
            ]
        );
        assert_eq!(parser.comments, 1);
    }

    #[test]
    fn events_have_their_wire_form() {
        let at = corral_core::time::parse_rfc3339("2026-01-02T03:04:05Z").unwrap();
        let event = Event::RequestState {
            request: RequestId(7),
            from: None,
            to: "waiting".into(),
            reason: "submitted".into(),
            actor: "user:ann".into(),
            at,
        };
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(json["type"], "request.state");
        assert_eq!(json["request"], 7);
        assert_eq!(json["from"], serde_json::Value::Null);
        assert_eq!(serde_json::from_value::<Event>(json).unwrap(), event);
        let reload = serde_json::to_value(Event::Reload { reason: "r".into() }).unwrap();
        assert_eq!(reload, serde_json::json!({"type": "reload", "reason": "r"}));
    }
}
