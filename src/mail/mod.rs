//! Mail: messages rendered from `templates/email/`, an outbox table, and its delivery worker.

pub mod mailbox;
pub mod messages;
pub mod mime;
pub mod outbox;
pub mod relay;
pub mod transport;

pub use transport::OutgoingMail;
