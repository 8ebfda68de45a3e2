//! latchkey's integration tests: the real server on a random port, a fresh Postgres
//! database per test, real SMTP to a local sink, driven over HTTP with a cookie jar.

mod burst;
mod cli;
mod crash;
mod db_faults;
mod email_key;
mod ha;
mod helpers;
mod hostile;
mod housekeeping;
mod instances;
mod migrations;
mod process;
mod races;
mod reset;
mod round_trips;
mod server_limits;
mod session_binding;
mod settings;
mod sign_in;
mod smtp_sink;
mod smtp_tls;
mod soak;
mod strength;
mod tcp_proxy;
mod two_factor;
