//! Per-user bookkeeping of the live system: how many waiting requests each
//! user has (the per-user limit), and which users are being deleted (their
//! submissions are refused or ended).
//!
//! The waiting counts are kept by the request actors: a submission
//! reserves a slot before its insert, the request actor holds it while its
//! request waits and frees it when the lease starts or the request ends (or
//! the actor stops). Rebuilt actors count themselves, so the counts are
//! right again after a restart. One mutex makes reserve-and-check exact
//! under concurrent submissions.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use corral_core::UserId;

/// Why a submission cannot take a waiting slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The user already has `limit` waiting requests.
    Limit(usize),
    /// The user is being deleted.
    Deleted,
}

#[derive(Debug, Default)]
pub struct Owners {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    waiting: HashMap<UserId, usize>,
    deleted: HashSet<UserId>,
}

impl Owners {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a waiting slot for `owner`, if it has fewer than `limit`
    /// (None: no limit) and is not being deleted. The slot is freed when
    /// the answer is dropped, unless [`WaitingSlot::keep`] hands it on.
    pub fn reserve_waiting(&self, owner: UserId, limit: Option<usize>) -> Result<WaitingSlot<'_>, Refusal> {
        let mut inner = self.lock();
        if inner.deleted.contains(&owner) {
            return Err(Refusal::Deleted);
        }
        let count = inner.waiting.entry(owner).or_default();
        if let Some(limit) = limit
            && *count >= limit
        {
            return Err(Refusal::Limit(limit));
        }
        *count += 1;
        Ok(WaitingSlot { owners: self, owner, kept: false })
    }

    /// Counts a waiting request rebuilt after a restart (no limit applies).
    pub(crate) fn count_waiting(&self, owner: UserId) {
        *self.lock().waiting.entry(owner).or_default() += 1;
    }

    /// Frees a slot taken by [`Owners::reserve_waiting`] or
    /// [`Owners::count_waiting`].
    pub fn release_waiting(&self, owner: UserId) {
        let mut inner = self.lock();
        if let Some(count) = inner.waiting.get_mut(&owner) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                inner.waiting.remove(&owner);
            }
        }
    }

    /// How many waiting requests `owner` has.
    pub fn waiting(&self, owner: UserId) -> usize {
        self.lock().waiting.get(&owner).copied().unwrap_or(0)
    }

    pub(crate) fn mark_deleted(&self, owner: UserId) {
        self.lock().deleted.insert(owner);
    }

    pub(crate) fn unmark_deleted(&self, owner: UserId) {
        self.lock().deleted.remove(&owner);
    }

    pub(crate) fn is_deleted(&self, owner: UserId) -> bool {
        self.lock().deleted.contains(&owner)
    }
}

/// A reserved waiting slot; freed on drop unless kept.
#[derive(Debug)]
pub struct WaitingSlot<'a> {
    owners: &'a Owners,
    owner: UserId,
    kept: bool,
}

impl WaitingSlot<'_> {
    /// The request was accepted: its actor holds the slot from now on.
    pub fn keep(mut self) {
        self.kept = true;
    }
}

impl Drop for WaitingSlot<'_> {
    fn drop(&mut self) {
        if !self.kept {
            self.owners.release_waiting(self.owner);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_counted_kept_and_freed() {
        let owners = Owners::default();
        let (ann, bo) = (UserId(1), UserId(2));
        // A dropped reservation frees its slot; a kept one holds it.
        drop(owners.reserve_waiting(ann, Some(1)).unwrap());
        assert_eq!(owners.waiting(ann), 0);
        owners.reserve_waiting(ann, Some(1)).unwrap().keep();
        assert_eq!(owners.reserve_waiting(ann, Some(1)).unwrap_err(), Refusal::Limit(1));
        // Limits are per user; None is unlimited.
        owners.reserve_waiting(bo, Some(1)).unwrap().keep();
        owners.reserve_waiting(ann, None).unwrap().keep();
        assert_eq!((owners.waiting(ann), owners.waiting(bo)), (2, 1));
        owners.release_waiting(ann);
        owners.release_waiting(ann);
        owners.release_waiting(ann);
        assert_eq!(owners.waiting(ann), 0, "never below zero");
        owners.reserve_waiting(ann, Some(1)).unwrap().keep();
        // A user being deleted gets no slot, even without a limit.
        owners.mark_deleted(bo);
        assert_eq!(owners.reserve_waiting(bo, None).unwrap_err(), Refusal::Deleted);
        owners.unmark_deleted(bo);
        assert!(owners.reserve_waiting(bo, None).is_ok());
    }
}
