//! Rules applied to the facts an agent observes about a worker (the output
//! of its `interrogate` hook, sent with every heartbeat).

use serde_json::{Map, Value};

/// What the facts say about a worker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Healthy,
    /// The worker must not be used; the reason is shown to users.
    Failed(String),
}

/// Battery below this (percent) fails the worker.
pub const MIN_BATTERY_PERCENT: f64 = 5.0;
/// Temperature above this (degrees Celsius) fails the worker.
pub const MAX_TEMPERATURE_C: f64 = 90.0;

/// Applies the rules in order; the first one that fails decides.
///
/// - `healthy: false` → failed with the agent's `error` text, if any.
/// - `device_attached: false` (or `device: "missing"`) → "device missing".
/// - `battery` under [`MIN_BATTERY_PERCENT`] → "battery low".
/// - `temperature` over [`MAX_TEMPERATURE_C`] → "overheating".
///
/// Unknown facts are ignored; facts of the wrong type are ignored too rather
/// than failing a worker for an agent's formatting.
pub fn evaluate(facts: &Map<String, Value>) -> Verdict {
    if facts.get("healthy") == Some(&Value::Bool(false)) {
        let detail = facts.get("error").and_then(Value::as_str).unwrap_or("agent reported the worker unhealthy");
        return Verdict::Failed(format!("unhealthy: {detail}"));
    }
    let missing = facts.get("device_attached") == Some(&Value::Bool(false))
        || facts.get("device").and_then(Value::as_str) == Some("missing");
    if missing {
        return Verdict::Failed("device missing".to_string());
    }
    if let Some(battery) = facts.get("battery").and_then(Value::as_f64)
        && battery < MIN_BATTERY_PERCENT
    {
        return Verdict::Failed(format!("battery low: {battery}%"));
    }
    if let Some(temperature) = facts.get("temperature").and_then(Value::as_f64)
        && temperature > MAX_TEMPERATURE_C
    {
        return Verdict::Failed(format!("overheating: {temperature}°C"));
    }
    Verdict::Healthy
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn verdict(value: Value) -> Verdict {
        evaluate(value.as_object().unwrap())
    }

    #[test]
    fn table() {
        let cases = [
            (json!({}), Verdict::Healthy),
            (json!({"battery": 80, "temperature": 40, "device_attached": true}), Verdict::Healthy),
            (json!({"device_attached": false}), Verdict::Failed("device missing".into())),
            (json!({"device": "missing"}), Verdict::Failed("device missing".into())),
            (json!({"battery": 3}), Verdict::Failed("battery low: 3%".into())),
            (json!({"temperature": 95.5}), Verdict::Failed("overheating: 95.5°C".into())),
            (json!({"healthy": false, "error": "usb reset"}), Verdict::Failed("unhealthy: usb reset".into())),
            (json!({"battery": "low"}), Verdict::Healthy),
        ];
        for (facts, expected) in cases {
            assert_eq!(verdict(facts.clone()), expected, "{facts}");
        }
    }
}
