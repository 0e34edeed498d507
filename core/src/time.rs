//! Time on the wire: RFC 3339 UTC timestamps and humantime durations, and
//! the ranges every value a user sends must fall in (SPEC §12).
//!
//! corral keeps instants as [`SystemTime`] truncated to whole microseconds,
//! the precision of PostgreSQL's `timestamptz`, so a value read back from the
//! database compares equal to the one written.
//!
//! Every instant that comes from outside goes through [`Timestamp`]: it lies
//! between [`Timestamp::MIN`] (1970-01-01T00:00:00Z) and [`Timestamp::max`]
//! (9999-12-31T23:59:59.999999Z), the range RFC 3339 and humantime can
//! write. Every duration that comes from outside goes through
//! [`parse_duration`], which refuses anything longer than [`MAX_DURATION`]
//! (100 years), so adding it to a valid instant cannot overflow. Parsing
//! never panics, whatever the text; formatting never panics, whatever the
//! instant (one outside the range, say a row written by an older server,
//! is written as the nearest end of the range).

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Seconds from the epoch to 9999-12-31T23:59:59Z.
const MAX_SECONDS: u64 = 253_402_300_799;

/// The longest duration a user may send anywhere (a lease, a prolongation,
/// a wait): 100 years of 365.25 days, humantime's `100y`.
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 31_557_600);

/// Why a time or duration from outside was refused. Messages are written
/// for the user who sent it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimeError {
    #[error("{0:?} is not an RFC 3339 timestamp such as 2026-01-02T03:04:05Z")]
    NotRfc3339(String),
    #[error("{0} is outside the supported range 1970-01-01T00:00:00Z to 9999-12-31T23:59:59Z")]
    OutOfRange(String),
    #[error("{0:?} is not a duration such as \"90s\" or \"2h 30m\"")]
    NotDuration(String),
    #[error("{0:?} is longer than the longest duration allowed, 100 years")]
    DurationTooLong(String),
}

/// An instant between 1970-01-01T00:00:00Z and 9999-12-31T23:59:59.999999Z,
/// in whole microseconds. The only way in from text; arithmetic on it is
/// checked and a result outside the range is an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(SystemTime);

impl Timestamp {
    /// 1970-01-01T00:00:00Z.
    pub const MIN: Timestamp = Timestamp(UNIX_EPOCH);

    /// 9999-12-31T23:59:59.999999Z.
    pub fn max() -> Timestamp {
        Timestamp(UNIX_EPOCH + Duration::new(MAX_SECONDS, 999_999_000))
    }

    /// The instant, truncated to microseconds, if it is in range.
    pub fn new(t: SystemTime) -> Result<Timestamp, TimeError> {
        let t = truncate_to_micros(t);
        if t < Timestamp::MIN.0 || t > Timestamp::max().0 {
            return Err(TimeError::OutOfRange(describe(t)));
        }
        Ok(Timestamp(t))
    }

    /// Parses RFC 3339 with `Z` or a `±hh:mm` offset (a space may stand for
    /// the `T`); any text is an `Err`, never a panic.
    pub fn parse(text: &str) -> Result<Timestamp, TimeError> {
        let not = || TimeError::NotRfc3339(text.to_string());
        let t = match split_offset(text) {
            Some((base, offset)) => {
                if base.ends_with(['Z', 'z']) {
                    return Err(not());
                }
                let local = humantime::parse_rfc3339_weak(base).map_err(|_| not())?;
                match offset {
                    Offset::East(shift) => local.checked_sub(shift),
                    Offset::West(shift) => local.checked_add(shift),
                }
                .ok_or_else(|| TimeError::OutOfRange(text.to_string()))?
            }
            None => humantime::parse_rfc3339_weak(text).map_err(|_| not())?,
        };
        Timestamp::new(t).map_err(|_| TimeError::OutOfRange(text.to_string()))
    }

    pub fn get(self) -> SystemTime {
        self.0
    }

    /// `self + d`, or an error past 9999-12-31.
    pub fn checked_add(self, d: Duration) -> Result<Timestamp, TimeError> {
        let out = || TimeError::OutOfRange(format!("{self} + {}", format_duration(d)));
        self.0.checked_add(d).ok_or_else(out).and_then(|t| Timestamp::new(t).map_err(|_| out()))
    }

    /// `self - d`, or an error before 1970.
    pub fn checked_sub(self, d: Duration) -> Result<Timestamp, TimeError> {
        let out = || TimeError::OutOfRange(format!("{self} - {}", format_duration(d)));
        self.0.checked_sub(d).ok_or_else(out).and_then(|t| Timestamp::new(t).map_err(|_| out()))
    }
}

impl From<Timestamp> for SystemTime {
    fn from(t: Timestamp) -> SystemTime {
        t.0
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_rfc3339_micros(self.0))
    }
}

impl FromStr for Timestamp {
    type Err = TimeError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Timestamp::parse(text)
    }
}

impl serde::Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Timestamp, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Timestamp::parse(&text).map_err(serde::de::Error::custom)
    }
}

enum Offset {
    East(Duration),
    West(Duration),
}

/// Splits a trailing `±hh:mm` offset off, if the text ends with one. Works
/// on bytes and slices only at ASCII positions, so multi-byte text cannot
/// make it panic.
fn split_offset(text: &str) -> Option<(&str, Offset)> {
    let bytes = text.as_bytes();
    let at = bytes.len().checked_sub(6)?;
    let tail = &bytes[at..];
    let digit = |b: u8| b.is_ascii_digit().then(|| u64::from(b - b'0'));
    if tail[3] != b':' {
        return None;
    }
    let hours = digit(tail[1])? * 10 + digit(tail[2])?;
    let minutes = digit(tail[4])? * 10 + digit(tail[5])?;
    if hours > 23 || minutes > 59 {
        return None;
    }
    let shift = Duration::from_secs(hours * 3600 + minutes * 60);
    let offset = match tail[0] {
        b'+' => Offset::East(shift),
        b'-' => Offset::West(shift),
        _ => return None,
    };
    // `at` is the position of an ASCII sign: a character boundary.
    Some((text.get(..at)?, offset))
}

/// How an out-of-range instant is named in an error.
fn describe(t: SystemTime) -> String {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => format!("{}s after 1970-01-01T00:00:00Z", d.as_secs()),
        Err(e) => format!("{}s before 1970-01-01T00:00:00Z", e.duration().as_secs()),
    }
}

/// Drops sub-microsecond precision.
pub fn truncate_to_micros(t: SystemTime) -> SystemTime {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => {
            let micros = Duration::new(d.as_secs(), d.subsec_micros() * 1000);
            UNIX_EPOCH + micros
        }
        Err(_) => t,
    }
}

/// The nearest instant in [`Timestamp`]'s range: how an instant that is
/// already stored is shown, whatever it is.
pub fn clamp(t: SystemTime) -> SystemTime {
    t.clamp(Timestamp::MIN.0, Timestamp::max().0)
}

/// Formats like `2026-11-21T21:10:33.123456Z`. Never panics: an instant
/// outside 1970..=9999 is written as the nearest end of that range.
pub fn format_rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_micros(clamp(t)).to_string()
}

/// Parses an RFC 3339 timestamp in [`Timestamp`]'s range; offsets other
/// than `Z` are accepted.
pub fn parse_rfc3339(text: &str) -> Result<SystemTime, String> {
    Timestamp::parse(text).map(SystemTime::from).map_err(|e| e.to_string())
}

/// Formats like `2h 30m`.
pub fn format_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// Parses a humantime duration of at most [`MAX_DURATION`].
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    bounded_duration(text).map_err(|e| e.to_string())
}

/// [`parse_duration`] with a typed error.
pub fn bounded_duration(text: &str) -> Result<Duration, TimeError> {
    let d = humantime::parse_duration(text).map_err(|_| TimeError::NotDuration(text.to_string()))?;
    if d > MAX_DURATION {
        return Err(TimeError::DurationTooLong(text.to_string()));
    }
    Ok(d)
}

/// `#[serde(with = "corral_core::time::rfc3339")]`: a [`Timestamp`] on the
/// wire, a `SystemTime` in the code.
pub mod rfc3339 {
    use super::*;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_rfc3339(*t))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        Timestamp::deserialize(d).map(SystemTime::from)
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
        Option::<Timestamp>::deserialize(d).map(|t| t.map(SystemTime::from))
    }
}

/// `#[serde(with = "corral_core::time::duration")]`: at most
/// [`MAX_DURATION`].
pub mod duration {
    use super::*;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        bounded_duration(&text).map_err(serde::de::Error::custom)
    }
}

/// `#[serde(with = "corral_core::time::duration_map")]`: a table of
/// names to durations, each at most [`MAX_DURATION`].
pub mod duration_map {
    use std::collections::BTreeMap;

    use super::*;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(map: &BTreeMap<String, Duration>, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(map.iter().map(|(k, d)| (k, format_duration(*d))))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, Duration>, D::Error> {
        BTreeMap::<String, String>::deserialize(d)?
            .into_iter()
            .map(|(k, text)| bounded_duration(&text).map(|d| (k, d)).map_err(serde::de::Error::custom))
            .collect()
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
        match Option::<std::borrow::Cow<'de, str>>::deserialize(d)? {
            Some(text) => bounded_duration(&text).map(Some).map_err(serde::de::Error::custom),
            None => Ok(None),
        }
    }
}

/// Cases per property test of the parsers: 256 by default (CI), as many
/// as `CORRAL_FUZZ_CASES` says when it is set.
#[cfg(test)]
pub(crate) fn fuzz_cases() -> u32 {
    std::env::var("CORRAL_FUZZ_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(256)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

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

    /// Issue 13, class 1: each of these once panicked or was stored.
    #[test]
    fn class1_times_outside_the_range_are_errors() {
        let cases = [
            ("before the epoch by its offset", "1970-01-01T00:00:00+01:00"),
            ("year 10000", "10000-01-01T00:00:00Z"),
            ("past 9999 by its offset", "9999-12-31T23:30:00-01:00"),
            ("before 1970", "1969-12-31T23:59:59Z"),
            ("multi-byte before the offset", "2026-01-02T03:04:0é+01:00"),
            ("multi-byte offset", "2026-01-02T03:04:05+0é:00"),
            ("offset with a character below '0'", "2026-01-02T03:04:05+!1:00"),
            ("multi-byte only", "ééééééééééééééééééééé"),
            ("Z and an offset", "2026-01-02T03:04:05Z+01:00"),
            ("empty", ""),
        ];
        for (name, text) in cases {
            assert!(Timestamp::parse(text).is_err(), "{name}: {text:?}");
            assert!(serde_json::from_value::<Timestamp>(serde_json::json!(text)).is_err(), "{name}");
        }
        assert_eq!(Timestamp::parse("1970-01-01T01:00:00+01:00").unwrap(), Timestamp::MIN);
        assert_eq!(Timestamp::parse("9999-12-31T23:59:59.999999Z").unwrap(), Timestamp::max());
    }

    #[test]
    fn class1_arithmetic_past_9999_is_an_error() {
        assert!(Timestamp::max().checked_add(Duration::from_micros(1)).is_err());
        assert!(Timestamp::MIN.checked_sub(Duration::from_micros(1)).is_err());
        assert!(Timestamp::MIN.checked_add(Duration::MAX).is_err());
        assert_eq!(
            Timestamp::MIN.checked_add(Duration::from_secs(1)).unwrap().get(),
            UNIX_EPOCH + Duration::from_secs(1)
        );
    }

    #[test]
    fn class1_formatting_any_instant_never_panics() {
        let before = UNIX_EPOCH - Duration::from_secs(3600);
        assert_eq!(format_rfc3339(before), "1970-01-01T00:00:00.000000Z");
        let after = UNIX_EPOCH + Duration::from_secs(MAX_SECONDS + 3600);
        assert_eq!(format_rfc3339(after), "9999-12-31T23:59:59.999999Z");
    }

    #[test]
    fn class1_durations_past_100_years_are_errors() {
        assert!(parse_duration("300000000000y").is_err());
        assert!(parse_duration("100y 1s").is_err());
        assert_eq!(parse_duration("100y").unwrap(), MAX_DURATION);
        assert!(parse_duration("99999999999999999999999s").is_err());
        // MAX_DURATION past the last valid instant still does not overflow.
        assert!(Timestamp::max().get().checked_add(MAX_DURATION).is_some());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(fuzz_cases()))]

        #[test]
        fn any_text_parses_or_fails_without_panic(text in any::<String>()) {
            let _ = Timestamp::parse(&text);
            let _ = parse_duration(&text);
        }

        #[test]
        fn time_shaped_text_never_panics_and_what_parses_round_trips(
            text in r"[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{0,12})?(Z|[+-][0-9]{2}:[0-9]{2}|[+-].{2}:.{2}|é|)"
        ) {
            if let Ok(t) = Timestamp::parse(&text) {
                prop_assert_eq!(Timestamp::parse(&t.to_string()).unwrap(), t);
                prop_assert!(t >= Timestamp::MIN && t <= Timestamp::max());
            }
        }

        #[test]
        fn any_instant_formats_and_in_range_ones_round_trip(secs in any::<u64>(), nanos in 0u32..1_000_000_000) {
            let Some(t) = UNIX_EPOCH.checked_add(Duration::new(secs / 4, nanos)) else { return Ok(()) };
            let text = format_rfc3339(t);
            if let Ok(valid) = Timestamp::new(t) {
                prop_assert_eq!(Timestamp::parse(&text).unwrap(), valid);
            }
        }

        #[test]
        fn durations_that_parse_round_trip_and_stay_bounded(secs in 0u64..=MAX_DURATION.as_secs() * 2, micros in 0u32..1_000_000) {
            let d = Duration::new(secs, micros * 1000);
            match parse_duration(&format_duration(d)) {
                Ok(back) => { prop_assert_eq!(back, d); prop_assert!(back <= MAX_DURATION); }
                Err(_) => prop_assert!(d > MAX_DURATION),
            }
        }
    }
}
