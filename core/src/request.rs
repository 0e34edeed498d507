//! The request state machine (SPEC §2) and the rules for a request's
//! schedule (valid_after, deadline, lease length).

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::time::Timestamp;

/// Where a request is in its life. Terminal states never change again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RequestState {
    Waiting,
    InProgress,
    Cancelled,
    Timeout,
    Invalid,
    Done,
    Failed,
}

impl RequestState {
    pub const ALL: [RequestState; 7] = [
        RequestState::Waiting,
        RequestState::InProgress,
        RequestState::Cancelled,
        RequestState::Timeout,
        RequestState::Invalid,
        RequestState::Done,
        RequestState::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RequestState::Waiting => "waiting",
            RequestState::InProgress => "in_progress",
            RequestState::Cancelled => "cancelled",
            RequestState::Timeout => "timeout",
            RequestState::Invalid => "invalid",
            RequestState::Done => "done",
            RequestState::Failed => "failed",
        }
    }

    pub fn is_terminal(self) -> bool {
        !matches!(self, RequestState::Waiting | RequestState::InProgress)
    }

    /// What closing a request in this state means, or `None` when it is
    /// already terminal.
    pub fn close_event(self) -> Option<RequestEvent> {
        match self {
            RequestState::Waiting => Some(RequestEvent::Cancel),
            RequestState::InProgress => Some(RequestEvent::Finish),
            _ => None,
        }
    }

    /// The state reached by `event`, or an error naming the illegal move.
    pub const fn apply(self, event: RequestEvent) -> Result<RequestState, IllegalRequestTransition> {
        use RequestEvent as E;
        use RequestState as S;
        let to = match (self, event) {
            (S::Waiting, E::Start) => S::InProgress,
            (S::Waiting, E::Cancel) => S::Cancelled,
            (S::Waiting, E::Timeout) => S::Timeout,
            (S::Waiting, E::Invalidate) => S::Invalid,
            (S::InProgress, E::Finish) => S::Done,
            (S::InProgress, E::Fail) => S::Failed,
            _ => return Err(IllegalRequestTransition { from: self, event }),
        };
        Ok(to)
    }
}

/// One move of the request table, checked when compiled: `to` is what
/// [`RequestState::apply`] gives for `event` in `from`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestMove {
    pub from: RequestState,
    pub event: RequestEvent,
    pub to: RequestState,
}

impl RequestMove {
    /// The start of a lease (waiting → in_progress), committed by the
    /// database with the lease's start.
    pub const STARTED: RequestMove = RequestMove::of(RequestState::Waiting, RequestEvent::Start);

    /// The move of `event` from `from`. Used in a `const`, a move the
    /// table does not have fails the build.
    const fn of(from: RequestState, event: RequestEvent) -> RequestMove {
        match from.apply(event) {
            Ok(to) => RequestMove { from, event, to },
            Err(_) => panic!("core's request table has no such move"),
        }
    }
}

impl fmt::Display for RequestState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RequestState {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        RequestState::ALL
            .into_iter()
            .find(|s| s.as_str() == text)
            .ok_or_else(|| format!("unknown request state {text:?}"))
    }
}

/// What can happen to a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestEvent {
    /// The matched worker installed the lease key: the lease starts.
    Start,
    /// Owner or admin closed a waiting request.
    Cancel,
    /// The deadline passed before a lease started.
    Timeout,
    /// No registered worker can ever serve it.
    Invalidate,
    /// Owner or admin closed the lease, or it expired.
    Finish,
    /// Its worker failed, went to maintenance or lost its agent.
    Fail,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a request that is {from} cannot take event {event:?}")]
pub struct IllegalRequestTransition {
    pub from: RequestState,
    pub event: RequestEvent,
}

/// Server-wide limits and defaults for request schedules (SPEC §11).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScheduleLimits {
    pub default_lease: Duration,
    pub max_lease: Duration,
    pub default_deadline: Duration,
}

impl Default for ScheduleLimits {
    fn default() -> Self {
        ScheduleLimits {
            default_lease: Duration::from_secs(3600),
            max_lease: Duration::from_secs(24 * 3600),
            default_deadline: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// When a request may start, when it gives up, and how long its lease is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Schedule {
    pub valid_after: SystemTime,
    pub deadline: SystemTime,
    pub lease: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("deadline {0} is not in the future")]
    DeadlinePassed(String),
    #[error("valid_after must be before deadline")]
    ValidAfterNotBeforeDeadline,
    #[error("lease must be at least {}", crate::time::format_duration(MIN_LEASE))]
    LeaseTooShort,
    #[error("lease {asked} is longer than the server's max_lease {max}")]
    LeaseTooLong { asked: String, max: String },
    #[error(transparent)]
    OutOfRange(#[from] crate::time::TimeError),
}

/// The shortest lease a request may ask for: the database keeps lease
/// lengths in milliseconds, and a lease shorter than a second is no lease.
pub const MIN_LEASE: Duration = Duration::from_secs(1);

impl Schedule {
    /// The schedule of a new request, filling in defaults.
    pub fn for_submission(
        now: SystemTime,
        valid_after: Option<SystemTime>,
        deadline: Option<SystemTime>,
        lease: Option<Duration>,
        limits: &ScheduleLimits,
    ) -> Result<Schedule, ScheduleError> {
        let valid_after = Timestamp::new(valid_after.unwrap_or(now))?.get();
        let deadline = match deadline {
            Some(d) => d,
            None => Timestamp::new(valid_after.max(now))?.checked_add(limits.default_deadline)?.get(),
        };
        let lease = lease.unwrap_or(limits.default_lease);
        if lease < MIN_LEASE {
            return Err(ScheduleError::LeaseTooShort);
        }
        if lease > limits.max_lease {
            return Err(ScheduleError::LeaseTooLong {
                asked: crate::time::format_duration(lease),
                max: crate::time::format_duration(limits.max_lease),
            });
        }
        Schedule { valid_after, deadline, lease }.checked(now)
    }

    /// The schedule after an update of a waiting request.
    pub fn updated(
        self,
        now: SystemTime,
        valid_after: Option<SystemTime>,
        deadline: Option<SystemTime>,
    ) -> Result<Schedule, ScheduleError> {
        Schedule {
            valid_after: valid_after.unwrap_or(self.valid_after),
            deadline: deadline.unwrap_or(self.deadline),
            lease: self.lease,
        }
        .checked(now)
    }

    /// Every time in range (whoever built them), and in order.
    fn checked(self, now: SystemTime) -> Result<Schedule, ScheduleError> {
        Timestamp::new(self.valid_after)?;
        Timestamp::new(self.deadline)?;
        if self.deadline <= now {
            return Err(ScheduleError::DeadlinePassed(crate::time::format_rfc3339(self.deadline)));
        }
        if self.valid_after >= self.deadline {
            return Err(ScheduleError::ValidAfterNotBeforeDeadline);
        }
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Input: a move the table does not have (starting a finished
    /// request). Must: be refused; in a `const` (as `STARTED` is) that
    /// refusal fails the build.
    #[test]
    #[should_panic(expected = "core's request table has no such move")]
    fn a_move_the_table_lacks_is_refused() {
        let _ = RequestMove::of(RequestState::Done, RequestEvent::Start);
    }

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
    }

    #[test]
    fn every_transition_of_the_spec_table_and_no_other() {
        use RequestEvent as E;
        use RequestState as S;
        let allowed = [
            (S::Waiting, E::Start, S::InProgress),
            (S::Waiting, E::Cancel, S::Cancelled),
            (S::Waiting, E::Timeout, S::Timeout),
            (S::Waiting, E::Invalidate, S::Invalid),
            (S::InProgress, E::Finish, S::Done),
            (S::InProgress, E::Fail, S::Failed),
        ];
        let events = [E::Start, E::Cancel, E::Timeout, E::Invalidate, E::Finish, E::Fail];
        for from in S::ALL {
            for event in events {
                let expected = allowed.iter().find(|(f, e, _)| *f == from && *e == event).map(|(_, _, to)| *to);
                assert_eq!(from.apply(event).ok(), expected, "{from} + {event:?}");
            }
        }
    }

    #[test]
    fn terminal_states_cannot_be_closed() {
        for state in RequestState::ALL {
            assert_eq!(state.close_event().is_none(), state.is_terminal(), "{state}");
        }
    }

    #[test]
    fn states_round_trip_through_text() {
        for state in RequestState::ALL {
            assert_eq!(state.as_str().parse::<RequestState>().unwrap(), state);
            assert_eq!(serde_json::to_string(&state).unwrap(), format!("\"{}\"", state.as_str()));
        }
    }

    #[test]
    fn defaults_are_filled_in() {
        let limits = ScheduleLimits::default();
        let s = Schedule::for_submission(t(0), None, None, None, &limits).unwrap();
        assert_eq!(s.valid_after, t(0));
        assert_eq!(s.deadline, t(7 * 24 * 3600));
        assert_eq!(s.lease, Duration::from_secs(3600));
    }

    #[test]
    fn bad_schedules_are_refused() {
        let limits = ScheduleLimits::default();
        let now = t(100);
        let cases = [
            ("deadline in the past", None, Some(t(50)), None),
            ("deadline now", None, Some(t(100)), None),
            ("valid_after after deadline", Some(t(500)), Some(t(400)), None),
            ("valid_after equal to deadline", Some(t(400)), Some(t(400)), None),
            ("zero lease", None, None, Some(Duration::ZERO)),
            ("lease of 500us (class 9)", None, None, Some(Duration::from_micros(500))),
            (
                "deadline past 9999 (class 1)",
                None,
                Some(SystemTime::UNIX_EPOCH + Duration::from_secs(253_402_300_800)),
                None,
            ),
            ("valid_after before 1970 (class 1)", Some(SystemTime::UNIX_EPOCH - Duration::from_secs(1)), None, None),
            ("lease over max", None, None, Some(Duration::from_secs(25 * 3600))),
        ];
        for (name, valid_after, deadline, lease) in cases {
            assert!(Schedule::for_submission(now, valid_after, deadline, lease, &limits).is_err(), "{name}");
        }
    }

    #[test]
    fn update_keeps_unchanged_fields_and_rechecks() {
        let limits = ScheduleLimits::default();
        let s = Schedule::for_submission(t(0), None, Some(t(1000)), None, &limits).unwrap();
        let moved = s.updated(t(10), Some(t(500)), None).unwrap();
        assert_eq!(moved.deadline, t(1000));
        assert_eq!(moved.valid_after, t(500));
        assert!(s.updated(t(10), Some(t(2000)), None).is_err());
    }

    /// Issue 13, class 1: the default deadline is added, checked, to a
    /// valid_after near the end of time.
    #[test]
    fn class1_default_deadline_past_9999_is_an_error() {
        let limits = ScheduleLimits::default();
        let late = crate::time::Timestamp::max().get() - Duration::from_secs(3600);
        let result = Schedule::for_submission(t(0), Some(late), None, None, &limits);
        assert!(matches!(result, Err(ScheduleError::OutOfRange(_))), "{result:?}");
    }
}
