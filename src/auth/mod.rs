//! The account rules: who may sign in, throttling, password reset and change, sessions.

pub mod change;
pub mod passwords;
pub mod reset;
pub mod session;
pub mod sign_in;
pub mod throttle;
pub mod two_factor;

use std::time::Duration;

pub use crate::store::audit::Origin;

/// The failures every account flow can meet besides its own.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// Too many attempts: wait this long.
    #[error("too many attempts")]
    Throttled { retry_after: Duration },
    /// The hashing queue is full; try again shortly.
    #[error("the service is busy")]
    Busy,
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

impl From<passwords::HashError> for Failure {
    fn from(err: passwords::HashError) -> Failure {
        match err {
            passwords::HashError::Busy => Failure::Busy,
            passwords::HashError::Unexpected(e) => Failure::Unexpected(e),
        }
    }
}
