//! SQL only, every statement checked at compile time against `.sqlx/`: each module owns
//! the statements for one table, except `sign_in`, whose statements join what one step
//! of a sign-in needs across tables (and a client's authentication, which reads its
//! throttle row with the client).

pub mod audit;
pub mod devices;
pub mod housekeeping;
pub mod mail_requests;
pub mod oidc_clients;
pub mod oidc_consents;
pub mod oidc_grants;
pub mod oidc_keys;
pub mod oidc_logout;
pub mod oidc_requests;
pub mod outbox;
pub mod passkeys;
pub mod reachability;
pub mod reset_tokens;
pub mod sessions;
pub mod sign_in;
pub mod sign_ups;
pub mod throttle;
pub mod two_factor;
pub mod users;
