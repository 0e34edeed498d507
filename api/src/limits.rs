//! Per-user limits on held server resources (concurrent long-polls, event
//! streams): one counter per kind, keyed by user id. Taking a slot gives a
//! guard that frees it when dropped, so a slot is freed however the call
//! ends (answer, error, client gone). Admins are not limited.
//!
//! The waiting-request limit lives with the request actors
//! (`corral_actors::owners`), where requests leave the waiting state.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use corral_actors::Caller;
use corral_core::UserId;

use crate::error::ApiError;

/// `Retry-After` seconds of a 429 for too many concurrent calls.
const RETRY_AFTER: u32 = 1;

/// One kind of per-user resource and its limit.
#[derive(Debug)]
pub struct PerUserLimit {
    /// Named in the 429 message, e.g. "long-polls".
    what: &'static str,
    max: usize,
    held: Arc<Mutex<HashMap<UserId, usize>>>,
    /// Slots held now by everyone, admins included (a metric).
    open: Arc<AtomicUsize>,
}

/// A held slot; dropping it frees the slot.
#[derive(Debug)]
pub struct Slot {
    user: Option<UserId>,
    held: Arc<Mutex<HashMap<UserId, usize>>>,
    open: Arc<AtomicUsize>,
}

impl PerUserLimit {
    pub fn new(what: &'static str, max: usize) -> PerUserLimit {
        PerUserLimit { what, max, held: Arc::default(), open: Arc::default() }
    }

    /// Takes one of `caller`'s slots, or answers 429 with `Retry-After`.
    pub fn acquire(&self, caller: &Caller) -> Result<Slot, ApiError> {
        if caller.is_admin() {
            return Ok(self.slot(None));
        }
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let count = held.entry(caller.id).or_default();
        if *count >= self.max {
            return Err(ApiError::too_many_requests(
                format!(
                    "{} already has {} concurrent {}, the most allowed; retry when one ends",
                    caller.name, self.max, self.what
                ),
                RETRY_AFTER,
            ));
        }
        *count += 1;
        Ok(self.slot(Some(caller.id)))
    }

    fn slot(&self, user: Option<UserId>) -> Slot {
        self.open.fetch_add(1, Ordering::Relaxed);
        Slot { user, held: self.held.clone(), open: self.open.clone() }
    }

    /// How many slots everyone holds now, admins included.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// How many slots `user` holds now.
    pub fn held(&self, user: UserId) -> usize {
        self.held.lock().unwrap_or_else(|e| e.into_inner()).get(&user).copied().unwrap_or(0)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
        let Some(user) = self.user else { return };
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = held.get_mut(&user) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                held.remove(&user);
            }
        }
    }
}

/// The per-user limits of one server.
#[derive(Debug)]
pub struct Limits {
    /// Concurrent `acquire?wait=` calls.
    pub long_polls: PerUserLimit,
    /// Concurrent event streams (`GET /v1/events`).
    pub streams: PerUserLimit,
}

impl Limits {
    pub fn from_config(config: &crate::Config) -> Limits {
        Limits {
            long_polls: PerUserLimit::new("long-polls", config.max_long_polls_per_user),
            streams: PerUserLimit::new("event streams", config.max_streams_per_user),
        }
    }
}

#[cfg(test)]
mod tests {
    use corral_core::{Groups, Role};

    use super::*;

    fn caller(id: i64, role: Role) -> Caller {
        Caller { id: UserId(id), name: format!("u{id}"), role, groups: Groups::default() }
    }

    #[test]
    fn a_slot_is_held_until_dropped_and_admins_are_not_counted() {
        let limit = PerUserLimit::new("long-polls", 2);
        let (ann, bo, admin) = (caller(1, Role::User), caller(2, Role::User), caller(3, Role::Admin));
        let first = limit.acquire(&ann).unwrap();
        let second = limit.acquire(&ann).unwrap();
        let refused = limit.acquire(&ann).unwrap_err();
        assert_eq!((refused.status.as_u16(), refused.retry_after), (429, Some(RETRY_AFTER)));
        assert!(limit.acquire(&bo).is_ok(), "per user");
        let admin_slots: Vec<Slot> = (0..5).map(|_| limit.acquire(&admin).unwrap()).collect();
        assert_eq!(limit.held(admin.id), 0);
        assert_eq!(limit.open(), 7, "ann's two and the admin's five (bo's ended)");
        drop(first);
        assert_eq!(limit.held(ann.id), 1);
        let third = limit.acquire(&ann).unwrap();
        drop((second, third, admin_slots));
        assert_eq!(limit.held(ann.id), 0);
        assert_eq!(limit.open(), 0);
    }
}
