//! `GET /v1/events`: the Server-Sent Events stream, opened here and parsed
//! by the caller (`corral_proto::events::SseParser`).

use futures_util::StreamExt;
use futures_util::stream::LocalBoxStream;

use crate::{Attempt, Client, Error, refusal, retry_after, transport_failure};

/// The body of an open stream: its chunks as they arrive, or why it broke.
pub type EventStream = LocalBoxStream<'static, Result<Vec<u8>, String>>;

impl Client {
    /// Opens `GET /v1/events`, with `Last-Event-ID` when given: the body's
    /// chunks once the headers are in (within the client's timeout; the body has
    /// no deadline), or the server's refusal. Tries the server URLs as any
    /// call does.
    pub async fn open_events(&self, last_event_id: Option<&str>) -> Result<EventStream, Error> {
        let mut last = None;
        for at in self.servers.order() {
            match self.open_events_at(at, last_event_id).await {
                Ok(stream) => {
                    self.servers.answered(at);
                    return Ok(stream);
                }
                Err(Attempt::Done(err)) => {
                    if matches!(err, Error::Refused(_)) {
                        self.servers.answered(at);
                    }
                    return Err(err);
                }
                Err(Attempt::NotSent(err)) => last = Some(err),
            }
        }
        Err(last.expect("a server list is never empty"))
    }

    async fn open_events_at(&self, at: usize, last_event_id: Option<&str>) -> Result<EventStream, Attempt> {
        let base = self.servers.url(at);
        let mut request = self
            .http
            .get(format!("{base}/v1/events"))
            .timeout(self.timeout)
            .insert_header(("Accept", "text/event-stream"));
        if let Some(id) = last_event_id {
            request = request.insert_header(("Last-Event-ID", id.to_string()));
        }
        let mut response = request.send().await.map_err(|e| transport_failure(base, e))?;
        let status = response.status();
        if status.is_success() {
            // The call's timeout covered the headers; the body has none.
            return Ok(response.map(|chunk| chunk.map(|b| b.to_vec()).map_err(|e| e.to_string())).boxed_local());
        }
        let retry = retry_after(response.headers());
        let bytes = response.body().limit(64 * 1024).await.unwrap_or_default();
        let refused = refusal(status.as_u16(), &bytes, retry);
        if refused.is_standby() {
            return Err(Attempt::NotSent(Error::Refused(refused)));
        }
        Err(Attempt::Done(Error::Refused(refused)))
    }
}
