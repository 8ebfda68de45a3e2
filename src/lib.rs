//! latchkey: account authentication — sign-in, password reset by emailed link, change password.

/// Shared state, router, layers, start-up and graceful shutdown.
pub mod app;
/// Account rules over `auth::Accounts`: sign-in, throttling, reset, change, sessions.
pub mod auth;
/// The command line.
pub mod cli;
/// Typed, layered configuration.
pub mod config;
/// Postgres pool and migrations.
pub mod db;
/// Values parsed once: email addresses, passwords, tokens, redirect targets.
pub mod domain;
/// The secret key and keys derived from it.
pub mod keys;
/// Mail messages, outbox and delivery.
pub mod mail;
/// Sign in with latchkey: the OpenID Connect provider's rules, beside `auth`.
pub mod oidc;
/// SQL, one module per table.
pub mod store;
/// Logging, request spans and metrics.
pub mod telemetry;
/// HTTP: pages, extractors, layers, the typed session and its store, `AppError`.
pub mod web;
