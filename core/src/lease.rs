//! Lease arithmetic: when a lease expires and how far it may be prolonged.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use crate::caps::Groups;
use crate::time::{Timestamp, format_duration, format_rfc3339};

/// The kind of key pair made for a lease.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum KeyKind {
    #[default]
    Ed25519,
    /// RSA, 2048 bits or more (what Boruta's clients expect).
    Rsa,
}

impl KeyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyKind::Ed25519 => "ed25519",
            KeyKind::Rsa => "rsa",
        }
    }
}

impl fmt::Display for KeyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for KeyKind {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "ed25519" => Ok(KeyKind::Ed25519),
            "rsa" => Ok(KeyKind::Rsa),
            _ => Err(format!("key type must be ed25519 or rsa, got {text:?}")),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProlongError {
    #[error("the lease may not end more than {max} from now; asked for {asked} from now")]
    PastCap { max: String, asked: String },
    #[error(
        "a lease on this worker may last at most {max} from its start ({started}), so it may not end after {limit}; \
         this prolong would end it at {asked}"
    )]
    PastTotal { max: String, started: String, limit: String, asked: String },
    #[error(transparent)]
    OutOfRange(#[from] crate::time::TimeError),
}

/// The expiry of a lease that starts at `start`, or an error when it would
/// end past 9999-12-31.
pub fn expiry(start: SystemTime, length: Duration) -> Result<SystemTime, crate::time::TimeError> {
    Timestamp::new(start)?.checked_add(length).map(SystemTime::from)
}

/// The new expiry after prolonging by `by`. A lease never reaches further
/// than `max_lease` past `now`; asking for more is refused, not clipped, so
/// the caller learns that its wish was not granted. All arithmetic is
/// checked: any `by` is an error or an answer, never a panic.
pub fn prolonged(
    now: SystemTime,
    current_expiry: SystemTime,
    by: Duration,
    max_lease: Duration,
) -> Result<SystemTime, ProlongError> {
    let now = Timestamp::new(now)?;
    let base = Timestamp::new(current_expiry.max(now.get()))?;
    let past_cap = |asked: Duration| ProlongError::PastCap {
        max: crate::time::format_duration(max_lease),
        asked: crate::time::format_duration(Duration::from_secs(asked.as_secs())),
    };
    let ahead = base.get().duration_since(now.get()).unwrap_or_default();
    let asked = ahead.checked_add(by).ok_or_else(|| past_cap(Duration::MAX))?;
    if asked > max_lease {
        return Err(past_cap(asked));
    }
    Ok(base.checked_add(by)?.get())
}

/// How long a lease may last in all, from its start, prolongs included
/// (`max_total_lease`): one limit, and optionally another for the workers
/// of some groups.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TotalLeaseLimit {
    pub default: Duration,
    pub by_group: BTreeMap<String, Duration>,
}

impl Default for TotalLeaseLimit {
    fn default() -> Self {
        TotalLeaseLimit { default: Duration::from_secs(7 * 24 * 3600), by_group: BTreeMap::new() }
    }
}

impl TotalLeaseLimit {
    /// The limit on a worker in `groups`: the longest override among its
    /// groups (an override exists to allow long work on some hardware), or
    /// the default when none of its groups has one.
    pub fn for_worker(&self, groups: &Groups) -> Duration {
        groups.iter().filter_map(|g| self.by_group.get(g).copied()).max().unwrap_or(self.default)
    }

    /// Refuses `new_expiry` for a lease that started at `started` when it
    /// passes `limit` from the start.
    pub fn check(limit: Duration, started: SystemTime, new_expiry: SystemTime) -> Result<(), ProlongError> {
        let end = Timestamp::new(started)?.checked_add(limit).map(SystemTime::from).unwrap_or(new_expiry);
        if new_expiry <= end {
            return Ok(());
        }
        Err(ProlongError::PastTotal {
            max: format_duration(limit),
            started: format_rfc3339(started),
            limit: format_rfc3339(end),
            asked: format_rfc3339(new_expiry),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn total_limit_counts_from_the_start_and_takes_the_longest_group_override() {
        let limit = TotalLeaseLimit {
            default: Duration::from_secs(7 * 86400),
            by_group: [
                ("soak".to_string(), Duration::from_secs(30 * 86400)),
                ("x".to_string(), Duration::from_secs(86400)),
            ]
            .into_iter()
            .collect(),
        };
        let none = Groups::default();
        let soak: Groups = ["soak", "x"].into_iter().collect();
        let short: Groups = ["x"].into_iter().collect();
        assert_eq!(limit.for_worker(&none), Duration::from_secs(7 * 86400));
        assert_eq!(limit.for_worker(&soak), Duration::from_secs(30 * 86400));
        assert_eq!(limit.for_worker(&short), Duration::from_secs(86400));
        let week = Duration::from_secs(7 * 86400);
        assert!(TotalLeaseLimit::check(week, t(0), t(7 * 86400)).is_ok(), "exactly the limit");
        let err = TotalLeaseLimit::check(week, t(0), t(7 * 86400 + 1)).unwrap_err();
        assert!(err.to_string().contains("at most 7days"), "{err}");
        // A start so late that start + limit passes 9999 limits nothing.
        let late = SystemTime::UNIX_EPOCH + Duration::from_secs(253_402_300_000);
        assert!(TotalLeaseLimit::check(week, late, late).is_ok());
    }

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
    }

    #[test]
    fn prolong_moves_expiry_forward_by_the_amount() {
        let max = Duration::from_secs(24 * 3600);
        assert_eq!(prolonged(t(100), t(3600), Duration::from_secs(600), max).unwrap(), t(4200));
    }

    #[test]
    fn prolong_of_an_expired_lease_counts_from_now() {
        let max = Duration::from_secs(24 * 3600);
        assert_eq!(prolonged(t(5000), t(3600), Duration::from_secs(600), max).unwrap(), t(5600));
    }

    #[test]
    fn prolong_past_the_cap_is_refused() {
        let max = Duration::from_secs(2 * 3600);
        assert!(prolonged(t(0), t(3600), Duration::from_secs(3600), max).is_ok());
        assert!(prolonged(t(0), t(3600), Duration::from_secs(3601), max).is_err());
    }

    /// Issue 13, class 1: `"by": "300000000000y"` once panicked the actor.
    #[test]
    fn class1_prolong_by_any_amount_is_an_answer_not_a_panic() {
        let max = Duration::from_secs(24 * 3600);
        for by in [Duration::MAX, Duration::from_secs(300_000_000_000 * 31_557_600), Duration::from_secs(u64::MAX)] {
            assert!(matches!(prolonged(t(0), t(3600), by, max), Err(ProlongError::PastCap { .. })));
            assert!(prolonged(t(0), t(3600), by, Duration::MAX).is_err());
        }
        let last = Timestamp::max().get();
        assert!(prolonged(last, last, Duration::from_secs(1), max).is_err());
    }

    #[test]
    fn class1_expiry_past_9999_is_an_error() {
        assert!(expiry(t(0), Duration::MAX).is_err());
        assert_eq!(expiry(t(0), Duration::from_secs(10)).unwrap(), t(10));
    }
}
