//! The argon2id baseline: verifications/s on every core in this process, with the
//! service's parameters and no service around it — the physical limit of sign-ins/s.

use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use argon2::password_hash::phc::PasswordHash;
use argon2::{Algorithm, Argon2, Block, Params, Version};

use crate::PASSWORD;
use crate::cpu::thread_cpu;

pub struct Limit {
    pub per_s: f64,
    /// CPU time of one verification (thread CPU clock): what it costs when the threads
    /// do not get a core to themselves.
    pub cpu_ms: f64,
}

/// The salt and the expected output of a PHC hash string.
struct Target {
    salt: Vec<u8>,
    expected: Vec<u8>,
}

fn parse_target(hash: &str) -> anyhow::Result<Target> {
    let parsed = PasswordHash::new(hash).map_err(|e| anyhow!("{e}"))?;
    let salt = parsed.salt.context("no salt in the hash")?.to_vec();
    let expected = parsed
        .hash
        .context("no output in the hash")?
        .as_bytes()
        .to_vec();
    Ok(Target { salt, expected })
}

/// `threads` threads verifying `hash` back to back, each with its working memory allocated
/// once: the raw cost of argon2id, without any service around it.
pub fn argon2_limit(
    params: &Params,
    threads: usize,
    hash: &str,
    run_for: Duration,
) -> anyhow::Result<Limit> {
    on_threads(params, threads, hash, run_for, verify_for)
}

/// As [`argon2_limit`], with `argon2` 0.5.3 (the version the service used before 0.6).
pub fn argon2_05_limit(
    params: &Params,
    threads: usize,
    hash: &str,
    run_for: Duration,
) -> anyhow::Result<Limit> {
    on_threads(params, threads, hash, run_for, verify_for_05)
}

type VerifyFor = fn(&Params, &Target, Duration) -> anyhow::Result<(f64, f64)>;

fn on_threads(
    params: &Params,
    threads: usize,
    hash: &str,
    run_for: Duration,
    verify: VerifyFor,
) -> anyhow::Result<Limit> {
    let target = parse_target(hash)?;
    let per_thread = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| scope.spawn(|| verify(params, &target, run_for)))
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().map_err(|_| anyhow!("a hashing thread panicked"))?)
            .collect::<anyhow::Result<Vec<(f64, f64)>>>()
    })?;
    Ok(Limit {
        per_s: per_thread.iter().map(|(rate, _)| rate).sum(),
        cpu_ms: per_thread.iter().map(|(_, cpu)| cpu).sum::<f64>() / per_thread.len().max(1) as f64,
    })
}

/// One thread's (verifications/s, CPU ms per verification).
fn verify_for(params: &Params, target: &Target, run_for: Duration) -> anyhow::Result<(f64, f64)> {
    let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
    let mut blocks = vec![Block::default(); params.block_count()];
    time_verifications(target, run_for, |out| {
        argon2
            .hash_password_into_with_memory(PASSWORD.as_bytes(), &target.salt, out, &mut blocks)
            .map_err(|e| anyhow!("hashing: {e}"))
    })
}

/// Runs `verify` (one argon2 computation into the output buffer) back to back for
/// `run_for`, each result checked against the target: (verifications/s, CPU ms each).
fn time_verifications(
    target: &Target,
    run_for: Duration,
    mut verify: impl FnMut(&mut [u8]) -> anyhow::Result<()>,
) -> anyhow::Result<(f64, f64)> {
    let mut out = vec![0u8; target.expected.len()];
    let cpu_started = thread_cpu();
    let started = Instant::now();
    let mut done = 0u32;
    while started.elapsed() < run_for {
        verify(&mut out)?;
        if out != target.expected {
            bail!("the baseline computed a different hash");
        }
        done += 1;
    }
    let done = f64::from(done.max(1));
    Ok((
        done / started.elapsed().as_secs_f64(),
        (thread_cpu() - cpu_started).as_secs_f64() * 1000.0 / done,
    ))
}

/// [`verify_for`] with `argon2` 0.5.3.
fn verify_for_05(
    params: &Params,
    target: &Target,
    run_for: Duration,
) -> anyhow::Result<(f64, f64)> {
    let old = argon2_05::Params::new(
        params.m_cost(),
        params.t_cost(),
        params.p_cost(),
        params.output_len(),
    )
    .map_err(|e| anyhow!("{e}"))?;
    let argon2 = argon2_05::Argon2::new(
        argon2_05::Algorithm::Argon2id,
        argon2_05::Version::V0x13,
        old.clone(),
    );
    let mut blocks = vec![argon2_05::Block::default(); old.block_count()];
    time_verifications(target, run_for, |out| {
        argon2
            .hash_password_into_with_memory(PASSWORD.as_bytes(), &target.salt, out, &mut blocks)
            .map_err(|e| anyhow!("hashing with 0.5.3: {e}"))
    })
}
