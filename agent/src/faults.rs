//! Test-only faults of the agent's HTTP client (the `fault-injection`
//! feature; without it this module does not exist and the client has no
//! seam). A test takes the [`ClientFaults`] handle of the agent's options,
//! queues faults per call, and each call of that kind consumes one:
//!
//! - [`ClientFault::FailRequest`]: the call fails before anything is sent
//!   (the server sees nothing);
//! - [`ClientFault::DropAnswer`]: the server receives and processes the
//!   call, and its answer is lost on the way back;
//! - [`ClientFault::Latency`]: the call is held this long before it is sent.
//!
//! Faults are counted, not random, so tests are deterministic.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The calls of the agent protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Call {
    Open,
    Heartbeat,
    Poll,
    Results,
    Close,
}

impl Call {
    /// The call a request of `method` to `path` makes.
    pub(crate) fn of(method: &awc::http::Method, path: &str) -> Call {
        let path = path.split('?').next().unwrap_or(path);
        if path == "/v1/agent/sessions" {
            Call::Open
        } else if path.ends_with("/heartbeat") {
            Call::Heartbeat
        } else if path.ends_with("/commands") {
            Call::Poll
        } else if path.ends_with("/results") {
            Call::Results
        } else if *method == awc::http::Method::DELETE {
            Call::Close
        } else {
            Call::Open
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientFault {
    /// Fail before sending.
    FailRequest,
    /// Send, let the server process it, lose the answer.
    DropAnswer,
    /// Wait this long, then send.
    Latency(Duration),
}

/// Faults queued per call; clones share the queue.
#[derive(Clone, Debug, Default)]
pub struct ClientFaults(Arc<Mutex<HashMap<Call, VecDeque<ClientFault>>>>);

impl ClientFaults {
    /// The next `times` calls of `call` meet `fault` (after those already
    /// queued).
    pub fn inject(&self, call: Call, fault: ClientFault, times: usize) {
        let mut queues = self.0.lock().unwrap_or_else(|e| e.into_inner());
        queues.entry(call).or_default().extend(std::iter::repeat_n(fault, times));
    }

    /// Faults still queued for `call`.
    pub fn queued(&self, call: Call) -> usize {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).get(&call).map_or(0, VecDeque::len)
    }

    /// Drops every queued fault.
    pub fn clear(&self) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    pub(crate) fn take(&self, call: Call) -> Option<ClientFault> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).get_mut(&call).and_then(VecDeque::pop_front)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_are_named_by_their_path() {
        use awc::http::Method;
        let session = "/v1/agent/sessions/0190c5c4-0000-7000-8000-000000000000";
        assert_eq!(Call::of(&Method::POST, "/v1/agent/sessions"), Call::Open);
        assert_eq!(Call::of(&Method::POST, &format!("{session}/heartbeat")), Call::Heartbeat);
        assert_eq!(Call::of(&Method::GET, &format!("{session}/commands?after=3&wait=5ms")), Call::Poll);
        assert_eq!(Call::of(&Method::POST, &format!("{session}/results")), Call::Results);
        assert_eq!(Call::of(&Method::DELETE, session), Call::Close);
    }

    #[test]
    fn each_call_consumes_one_fault_in_order() {
        let faults = ClientFaults::default();
        faults.inject(Call::Results, ClientFault::DropAnswer, 2);
        faults.inject(Call::Results, ClientFault::FailRequest, 1);
        let shared = faults.clone();
        assert_eq!(shared.queued(Call::Results), 3);
        assert_eq!(shared.take(Call::Poll), None);
        assert_eq!(shared.take(Call::Results), Some(ClientFault::DropAnswer));
        assert_eq!(shared.take(Call::Results), Some(ClientFault::DropAnswer));
        assert_eq!(shared.take(Call::Results), Some(ClientFault::FailRequest));
        assert_eq!(faults.take(Call::Results), None);
    }
}
