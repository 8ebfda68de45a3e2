//! The latchkey benchmark's entry point: runs the phases, cleans up, writes the report.
//!
//! `cargo bench --bench latchkey` (about 90 s). It creates a fresh database
//! `latchkey_bench_<uuid>`, seeds accounts with real argon2id hashes, starts two instances
//! of the release service binary, each its own process on a free loopback port
//! (`LATCHKEY_IP_RATE_LIMIT=0`, mail as `.eml` files in a temporary directory): one reaches
//! Postgres through a counting relay (every phase but the interleaved sign-in slices), the
//! other directly (those slices, so the relay is not in the path measured against the
//! argon2 limit). It measures, stops both and drops the database. Figures go to the terminal
//! as a table and to `target/bench/latest.json` as one JSON object.
//!
//! Where things live:
//! - `phases`: what is measured, in which order (start here);
//! - `limit`: the argon2id baseline, the physical limit of sign-in throughput;
//! - `load`: the HTTP load: hammering a page, the latency probe, sign-ins that pause;
//! - `oidc`: the OpenID provider: code exchanges, refreshes and userinfo calls;
//! - `relay`: the TCP relay between the service and Postgres that counts round trips;
//! - `service`: the service processes and the bench database;
//! - `cpu`: where the CPU went (/proc), resident memory, load average;
//! - `report`: the rows, the targets, the table and the JSON;
//! - `wrk`: Debian's `wrk` as a second driver of the forward-auth checks (when installed).
//!
//! Settings: the service and the baseline read the same configuration (built-in defaults
//! and `LATCHKEY_*` variables, e.g. `LATCHKEY_ARGON2__THREADS=1`); `LATCHKEY_BENCH_PG`
//! (default `postgres://postgres@127.0.0.1:5432`), `LATCHKEY_BENCH_CLIENTS` (sign-in
//! clients, default 3 per hashing thread), `LATCHKEY_BENCH_SIGNIN_SECS` (sign-in time over
//! all slices, default 20), `LATCHKEY_BENCH_PAIRS` (limit/sign-in slice pairs, default 5),
//! `LATCHKEY_BENCH_OIDC_SECS` (each OpenID run, default 5) and `LATCHKEY_BENCH_OIDC_CODES`
//! (codes minted per client, default 4000). `LATCHKEY_BENCH_ONLY=forward-auth`, `=sign-in` or
//! `=oidc` runs the set-up and that phase alone.

mod cpu;
mod limit;
mod load;
mod oidc;
mod phases;
mod relay;
mod report;
mod service;
mod wrk;

use std::path::{Path, PathBuf};

use anyhow::Context;

/// The password of every seeded account.
const PASSWORD: &str = "correct horse battery staple";

fn main() -> std::process::ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("bench: starting tokio: {err}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("bench: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let out_path = output_path();
    let mut res = service::Resources::new()?;
    let outcome = phases::measure(&mut res).await;
    res.cleanup().await;
    let report = outcome?;
    print!("{}", report.table());
    if let Some(dir) = out_path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let text = serde_json::to_string_pretty(&report.json()).context("encoding the figures")?;
    std::fs::write(&out_path, text + "\n")
        .with_context(|| format!("writing {}", out_path.display()))?;
    println!("\nwritten to {}", out_path.display());
    Ok(())
}

/// `<target>/bench/latest.json`: the bench executable lives in `<target>/release/deps/`.
fn output_path() -> PathBuf {
    let target = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.ancestors().nth(3).map(Path::to_path_buf))
        .filter(|dir| dir.join("release").is_dir())
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("bench").join("latest.json")
}

/// A number from the environment, if set and parseable.
fn env_number<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}
