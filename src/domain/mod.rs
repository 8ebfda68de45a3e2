//! Values parsed once at the edge, so every function that takes one can trust it.

pub mod email;
pub mod next;
pub mod password;
pub mod token;

pub use email::EmailAddress;
pub use next::SafeNext;
