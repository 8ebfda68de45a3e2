//! SQL only: each module owns the statements for one table.

pub mod audit;
pub mod housekeeping;
pub mod outbox;
pub mod reset_tokens;
pub mod sessions;
pub mod sign_in;
pub mod throttle;
pub mod two_factor;
pub mod users;
