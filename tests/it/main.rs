//! latchkey's integration tests: the real server on a random port, a fresh Postgres
//! database per test, real SMTP to a local sink, driven over HTTP with a cookie jar.
//! The harness is the `latchkey-test-support` crate (tests/support/); its modules are
//! imported here so every test reaches them as `crate::helpers`, `crate::burst`, ….

use latchkey_test_support::{burst, database, echo, helpers, process, smtp_sink, tcp_proxy};

mod cli;
mod crash;
mod db_faults;
mod email_key;
mod findings;
mod forward_auth;
mod ha;
mod harness;
mod hostile;
mod housekeeping;
mod instances;
mod migrations;
mod oidc;
mod oidc_rp;
mod operator;
mod passkeys;
mod private_postgres;
mod proxies;
mod races;
mod reset;
mod round_trips;
mod server_limits;
mod session_binding;
mod session_cookie;
mod settings;
mod sign_in;
mod sign_up;
mod smtp_tls;
mod soak;
mod strength;
mod two_factor;
