//! Codes, refresh tokens and sign-outs under concurrency.
