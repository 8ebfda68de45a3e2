//! Values parsed once at the edge, so every function that takes one can trust it.

pub mod email;
pub mod hosts;
pub mod next;
pub mod password;
pub mod session;
pub mod token;
pub mod user_agent;

pub use email::EmailAddress;
pub use hosts::{AllowedHosts, TrustedProxies};
pub use next::{Destinations, SafeNext};
pub use session::SessionDigest;
pub use user_agent::describe_user_agent;
