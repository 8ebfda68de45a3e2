//! The HTTP load: hammering one page, the fixed-rate latency probe, sign-ins from a few
//! clients that can be paused between slices, and the forgot-password timings.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use reqwest::redirect::Policy;
use reqwest::{Client, StatusCode, header};

use crate::PASSWORD;

/// The probe sends one GET /sign-in and one GET /healthz this often (20/s each).
const PROBE_EVERY: Duration = Duration::from_millis(50);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const FORGOT_GAP: Duration = Duration::from_millis(40);

/// Latencies in milliseconds.
#[derive(Default)]
pub struct Samples(Vec<f64>);

impl Samples {
    pub fn push(&mut self, d: Duration) {
        self.0.push(d.as_secs_f64() * 1000.0);
    }
    pub fn extend(&mut self, other: Samples) {
        self.0.extend(other.0);
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    /// Nearest-rank percentile, in milliseconds (NaN without samples).
    pub fn p(&self, q: f64) -> f64 {
        let mut v = self.0.clone();
        v.sort_by(f64::total_cmp);
        if v.is_empty() {
            return f64::NAN;
        }
        let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
        v[rank - 1]
    }
    pub fn max(&self) -> f64 {
        self.p(1.0)
    }
}

fn client(connections: usize) -> anyhow::Result<Client> {
    Ok(Client::builder()
        .redirect(Policy::none())
        .pool_max_idle_per_host(connections)
        .tcp_nodelay(true)
        .timeout(REQUEST_TIMEOUT)
        .build()?)
}

/// Sends the request and reads the whole body; true for a 200.
async fn answered_ok(request: reqwest::RequestBuilder) -> bool {
    match request.send().await {
        Ok(r) => r.status() == StatusCode::OK && r.bytes().await.is_ok(),
        Err(_) => false,
    }
}

// ---------------------------------------------------------------------------------------
// One page, as fast as it goes

pub struct Hammered {
    pub per_s: f64,
    pub errors: u64,
    pub latency: Samples,
}

/// `connections` clients requesting `path` back to back for `run_for`, without cookies.
pub async fn hammer(
    base: &str,
    path: &str,
    connections: usize,
    run_for: Duration,
) -> anyhow::Result<Hammered> {
    let url = format!("{base}{path}");
    let started = Instant::now();
    let deadline = started + run_for;
    let mut workers = Vec::new();
    for _ in 0..connections {
        let client = client(1)?;
        let url = url.clone();
        workers.push(tokio::spawn(async move {
            let (mut ok, mut errors, mut latency) = (0u64, 0u64, Samples::default());
            while Instant::now() < deadline {
                let sent = Instant::now();
                if answered_ok(client.get(&url)).await {
                    latency.push(sent.elapsed());
                    ok += 1;
                } else {
                    errors += 1;
                }
            }
            (ok, errors, latency)
        }));
    }
    gather(workers, started).await
}

// ---------------------------------------------------------------------------------------
// The latency probe

#[derive(Default)]
pub struct Probed {
    pub page: Samples,
    pub healthz: Samples,
    pub errors: u64,
}

impl Probed {
    pub fn extend(&mut self, other: Probed) {
        self.page.extend(other.page);
        self.healthz.extend(other.healthz);
        self.errors += other.errors;
    }
}

/// GET /sign-in and GET /healthz every PROBE_EVERY for `run_for`, on a thread of its own so
/// the load generator cannot delay it. Each request is sent on schedule, even when the
/// previous one has not answered yet.
pub async fn probe(base: &str, run_for: Duration) -> anyhow::Result<Probed> {
    let base = base.to_owned();
    let thread = std::thread::Builder::new().name("probe".into()).spawn(
        move || -> anyhow::Result<Probed> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(probe_on_schedule(&base, run_for))
        },
    )?;
    tokio::task::spawn_blocking(move || thread.join())
        .await?
        .map_err(|_| anyhow!("the probe thread panicked"))?
}

async fn probe_on_schedule(base: &str, run_for: Duration) -> anyhow::Result<Probed> {
    let client = client(4)?;
    let mut tick = tokio::time::interval(PROBE_EVERY);
    let deadline = Instant::now() + run_for;
    let mut pending = Vec::new();
    while Instant::now() < deadline {
        tick.tick().await;
        for (page, path) in [(true, "/sign-in"), (false, "/healthz")] {
            let request = client.get(format!("{base}{path}"));
            pending.push(tokio::spawn(async move {
                let sent = Instant::now();
                let ok = answered_ok(request).await;
                (page, ok, sent.elapsed())
            }));
        }
    }
    let mut probed = Probed::default();
    for p in pending {
        let (page, ok, took) = p.await?;
        if !ok {
            probed.errors += 1;
        } else if page {
            probed.page.push(took);
        } else {
            probed.healthz.push(took);
        }
    }
    Ok(probed)
}

// ---------------------------------------------------------------------------------------
// Sign-ins

/// The cookie `name` a response sets, as `name=value`.
fn set_cookie(response: &reqwest::Response, name: &str) -> Option<String> {
    response
        .headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| {
            v.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('='))
        })
        .and_then(|v| v.split(';').next())
        .map(str::to_owned)
}

/// The CSRF cookie (`name=value`) and the form's token from a GET of a form page.
async fn form_page(client: &Client, url: &str) -> anyhow::Result<(String, String)> {
    let r = client.get(url).send().await?;
    if r.status() != StatusCode::OK {
        bail!("GET {url}: {}", r.status());
    }
    let cookie = set_cookie(&r, "latchkey_csrf").context("no CSRF cookie")?;
    let body = r.text().await?;
    let marker = "name=\"csrf_token\" value=\"";
    let token = body
        .find(marker)
        .map(|i| &body[i + marker.len()..])
        .and_then(|rest| rest.split('"').next())
        .map(str::to_owned)
        .context("no csrf_token in the page")?;
    Ok((cookie, token))
}

/// One complete sign-in, as a browser without cookies would do it; the session cookie
/// (`name=value`) it got.
pub async fn sign_in_once(client: &Client, base: &str, email: &str) -> anyhow::Result<String> {
    Ok(sign_in_from_device(client, base, email, None).await?.0)
}

/// One complete sign-in from a browser that keeps only its device cookie (`name=value`)
/// between sign-ins, as a returning browser does: with none, the service mails "New
/// sign-in" and sets one. Returns the session cookie and the device cookie to send next.
pub async fn sign_in_from_device(
    client: &Client,
    base: &str,
    email: &str,
    device: Option<&str>,
) -> anyhow::Result<(String, Option<String>)> {
    let url = format!("{base}/sign-in");
    let (cookie, token) = form_page(client, &url).await?;
    let cookie = match device {
        Some(device) => format!("{cookie}; {device}"),
        None => cookie,
    };
    let r = client
        .post(&url)
        .header(header::COOKIE, cookie)
        .form(&[
            ("email", email),
            ("password", PASSWORD),
            ("csrf_token", &token),
        ])
        .send()
        .await?;
    let status = r.status();
    let to_home = r.headers().get(header::LOCATION).is_some_and(|l| l == "/");
    let session = set_cookie(&r, "latchkey_session");
    let new_device = set_cookie(&r, "latchkey_device");
    let _ = r.bytes().await;
    match session {
        Some(session) if status == StatusCode::SEE_OTHER && to_home => {
            Ok((session, new_device.or_else(|| device.map(str::to_owned))))
        }
        _ => bail!("POST /sign-in answered {status}"),
    }
}

/// What the sign-in clients share with whoever drives them. `running` decides (with
/// `in_flight`, both sequentially consistent, so a pause never misses a sign-in that is
/// starting); `wake` only wakes paused clients, so they take no CPU from a limit slice.
struct Shared {
    stop: AtomicBool,
    running: AtomicBool,
    wake: tokio::sync::watch::Sender<bool>,
    measuring: AtomicBool,
    in_flight: AtomicU64,
    done: AtomicU64,
    failed: AtomicU64,
}

/// Sign-in clients (each its own keep-alive connection and account) that sign in back to
/// back while running, and start no new sign-in while paused.
pub struct SignIns {
    shared: Arc<Shared>,
    workers: Vec<tokio::task::JoinHandle<Samples>>,
}

impl SignIns {
    /// `clients` clients, paused; nothing is counted until `measure_from_now`.
    pub fn start(base: &str, users: &[String], clients: usize) -> anyhow::Result<SignIns> {
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            running: AtomicBool::new(false),
            wake: tokio::sync::watch::Sender::new(false),
            measuring: AtomicBool::new(false),
            in_flight: AtomicU64::new(0),
            done: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        });
        let mut workers = Vec::new();
        for i in 0..clients {
            let client = client(1)?;
            let (base, email) = (base.to_owned(), users[i % users.len()].clone());
            let shared = shared.clone();
            workers.push(tokio::spawn(async move {
                sign_in_while_running(&client, &base, &email, &shared).await
            }));
        }
        Ok(SignIns { shared, workers })
    }

    pub fn resume(&self) {
        self.shared.running.store(true, Ordering::SeqCst);
        self.shared.wake.send_replace(true);
    }

    /// Stops new sign-ins and waits until those under way have answered.
    pub async fn pause(&self) -> anyhow::Result<()> {
        self.shared.running.store(false, Ordering::SeqCst);
        self.shared.wake.send_replace(false);
        let deadline = Instant::now() + REQUEST_TIMEOUT * 2;
        while self.shared.in_flight.load(Ordering::SeqCst) > 0 {
            if Instant::now() > deadline {
                bail!("sign-ins still under way a minute after the pause");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Ok(())
    }

    /// Latencies and failures count from now on.
    pub fn measure_from_now(&self) {
        self.shared.measuring.store(true, Ordering::SeqCst);
    }

    /// Complete sign-ins so far (counted or not).
    pub fn completed(&self) -> u64 {
        self.shared.done.load(Ordering::SeqCst)
    }

    /// Ends the clients: latencies of measured sign-ins and the failures among them.
    pub async fn finish(self) -> anyhow::Result<(Samples, u64)> {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.running.store(false, Ordering::SeqCst);
        self.shared.wake.send_replace(true);
        let mut latency = Samples::default();
        for worker in self.workers {
            latency.extend(worker.await?);
        }
        Ok((latency, self.shared.failed.load(Ordering::SeqCst)))
    }
}

async fn sign_in_while_running(
    client: &Client,
    base: &str,
    email: &str,
    shared: &Shared,
) -> Samples {
    let mut latency = Samples::default();
    let mut wake = shared.wake.subscribe();
    // Each client is one returning browser: its first sign-in is a new device.
    let mut device: Option<String> = None;
    while !shared.stop.load(Ordering::SeqCst) {
        shared.in_flight.fetch_add(1, Ordering::SeqCst);
        if !shared.running.load(Ordering::SeqCst) {
            shared.in_flight.fetch_sub(1, Ordering::SeqCst);
            if wake.wait_for(|&on| on).await.is_err() {
                break;
            }
            continue;
        }
        let started = Instant::now();
        let result = sign_in_from_device(client, base, email, device.as_deref()).await;
        if let Ok((_, kept)) = &result {
            device.clone_from(kept);
        }
        let measuring = shared.measuring.load(Ordering::SeqCst);
        match &result {
            Ok(_) => {
                shared.done.fetch_add(1, Ordering::SeqCst);
                if measuring {
                    latency.push(started.elapsed());
                }
            }
            Err(e) => {
                if measuring {
                    shared.failed.fetch_add(1, Ordering::SeqCst);
                }
                eprintln!("bench: sign-in failed: {e:#}");
            }
        }
        shared.in_flight.fetch_sub(1, Ordering::SeqCst);
        if result.is_err() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    latency
}

// ---------------------------------------------------------------------------------------
// Forgot password

/// POST /forgot-password response times, known and unknown addresses alternating (which
/// goes first alternates too), one at a time with a pause for the work done after the answer.
pub async fn forgot_timings(
    base: &str,
    known: &[String],
    unknown: &[String],
) -> anyhow::Result<(Samples, Samples)> {
    enumeration_timings(base, "/forgot-password", &[], known, unknown).await
}

/// POST /sign-up response times, addresses with an account and without alternating, as
/// for forgot-password. Both paths hash the chosen password on the request path; the mail
/// goes after the answer.
pub async fn sign_up_timings(
    base: &str,
    known: &[String],
    unknown: &[String],
    password: &str,
) -> anyhow::Result<(Samples, Samples)> {
    let fields = [
        ("new_password", password),
        ("new_password_confirm", password),
    ];
    enumeration_timings(base, "/sign-up", &fields, known, unknown).await
}

/// Response times of a form at `path` that must answer every address alike ("Check your
/// email"): `known` and `unknown` alternate (which goes first alternates too), one at a
/// time, with a pause for the work done after the answer; three warm-up posts first.
async fn enumeration_timings(
    base: &str,
    path: &str,
    fields: &[(&str, &str)],
    known: &[String],
    unknown: &[String],
) -> anyhow::Result<(Samples, Samples)> {
    let client = client(1)?;
    let url = format!("{base}{path}");
    let (cookie, token) = form_page(&client, &url).await?;
    let post = |email: String| {
        let mut form = vec![("email", email.as_str()), ("csrf_token", token.as_str())];
        form.extend_from_slice(fields);
        let request = client
            .post(&url)
            .header(header::COOKIE, cookie.clone())
            .form(&form);
        async move {
            let sent = Instant::now();
            let r = request.send().await?;
            let status = r.status();
            let body = r.text().await?;
            let took = sent.elapsed();
            if status != StatusCode::OK || !body.contains("Check your email") {
                bail!("POST {path} answered {status}");
            }
            Ok::<Duration, anyhow::Error>(took)
        }
    };
    // Warm the connection and the code paths; not counted.
    let warm = path.trim_start_matches('/');
    for i in 0..3 {
        post(format!("{warm}-warm-{i:03}@example.com")).await?;
    }
    let (mut known_t, mut unknown_t) = (Samples::default(), Samples::default());
    for (i, (k, u)) in known.iter().zip(unknown).enumerate() {
        let order = if i % 2 == 0 {
            [(k, true), (u, false)]
        } else {
            [(u, false), (k, true)]
        };
        for (email, is_known) in order {
            let took = post(email.clone()).await?;
            if is_known {
                known_t.push(took);
            } else {
                unknown_t.push(took);
            }
            tokio::time::sleep(FORGOT_GAP).await;
        }
    }
    Ok((known_t, unknown_t))
}

/// How many `.eml` files the service wrote, waiting up to 20 s for `expected`.
pub async fn wait_for_mail(dir: &Path, expected: usize) -> usize {
    let count = || {
        std::fs::read_dir(dir).map_or(0, |entries| {
            entries
                .flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "eml"))
                .count()
        })
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while count() < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    count()
}

// ---------------------------------------------------------------------------------------
// Forward-auth checks

/// Which cookie each forward-auth check carries.
#[derive(Clone)]
pub enum CheckCookie {
    /// The same `name=value` on every check (a signed-in browser).
    Fixed(String),
    /// No cookie at all.
    None,
    /// A fresh random, well-formed `<id>.<mac>` on every check (an attacker's flood of
    /// forged cookies).
    Random,
}

/// `connections` proxies sending nginx's `auth_request` subrequest back to back for
/// `run_for`; answers with `expect` count, anything else is an error.
pub async fn hammer_checks(
    base: &str,
    original_url: &str,
    cookie: CheckCookie,
    expect: StatusCode,
    connections: usize,
    run_for: Duration,
) -> anyhow::Result<Hammered> {
    use base64::Engine as _;
    use rand::RngCore as _;
    let url = format!("{base}/api/authz/auth-request");
    let started = Instant::now();
    let deadline = started + run_for;
    let mut workers = Vec::new();
    for _ in 0..connections {
        let client = client(1)?;
        let (url, original_url, cookie) = (url.clone(), original_url.to_owned(), cookie.clone());
        workers.push(tokio::spawn(async move {
            let (mut ok, mut errors, mut latency) = (0u64, 0u64, Samples::default());
            while Instant::now() < deadline {
                let mut request = client
                    .get(&url)
                    .header("x-original-url", &original_url)
                    .header("x-original-method", "GET");
                match &cookie {
                    CheckCookie::Fixed(c) => request = request.header(header::COOKIE, c),
                    CheckCookie::None => {}
                    CheckCookie::Random => {
                        // Shaped like a real cookie (`<id>.<mac>`), so the MAC is computed
                        // and compared before the forgery is refused.
                        let mut id = [0u8; 16];
                        let mut mac = [0u8; 32];
                        rand::rngs::OsRng.fill_bytes(&mut id);
                        rand::rngs::OsRng.fill_bytes(&mut mac);
                        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
                        let (id, mac) = (b64.encode(id), b64.encode(mac));
                        request =
                            request.header(header::COOKIE, format!("latchkey_session={id}.{mac}"));
                    }
                }
                let sent = Instant::now();
                let answered = match request.send().await {
                    Ok(r) => r.status() == expect && r.bytes().await.is_ok(),
                    Err(_) => false,
                };
                if answered {
                    latency.push(sent.elapsed());
                    ok += 1;
                } else {
                    errors += 1;
                }
            }
            (ok, errors, latency)
        }));
    }
    gather(workers, started).await
}

/// Adds up what the load workers counted, as requests answered per second since `started`.
async fn gather(
    workers: Vec<tokio::task::JoinHandle<(u64, u64, Samples)>>,
    started: Instant,
) -> anyhow::Result<Hammered> {
    let (mut ok, mut errors, mut latency) = (0, 0, Samples::default());
    for worker in workers {
        let (o, e, l) = worker.await?;
        ok += o;
        errors += e;
        latency.extend(l);
    }
    Ok(Hammered {
        per_s: ok as f64 / started.elapsed().as_secs_f64(),
        errors,
        latency,
    })
}

/// A client for one-off requests (the forward-auth phase's sign-in).
pub fn one_client() -> anyhow::Result<Client> {
    client(1)
}
