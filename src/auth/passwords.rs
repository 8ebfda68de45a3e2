//! argon2id hashing on a bounded pool of dedicated threads, off the async runtime.

use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::Context;
use argon2::password_hash::phc::{Output, ParamsString, PasswordHash, Salt};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::oneshot;

use crate::config::Argon2Config;
use crate::domain::password::MAX_PASSWORD_BYTES;

/// Every job waiting for or running on a hashing thread; a full queue means 503.
type Job = Box<dyn FnOnce(&mut Engine) + Send>;

#[derive(Debug, thiserror::Error)]
pub enum HashError {
    #[error("the password hashing queue is full")]
    Busy,
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

/// The outcome of checking a password against a stored hash. Its `Debug` says whether a
/// rehash is due, never the new hash.
#[derive(Clone, PartialEq, Eq)]
pub enum Verified {
    No,
    Yes {
        /// Set when the stored hash used other parameters: store this one instead.
        rehash: Option<String>,
    },
}

impl std::fmt::Debug for Verified {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Verified::No => f.write_str("No"),
            Verified::Yes { rehash } => f
                .debug_struct("Yes")
                .field("rehash", &rehash.as_ref().map(|_| "[redacted]"))
                .finish(),
        }
    }
}

#[derive(Clone)]
pub struct Hasher {
    inner: Arc<Inner>,
}

struct Inner {
    jobs: SyncSender<Job>,
    params: Params,
    /// Verified against when the account does not exist, so both cases cost one hash.
    dummy_hash: String,
}

impl Hasher {
    /// Starts the hashing threads (one per core when `threads` is 0). They run at a lower
    /// scheduling priority so the runtime's threads, which serve every cheap page, win the CPU.
    pub fn start(config: &Argon2Config) -> anyhow::Result<Hasher> {
        let params = Params::new(
            config.memory_kib,
            config.iterations,
            config.parallelism,
            None,
        )
        .map_err(|e| anyhow::anyhow!("invalid argon2 parameters: {e}"))?;
        let threads = match config.threads {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            n => n,
        };
        let (jobs, receiver) = mpsc::sync_channel::<Job>(config.queue.max(1));
        let receiver = Arc::new(Mutex::new(receiver));
        for index in 0..threads {
            let receiver = Arc::clone(&receiver);
            let params = params.clone();
            std::thread::Builder::new()
                .name(format!("argon2-{index}"))
                .spawn(move || run_worker(&receiver, Engine::new(params)))
                .context("spawning a hashing thread")?;
        }
        let dummy_hash = Engine::new(params.clone()).hash("latchkey dummy password")?;
        Ok(Hasher {
            inner: Arc::new(Inner {
                jobs,
                params,
                dummy_hash,
            }),
        })
    }

    /// A new PHC string for `password`.
    pub async fn hash(&self, password: SecretString) -> Result<String, HashError> {
        self.run(move |engine| engine.hash(password.expose_secret()))
            .await?
            .map_err(HashError::Unexpected)
    }

    /// Checks `password` against `stored` (or against a dummy hash when there is no
    /// account), and offers a rehash when the stored parameters differ from ours.
    pub async fn verify(
        &self,
        password: SecretString,
        stored: Option<String>,
    ) -> Result<Verified, HashError> {
        // Longer than any password we accept: refuse before spending a hash on it.
        if password.expose_secret().len() > MAX_PASSWORD_BYTES {
            return Ok(Verified::No);
        }
        let (stored, real) = match stored {
            Some(hash) => (hash, true),
            None => (self.inner.dummy_hash.clone(), false),
        };
        let params = self.inner.params.clone();
        self.run(move |engine| {
            let parsed = PasswordHash::new(&stored)
                .map_err(|e| anyhow::anyhow!("stored password hash is not a PHC string: {e}"))?;
            let started = Instant::now();
            let ok = engine.verify(password.expose_secret().as_bytes(), &parsed);
            metrics::histogram!("latchkey_password_hash_seconds")
                .record(started.elapsed().as_secs_f64());
            if !(ok && real) {
                return Ok(Verified::No);
            }
            let rehash = if needs_rehash(&parsed, &params) {
                Some(engine.hash(password.expose_secret())?)
            } else {
                None
            };
            Ok(Verified::Yes { rehash })
        })
        .await?
        .map_err(HashError::Unexpected)
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Engine) -> T + Send + 'static,
    ) -> Result<T, HashError> {
        let (reply, answer) = oneshot::channel();
        let job: Job = Box::new(move |engine| {
            // The caller may have gone away (client disconnected); nothing to do then.
            let _ = reply.send(work(engine));
        });
        match self.inner.jobs.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                metrics::counter!("latchkey_password_hash_rejected_total").increment(1);
                return Err(HashError::Busy);
            }
            Err(TrySendError::Disconnected(_)) => {
                return Err(anyhow::anyhow!("hashing threads have stopped").into());
            }
        }
        answer
            .await
            .map_err(|_| anyhow::anyhow!("a hashing thread dropped its job").into())
    }
}

fn run_worker(receiver: &Mutex<Receiver<Job>>, mut engine: Engine) {
    lower_thread_priority();
    loop {
        // Hold the lock only while taking a job, never while hashing.
        let job = match receiver.lock() {
            Ok(guard) => guard.recv(),
            Err(_) => return,
        };
        match job {
            Ok(job) => job(&mut engine),
            Err(_) => return,
        }
    }
}

/// Linux applies `setpriority` to a single thread when given its thread id.
fn lower_thread_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: gettid has no preconditions; setpriority only reads its arguments.
    unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 10);
    }
}

/// One hashing thread's argon2id and its working memory (`memory_kib`), allocated once and
/// reused by every hash. A fresh allocation per hash, as the `argon2` crate's
/// `PasswordHasher` makes, let glibc's heap grow to ~230 MB under sign-in load.
pub struct Engine {
    argon2: Argon2<'static>,
    params: Params,
    blocks: Vec<Block>,
}

impl Engine {
    fn new(params: Params) -> Engine {
        Engine {
            argon2: Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone()),
            blocks: vec![Block::default(); params.block_count()],
            params,
        }
    }

    /// A new PHC string for `password`, with our parameters and a random salt (16 bytes
    /// from the OS generator).
    fn hash(&mut self, password: &str) -> anyhow::Result<String> {
        let started = Instant::now();
        let salt = Salt::generate();
        let mut out = vec![
            0u8;
            self.params
                .output_len()
                .unwrap_or(Params::DEFAULT_OUTPUT_LEN)
        ];
        self.argon2
            .hash_password_into_with_memory(
                password.as_bytes(),
                &salt,
                &mut out,
                &mut self.blocks[..],
            )
            .map_err(|e| anyhow::anyhow!("hashing a password: {e}"))?;
        let hash = PasswordHash {
            algorithm: Algorithm::Argon2id.ident(),
            version: Some(Version::V0x13.into()),
            params: ParamsString::try_from(&self.params)
                .map_err(|e| anyhow::anyhow!("encoding argon2 parameters: {e}"))?,
            salt: Some(salt),
            hash: Some(Output::new(&out).map_err(|e| anyhow::anyhow!("hash output: {e}"))?),
        }
        .to_string();
        metrics::histogram!("latchkey_password_hash_seconds")
            .record(started.elapsed().as_secs_f64());
        Ok(hash)
    }

    /// Whether `password` matches `stored` (any argon2 variant and parameters), compared in
    /// constant time. Anything unreadable in the hash is a mismatch.
    fn verify(&mut self, password: &[u8], stored: &PasswordHash) -> bool {
        let (Some(salt), Some(expected)) = (&stored.salt, &stored.hash) else {
            return false;
        };
        let Ok(algorithm) = Algorithm::try_from(stored.algorithm.as_str()) else {
            return false;
        };
        let Ok(version) = stored
            .version
            .map_or(Ok(Version::default()), Version::try_from)
        else {
            return false;
        };
        let Ok(params) = Params::try_from(stored) else {
            return false;
        };
        let mut out = vec![0u8; expected.len()];
        let argon2 = Argon2::new(algorithm, version, params.clone());
        let computed = if params.block_count() <= self.blocks.len() {
            argon2.hash_password_into_with_memory(password, salt, &mut out, &mut self.blocks[..])
        } else {
            // A hash made with more memory than ours (it gets rehashed): allocate this once.
            argon2.hash_password_into(password, salt, &mut out)
        };
        // `Output`'s equality is constant-time.
        computed.is_ok() && Output::new(&out).is_ok_and(|out| &out == expected)
    }
}

fn needs_rehash(stored: &PasswordHash, wanted: &Params) -> bool {
    if stored.algorithm != Algorithm::Argon2id.ident() {
        return true;
    }
    match Params::try_from(stored) {
        Ok(params) => {
            params.m_cost() != wanted.m_cost()
                || params.t_cost() != wanted.t_cost()
                || params.p_cost() != wanted.p_cost()
        }
        Err(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(memory_kib: u32) -> Argon2Config {
        Argon2Config {
            memory_kib,
            iterations: 2,
            parallelism: 1,
            threads: 1,
            queue: 4,
        }
    }

    fn secret(s: &str) -> SecretString {
        SecretString::from(s.to_owned())
    }

    #[test]
    fn debug_of_a_rehash_never_prints_the_new_hash() {
        let verified = Verified::Yes {
            rehash: Some("$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".to_owned()),
        };
        let printed = format!("{verified:?}");
        assert!(!printed.contains("argon2id"), "{printed}");
        assert_eq!(printed, r#"Yes { rehash: Some("[redacted]") }"#);
    }

    #[tokio::test]
    async fn a_password_verifies_only_as_typed_in_full() {
        let hasher = Hasher::start(&config(19456)).expect("start");
        let long = "x".repeat(80);
        let hash = hasher.hash(secret(&long)).await.expect("hash");
        assert!(hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert_eq!(
            hasher.verify(secret(&long), Some(hash.clone())).await.ok(),
            Some(Verified::Yes { rehash: None })
        );
        assert_eq!(
            hasher.verify(secret(&long[..72]), Some(hash)).await.ok(),
            Some(Verified::No)
        );
    }

    #[tokio::test]
    async fn hashes_agree_with_the_argon2_crate_both_ways() {
        use argon2::password_hash::{PasswordHasher, PasswordVerifier as _};
        let hasher = Hasher::start(&config(19456)).expect("start");
        let reference = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(19456, 2, 1, None).expect("params"),
        );
        let ours = hasher.hash(secret("correct horse")).await.expect("hash");
        let parsed = PasswordHash::new(&ours).expect("PHC string");
        assert!(reference.verify_password(b"correct horse", &parsed).is_ok());
        assert!(
            reference
                .verify_password(b"correct horsE", &parsed)
                .is_err()
        );

        let salt = Salt::generate();
        let theirs: PasswordHash = reference
            .hash_password_with_salt(b"battery staple", &salt)
            .expect("reference hash");
        let theirs = theirs.to_string();
        assert_eq!(
            hasher
                .verify(secret("battery staple"), Some(theirs.clone()))
                .await
                .ok(),
            Some(Verified::Yes { rehash: None })
        );
        assert_eq!(
            hasher
                .verify(secret("battery stapler"), Some(theirs))
                .await
                .ok(),
            Some(Verified::No)
        );
        // An argon2i hash with other parameters verifies, and is upgraded.
        let argon2i: PasswordHash = Argon2::new(
            Algorithm::Argon2i,
            Version::V0x13,
            Params::new(4096, 3, 1, Some(24)).expect("params"),
        )
        .hash_password_with_salt(b"battery staple", &salt)
        .expect("argon2i hash");
        let argon2i = argon2i.to_string();
        assert!(matches!(
            hasher.verify(secret("battery staple"), Some(argon2i)).await,
            Ok(Verified::Yes { rehash: Some(_) })
        ));
    }

    #[tokio::test]
    async fn an_unknown_account_never_verifies() {
        let hasher = Hasher::start(&config(19456)).expect("start");
        assert_eq!(
            hasher
                .verify(secret("latchkey dummy password"), None)
                .await
                .ok(),
            Some(Verified::No)
        );
    }

    #[tokio::test]
    async fn older_parameters_are_upgraded_on_verify() {
        let old = Hasher::start(&config(8192)).expect("start");
        let current = Hasher::start(&config(19456)).expect("start");
        let hash = old.hash(secret("correct horse")).await.expect("hash");
        match current.verify(secret("correct horse"), Some(hash)).await {
            Ok(Verified::Yes { rehash: Some(new) }) => {
                assert!(new.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"))
            }
            other => panic!("expected a rehash, got {other:?}"),
        }
    }

    /// PHC strings made by `argon2` 0.5.3, the version this service used before 0.6:
    /// every one must verify unchanged (and only with its own password), and those with
    /// other parameters than ours get a rehash.
    const MADE_BY_0_5_3: [(&str, &str); 7] = [
        (
            "correct horse battery staple",
            "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0c2FsdA$QKHrg5tayLGcN+Y0HVPNaBqykOVLUxlMkZycXE1uWRM",
        ),
        (
            "pässwörd ünïcode 🔑",
            "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0c2FsdA$SRut1Dk408H0RMC67eEXPRa0tPj5Vcng+tl4Sf7fzbw",
        ),
        (
            "older parameters",
            "$argon2id$v=19$m=4096,t=3,p=1$c2FsdHNhbHRzYWx0c2FsdA$3SVYHcqZ+q8tHxc4bAIRwkJC7Rjz6PdgTelDPxyYqzs",
        ),
        (
            "two lanes",
            "$argon2id$v=19$m=8192,t=1,p=2$c2FsdHNhbHRzYWx0c2FsdA$VPje5gLm+OJWBiDPH2oIjvYVdjh+T60WR36GDngDTvyhiZodXTx4LU7Rr0lGukVjTXUDfNyyDgifeIaQiVCu6g",
        ),
        (
            "argon2i",
            "$argon2i$v=19$m=4096,t=3,p=1$c2FsdHNhbHRzYWx0c2FsdA$OdzY8gucp+m5TRfSzZOggDdTrjQsvYRYcYp6AUeu8cI",
        ),
        (
            "argon2d",
            "$argon2d$v=19$m=4096,t=3,p=1$c2FsdHNhbHRzYWx0c2FsdA$i4UoQPhsL06sjGvUoST//zwGYh3UxH9R0RL9cmEb0to",
        ),
        (
            "version 16",
            "$argon2id$v=16$m=4096,t=2,p=1$c2FsdHNhbHRzYWx0c2FsdA$gfi0XsN4PjWprOZuE7lTdi1/+gPyYn5qbJ2HIRTgxus",
        ),
    ];

    #[tokio::test]
    async fn hashes_made_by_argon2_0_5_3_verify_unchanged() {
        let hasher = Hasher::start(&config(19456)).expect("start");
        for (password, stored) in MADE_BY_0_5_3 {
            let verified = hasher
                .verify(secret(password), Some(stored.to_owned()))
                .await
                .ok();
            let ours = stored.starts_with("$argon2id$v=19$m=19456,t=2,p=1$");
            match verified {
                Some(Verified::Yes { rehash: None }) if ours => {}
                Some(Verified::Yes { rehash: Some(_) }) if !ours => {}
                other => panic!("{stored}: {other:?}"),
            }
            assert_eq!(
                hasher
                    .verify(secret(&format!("{password}!")), Some(stored.to_owned()))
                    .await
                    .ok(),
                Some(Verified::No),
                "{stored} took another password"
            );
        }
    }

    /// Live, with random salts: 0.5.3 hashes (the dev-dependency `argon2_05`) verify here,
    /// and ours verify with 0.5.3.
    #[tokio::test]
    async fn hashes_cross_check_with_argon2_0_5_3_both_ways() {
        use argon2_05::password_hash::{PasswordHasher as _, PasswordVerifier as _, SaltString};
        let hasher = Hasher::start(&config(19456)).expect("start");
        let old = argon2_05::Argon2::new(
            argon2_05::Algorithm::Argon2id,
            argon2_05::Version::V0x13,
            argon2_05::Params::new(19456, 2, 1, None).expect("params"),
        );
        for password in ["correct horse", "ünïcode 🔑 passphrase"] {
            let salt = SaltString::generate(&mut argon2_05::password_hash::rand_core::OsRng);
            let theirs = old
                .hash_password(password.as_bytes(), &salt)
                .expect("0.5.3 hash")
                .to_string();
            assert_eq!(
                hasher.verify(secret(password), Some(theirs)).await.ok(),
                Some(Verified::Yes { rehash: None })
            );
            let ours = hasher.hash(secret(password)).await.expect("hash");
            let parsed = argon2_05::PasswordHash::new(&ours).expect("0.5.3 reads our PHC string");
            assert!(old.verify_password(password.as_bytes(), &parsed).is_ok());
            assert!(old.verify_password(b"another", &parsed).is_err());
        }
    }
}
