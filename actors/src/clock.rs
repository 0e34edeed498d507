//! The server's clock. Production reads the system clock; tests use a
//! manual clock they move forward, so lease expiry, deadlines, valid_after
//! and session expiry are tested without sleeping.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use corral_core::time::truncate_to_micros;

#[derive(Clone, Debug, Default)]
pub enum Clock {
    #[default]
    System,
    Manual(Arc<Mutex<SystemTime>>),
}

impl Clock {
    /// A manual clock starting at the current system time.
    pub fn manual() -> Clock {
        Clock::Manual(Arc::new(Mutex::new(truncate_to_micros(SystemTime::now()))))
    }

    pub fn now(&self) -> SystemTime {
        match self {
            Clock::System => truncate_to_micros(SystemTime::now()),
            Clock::Manual(t) => *t.lock().unwrap_or_else(|e| e.into_inner()),
        }
    }

    /// The time the database should use for session deadlines: `None`
    /// means its own `now()` (production); a manual clock passes itself.
    pub fn db_now(&self) -> Option<SystemTime> {
        match self {
            Clock::System => None,
            Clock::Manual(_) => Some(self.now()),
        }
    }

    /// Moves a manual clock forward; does nothing to the system clock.
    pub fn advance(&self, by: Duration) {
        if let Clock::Manual(t) = self {
            let mut t = t.lock().unwrap_or_else(|e| e.into_inner());
            *t += by;
        }
    }
}
