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

/// Battery below this (percent) fails the worker, by default.
pub const MIN_BATTERY_PERCENT: f64 = 5.0;
/// Temperature above this (degrees Celsius) fails the worker, by default.
pub const MAX_TEMPERATURE_C: f64 = 90.0;

/// What a reported missing device does to a worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceMissing {
    /// The worker fails (a running lease fails with it).
    Fail,
    /// The worker is held in recovery until the device is back (a running
    /// lease goes on), e.g. for phones that drop off USB while rebooting.
    Recovery,
}

/// The thresholds of the health and recovery rules (server settings; the
/// defaults are the constants of this module and of [`crate::facts`]).
/// Between the recovery and the failure thresholds a worker is held out of
/// matching; past the failure thresholds it fails.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Thresholds {
    pub fail_battery_below: f64,
    pub fail_temperature_above: f64,
    pub recovery_battery_below: f64,
    pub recovery_temperature_above: f64,
    pub device_missing: DeviceMissing,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            fail_battery_below: MIN_BATTERY_PERCENT,
            fail_temperature_above: MAX_TEMPERATURE_C,
            recovery_battery_below: crate::facts::RECOVERY_BATTERY_PERCENT,
            recovery_temperature_above: crate::facts::RECOVERY_TEMPERATURE_C,
            device_missing: DeviceMissing::Fail,
        }
    }
}

impl Thresholds {
    /// Checks that the thresholds make sense: finite, batteries between 0
    /// and 100 percent, and recovery reached before failure (a recovery
    /// battery threshold at or above the failing one, a recovery
    /// temperature at or below the failing one).
    pub fn validate(&self) -> Result<(), String> {
        let all = [
            self.fail_battery_below,
            self.fail_temperature_above,
            self.recovery_battery_below,
            self.recovery_temperature_above,
        ];
        if all.iter().any(|v| !v.is_finite()) {
            return Err("health thresholds must be finite numbers".to_string());
        }
        let percent = 0.0..=100.0;
        if !percent.contains(&self.fail_battery_below) || !percent.contains(&self.recovery_battery_below) {
            return Err("battery thresholds must be between 0 and 100 (percent)".to_string());
        }
        if self.recovery_battery_below < self.fail_battery_below {
            return Err("recovery_battery_below must not be under fail_battery_below".to_string());
        }
        if self.recovery_temperature_above > self.fail_temperature_above {
            return Err("recovery_temperature_above must not be over fail_temperature_above".to_string());
        }
        Ok(())
    }
}

/// Whether the facts report the device missing.
pub(crate) fn device_missing(facts: &Map<String, Value>) -> bool {
    facts.get("device_attached") == Some(&Value::Bool(false))
        || facts.get("device").and_then(Value::as_str) == Some("missing")
}

/// Applies the rules in order; the first one that fails decides.
///
/// - `healthy: false` → failed with the agent's `error` text, if any.
/// - `device_attached: false` (or `device: "missing"`) → "device missing"
///   (unless the thresholds make that a recovery).
/// - `battery` under `fail_battery_below` → "battery low".
/// - `temperature` over `fail_temperature_above` → "overheating".
///
/// Unknown facts are ignored; facts of the wrong type are ignored too rather
/// than failing a worker for an agent's formatting.
pub fn evaluate(facts: &Map<String, Value>, limits: &Thresholds) -> Verdict {
    if facts.get("healthy") == Some(&Value::Bool(false)) {
        let detail = facts.get("error").and_then(Value::as_str).unwrap_or("agent reported the worker unhealthy");
        return Verdict::Failed(format!("unhealthy: {detail}"));
    }
    if limits.device_missing == DeviceMissing::Fail && device_missing(facts) {
        return Verdict::Failed("device missing".to_string());
    }
    if let Some(battery) = facts.get("battery").and_then(Value::as_f64)
        && battery < limits.fail_battery_below
    {
        return Verdict::Failed(format!("battery low: {battery}%"));
    }
    if let Some(temperature) = facts.get("temperature").and_then(Value::as_f64)
        && temperature > limits.fail_temperature_above
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
        evaluate(value.as_object().unwrap(), &Thresholds::default())
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

#[cfg(test)]
mod threshold_tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn thresholds_move_the_lines_and_a_missing_device_may_be_a_recovery() {
        let limits = Thresholds {
            fail_battery_below: 10.0,
            fail_temperature_above: 80.0,
            recovery_battery_below: 50.0,
            recovery_temperature_above: 45.0,
            device_missing: DeviceMissing::Recovery,
        };
        let facts = |v: Value| v.as_object().unwrap().clone();
        assert_eq!(evaluate(&facts(json!({"battery": 7})), &limits), Verdict::Failed("battery low: 7%".into()));
        assert_eq!(evaluate(&facts(json!({"battery": 12, "temperature": 79})), &limits), Verdict::Healthy);
        assert_eq!(evaluate(&facts(json!({"device_attached": false})), &limits), Verdict::Healthy);
        let recovery = |v: Value| crate::facts::recovery_reason(&facts(v), &limits);
        assert_eq!(recovery(json!({"battery": 40})), Some("battery charging: 40%".to_string()));
        assert_eq!(recovery(json!({"temperature": 50})), Some("cooling down: 50°C".to_string()));
        assert_eq!(recovery(json!({"device_attached": false})), Some("device missing".to_string()));
        assert_eq!(recovery(json!({"battery": 60, "temperature": 30})), None);
        let default = Thresholds::default();
        assert_eq!(crate::facts::recovery_reason(&facts(json!({"device": "missing"})), &default), None);
        assert!(limits.validate().is_ok());
        let upside_down = Thresholds { recovery_battery_below: 5.0, ..limits };
        assert!(upside_down.validate().unwrap_err().contains("recovery_battery_below"));
        let hotter = Thresholds { recovery_temperature_above: 85.0, ..limits };
        assert!(hotter.validate().unwrap_err().contains("recovery_temperature_above"));
        assert!(Thresholds { fail_battery_below: f64::NAN, ..limits }.validate().is_err());
        assert!(Thresholds { recovery_battery_below: 101.0, ..limits }.validate().is_err());
    }
}
