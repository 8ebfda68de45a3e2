//! Phase 8: the OpenID provider as relying parties use it, as fast as it goes: code exchanges
//! at the token endpoint for an RS256 and an ES256 client (`client_secret_basic`, PKCE),
//! refreshes (each connection following its own rotating refresh token) and userinfo
//! calls, each with p50/p99, Postgres round trips and rows written per request, and where
//! the CPU went. Measured the way the forward-auth checks are: a fixed set of keep-alive
//! connections sending back to back.
//!
//! Codes are minted before each exchange run (authorization requests from one signed-in
//! session for a `--skip-consent` client), so the run measures the exchange alone;
//! `LATCHKEY_BENCH_OIDC_CODES` caps how many (default 4000 per client).

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use base64::Engine as _;
use reqwest::redirect::Policy;
use reqwest::{Client, StatusCode, header};
use serde_json::Value as Json;
use sha2::{Digest as _, Sha256};
use sqlx::PgPool;

use crate::cpu::CpuSnapshot;
use crate::env_number;
use crate::load::{Samples, one_client, sign_in_once};
use crate::relay::Relay;
use crate::report::Report;
use crate::service;

const SECTION: &str = "8. OpenID provider";
/// Few enough that the target (1,000 exchanges/s with p99 <= 10 ms) is reachable at all:
/// with N connections back to back, 1,000/s means a mean latency of N ms (Little's law).
const CONNECTIONS: usize = 6;
const MINT_CONNECTIONS: usize = 8;
const DEFAULT_CODES: usize = 4000;
const REDIRECT_URI: &str = "https://bench.example.test/oidc/callback";
/// One PKCE verifier for every code (its challenge is computed once).
const VERIFIER: &str = "bench-code-verifier-0123456789-abcdefghijklmnopqrstuvwxyz";

/// What the phase needs from the running bench.
pub struct Ctx<'a> {
    pub base: &'a str,
    pub pool: &'a PgPool,
    pub relay: &'a Relay,
    pub tables: &'a [String],
    pub service_pid: u32,
    pub pg_pids: &'a [u32],
    /// The service's working directory (its secret key is there) and its database URL,
    /// straight to Postgres, for the operator's `latchkey oidc client add`.
    pub tmp: &'a Path,
    pub database_url: &'a str,
    pub email: &'a str,
    pub run_for: Duration,
}

struct Endpoints {
    authorization: String,
    token: String,
    userinfo: String,
}

pub async fn openid(ctx: &Ctx<'_>, report: &mut Report) -> anyhow::Result<()> {
    let http = client(1)?;
    let text = http
        .get(format!("{}/.well-known/openid-configuration", ctx.base))
        .send()
        .await?
        .error_for_status()
        .context("discovery")?
        .text()
        .await?;
    let discovery: Json = serde_json::from_str(&text).context("discovery JSON")?;
    let endpoint = |name: &str| {
        discovery[name]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("discovery has no {name}"))
    };
    let endpoints = Endpoints {
        authorization: endpoint("authorization_endpoint")?,
        token: endpoint("token_endpoint")?,
        userinfo: endpoint("userinfo_endpoint")?,
    };
    let cookie = sign_in_once(&one_client()?, ctx.base, ctx.email).await?;
    let codes = env_number("LATCHKEY_BENCH_OIDC_CODES").unwrap_or(DEFAULT_CODES);
    report.meta("oidc_connections", serde_json::json!(CONNECTIONS));
    report.meta("oidc_codes_per_client", serde_json::json!(codes));

    let mut kept = Vec::new();
    for alg in ["RS256", "ES256"] {
        let id = format!("bench-{}", alg.to_lowercase());
        let secret = add_client(ctx, &id, alg)?;
        eprintln!("bench: (8) minting {codes} codes for the {alg} client");
        let minted = mint_codes(&endpoints, &id, &cookie, codes).await?;
        eprintln!(
            "bench: (8) code exchanges, {alg} client, {CONNECTIONS} connections, up to {:?}",
            ctx.run_for
        );
        let key = format!("oidc_exchange_{}", alg.to_lowercase());
        let (run, tokens) = measured(ctx, report, &key, |deadline| {
            exchange(&endpoints.token, &id, &secret, minted, deadline)
        })
        .await?;
        rows(
            report,
            &format!("code exchanges/s, {alg} client"),
            &key,
            &run,
        );
        kept.push((id, secret, tokens));
    }

    // Refreshes and userinfo with what the RS256 exchanges issued.
    let (id, secret, tokens) = kept.swap_remove(0);
    if tokens.len() < CONNECTIONS {
        bail!(
            "only {} token responses to refresh with (raise LATCHKEY_BENCH_OIDC_CODES)",
            tokens.len()
        );
    }
    let access: Vec<String> = tokens.iter().map(|t| t.0.clone()).collect();
    let refresh: Vec<String> = tokens.into_iter().map(|t| t.1).collect();
    eprintln!("bench: (8) refreshes, {CONNECTIONS} rotating chains");
    let (run, _) = measured(ctx, report, "oidc_refresh", |deadline| {
        refreshes(&endpoints.token, &id, &secret, refresh, deadline)
    })
    .await?;
    rows(report, "refreshes/s (rotating)", "oidc_refresh", &run);
    eprintln!("bench: (8) userinfo, {CONNECTIONS} connections");
    let (run, _) = measured(ctx, report, "oidc_userinfo", |deadline| {
        userinfo(&endpoints.userinfo, access, deadline)
    })
    .await?;
    rows(report, "userinfo/s", "oidc_userinfo", &run);
    Ok(())
}

/// What one run counted.
struct Run {
    per_s: f64,
    ok: u64,
    errors: u64,
    latency: Samples,
    rows_per_request: f64,
    trips_per_request: f64,
}

/// Runs `work` until its deadline with the round trips, rows written and CPU around it.
async fn measured<F, Fut, T>(
    ctx: &Ctx<'_>,
    report: &mut Report,
    key: &str,
    work: F,
) -> anyhow::Result<(Run, T)>
where
    F: FnOnce(Instant) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<(u64, u64, Samples, T)>>,
{
    let mark = service::mark_writes(ctx.pool, ctx.tables).await?;
    let trips0 = ctx.relay.round_trips();
    let cpu0 = CpuSnapshot::take(ctx.service_pid, ctx.pg_pids)?;
    let started = Instant::now();
    let (ok, errors, latency, kept) = work(started + ctx.run_for).await?;
    let elapsed = started.elapsed().as_secs_f64();
    let cpu1 = CpuSnapshot::take(ctx.service_pid, ctx.pg_pids)?;
    let trips = ctx.relay.round_trips().saturating_sub(trips0);
    let written = service::rows_written_since(ctx.pool, ctx.tables, &mark).await?;
    report.cpu(SECTION, key, &cpu1.since(&cpu0));
    let n = ok.max(1) as f64;
    Ok((
        Run {
            per_s: ok as f64 / elapsed,
            ok,
            errors,
            latency,
            rows_per_request: written.total as f64 / n,
            trips_per_request: trips as f64 / n,
        },
        kept,
    ))
}

fn rows(report: &mut Report, label: &str, key: &str, run: &Run) {
    report.add(SECTION, label, &format!("{key}_per_s"), run.per_s, "/s");
    report.add(
        SECTION,
        "  p50",
        &format!("{key}_p50_ms"),
        run.latency.p(0.5),
        "ms",
    );
    report.add(
        SECTION,
        "  p99",
        &format!("{key}_p99_ms"),
        run.latency.p(0.99),
        "ms",
    );
    report.add(
        SECTION,
        "  answered (200)",
        &format!("{key}_ok"),
        run.ok as f64,
        "",
    );
    report.add(
        SECTION,
        "  failed or unexpected answers",
        &format!("{key}_errors"),
        run.errors as f64,
        "",
    );
    report.add(
        SECTION,
        "  database rows written per request",
        &format!("{key}_rows_per_request"),
        run.rows_per_request,
        "rows",
    );
    report.add(
        SECTION,
        "  Postgres round trips per request",
        &format!("{key}_round_trips_per_request"),
        run.trips_per_request,
        "",
    );
}

fn client(connections: usize) -> anyhow::Result<Client> {
    Ok(Client::builder()
        .redirect(Policy::none())
        .pool_max_idle_per_host(connections)
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(30))
        .build()?)
}

/// `latchkey oidc client add` (the release binary the bench built) for a `--skip-consent`
/// confidential client signing with `alg`; its secret.
fn add_client(ctx: &Ctx<'_>, id: &str, alg: &str) -> anyhow::Result<String> {
    let key = std::fs::read_to_string(ctx.tmp.join(service::SECRET_KEY_FILE))
        .context("reading the service's secret key")?;
    let out = Command::new(env!("CARGO_BIN_EXE_latchkey"))
        .args(["oidc", "client", "add", "--id", id, "--name", id])
        .args(["--redirect-uri", REDIRECT_URI, "--skip-consent"])
        .args(["--signing-alg", alg])
        .current_dir(ctx.tmp)
        .env("DATABASE_URL", ctx.database_url)
        .env("LATCHKEY_PUBLIC_URL", ctx.base)
        .env("LATCHKEY_SECRET_KEY", key.trim())
        .env("LATCHKEY_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .context("running latchkey oidc client add")?;
    if !out.status.success() {
        bail!(
            "oidc client add {id}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let secret = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if secret.is_empty() || secret.contains(char::is_whitespace) {
        bail!("oidc client add {id} printed no secret");
    }
    Ok(secret)
}

fn challenge() -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(VERIFIER.as_bytes()))
}

/// `count` codes for `client_id`, from authorization requests of the signed-in `cookie`.
async fn mint_codes(
    endpoints: &Endpoints,
    client_id: &str,
    cookie: &str,
    count: usize,
) -> anyhow::Result<Vec<String>> {
    let mut url = url::Url::parse(&endpoints.authorization)?;
    url.query_pairs_mut()
        .append_pair("client_id", client_id)
        .append_pair("redirect_uri", REDIRECT_URI)
        .append_pair("response_type", "code")
        .append_pair("scope", "openid email profile offline_access")
        .append_pair("code_challenge", &challenge())
        .append_pair("code_challenge_method", "S256")
        .append_pair("state", "bench")
        .append_pair("nonce", "bench");
    let url = url.to_string();
    let mut workers = Vec::new();
    for worker in 0..MINT_CONNECTIONS {
        let (client, url, cookie) = (client(1)?, url.clone(), cookie.to_owned());
        let share = count / MINT_CONNECTIONS + usize::from(worker < count % MINT_CONNECTIONS);
        workers.push(tokio::spawn(async move {
            let mut codes = Vec::with_capacity(share);
            for _ in 0..share {
                let r = client
                    .get(&url)
                    .header(header::COOKIE, &cookie)
                    .send()
                    .await?;
                let to = r
                    .headers()
                    .get(header::LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                let status = r.status();
                let _ = r.bytes().await;
                let code = url::Url::parse(&to).ok().and_then(|u| {
                    u.query_pairs()
                        .find(|(k, _)| k == "code")
                        .map(|(_, v)| v.into_owned())
                });
                match code {
                    Some(code) if to.starts_with(REDIRECT_URI) => codes.push(code),
                    _ => bail!("the authorization answered {status} to {to:?}, not a code"),
                }
            }
            Ok::<_, anyhow::Error>(codes)
        }));
    }
    let mut codes = Vec::with_capacity(count);
    for worker in workers {
        codes.extend(worker.await??);
    }
    Ok(codes)
}

type Tokens = Vec<(String, String)>;

/// Redeems `codes` on `CONNECTIONS` connections until they run out or `deadline`; the
/// (access, refresh) tokens of the first answers are kept for the next runs.
async fn exchange(
    token_endpoint: &str,
    client_id: &str,
    secret: &str,
    codes: Vec<String>,
    deadline: Instant,
) -> anyhow::Result<(u64, u64, Samples, Tokens)> {
    let queue = Arc::new(Mutex::new(codes));
    let mut workers = Vec::new();
    for _ in 0..CONNECTIONS {
        let (client, queue) = (client(1)?, queue.clone());
        let (url, id, secret) = (
            token_endpoint.to_owned(),
            client_id.to_owned(),
            secret.to_owned(),
        );
        workers.push(tokio::spawn(async move {
            let (mut ok, mut errors, mut latency, mut kept) =
                (0u64, 0u64, Samples::default(), None);
            while Instant::now() < deadline {
                let Some(code) = queue.lock().ok().and_then(|mut q| q.pop()) else {
                    break;
                };
                let sent = Instant::now();
                let answer = client
                    .post(&url)
                    .basic_auth(&id, Some(&secret))
                    .form(&[
                        ("grant_type", "authorization_code"),
                        ("code", &code),
                        ("redirect_uri", REDIRECT_URI),
                        ("code_verifier", VERIFIER),
                    ])
                    .send()
                    .await;
                match tokens_of(answer).await {
                    Some(tokens) => {
                        latency.push(sent.elapsed());
                        ok += 1;
                        kept.get_or_insert(tokens);
                    }
                    None => errors += 1,
                }
            }
            (ok, errors, latency, kept)
        }));
    }
    let (mut ok, mut errors, mut latency, mut kept) = (0, 0, Samples::default(), Vec::new());
    for worker in workers {
        let (o, e, l, k) = worker.await?;
        ok += o;
        errors += e;
        latency.extend(l);
        kept.extend(k);
    }
    Ok((ok, errors, latency, kept))
}

/// A 200 token response's (access_token, refresh_token), with an ID token in it.
async fn tokens_of(answer: reqwest::Result<reqwest::Response>) -> Option<(String, String)> {
    let response = answer.ok()?;
    if response.status() != StatusCode::OK {
        let _ = response.bytes().await;
        return None;
    }
    let body: Json = serde_json::from_slice(&response.bytes().await.ok()?).ok()?;
    body["id_token"].as_str()?;
    Some((
        body["access_token"].as_str()?.to_owned(),
        body["refresh_token"].as_str()?.to_owned(),
    ))
}

/// Each connection refreshes its own grant back to back, following the rotation.
async fn refreshes(
    token_endpoint: &str,
    client_id: &str,
    secret: &str,
    refresh_tokens: Vec<String>,
    deadline: Instant,
) -> anyhow::Result<(u64, u64, Samples, ())> {
    let mut workers = Vec::new();
    for refresh in refresh_tokens.into_iter().take(CONNECTIONS) {
        let client = client(1)?;
        let (url, id, secret) = (
            token_endpoint.to_owned(),
            client_id.to_owned(),
            secret.to_owned(),
        );
        workers.push(tokio::spawn(async move {
            let (mut ok, mut errors, mut latency) = (0u64, 0u64, Samples::default());
            let mut refresh = refresh;
            while Instant::now() < deadline {
                let sent = Instant::now();
                let answer = client
                    .post(&url)
                    .basic_auth(&id, Some(&secret))
                    .form(&[("grant_type", "refresh_token"), ("refresh_token", &refresh)])
                    .send()
                    .await;
                match tokens_of(answer).await {
                    Some((_, next)) => {
                        latency.push(sent.elapsed());
                        ok += 1;
                        refresh = next;
                    }
                    None => {
                        // A broken chain cannot go on.
                        errors += 1;
                        break;
                    }
                }
            }
            (ok, errors, latency)
        }));
    }
    let (mut ok, mut errors, mut latency) = (0, 0, Samples::default());
    for worker in workers {
        let (o, e, l) = worker.await?;
        ok += o;
        errors += e;
        latency.extend(l);
    }
    Ok((ok, errors, latency, ()))
}

/// Userinfo back to back, each connection with its own access token.
async fn userinfo(
    endpoint: &str,
    access_tokens: Vec<String>,
    deadline: Instant,
) -> anyhow::Result<(u64, u64, Samples, ())> {
    let mut workers = Vec::new();
    for token in access_tokens.into_iter().take(CONNECTIONS) {
        let (client, url) = (client(1)?, endpoint.to_owned());
        workers.push(tokio::spawn(async move {
            let (mut ok, mut errors, mut latency) = (0u64, 0u64, Samples::default());
            while Instant::now() < deadline {
                let sent = Instant::now();
                let answered = match client.get(&url).bearer_auth(&token).send().await {
                    Ok(r) => r.status() == StatusCode::OK && r.bytes().await.is_ok(),
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
    let (mut ok, mut errors, mut latency) = (0, 0, Samples::default());
    for worker in workers {
        let (o, e, l) = worker.await?;
        ok += o;
        errors += e;
        latency.extend(l);
    }
    Ok((ok, errors, latency, ()))
}
