//! Capabilities (`key=value` facts about a worker, or demands of a request)
//! and groups (which users may lease which workers).
//!
//! # What a cap or group may contain
//!
//! One rule for every way in (native and Boruta requests, worker caps from
//! agents, `cap=key=value` filters), checked by [`check_cap`] and
//! [`Groups::validated`]:
//! - a request or worker has at most 64 caps and 64 groups;
//! - a cap key is 1 to 128 bytes of UTF-8 with no control character, no
//!   `=` and no leading or trailing whitespace;
//! - a cap value is 0 to 1024 bytes of UTF-8 with no control character;
//!   the value of the `UUID` cap is a UUID;
//! - a group name is 1 to 128 bytes of UTF-8 with no control character and
//!   no leading or trailing whitespace.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ids::WorkerId;

/// The cap key that pins a request to one worker by its UUID.
pub const UUID_CAP: &str = "UUID";

const MAX_CAPS: usize = 64;
const MAX_KEY_LEN: usize = 128;
const MAX_VALUE_LEN: usize = 1024;
const MAX_GROUPS: usize = 64;
const MAX_GROUP_LEN: usize = 128;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CapsError {
    #[error("at most {MAX_CAPS} caps are allowed, got {0}")]
    TooMany(usize),
    #[error("cap keys must be 1 to {MAX_KEY_LEN} bytes long")]
    BadKey,
    #[error(
        "cap key {0:?} is not allowed: keys may not contain control characters or '=', nor start or end with whitespace"
    )]
    KeyChars(String),
    #[error("the value of cap {0:?} is longer than {MAX_VALUE_LEN} bytes")]
    ValueTooLong(String),
    #[error("the value of cap {0:?} contains a control character")]
    ValueChars(String),
    #[error("the {UUID_CAP} cap must be a UUID, got {0:?}")]
    BadUuid(String),
    #[error("at most {MAX_GROUPS} groups are allowed, got {0}")]
    TooManyGroups(usize),
    #[error(
        "group names must be 1 to {MAX_GROUP_LEN} bytes long, without control characters or leading or trailing whitespace"
    )]
    BadGroup,
}

/// Checks one `key=value` pair against the rules of the module
/// documentation.
pub fn check_cap(key: &str, value: &str) -> Result<(), CapsError> {
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Err(CapsError::BadKey);
    }
    if key.contains(|c: char| c.is_control() || c == '=') || key.trim() != key {
        return Err(CapsError::KeyChars(key.to_string()));
    }
    if value.len() > MAX_VALUE_LEN {
        return Err(CapsError::ValueTooLong(key.to_string()));
    }
    if value.contains(char::is_control) {
        return Err(CapsError::ValueChars(key.to_string()));
    }
    if key == UUID_CAP && uuid::Uuid::parse_str(value).is_err() {
        return Err(CapsError::BadUuid(value.to_string()));
    }
    Ok(())
}

fn group_ok(group: &str) -> bool {
    !group.is_empty() && group.len() <= MAX_GROUP_LEN && !group.contains(char::is_control) && group.trim() == group
}

/// A string→string map. Requests demand caps; workers offer them.
///
/// Kept as a vector sorted by key: most caps sets have one to a few
/// entries, and a server holds one per live request (a `BTreeMap` node
/// would cost half a kilobyte each). On the wire it is a JSON object.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Caps(Vec<(String, String)>);

impl Serialize for Caps {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (key, value) in &self.0 {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Caps {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        BTreeMap::<String, String>::deserialize(deserializer).map(Caps::from)
    }
}

impl From<BTreeMap<String, String>> for Caps {
    fn from(map: BTreeMap<String, String>) -> Caps {
        Caps(map.into_iter().collect())
    }
}

impl Caps {
    pub fn new() -> Caps {
        Caps::default()
    }

    /// Checks the caps against the rules of the module documentation.
    pub fn validated(map: BTreeMap<String, String>) -> Result<Caps, CapsError> {
        if map.len() > MAX_CAPS {
            return Err(CapsError::TooMany(map.len()));
        }
        for (key, value) in &map {
            check_cap(key, value)?;
        }
        Ok(Caps::from(map))
    }

    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<String>) {
        let (key, value) = (key.into(), value.into());
        match self.0.binary_search_by(|(k, _)| k.as_str().cmp(&key)) {
            Ok(at) => self.0[at].1 = value,
            Err(at) => self.0.insert(at, (key, value)),
        }
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.binary_search_by(|(k, _)| k.as_str().cmp(key)).ok().map(|at| self.0[at].1.as_str())
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The caps as an ordered map.
    pub fn to_map(&self) -> BTreeMap<String, String> {
        self.0.iter().cloned().collect()
    }

    /// The worker this request is pinned to by a `UUID` cap, if any.
    pub fn pinned_worker(&self) -> Option<WorkerId> {
        self.get(UUID_CAP).and_then(|v| v.parse().ok())
    }

    /// True when every `key=value` of `self` is offered by a worker with
    /// `offered` caps and the given id (the `UUID` cap matches the id).
    pub fn satisfied_by(&self, worker: WorkerId, offered: &Caps) -> bool {
        self.iter().all(|(key, value)| {
            if key == UUID_CAP {
                value.parse::<WorkerId>().is_ok_and(|pinned| pinned == worker)
            } else {
                offered.get(key) == Some(value)
            }
        })
    }
}

impl FromIterator<(String, String)> for Caps {
    fn from_iter<T: IntoIterator<Item = (String, String)>>(iter: T) -> Self {
        Caps::from(iter.into_iter().collect::<BTreeMap<_, _>>())
    }
}

impl fmt::Display for Caps {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (k, v) in self.iter() {
            if !first {
                f.write_str(",")?;
            }
            first = false;
            write!(f, "{k}={v}")?;
        }
        Ok(())
    }
}

/// Group names. A worker with no groups is public.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Groups(BTreeSet<String>);

impl Groups {
    pub fn new() -> Groups {
        Groups::default()
    }

    pub fn validated(set: BTreeSet<String>) -> Result<Groups, CapsError> {
        if set.len() > MAX_GROUPS {
            return Err(CapsError::TooManyGroups(set.len()));
        }
        if !set.iter().all(|g| group_ok(g)) {
            return Err(CapsError::BadGroup);
        }
        Ok(Groups(set))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(String::as_str)
    }

    pub fn contains(&self, group: &str) -> bool {
        self.0.contains(group)
    }

    /// A requester with groups `self` may use a worker with groups `worker`
    /// when the worker is public or the two sets intersect.
    pub fn may_use(&self, worker: &Groups) -> bool {
        worker.is_empty() || worker.0.iter().any(|g| self.0.contains(g))
    }
}

impl<S: Into<String>> FromIterator<S> for Groups {
    fn from_iter<T: IntoIterator<Item = S>>(iter: T) -> Self {
        Groups(iter.into_iter().map(Into::into).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(pairs: &[(&str, &str)]) -> Caps {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn subset_of_equal_values_is_satisfied() {
        let worker = WorkerId::random();
        let offered = caps(&[("device_type", "rpi4"), ("sdcard", "yes")]);
        assert!(caps(&[]).satisfied_by(worker, &offered));
        assert!(caps(&[("device_type", "rpi4")]).satisfied_by(worker, &offered));
        assert!(!caps(&[("device_type", "rpi3")]).satisfied_by(worker, &offered));
        assert!(!caps(&[("usb", "yes")]).satisfied_by(worker, &offered));
    }

    #[test]
    fn uuid_cap_pins_one_worker() {
        let worker = WorkerId::random();
        let other = WorkerId::random();
        let pinned = caps(&[(UUID_CAP, &worker.to_string())]);
        assert!(pinned.satisfied_by(worker, &Caps::new()));
        assert!(!pinned.satisfied_by(other, &Caps::new()));
        assert_eq!(pinned.pinned_worker(), Some(worker));
    }

    #[test]
    fn validation_rejects_bad_keys_and_uuid() {
        let mut map = BTreeMap::new();
        map.insert(String::new(), "x".to_string());
        assert_eq!(Caps::validated(map), Err(CapsError::BadKey));
        let mut map = BTreeMap::new();
        map.insert(UUID_CAP.to_string(), "nope".to_string());
        assert!(matches!(Caps::validated(map), Err(CapsError::BadUuid(_))));
    }

    /// Issue 13, class 2: caps and groups get a charset and a length.
    #[test]
    fn class2_caps_and_groups_follow_the_charset() {
        let refused = [
            ("a=b", "x"),
            ("a\nb", "x"),
            (" key", "x"),
            ("key\t", "x"),
            ("key", "line\nbreak"),
            ("key", "nul\0"),
            ("key", &"v".repeat(MAX_VALUE_LEN + 1)),
            (&"k".repeat(MAX_KEY_LEN + 1), "x"),
        ];
        for (key, value) in refused {
            assert!(check_cap(key, value).is_err(), "{key:?}={value:?}");
            let map = BTreeMap::from([(key.to_string(), value.to_string())]);
            assert!(Caps::validated(map).is_err(), "{key:?}={value:?}");
        }
        for (key, value) in [("device_type", "rpi4"), ("ключ", "значение = да"), ("k", ""), ("a b", " v ")]
        {
            assert_eq!(check_cap(key, value), Ok(()), "{key:?}={value:?}");
        }
        for group in ["", " lab", "lab\n", "la\u{7f}b"] {
            assert!(Groups::validated(BTreeSet::from([group.to_string()])).is_err(), "{group:?}");
        }
        assert!(Groups::validated(BTreeSet::from(["lab a".to_string()])).is_ok());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(crate::time::fuzz_cases()))]

        /// Any text is an answer, never a panic; accepted caps survive the
        /// wire (JSON) unchanged.
        #[test]
        fn any_caps_are_checked_and_accepted_ones_round_trip(
            pairs in proptest::collection::btree_map(".{0,20}", ".{0,20}", 0..6),
            group in ".{0,20}",
        ) {
            let _ = Groups::validated(BTreeSet::from([group]));
            if let Ok(caps) = Caps::validated(pairs.clone()) {
                for (key, value) in &pairs {
                    proptest::prop_assert!(!key.contains('=') && !key.contains(char::is_control));
                    proptest::prop_assert!(!value.contains(char::is_control));
                }
                let back: Caps = serde_json::from_str(&serde_json::to_string(&caps).unwrap()).unwrap();
                proptest::prop_assert_eq!(back, caps);
            }
        }
    }

    #[test]
    fn groups_public_or_intersecting() {
        let user: Groups = ["lab-a"].into_iter().collect();
        assert!(user.may_use(&Groups::new()));
        assert!(user.may_use(&["lab-a", "lab-b"].into_iter().collect()));
        assert!(!user.may_use(&["lab-b"].into_iter().collect()));
        assert!(!Groups::new().may_use(&["lab-b"].into_iter().collect()));
    }
}
