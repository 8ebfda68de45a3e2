//! The test harness latchkey's integration tests (`tests/it/`) and browser tests
//! (`tests/browser/`) share; both take it as the dev-dependency `latchkey-test-support`.
//!
//! - [`helpers`]: `TestApp::spawn()` (the service in-process on a random port, a fresh
//!   database dropped again when the app drops, real SMTP to a [`smtp_sink`]) and
//!   `Browser`, a cookie jar with one helper per endpoint.
//! - [`process`]: the real `latchkey serve` binary as a child process, on a fresh
//!   database ([`process::TestDatabase`]).
//! - [`smtp_sink`]: a real SMTP server that keeps what it receives.
//! - [`tcp_proxy`]: a TCP proxy that can cut or stall a connection (database faults).
//! - [`echo`]: the application a proxy protects: echoes what reached it, as JSON.
//! - [`proxies`]: the real nginx and Caddy under the files in `deploy/`.
//! - [`relying_party`]: the Node relying parties in tests/oidc-rp (openid-client,
//!   oauth4webapi) as child processes, and a person walking latchkey's sign-in, two-factor
//!   and consent pages between them; [`html_form`] reads the forms of a page.
//! - [`apache`]: Debian's Apache with mod_auth_openidc under deploy/apache/, a relying
//!   party in front of the echo application.
//! - [`burst`]: every connection opened first, then every request written at once: the
//!   harness for every concurrency test.

pub mod apache;
pub mod burst;
pub mod database;
pub mod echo;
pub mod helpers;
pub mod html_form;
pub mod process;
pub mod proxies;
pub mod relying_party;
pub mod smtp_sink;
pub mod tcp_proxy;
