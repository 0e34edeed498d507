//! Time on the wire: RFC 3339 UTC timestamps and humantime durations.
//!
//! corral keeps instants as [`SystemTime`] truncated to whole microseconds,
//! the precision of PostgreSQL's `timestamptz`, so a value read back from the
//! database compares equal to the one written.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Drops sub-microsecond precision.
pub fn truncate_to_micros(t: SystemTime) -> SystemTime {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => UNIX_EPOCH + Duration::from_micros(d.as_micros() as u64),
        Err(_) => t,
    }
}

/// Formats like `2026-11-21T21:10:33.123456Z`.
pub fn format_rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_micros(t).to_string()
}

/// Parses an RFC 3339 timestamp; offsets other than `Z` are accepted.
pub fn parse_rfc3339(text: &str) -> Result<SystemTime, String> {
    // An explicit offset first: humantime's weak parser would accept the
    // text before it and drop the offset when the seconds have a fraction.
    parse_with_offset(text)
        .or_else(|_| humantime::parse_rfc3339_weak(text).map_err(|_| ()))
        .map(truncate_to_micros)
        .map_err(|_| format!("{text:?} is not an RFC 3339 timestamp such as 2026-01-02T03:04:05Z"))
}

/// humantime only knows `Z`; accept `+hh:mm` / `-hh:mm` offsets too.
fn parse_with_offset(text: &str) -> Result<SystemTime, ()> {
    let bytes = text.as_bytes();
    if bytes.len() < 6 {
        return Err(());
    }
    let (base, offset) = text.split_at(text.len() - 6);
    let sign = match offset.as_bytes()[0] {
        b'+' => 1i64,
        b'-' => -1i64,
        _ => return Err(()),
    };
    let (hh, mm) = offset[1..].split_once(':').ok_or(())?;
    let hours: i64 = hh.parse().map_err(|_| ())?;
    let minutes: i64 = mm.parse().map_err(|_| ())?;
    if hours > 23 || minutes > 59 {
        return Err(());
    }
    let local = humantime::parse_rfc3339_weak(base).map_err(|_| ())?;
    let shift = Duration::from_secs((hours * 3600 + minutes * 60) as u64);
    Ok(if sign > 0 { local - shift } else { local + shift })
}

/// Formats like `2h 30m`.
pub fn format_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .map_err(|e| format!("{text:?} is not a duration such as \"90s\" or \"2h 30m\": {e}"))
}

/// `#[serde(with = "corral_core::time::rfc3339")]`
pub mod rfc3339 {
    use super::*;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_rfc3339(*t))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let text = String::deserialize(d)?;
        parse_rfc3339(&text).map_err(serde::de::Error::custom)
    }
}

/// `#[serde(default, with = "corral_core::time::opt_rfc3339")]`
pub mod opt_rfc3339 {
    use super::*;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.serialize_str(&format_rfc3339(*t)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SystemTime>, D::Error> {
        match Option::<String>::deserialize(d)? {
            Some(text) => parse_rfc3339(&text).map(Some).map_err(serde::de::Error::custom),
            None => Ok(None),
        }
    }
}

/// `#[serde(with = "corral_core::time::duration")]`
pub mod duration {
    use super::*;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

/// `#[serde(default, with = "corral_core::time::opt_duration")]`
pub mod opt_duration {
    use super::*;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&format_duration(*d)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        match Option::<String>::deserialize(d)? {
            Some(text) => parse_duration(&text).map(Some).map_err(serde::de::Error::custom),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trips_at_microsecond_precision() {
        let t = truncate_to_micros(UNIX_EPOCH + Duration::from_nanos(1_790_000_000_123_456_789));
        assert_eq!(parse_rfc3339(&format_rfc3339(t)).unwrap(), t);
    }

    #[test]
    fn offsets_are_converted_to_utc() {
        let utc = parse_rfc3339("2026-01-02T03:04:05Z").unwrap();
        assert_eq!(parse_rfc3339("2026-01-02T05:04:05+02:00").unwrap(), utc);
        assert_eq!(parse_rfc3339("2026-01-02T01:04:05-02:00").unwrap(), utc);
        assert!(parse_rfc3339("yesterday").is_err());
        assert!(parse_rfc3339("2026-01-02T03:04:05+25:00").is_err());
        let fraction = parse_rfc3339("2026-01-02T03:04:05.5Z").unwrap();
        assert_eq!(parse_rfc3339("2026-01-02T05:04:05.5+02:00").unwrap(), fraction);
    }

    #[test]
    fn durations_in_humantime_form() {
        assert_eq!(parse_duration("2h 30m").unwrap(), Duration::from_secs(9000));
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert!(parse_duration("soon").is_err());
        assert_eq!(format_duration(Duration::from_secs(9000)), "2h 30m");
    }
}
