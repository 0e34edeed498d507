//! Wire types of the Boruta-compatible API (`/api/v1`), spelled the way
//! Boruta's Go server and client put them on the wire (SPEC §5).
//!
//! Boruta's types are Go structs marshalled by `encoding/json`, so field
//! names are the Go field names (`ID`, `Priority`, `WorkerUUID`, …), times
//! are `time.Time` in RFC 3339 with as many fractional digits as needed,
//! and the zero time `0001-01-01T00:00:00Z` means "not set". Go ignores
//! unknown fields when decoding, and so do the request bodies here (Boruta
//! clients send whole `ReqInfo`s, of which the server reads a few fields).
//!
//! The mapping between these types and corral's is done by the server
//! (`corral_api::boruta`); this module only knows the spelling, plus the
//! state names, which are a pure function of corral's states.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use corral_core::time::{TimeError, Timestamp};
use corral_core::{RequestState, WorkerState};
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// Version of the HTTP API, as Boruta names it.
pub const API_VERSION: &str = "v1";
/// State of the API: corral keeps this API frozen.
pub const API_STATE: &str = "stable";
/// Most items one page of a list may hold (Boruta's `MaxPageLimit`), and
/// the page size when the caller gives none.
pub const MAX_PAGE_LIMIT: usize = u16::MAX as usize;

/// Headers Boruta sets on its answers.
pub mod headers {
    /// State of the request carried (or, on `HEAD`, described) by the answer.
    pub const REQUEST_STATE: &str = "Boruta-Request-State";
    /// When the job of an `IN PROGRESS` request ends (RFC 3339).
    pub const JOB_TIMEOUT: &str = "Boruta-Job-Timeout";
    /// Number of requests in a list answer.
    pub const REQUEST_COUNT: &str = "Boruta-Request-Count";
    /// State of the worker carried by the answer.
    pub const WORKER_STATE: &str = "Boruta-Worker-State";
    /// Number of workers in a list answer.
    pub const WORKER_COUNT: &str = "Boruta-Worker-Count";
    /// Items matching the filter of a list call.
    pub const LIST_TOTAL: &str = "Boruta-List-Total";
    /// Items past the returned page (in the paging direction).
    pub const LIST_REMAINING: &str = "Boruta-List-Remaining";
    /// Items in the returned page.
    pub const LIST_BATCH_SIZE: &str = "Boruta-List-Batch-Size";
    pub const SERVER_VERSION: &str = "Boruta-Server-Version";
    pub const API_VERSION: &str = "Boruta-API-Version";
    pub const API_STATE: &str = "Boruta-API-State";
}

// ----- states -----------------------------------------------------------

/// A request state in Boruta's spelling (`ReqState`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ReqState {
    #[serde(rename = "WAITING")]
    Waiting,
    #[serde(rename = "IN PROGRESS")]
    InProgress,
    #[serde(rename = "CANCELLED")]
    Cancelled,
    #[serde(rename = "TIMEOUT")]
    Timeout,
    #[serde(rename = "INVALID")]
    Invalid,
    #[serde(rename = "DONE")]
    Done,
    #[serde(rename = "FAILED")]
    Failed,
}

impl ReqState {
    pub const ALL: [ReqState; 7] = [
        ReqState::Waiting,
        ReqState::InProgress,
        ReqState::Cancelled,
        ReqState::Timeout,
        ReqState::Invalid,
        ReqState::Done,
        ReqState::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ReqState::Waiting => "WAITING",
            ReqState::InProgress => "IN PROGRESS",
            ReqState::Cancelled => "CANCELLED",
            ReqState::Timeout => "TIMEOUT",
            ReqState::Invalid => "INVALID",
            ReqState::Done => "DONE",
            ReqState::Failed => "FAILED",
        }
    }

    /// Parses a state name the way Boruta's filter normalises it (trimmed,
    /// any case).
    pub fn parse(text: &str) -> Result<ReqState, String> {
        let wanted = text.trim().to_ascii_uppercase();
        ReqState::ALL.into_iter().find(|s| s.as_str() == wanted).ok_or_else(|| {
            let known: Vec<&str> = ReqState::ALL.iter().map(|s| s.as_str()).collect();
            format!("unknown request state {text:?} (known: {})", known.join(", "))
        })
    }

    pub fn corral(self) -> RequestState {
        match self {
            ReqState::Waiting => RequestState::Waiting,
            ReqState::InProgress => RequestState::InProgress,
            ReqState::Cancelled => RequestState::Cancelled,
            ReqState::Timeout => RequestState::Timeout,
            ReqState::Invalid => RequestState::Invalid,
            ReqState::Done => RequestState::Done,
            ReqState::Failed => RequestState::Failed,
        }
    }
}

impl From<RequestState> for ReqState {
    fn from(state: RequestState) -> ReqState {
        match state {
            RequestState::Waiting => ReqState::Waiting,
            RequestState::InProgress => ReqState::InProgress,
            RequestState::Cancelled => ReqState::Cancelled,
            RequestState::Timeout => ReqState::Timeout,
            RequestState::Invalid => ReqState::Invalid,
            RequestState::Done => ReqState::Done,
            RequestState::Failed => ReqState::Failed,
        }
    }
}

impl fmt::Display for ReqState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A worker state in Boruta's spelling (`WorkerState`). Boruta's Go
/// constants are `MAINTENANCE, IDLE, RUN, FAIL, PREPARE, BUSY`; their
/// values, which are what travels, are below.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum BorutaWorkerState {
    #[serde(rename = "MAINTENANCE")]
    Maintenance,
    #[serde(rename = "IDLE")]
    Idle,
    #[serde(rename = "RUNNING")]
    Running,
    #[serde(rename = "FAILED")]
    Failed,
    #[serde(rename = "PREPARE")]
    Prepare,
    #[serde(rename = "BUSY")]
    Busy,
}

impl BorutaWorkerState {
    pub const ALL: [BorutaWorkerState; 6] = [
        BorutaWorkerState::Maintenance,
        BorutaWorkerState::Idle,
        BorutaWorkerState::Running,
        BorutaWorkerState::Failed,
        BorutaWorkerState::Prepare,
        BorutaWorkerState::Busy,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            BorutaWorkerState::Maintenance => "MAINTENANCE",
            BorutaWorkerState::Idle => "IDLE",
            BorutaWorkerState::Running => "RUNNING",
            BorutaWorkerState::Failed => "FAILED",
            BorutaWorkerState::Prepare => "PREPARE",
            BorutaWorkerState::Busy => "BUSY",
        }
    }

    pub fn parse(text: &str) -> Option<BorutaWorkerState> {
        let wanted = text.trim().to_ascii_uppercase();
        BorutaWorkerState::ALL.into_iter().find(|s| s.as_str() == wanted)
    }
}

impl From<WorkerState> for BorutaWorkerState {
    fn from(state: WorkerState) -> BorutaWorkerState {
        match state {
            WorkerState::Maintenance => BorutaWorkerState::Maintenance,
            WorkerState::Prepare => BorutaWorkerState::Prepare,
            WorkerState::Idle => BorutaWorkerState::Idle,
            WorkerState::Running => BorutaWorkerState::Running,
            WorkerState::Failed => BorutaWorkerState::Failed,
            WorkerState::Busy => BorutaWorkerState::Busy,
        }
    }
}

impl fmt::Display for BorutaWorkerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// ----- time ---------------------------------------------------------------

/// A `time.Time` read from a Boruta client.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GoTime {
    /// Go's zero time (`0001-01-01T00:00:00Z`) or `null`: "not set".
    #[default]
    Zero,
    /// An instant. Instants before 1970 are clamped to the Unix epoch
    /// (they only ever mean "already passed").
    At(SystemTime),
}

impl GoTime {
    pub fn instant(self) -> Option<SystemTime> {
        match self {
            GoTime::Zero => None,
            GoTime::At(t) => Some(t),
        }
    }

    /// Reads a Go time. Instants past 9999-12-31 are refused (Go would
    /// write them, corral cannot keep them); text of any shape is an `Err`,
    /// never a panic.
    pub fn parse(text: &str) -> Result<GoTime, String> {
        let text = text.trim();
        match Timestamp::parse(text) {
            Ok(t) => Ok(GoTime::At(t.get())),
            // In 1970 but before the epoch by its offset.
            Err(TimeError::OutOfRange(_)) if text.starts_with("1970-") => Ok(GoTime::At(UNIX_EPOCH)),
            Err(err @ TimeError::OutOfRange(_)) => Err(err.to_string()),
            Err(_) if before_1970(text) => {
                if text.starts_with("0001-01-01T00:00:00") {
                    Ok(GoTime::Zero)
                } else {
                    Ok(GoTime::At(UNIX_EPOCH))
                }
            }
            Err(_) => Err(format!("{text:?} is not an RFC 3339 time such as 2026-01-02T03:04:05Z")),
        }
    }
}

/// Whether the text is shaped like an RFC 3339 time of a year before 1970
/// (humantime refuses those; Go writes them freely).
fn before_1970(text: &str) -> bool {
    let bytes = text.as_bytes();
    let year = text.get(..4).and_then(|y| y.parse::<u32>().ok());
    let shaped = bytes.len() >= 20 && bytes.get(4) == Some(&b'-') && bytes.get(10) == Some(&b'T');
    shaped && year.is_some_and(|year| year < 1970)
}

impl<'de> Deserialize<'de> for GoTime {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<GoTime, D::Error> {
        match Option::<String>::deserialize(d)? {
            None => Ok(GoTime::Zero),
            Some(text) => GoTime::parse(&text).map_err(de::Error::custom),
        }
    }
}

/// Formats like Go's `time.Time` JSON (`RFC3339Nano`: trailing zeros of
/// the fraction dropped), in UTC.
pub fn format_go_time(t: SystemTime) -> String {
    let full = humantime::format_rfc3339_nanos(corral_core::time::clamp(t)).to_string();
    let Some(body) = full.strip_suffix('Z') else { return full };
    match body.split_once('.') {
        Some((seconds, fraction)) => {
            let fraction = fraction.trim_end_matches('0');
            if fraction.is_empty() { format!("{seconds}Z") } else { format!("{seconds}.{fraction}Z") }
        }
        None => full,
    }
}

/// Formats like Go's `time.RFC3339` (whole seconds), as Boruta's headers do.
pub fn format_header_time(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(corral_core::time::clamp(t)).to_string()
}

/// `#[serde(serialize_with = "go_time")]`
pub fn go_time<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_go_time(*t))
}

// ----- objects ------------------------------------------------------------

/// `boruta.UserInfo`: the owner of a request.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserInfo {
    #[serde(rename = "Groups", default)]
    pub groups: Option<Vec<String>>,
}

/// `boruta.JobInfo`: the lease of a request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct JobInfo {
    #[serde(rename = "WorkerUUID")]
    pub worker_uuid: String,
    /// When the lease ends.
    #[serde(rename = "Timeout", serialize_with = "go_time")]
    pub timeout: SystemTime,
}

/// `boruta.ReqInfo`, as the server sends it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ReqInfo {
    #[serde(rename = "ID")]
    pub id: u64,
    #[serde(rename = "Priority")]
    pub priority: u8,
    #[serde(rename = "Owner")]
    pub owner: UserInfo,
    #[serde(rename = "Deadline", serialize_with = "go_time")]
    pub deadline: SystemTime,
    #[serde(rename = "ValidAfter", serialize_with = "go_time")]
    pub valid_after: SystemTime,
    #[serde(rename = "State")]
    pub state: ReqState,
    #[serde(rename = "Job")]
    pub job: Option<JobInfo>,
    #[serde(rename = "Caps")]
    pub caps: BTreeMap<String, String>,
}

/// A `boruta.ReqInfo` sent by a client to create (`POST /reqs/`) or update
/// (`POST /reqs/{id}`) a request. Only these fields are read; the others
/// a Go client sends (`State`, `Job`, `Owner`) are ignored, as Boruta does.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct ReqInfoInput {
    #[serde(rename = "ID", default)]
    pub id: Option<u64>,
    /// Absent: the server's default. Present, it must be 1 to 16 (Boruta
    /// refuses 0 too).
    #[serde(rename = "Priority", default)]
    pub priority: Option<i64>,
    #[serde(rename = "Deadline", default)]
    pub deadline: GoTime,
    #[serde(rename = "ValidAfter", default)]
    pub valid_after: GoTime,
    #[serde(rename = "Caps", default)]
    pub caps: Option<BTreeMap<String, String>>,
}

/// `http.ReqIDPack`: the answer to `POST /reqs/`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReqIdPack {
    #[serde(rename = "ReqID")]
    pub req_id: u64,
}

/// `boruta.WorkerInfo`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WorkerInfo {
    #[serde(rename = "WorkerUUID")]
    pub worker_uuid: String,
    #[serde(rename = "State")]
    pub state: BorutaWorkerState,
    #[serde(rename = "Groups")]
    pub groups: Vec<String>,
    /// The worker's caps plus `UUID`, as Boruta keeps them.
    #[serde(rename = "Caps")]
    pub caps: BTreeMap<String, String>,
}

/// `http.WorkerStatePack`: the body of `POST /workers/{id}/setstate`.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct WorkerStatePack {
    #[serde(rename = "WorkerState", default)]
    pub worker_state: Option<String>,
}

/// Go's `net.TCPAddr`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TcpAddr {
    #[serde(rename = "IP")]
    pub ip: String,
    #[serde(rename = "Port")]
    pub port: u16,
    #[serde(rename = "Zone")]
    pub zone: String,
}

/// `http.AccessInfo2`: the answer to `POST /reqs/{id}/acquire_worker`.
/// `Debug` never shows the key.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessInfo {
    /// Where the lease's tunnel listens.
    #[serde(rename = "Addr")]
    pub addr: TcpAddr,
    /// The lease's private key, RSA in PKCS#1 PEM (`BEGIN RSA PRIVATE KEY`).
    #[serde(rename = "Key")]
    pub key: String,
    #[serde(rename = "Username")]
    pub username: String,
}

impl std::fmt::Debug for AccessInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessInfo")
            .field("addr", &self.addr)
            .field("key", &"<redacted>")
            .field("username", &self.username)
            .finish()
    }
}

/// `http.BorutaVersion`: the answer to `GET /version`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BorutaVersion {
    #[serde(rename = "Server")]
    pub server: String,
    #[serde(rename = "API_Version")]
    pub api: String,
    #[serde(rename = "API_State")]
    pub state: String,
}

/// Every error: `{"message": TEXT}` (Boruta's `ServerError`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub message: String,
}

// ----- lists ----------------------------------------------------------------

/// `boruta.SortOrder`: `"ascending"` (also `""`, the default) or
/// `"descending"`, any case.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SortOrder {
    #[default]
    Ascending,
    Descending,
}

/// `boruta.ListDirection`: `"forward"` (also `""`, the default) or
/// `"backward"`, any case.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ListDirection {
    #[default]
    Forward,
    Backward,
}

/// Both are Go booleans marshalled as text; accept the text, a boolean
/// (what the underlying Go type is) or null.
fn two_words<'de, D: Deserializer<'de>, T>(
    d: D,
    what: &'static str,
    (no, no_value): (&'static str, T),
    (yes, yes_value): (&'static str, T),
) -> Result<T, D::Error> {
    struct Words<T> {
        what: &'static str,
        no: (&'static str, T),
        yes: (&'static str, T),
    }
    impl<'de, T> Visitor<'de> for Words<T> {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "{} {:?} or {:?}", self.what, self.no.0, self.yes.0)
        }
        fn visit_str<E: de::Error>(self, text: &str) -> Result<T, E> {
            let lower = text.trim().to_ascii_lowercase();
            if lower.is_empty() || lower == self.no.0 {
                Ok(self.no.1)
            } else if lower == self.yes.0 {
                Ok(self.yes.1)
            } else {
                Err(E::custom(format!("unknown {} {text:?} (valid: {} or {})", self.what, self.no.0, self.yes.0)))
            }
        }
        fn visit_bool<E: de::Error>(self, value: bool) -> Result<T, E> {
            Ok(if value { self.yes.1 } else { self.no.1 })
        }
        fn visit_unit<E: de::Error>(self) -> Result<T, E> {
            Ok(self.no.1)
        }
        fn visit_none<E: de::Error>(self) -> Result<T, E> {
            Ok(self.no.1)
        }
    }
    d.deserialize_any(Words { what, no: (no, no_value), yes: (yes, yes_value) })
}

impl<'de> Deserialize<'de> for SortOrder {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<SortOrder, D::Error> {
        two_words(d, "sort order", ("ascending", SortOrder::Ascending), ("descending", SortOrder::Descending))
    }
}

impl Serialize for SortOrder {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(match self {
            SortOrder::Ascending => "ascending",
            SortOrder::Descending => "descending",
        })
    }
}

impl<'de> Deserialize<'de> for ListDirection {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<ListDirection, D::Error> {
        two_words(d, "list direction", ("forward", ListDirection::Forward), ("backward", ListDirection::Backward))
    }
}

impl Serialize for ListDirection {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(match self {
            ListDirection::Forward => "forward",
            ListDirection::Backward => "backward",
        })
    }
}

/// `boruta.SortInfo`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SortInfo {
    /// Requests: `id` (default), `priority`, `deadline`, `validafter`,
    /// `state`. Workers: `uuid` (default), `state`, `groups`. Any case.
    #[serde(rename = "Item", default)]
    pub item: Option<String>,
    #[serde(rename = "Order", default)]
    pub order: SortOrder,
}

/// `filter.Requests`. A request matches when it matches every non-empty
/// field, and a field when it equals one of its values. `State` and
/// `Priority` (strings) are the filter of Boruta releases before the list
/// fields existed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestsFilter {
    #[serde(rename = "IDs", default)]
    pub ids: Option<Vec<u64>>,
    #[serde(rename = "Priorities", default)]
    pub priorities: Option<Vec<u64>>,
    #[serde(rename = "States", default)]
    pub states: Option<Vec<String>>,
    #[serde(rename = "State", default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    #[serde(rename = "Priority", default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<String>,
}

/// `boruta.RequestsPaginator`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestsPaginator {
    /// Page border; 0: the start (forward) or the end (backward).
    #[serde(rename = "ID", default)]
    pub id: u64,
    #[serde(rename = "Direction", default)]
    pub direction: ListDirection,
    /// 0: [`MAX_PAGE_LIMIT`].
    #[serde(rename = "Limit", default)]
    pub limit: u16,
}

/// `http.RequestsListSpec`: the body of `POST /reqs/list`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestsListSpec {
    #[serde(rename = "Filter", default)]
    pub filter: Option<RequestsFilter>,
    #[serde(rename = "Sorter", default)]
    pub sorter: Option<SortInfo>,
    #[serde(rename = "Paginator", default)]
    pub paginator: Option<RequestsPaginator>,
}

/// `filter.Workers`: workers in any of `Groups` (if any are given) that
/// offer every one of `Capabilities`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkersFilter {
    #[serde(rename = "Groups", default)]
    pub groups: Option<Vec<String>>,
    #[serde(rename = "Capabilities", default)]
    pub capabilities: Option<BTreeMap<String, String>>,
}

/// `boruta.WorkersPaginator`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkersPaginator {
    /// Page border (a worker UUID); empty: the start or the end.
    #[serde(rename = "ID", default)]
    pub id: Option<String>,
    #[serde(rename = "Direction", default)]
    pub direction: ListDirection,
    #[serde(rename = "Limit", default)]
    pub limit: u16,
}

/// `http.WorkersListSpec`: the body of `POST /workers/list`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkersListSpec {
    #[serde(rename = "Filter", default)]
    pub filter: Option<WorkersFilter>,
    #[serde(rename = "Sorter", default)]
    pub sorter: Option<SortInfo>,
    #[serde(rename = "Paginator", default)]
    pub paginator: Option<WorkersPaginator>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn states_travel_in_borutas_spelling() {
        for state in RequestState::ALL {
            let boruta = ReqState::from(state);
            assert_eq!(boruta.corral(), state);
            assert_eq!(serde_json::to_string(&boruta).unwrap(), format!("\"{}\"", boruta.as_str()));
            assert_eq!(ReqState::parse(&boruta.as_str().to_lowercase()).unwrap(), boruta);
        }
        assert_eq!(ReqState::from(RequestState::InProgress).as_str(), "IN PROGRESS");
        assert!(ReqState::parse("WAIT").is_err());
        assert_eq!(BorutaWorkerState::from(WorkerState::Running).as_str(), "RUNNING");
        assert_eq!(BorutaWorkerState::from(WorkerState::Failed).as_str(), "FAILED");
        assert_eq!(BorutaWorkerState::parse(" idle "), Some(BorutaWorkerState::Idle));
        assert_eq!(BorutaWorkerState::parse("RUN"), None);
    }

    #[test]
    fn go_times_are_read_and_written_like_go() {
        let t = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        assert_eq!(format_go_time(t), "2027-01-15T08:00:00Z");
        assert_eq!(format_go_time(t + Duration::from_micros(120)), "2027-01-15T08:00:00.00012Z");
        assert_eq!(format_header_time(t + Duration::from_micros(120)), "2027-01-15T08:00:00Z");
        assert_eq!(GoTime::parse("2027-01-15T08:00:00Z").unwrap(), GoTime::At(t));
        assert_eq!(GoTime::parse("2027-01-15T10:00:00.000000000+02:00").unwrap(), GoTime::At(t));
        assert_eq!(GoTime::parse("2027-01-15T06:30:00-01:30").unwrap(), GoTime::At(t));
        assert_eq!(
            GoTime::parse("2027-01-15T08:00:00.000120999Z").unwrap(),
            GoTime::At(t + Duration::from_micros(120))
        );
        assert_eq!(GoTime::parse("0001-01-01T00:00:00Z").unwrap(), GoTime::Zero);
        assert_eq!(GoTime::parse("1683-09-12T00:00:00Z").unwrap(), GoTime::At(UNIX_EPOCH));
        assert!(GoTime::parse("tomorrow").is_err());
        assert_eq!(GoTime::parse("1970-01-01T00:00:00+01:00").unwrap(), GoTime::At(UNIX_EPOCH));
        // Issue 13, class 1: past 9999, and multi-byte text, are errors.
        assert!(GoTime::parse("10000-01-01T00:00:00Z").is_err());
        assert!(GoTime::parse("9999-12-31T23:00:00-02:00").is_err());
        assert!(GoTime::parse("2026-01-02T03:04:0é+01:00").is_err());
        assert_eq!(format_go_time(UNIX_EPOCH + Duration::from_secs(300_000_000_000)), "9999-12-31T23:59:59.999999Z");
        let input: ReqInfoInput =
            serde_json::from_str(r#"{"Deadline": null, "ValidAfter": "0001-01-01T00:00:00Z"}"#).unwrap();
        assert_eq!((input.deadline, input.valid_after), (GoTime::Zero, GoTime::Zero));
    }

    #[test]
    fn list_specs_read_what_the_go_client_writes() {
        let spec: RequestsListSpec = serde_json::from_str(
            r#"{"Filter":{"IDs":null,"Priorities":[4],"States":["WAITING"]},
                "Sorter":{"Item":"priority","Order":"descending"},
                "Paginator":{"ID":3,"Direction":"backward","Limit":2}}"#,
        )
        .unwrap();
        assert_eq!(spec.sorter.unwrap().order, SortOrder::Descending);
        let paginator = spec.paginator.unwrap();
        assert_eq!((paginator.id, paginator.direction, paginator.limit), (3, ListDirection::Backward, 2));
        let empty: RequestsListSpec =
            serde_json::from_str(r#"{"Filter":null,"Sorter":{"Item":"","Order":""},"Paginator":null}"#).unwrap();
        assert_eq!(empty.sorter.unwrap().order, SortOrder::Ascending);
        assert!(serde_json::from_str::<SortInfo>(r#"{"Order":"sideways"}"#).is_err());
        let workers: WorkersListSpec =
            serde_json::from_str(r#"{"Filter":{"Groups":["lab"],"Capabilities":{"arch":"arm"}}}"#).unwrap();
        assert_eq!(workers.filter.unwrap().groups.unwrap(), vec!["lab".to_string()]);
    }
}
