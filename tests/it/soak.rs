//! A bounded load soak against the real binary: mixed traffic from many accounts (sign-ins
//! right and wrong, forgot-password, resets through the mailed link, password changes,
//! sign-outs). Off in the quick run; run it with
//!
//! ```text
//! LATCHKEY_SOAK_SECS=90 cargo test --test it -- --ignored soak --nocapture
//! ```
//!
//! It asserts: no 5xx except the hashing queue's deliberate "busy" 503, no unexpected
//! answer, no failed request, every mail delivered exactly once (the model counts the
//! mails each account should get; the SMTP sink must hold exactly that many), and memory
//! flat after warm-up (RSS of the service process at the end at most 8 MiB above its RSS
//! once it has served the first quarter of the soak's requests, a new password has been
//! set, and 10 s have passed).
//!
//! Warm-up is measured in work done, not in time. The service's RSS takes one step that
//! has nothing to do with a leak: the password-strength check (zxcvbn) builds its
//! dictionaries on first use, about 8.8 MiB at once (measured: 66.5 MiB → 75.3 MiB on the
//! first rating, +20 KiB on the second), more than the 8 MiB allowed. Quiet, the first
//! password change or reset comes within a second; with a neighbour on the cores every
//! operation takes seconds, and a baseline taken at a fixed time (it was the first quarter
//! of the run, 15 s) could come before that first change, so the step counted as growth.
//! A leak, growth with every request, still shows between warm-up and the end.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use reqwest::StatusCode;

use crate::helpers::*;
use crate::process::{self, ServiceProcess};
use crate::smtp_sink::SmtpSink;

const WORKERS: usize = 8;
const ACCOUNTS_PER_WORKER: usize = 3;
const RESET_SUBJECT: &str = "Reset your latchkey password";
/// How much RSS may grow between the end of warm-up and the end of the soak. Measured
/// growth is a few hundred KiB; a leak of a few KiB per request exceeds this in a minute.
const RSS_GROWTH_KIB: u64 = 8 * 1024;

#[derive(Default)]
struct Stats {
    requests: AtomicU64,
    busy_503: AtomicU64,
    other_5xx: AtomicU64,
    /// Connection errors and timeouts: the service did not answer at all.
    failed: AtomicU64,
    /// Answers the model did not expect (first few kept for the report).
    unexpected: Mutex<Vec<String>>,
    operations: AtomicU64,
    /// Password changes and resets answered 303 (each ran the strength check).
    passwords_set: AtomicU64,
}

impl Stats {
    fn unexpected(&self, what: String) {
        let mut list = self.unexpected.lock().unwrap_or_else(|p| p.into_inner());
        if list.len() < 20 {
            list.push(what);
        } else if list.len() == 20 {
            list.push("…".into());
        }
    }
}

/// One memory sample of the service process.
struct Sample {
    at: Duration,
    /// Requests sent so far (the work done, whatever the time it took).
    requests: u64,
    /// New passwords set so far.
    passwords_set: u64,
    rss_kib: u64,
}

struct Answer {
    status: StatusCode,
    body: String,
    location: String,
}

impl Answer {
    fn busy(&self) -> bool {
        self.status == StatusCode::SERVICE_UNAVAILABLE && self.body.contains("service is busy")
    }
}

/// One account as the soak believes it to be.
struct Account {
    email: String,
    password: String,
    generation: u32,
    consecutive_wrong: u32,
    mails_expected: usize,
}

impl Account {
    fn next_password(&mut self) -> String {
        self.generation += 1;
        format!(
            "soak passphrase {} of violet harbour lanterns",
            self.generation
        )
    }
}

struct Worker {
    stats: Arc<Stats>,
    smtp: Arc<SmtpSink>,
    base: String,
}

impl Worker {
    async fn send(&self, what: &str, request: reqwest::RequestBuilder) -> Option<Answer> {
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        let response = match request.send().await {
            Ok(response) => response,
            Err(err) => {
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
                self.stats.unexpected(format!("{what}: no answer: {err}"));
                return None;
            }
        };
        let status = response.status();
        let location = location(&response);
        let body = response.text().await.unwrap_or_default();
        let answer = Answer {
            status,
            body,
            location,
        };
        if answer.busy() {
            self.stats.busy_503.fetch_add(1, Ordering::Relaxed);
        } else if status.is_server_error() {
            self.stats.other_5xx.fetch_add(1, Ordering::Relaxed);
            self.stats.unexpected(format!("{what}: {status}"));
        }
        Some(answer)
    }

    async fn get(&self, browser: &Browser, path: &str) -> Option<Answer> {
        self.send(
            &format!("GET {path}"),
            browser.client.get(browser.url(path)),
        )
        .await
    }

    /// Loads `page`, then posts its form with `fields` and the page's CSRF token.
    async fn submit(
        &self,
        browser: &Browser,
        page: &str,
        action: &str,
        fields: &[(&str, &str)],
    ) -> Option<Answer> {
        let loaded = self.get(browser, page).await?;
        let Some(token) = csrf_in(&loaded.body) else {
            if !loaded.busy() {
                self.stats
                    .unexpected(format!("GET {page}: {} without a form", loaded.status));
            }
            return None;
        };
        let mut form: Vec<(&str, &str)> = fields.to_vec();
        form.push(("csrf_token", &token));
        self.send(
            &format!("POST {action}"),
            browser.client.post(browser.url(action)).form(&form),
        )
        .await
    }

    /// Checks `answer` is `expected` (a busy 503 is allowed: nothing happened).
    fn expect(&self, what: &str, answer: &Option<Answer>, expected: StatusCode) -> bool {
        match answer {
            Some(a) if a.status == expected => true,
            Some(a) if a.busy() => false,
            Some(a) => {
                if !a.status.is_server_error() {
                    self.stats
                        .unexpected(format!("{what}: {} (expected {expected})", a.status));
                }
                false
            }
            None => false,
        }
    }

    async fn sign_in(&self, account: &mut Account) -> Option<Browser> {
        let browser = Browser::new(&self.base);
        let answer = self
            .submit(
                &browser,
                "/sign-in",
                "/sign-in",
                &[("email", &account.email), ("password", &account.password)],
            )
            .await;
        if !self.expect("sign in", &answer, StatusCode::SEE_OTHER) {
            return None;
        }
        account.consecutive_wrong = 0;
        Some(browser)
    }

    async fn sign_in_and_out(&self, account: &mut Account, sign_out: bool) {
        let Some(browser) = self.sign_in(account).await else {
            return;
        };
        let home = self.get(&browser, "/").await;
        if !self.expect("home", &home, StatusCode::OK) {
            return;
        }
        if sign_out {
            let out = self.submit(&browser, "/", "/sign-out", &[]).await;
            if self.expect("sign out", &out, StatusCode::SEE_OTHER) {
                let after = self.get(&browser, "/").await;
                self.expect("home after sign-out", &after, StatusCode::SEE_OTHER);
            }
        }
    }

    async fn wrong_sign_in(&self, account: &mut Account) {
        let browser = Browser::new(&self.base);
        let answer = self
            .submit(
                &browser,
                "/sign-in",
                "/sign-in",
                &[
                    ("email", &account.email),
                    ("password", "not my password at all"),
                ],
            )
            .await;
        if self.expect("wrong sign-in", &answer, StatusCode::UNPROCESSABLE_ENTITY) {
            account.consecutive_wrong += 1;
        }
    }

    async fn forgot(&self, account: &mut Account) -> bool {
        let browser = Browser::new(&self.base);
        let answer = self
            .submit(
                &browser,
                "/forgot-password",
                "/forgot-password",
                &[("email", &account.email)],
            )
            .await;
        let asked = self.expect("forgot password", &answer, StatusCode::OK);
        if asked {
            account.mails_expected += 1;
        }
        asked
    }

    /// Waits until every mail the account should have has arrived.
    async fn mail_caught_up(&self, account: &Account) -> bool {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.smtp.count_to(&account.email) < account.mails_expected {
            if Instant::now() > deadline {
                self.stats.unexpected(format!(
                    "{}: mail {} of {} did not come within 60 s",
                    account.email,
                    self.smtp.count_to(&account.email),
                    account.mails_expected
                ));
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        true
    }

    async fn reset(&self, account: &mut Account) {
        if !self.forgot(account).await || !self.mail_caught_up(account).await {
            return;
        }
        let Some(mail) = self.smtp.last_to(&account.email, RESET_SUBJECT) else {
            self.stats
                .unexpected(format!("{}: no reset mail", account.email));
            return;
        };
        let Some(link) = mail.first_link() else {
            self.stats.unexpected("reset mail without a link".into());
            return;
        };
        let Some(path) = link.strip_prefix(&self.base).map(str::to_owned) else {
            self.stats.unexpected(format!("link to elsewhere: {link}"));
            return;
        };
        let token = path.split("token=").nth(1).unwrap_or_default().to_owned();
        let new_password = account.next_password();
        let browser = Browser::new(&self.base);
        let answer = self
            .submit(
                &browser,
                &path,
                "/reset-password",
                &[
                    ("token", &token),
                    ("new_password", &new_password),
                    ("new_password_confirm", &new_password),
                ],
            )
            .await;
        if self.expect("reset", &answer, StatusCode::SEE_OTHER) {
            self.stats.passwords_set.fetch_add(1, Ordering::Relaxed);
            account.password = new_password;
            account.mails_expected += 1; // "your password was changed"
        }
    }

    async fn change(&self, account: &mut Account) {
        let Some(browser) = self.sign_in(account).await else {
            return;
        };
        let new_password = account.next_password();
        let current = account.password.clone();
        let answer = self
            .submit(
                &browser,
                "/settings/security",
                "/settings/security/password",
                &[
                    ("current_password", &current),
                    ("new_password", &new_password),
                    ("new_password_confirm", &new_password),
                ],
            )
            .await;
        if self.expect("change password", &answer, StatusCode::SEE_OTHER) {
            self.stats.passwords_set.fetch_add(1, Ordering::Relaxed);
            if !answer
                .as_ref()
                .is_some_and(|a| a.location.contains("password-changed"))
            {
                self.stats
                    .unexpected("change password: wrong redirect".into());
            }
            account.password = new_password;
            account.mails_expected += 1;
        }
    }

    async fn run(self, mut accounts: Vec<Account>, until: Instant, seed: u64) -> Vec<Account> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        while Instant::now() < until {
            let account = &mut accounts[rng.gen_range(0..ACCOUNTS_PER_WORKER)];
            match rng.gen_range(0..100) {
                0..=29 => self.sign_in_and_out(account, rng.gen_bool(0.5)).await,
                30..=49 if account.consecutive_wrong < 3 => self.wrong_sign_in(account).await,
                30..=49 => self.sign_in_and_out(account, true).await,
                50..=61 => {
                    self.forgot(account).await;
                }
                62..=79 => self.reset(account).await,
                _ => self.change(account).await,
            }
            self.stats.operations.fetch_add(1, Ordering::Relaxed);
        }
        accounts
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "load soak, a minute or more: cargo test --test it -- --ignored soak"]
async fn soak() {
    let secs: u64 = std::env::var("LATCHKEY_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(90);
    let duration = Duration::from_secs(secs);
    // A floor under warm-up in time; the real measure is the requests (below).
    let warm_up = Duration::from_secs(10);
    let smtp = Arc::new(SmtpSink::start().await);
    let database_url = process::fresh_database();
    // Resets are the point here: lift the per-hour cap on reset mails.
    let mut service = ServiceProcess::start(
        &database_url,
        &smtp.url(),
        &[("LATCHKEY_THROTTLE__RESET_MAILS_PER_HOUR", "1000000")],
    )
    .await;
    let db = process::connect(&database_url).await;
    let emails: Vec<String> = (0..WORKERS * ACCOUNTS_PER_WORKER)
        .map(|i| format!("soak{i}@example.com"))
        .collect();
    process::create_users(&db, &emails, PASSWORD).await;

    let stats = Arc::new(Stats::default());
    let started = Instant::now();
    let until = started + duration;
    let seed: u64 = rand::random();

    // Memory: one sample a second, with the requests sent so far.
    let sampling = Arc::new(AtomicBool::new(true));
    let pid = service.pid();
    let samples = {
        let sampling = Arc::clone(&sampling);
        let stats = Arc::clone(&stats);
        tokio::spawn(async move {
            let mut samples: Vec<Sample> = Vec::new();
            while sampling.load(Ordering::Relaxed) {
                if let Some(kib) = process::rss_kib(pid) {
                    samples.push(Sample {
                        at: started.elapsed(),
                        requests: stats.requests.load(Ordering::Relaxed),
                        passwords_set: stats.passwords_set.load(Ordering::Relaxed),
                        rss_kib: kib,
                    });
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            samples
        })
    };

    let mut workers = Vec::new();
    for (w, chunk) in emails.chunks(ACCOUNTS_PER_WORKER).enumerate() {
        let accounts = chunk
            .iter()
            .map(|email| Account {
                email: email.clone(),
                password: PASSWORD.to_owned(),
                generation: 0,
                consecutive_wrong: 0,
                mails_expected: 0,
            })
            .collect();
        let worker = Worker {
            stats: Arc::clone(&stats),
            smtp: Arc::clone(&smtp),
            base: service.base.clone(),
        };
        workers.push(tokio::spawn(worker.run(accounts, until, seed ^ w as u64)));
    }
    let mut accounts = Vec::new();
    for worker in workers {
        accounts.extend(worker.await.expect("worker"));
    }
    let traffic = started.elapsed();
    sampling.store(false, Ordering::Relaxed);
    let samples = samples.await.expect("sampler");
    assert!(service.is_running(), "the service died:\n{}", service.log());

    // Every mail the model expects arrives, then nothing more.
    let expected: usize = accounts.iter().map(|a| a.mails_expected).sum();
    let deadline = Instant::now() + Duration::from_secs(60);
    while smtp.count() < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let sent = smtp.count();
    let mismatched: Vec<String> = accounts
        .iter()
        .filter(|a| smtp.count_to(&a.email) != a.mails_expected)
        .map(|a| {
            format!(
                "{}: {} sent, {} expected",
                a.email,
                smtp.count_to(&a.email),
                a.mails_expected
            )
        })
        .collect();

    // RSS after warm-up (the first sample once a quarter of the requests were sent, a
    // password was set and `warm_up` has passed) and at the end.
    let requests = stats.requests.load(Ordering::Relaxed);
    let warm = samples
        .iter()
        .find(|s| s.requests >= requests / 4 && s.passwords_set > 0 && s.at >= warm_up);
    let rss_start = samples.first().map_or(0, |s| s.rss_kib);
    let rss_warm = warm.map_or(0, |s| s.rss_kib);
    let rss_end = samples.last().map_or(0, |s| s.rss_kib);
    let rss_max = samples.iter().map(|s| s.rss_kib).max().unwrap_or(0);
    let allowed = rss_warm + RSS_GROWTH_KIB;
    let timeline: Vec<String> = samples
        .iter()
        .step_by(5)
        .chain(samples.last())
        .map(|s| format!("{:.0?} {} req {} KiB", s.at, s.requests, s.rss_kib))
        .collect();
    println!(
        "soak: RSS every 5 s (time, requests sent, RSS): {}; warm after {}",
        timeline.join(", "),
        warm.map_or("never".to_owned(), |s| format!(
            "{:.0?} and {} requests",
            s.at, s.requests
        ))
    );

    let busy = stats.busy_503.load(Ordering::Relaxed);
    let other_5xx = stats.other_5xx.load(Ordering::Relaxed);
    let failed = stats.failed.load(Ordering::Relaxed);
    let unexpected = stats
        .unexpected
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    println!(
        "soak: {traffic:.0?} of traffic from {} accounts ({WORKERS} clients, seed {seed}): \
         {} operations, {requests} requests, {busy} busy 503s, {other_5xx} other 5xx, \
         {failed} unanswered; mails sent {sent}, expected {expected}; \
         RSS start {} KiB, after warm-up {rss_warm} KiB, end {rss_end} KiB, \
         max {rss_max} KiB (allowed at end {allowed} KiB)",
        accounts.len(),
        stats.operations.load(Ordering::Relaxed),
        rss_start,
    );
    assert!(unexpected.is_empty(), "unexpected answers: {unexpected:#?}");
    assert_eq!(other_5xx, 0, "5xx other than a busy hashing queue");
    assert_eq!(failed, 0, "requests without an answer");
    assert!(
        mismatched.is_empty(),
        "mail lost or duplicated: {mismatched:#?}"
    );
    assert_eq!(sent, expected, "mails sent vs expected");
    assert!(
        rss_warm > 0 && rss_end > 0,
        "RSS was sampled after warm-up (a quarter of the requests and a password set)"
    );
    assert!(
        rss_end <= allowed,
        "memory grew after warm-up: {rss_warm} KiB → {rss_end} KiB"
    );
    let (unsent,): (i64,) = sqlx::query_as("select count(*) from outbox where status <> 'sent'")
        .fetch_one(&db)
        .await
        .expect("outbox");
    assert_eq!(unsent, 0, "outbox rows not sent");
    assert!(!service.log().contains("panicked"), "{}", service.log());
}
