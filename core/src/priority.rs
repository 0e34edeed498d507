//! Request priority: 1 is the most urgent, 16 the least, 8 by default.

use std::fmt;

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "i64", into = "i64")]
pub struct Priority(u8);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("priority must be an integer from 1 (most urgent) to 16 (least urgent), got {0}")]
pub struct PriorityOutOfRange(pub i64);

impl Priority {
    pub const HIGHEST: Priority = Priority(1);
    pub const LOWEST: Priority = Priority(16);
    pub const DEFAULT: Priority = Priority(8);

    pub fn get(self) -> u8 {
        self.0
    }
}

impl Default for Priority {
    fn default() -> Self {
        Priority::DEFAULT
    }
}

impl TryFrom<i64> for Priority {
    type Error = PriorityOutOfRange;
    fn try_from(value: i64) -> Result<Self, Self::Error> {
        if (1..=16).contains(&value) { Ok(Priority(value as u8)) } else { Err(PriorityOutOfRange(value)) }
    }
}

impl From<Priority> for i64 {
    fn from(value: Priority) -> i64 {
        i64::from(value.0)
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_inclusive_and_nothing_else_is_accepted() {
        for (input, ok) in [(0, false), (1, true), (8, true), (16, true), (17, false), (-3, false)] {
            assert_eq!(Priority::try_from(input).is_ok(), ok, "priority {input}");
        }
        assert_eq!(Priority::default().get(), 8);
    }

    #[test]
    fn json_outside_range_is_rejected() {
        assert!(serde_json::from_str::<Priority>("0").is_err());
        assert!(serde_json::from_str::<Priority>("17").is_err());
        assert!(serde_json::from_str::<Priority>("\"3\"").is_err());
        assert_eq!(serde_json::from_str::<Priority>("3").unwrap().get(), 3);
    }
}
