//! Lease arithmetic: when a lease expires and how far it may be prolonged.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

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
#[error("the lease may not end more than {max} from now; asked for {asked} from now")]
pub struct ProlongPastCap {
    pub max: String,
    pub asked: String,
}

/// The expiry of a lease that starts at `start`.
pub fn expiry(start: SystemTime, length: Duration) -> SystemTime {
    crate::time::truncate_to_micros(start + length)
}

/// The new expiry after prolonging by `by`. A lease never reaches further
/// than `max_lease` past `now`; asking for more is refused, not clipped, so
/// the caller learns that its wish was not granted.
pub fn prolonged(
    now: SystemTime,
    current_expiry: SystemTime,
    by: Duration,
    max_lease: Duration,
) -> Result<SystemTime, ProlongPastCap> {
    let base = current_expiry.max(now);
    let wanted = base + by;
    let cap = now + max_lease;
    if wanted > cap {
        let asked = wanted.duration_since(now).unwrap_or_default();
        return Err(ProlongPastCap {
            max: crate::time::format_duration(max_lease),
            asked: crate::time::format_duration(Duration::from_secs(asked.as_secs())),
        });
    }
    Ok(crate::time::truncate_to_micros(wanted))
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
