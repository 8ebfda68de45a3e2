//! The argon2id baseline: verifications/s on every core in this process, with the
//! service's parameters and no service around it — the physical limit of sign-ins/s.

use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use argon2::password_hash::PasswordHash;
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
    let mut salt = [0u8; 64];
    let salt = parsed
        .salt
        .context("no salt in the hash")?
        .decode_b64(&mut salt)
        .map_err(|e| anyhow!("{e}"))?
        .to_vec();
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
    let target = parse_target(hash)?;
    let per_thread = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| scope.spawn(|| verify_for(params, &target, run_for)))
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
    let mut out = vec![0u8; target.expected.len()];
    let cpu_started = thread_cpu();
    let started = Instant::now();
    let mut done = 0u32;
    while started.elapsed() < run_for {
        argon2
            .hash_password_into_with_memory(
                PASSWORD.as_bytes(),
                &target.salt,
                &mut out,
                &mut blocks,
            )
            .map_err(|e| anyhow!("hashing: {e}"))?;
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
