//! What an agent observes about a worker (its `interrogate` hook's output),
//! the dimensions it derives from it, and an admin's note on a worker.
//!
//! # Bounds
//!
//! Facts are a JSON object checked by the one rule of caps
//! ([`crate::caps::check_cap`]), applied to each key and to the value's
//! text (a string as it is, any other value as compact JSON): at most 64
//! keys, a key of 1 to 128 bytes without control characters, `=` or
//! surrounding whitespace, a value of at most 1024 bytes without control
//! characters. Dimensions are caps ([`Caps::validated`]) and may not use
//! the `UUID` key (it pins a request to one worker by its id). A note is at
//! most [`MAX_NOTE_LEN`] bytes with no control character but newline.
//!
//! # Dimensions
//!
//! The caps a request matches on are the worker's dimensions with the caps
//! of its agent's configuration laid over them ([`merged_caps`]): what an
//! admin configured wins over what the device reports.

use serde_json::{Map, Value};

use crate::Caps;
use crate::caps::{CapsError, UUID_CAP, check_cap};

/// Most facts per worker.
pub const MAX_FACTS: usize = 64;
/// Longest note, in bytes.
pub const MAX_NOTE_LEN: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FactsError {
    #[error("at most {MAX_FACTS} facts are allowed, got {0}")]
    TooMany(usize),
    #[error("fact {key:?}: {cause}")]
    Fact { key: String, cause: CapsError },
    #[error("dimension {key:?}: {cause}")]
    Dimension { key: String, cause: CapsError },
    #[error("at most 64 dimensions are allowed, got {0}")]
    TooManyDimensions(usize),
    #[error("the {UUID_CAP} key cannot be a dimension (it pins requests to a worker by its id)")]
    UuidDimension,
    #[error("a note may be at most {MAX_NOTE_LEN} bytes, got {0}")]
    NoteTooLong(usize),
    #[error("a note may not contain control characters other than newline")]
    NoteChars,
}

/// The text a fact's value is checked as: a string as it is, anything else
/// as compact JSON.
fn value_text(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// Checks facts against the bounds of the module documentation.
pub fn check_facts(facts: &Map<String, Value>) -> Result<(), FactsError> {
    if facts.len() > MAX_FACTS {
        return Err(FactsError::TooMany(facts.len()));
    }
    for (key, value) in facts {
        // `UUID` is no cap key here: a fact may say anything about it.
        let checked_key = if key == UUID_CAP { "uuid" } else { key.as_str() };
        check_cap(checked_key, &value_text(value))
            .map_err(|cause| FactsError::Fact { key: key.chars().take(128).collect(), cause })?;
    }
    Ok(())
}

/// Checks dimensions: caps, without the `UUID` key.
pub fn check_dimensions(dimensions: &Caps) -> Result<(), FactsError> {
    if dimensions.len() > MAX_FACTS {
        return Err(FactsError::TooManyDimensions(dimensions.len()));
    }
    for (key, value) in dimensions.iter() {
        if key == UUID_CAP {
            return Err(FactsError::UuidDimension);
        }
        check_cap(key, value).map_err(|cause| FactsError::Dimension { key: key.chars().take(128).collect(), cause })?;
    }
    Ok(())
}

/// The caps requests match on: `dimensions`, with `configured` laid over
/// them (a configured cap wins over an interrogated one).
pub fn merged_caps(configured: &Caps, dimensions: &Caps) -> Caps {
    if dimensions.is_empty() {
        return configured.clone();
    }
    let mut merged = dimensions.clone();
    for (key, value) in configured.iter() {
        merged.insert(key, value);
    }
    merged
}

/// Battery below this (percent) puts a worker in recovery (charging).
pub const RECOVERY_BATTERY_PERCENT: f64 = 20.0;
/// Temperature above this (degrees Celsius) puts a worker in recovery
/// (cooling down).
pub const RECOVERY_TEMPERATURE_C: f64 = 60.0;

/// Why the facts keep a worker in recovery (out of matching until they
/// change), if they do: the agent's own `recovery` text, a missing device
/// (when the thresholds say so), a battery under `recovery_battery_below`
/// (default [`RECOVERY_BATTERY_PERCENT`]), a temperature over
/// `recovery_temperature_above` (default [`RECOVERY_TEMPERATURE_C`]).
/// Worse values fail the worker instead ([`crate::health`]); facts of the
/// wrong type are ignored.
pub fn recovery_reason(facts: &Map<String, Value>, limits: &crate::health::Thresholds) -> Option<String> {
    if let Some(text) = facts.get("recovery").and_then(Value::as_str).filter(|t| !t.trim().is_empty()) {
        return Some(text.to_string());
    }
    if limits.device_missing == crate::health::DeviceMissing::Recovery && crate::health::device_missing(facts) {
        return Some("device missing".to_string());
    }
    if let Some(battery) = facts.get("battery").and_then(Value::as_f64)
        && battery < limits.recovery_battery_below
    {
        return Some(format!("battery charging: {battery}%"));
    }
    if let Some(temperature) = facts.get("temperature").and_then(Value::as_f64)
        && temperature > limits.recovery_temperature_above
    {
        return Some(format!("cooling down: {temperature}°C"));
    }
    None
}

/// A note as stored: `None` for an empty (or all-whitespace) note, which
/// clears it; an error past the bounds.
pub fn checked_note(note: Option<&str>) -> Result<Option<String>, FactsError> {
    let Some(note) = note else { return Ok(None) };
    if note.len() > MAX_NOTE_LEN {
        return Err(FactsError::NoteTooLong(note.len()));
    }
    if note.chars().any(|c| c.is_control() && c != '\n') {
        return Err(FactsError::NoteChars);
    }
    let trimmed = note.trim();
    Ok((!trimmed.is_empty()).then(|| trimmed.to_string()))
}

/// A short description of how dimensions changed, for the worker's
/// history: `android_version 13 -> 14, device_model (none) -> p7`.
pub fn describe_change(before: &Caps, after: &Caps) -> String {
    let mut keys: Vec<&str> = before.iter().map(|(k, _)| k).chain(after.iter().map(|(k, _)| k)).collect();
    keys.sort_unstable();
    keys.dedup();
    let shown = |v: Option<&str>| v.map_or_else(|| "(none)".to_string(), str::to_string);
    let changes: Vec<String> = keys
        .into_iter()
        .filter(|k| before.get(k) != after.get(k))
        .map(|k| format!("{k} {} -> {}", shown(before.get(k)), shown(after.get(k))))
        .collect();
    changes.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn caps(pairs: &[(&str, &str)]) -> Caps {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn facts_within_the_bounds_pass_and_others_say_why() {
        let ok = json!({"battery": 80, "temperature": 41.5, "device_attached": true, "agent_version": "1.2",
                        "uptime": "3d", "UUID": "not a uuid but a fact", "nested": {"a": [1, 2]}});
        assert_eq!(check_facts(ok.as_object().unwrap()), Ok(()));
        let too_many: Map<String, Value> = (0..65).map(|i| (format!("k{i}"), json!(i))).collect();
        assert_eq!(check_facts(&too_many), Err(FactsError::TooMany(65)));
        let cases = [
            json!({"": 1}),
            json!({"a=b": 1}),
            json!({" lead": 1}),
            json!({"bell\u{7}": 1}),
            json!({"long": "x".repeat(1025)}),
            json!({"ctl": "line\nbreak"}),
            json!({"big": vec!["x"; 300]}),
        ];
        for facts in cases {
            assert!(check_facts(facts.as_object().unwrap()).is_err(), "{facts}");
        }
    }

    #[test]
    fn dimensions_are_caps_without_uuid() {
        assert_eq!(check_dimensions(&caps(&[("android_version", "14")])), Ok(()));
        assert_eq!(check_dimensions(&caps(&[("UUID", "x")])), Err(FactsError::UuidDimension));
        assert!(check_dimensions(&caps(&[("k", "a\tb")])).is_err());
    }

    #[test]
    fn configured_caps_win_over_dimensions() {
        let configured = caps(&[("device_type", "pixel"), ("android_version", "13")]);
        let dimensions = caps(&[("android_version", "14"), ("device_model", "p7")]);
        assert_eq!(
            merged_caps(&configured, &dimensions),
            caps(&[("android_version", "13"), ("device_model", "p7"), ("device_type", "pixel")])
        );
        assert_eq!(merged_caps(&configured, &Caps::new()), configured);
    }

    #[test]
    fn recovery_comes_from_the_facts() {
        let reason = |v: Value| recovery_reason(v.as_object().unwrap(), &crate::health::Thresholds::default());
        assert_eq!(reason(json!({"battery": 80, "temperature": 40})), None);
        assert_eq!(reason(json!({"battery": 12})), Some("battery charging: 12%".to_string()));
        assert_eq!(reason(json!({"temperature": 70})), Some("cooling down: 70°C".to_string()));
        assert_eq!(reason(json!({"recovery": "rebooting", "battery": 12})), Some("rebooting".to_string()));
        assert_eq!(reason(json!({"recovery": " ", "battery": "low"})), None);
    }

    #[test]
    fn notes_are_bounded_and_empty_clears() {
        assert_eq!(checked_note(Some("flaky USB\nsee ticket 12")), Ok(Some("flaky USB\nsee ticket 12".to_string())));
        assert_eq!(checked_note(Some("  ")), Ok(None));
        assert_eq!(checked_note(None), Ok(None));
        assert_eq!(checked_note(Some("tab\there")), Err(FactsError::NoteChars));
        assert_eq!(checked_note(Some(&"x".repeat(1025))), Err(FactsError::NoteTooLong(1025)));
    }

    #[test]
    fn changes_are_described_key_by_key() {
        let before = caps(&[("android_version", "13"), ("gone", "x")]);
        let after = caps(&[("android_version", "14"), ("device_model", "p7")]);
        assert_eq!(
            describe_change(&before, &after),
            "android_version 13 -> 14, device_model (none) -> p7, gone x -> (none)"
        );
    }
}
