//! What the benchmark measures, in which order: set-up, idle latency, cheap pages, the
//! argon2 limit and sign-ins in interleaved slices, round trips per sign-in, forgot
//! password, forward-auth checks, the OpenID provider, memory. Each phase adds its figures to the report.

use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use argon2::password_hash::PasswordHasher;
use argon2::password_hash::phc::PasswordHash;
use argon2::{Algorithm, Argon2, Params, Version};
use latchkey::config::Config;
use serde_json::json;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

use crate::cpu::{CpuSnapshot, CpuUsage, loadavg, rss_mb};
use crate::limit::{Limit, argon2_05_limit, argon2_limit};
use crate::load::{
    CheckCookie, Probed, Samples, SignIns, forgot_timings, hammer, hammer_checks, one_client,
    probe, sign_in_once, sign_up_timings, wait_for_mail,
};
use crate::relay::{Relay, base_via_relay, direct_base, upstream_of};
use crate::report::{Report, round};
use crate::service::{self, Resources};
use crate::{PASSWORD, env_number};

const IDLE_PROBE_FOR: Duration = Duration::from_secs(3);
const ANON_FOR: Duration = Duration::from_secs(8);
const ANON_CONNECTIONS: usize = 4;
const SIGNIN_WARMUP: Duration = Duration::from_secs(3);
const SIGNIN_USERS: usize = 16;
/// One slice of the argon2 limit; sign-in slices are LATCHKEY_BENCH_SIGNIN_SECS / pairs.
const LIMIT_SLICE: Duration = Duration::from_secs(3);
const DEFAULT_PAIRS: usize = 5;
/// Sign-ins alone (no probe) whose Postgres round trips and rows are counted.
const ROUND_TRIPS_FOR: Duration = Duration::from_secs(4);
const FORGOT_EACH: usize = 60;
/// Each kind of forward-auth check runs this long, on this many proxy connections.
const CHECKS_FOR: Duration = Duration::from_secs(6);
const CHECK_CONNECTIONS: usize = 16;

/// What the phases share once the service is up.
struct Bench {
    params: Params,
    cores: usize,
    clients: usize,
    pairs: usize,
    signin_slice: Duration,
    hashes: Vec<String>,
    pool: PgPool,
    relay: Relay,
    /// The instance whose Postgres connections go through the relay: every phase that
    /// counts round trips, and all but the interleaved sign-in slices.
    base: String,
    service_pid: u32,
    /// The instance connected to Postgres directly: the interleaved sign-in slices.
    direct: String,
    direct_pid: u32,
    pg_pids: Vec<u32>,
    db_name: String,
    /// Where both instances write their mail.
    mail_dir: std::path::PathBuf,
    tables: Vec<String>,
    signin_users: Vec<String>,
    known: Vec<String>,
    unknown: Vec<String>,
}

pub async fn measure(res: &mut Resources) -> anyhow::Result<Report> {
    let mut report = Report::default();
    let bench = set_up(res, &mut report).await?;
    // LATCHKEY_BENCH_ONLY=forward-auth: set-up and the forward-auth phase alone.
    if std::env::var("LATCHKEY_BENCH_ONLY").is_ok_and(|v| v == "forward-auth") {
        forward_auth(&bench, &mut report).await?;
        return Ok(report);
    }
    // LATCHKEY_BENCH_ONLY=oidc: set-up and the OpenID provider's phase alone.
    if std::env::var("LATCHKEY_BENCH_ONLY").is_ok_and(|v| v == "oidc") {
        openid(&bench, res, &mut report).await?;
        return Ok(report);
    }
    // LATCHKEY_BENCH_ONLY=sign-in: set-up and the interleaved limit and sign-in slices alone.
    if std::env::var("LATCHKEY_BENCH_ONLY").is_ok_and(|v| v == "sign-in") {
        sign_in_against_limit(&bench, &mut report).await?;
        return Ok(report);
    }
    idle_latency(&bench, &mut report).await?;
    cheap_pages(&bench, &mut report).await?;
    sign_in_against_limit(&bench, &mut report).await?;
    forgot_password(&bench, res, &mut report).await?;
    forward_auth(&bench, &mut report).await?;
    openid(&bench, res, &mut report).await?;
    sign_up(&bench, res, &mut report).await?;
    report.add(
        "5. memory",
        "service peak RSS (VmHWM) over the run, the larger instance's",
        "peak_rss_mb",
        rss_mb(bench.service_pid, "VmHWM")?.max(rss_mb(bench.direct_pid, "VmHWM")?),
        "MB",
    );
    report.meta("loadavg_at_end", json!(loadavg()));
    Ok(report)
}

// ---------------------------------------------------------------------------------------
// Set-up

/// The configuration, the seeded hashes, the database, the relay and the running service.
async fn set_up(res: &mut Resources, report: &mut Report) -> anyhow::Result<Bench> {
    // The service runs in the temporary directory (its development secret key and mail go
    // there, a checkout's config/local.toml is not read); this process reads the same
    // configuration from there, so the baseline hashes with the service's parameters.
    std::env::set_current_dir(&res.tmp).context("entering the temporary directory")?;
    let (params, cores, clients) = read_settings(report)?;
    let pairs = env_number("LATCHKEY_BENCH_PAIRS")
        .unwrap_or(DEFAULT_PAIRS)
        .max(1);
    let signin_secs: u64 = env_number("LATCHKEY_BENCH_SIGNIN_SECS").unwrap_or(20);
    let signin_slice = Duration::from_secs(signin_secs).div_f64(pairs as f64);
    report.meta("signin_pairs", json!(pairs));
    // Seed hashes first; they also check that the parameters work.
    let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
    let hashes = (0..SIGNIN_USERS)
        .map(|_| {
            PasswordHasher::<PasswordHash>::hash_password(&argon2, PASSWORD.as_bytes())
                .map(|h| h.to_string())
                .map_err(|e| anyhow!("hashing: {e}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let (pool, signin_users, known, unknown) = seed_database(res, &hashes).await?;
    let relay = Relay::start(upstream_of(&res.pg_base)?)?;
    let service_db_url = service::pg_url(&base_via_relay(&res.pg_base, relay.port), &res.db_name);
    let (base, service_pid) = service::start_ready(res, "service", &service_db_url).await?;
    // A second instance on the same database, connected to Postgres without the relay
    // (same connection options, TLS off): the sign-in slices measured against the limit
    // run against it, so the relay's copying threads are not in their path.
    let direct_db_url = service::pg_url(&direct_base(&res.pg_base), &res.db_name);
    let (direct, direct_pid) = service::start_ready(res, "direct", &direct_db_url).await?;
    report.add(
        "5. memory",
        "service RSS when ready",
        "rss_idle_mb",
        rss_mb(service_pid, "VmRSS")?,
        "MB",
    );
    let pg_pids = service::postgres_pids(&pool, &res.db_name).await?;
    let tables = service::table_names(&pool).await?;
    Ok(Bench {
        params,
        cores,
        clients,
        pairs,
        signin_slice,
        hashes,
        pool,
        relay,
        base,
        service_pid,
        direct,
        direct_pid,
        pg_pids,
        db_name: res.db_name.clone(),
        mail_dir: res.tmp.join("mail"),
        tables,
        signin_users,
        known,
        unknown,
    })
}

/// (argon2 parameters, cores, sign-in clients), from the service's configuration.
fn read_settings(report: &mut Report) -> anyhow::Result<(Params, usize, usize)> {
    let config = Config::load()?;
    let a = &config.argon2;
    let params = Params::new(a.memory_kib, a.iterations, a.parallelism, None)
        .map_err(|e| anyhow!("invalid argon2 parameters: {e}"))?;
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let hash_threads = if a.threads == 0 { cores } else { a.threads };
    let clients = env_number("LATCHKEY_BENCH_CLIENTS").unwrap_or(3 * hash_threads);
    let described = format!("m={} t={} p={}", a.memory_kib, a.iterations, a.parallelism);
    eprintln!("bench: argon2id {described}, {cores} cores, {hash_threads} hashing threads");
    report.meta("argon2_params", json!(described));
    report.meta("cores", json!(cores));
    report.meta("hash_threads", json!(hash_threads));
    report.meta("signin_clients", json!(clients));
    report.meta("loadavg_at_start", json!(loadavg()));
    Ok((params, cores, clients))
}

/// The bench database, migrated, with the sign-in accounts and the known reset addresses:
/// (pool, sign-in addresses, known addresses, unknown addresses).
async fn seed_database(
    res: &mut Resources,
    hashes: &[String],
) -> anyhow::Result<(PgPool, Vec<String>, Vec<String>, Vec<String>)> {
    service::create_database(&res.pg_base, &res.db_name).await?;
    res.db_created = true;
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect(&service::pg_url(&res.pg_base, &res.db_name))
        .await
        .context("connecting to the bench database")?;
    res.pool = Some(pool.clone());
    latchkey::db::migrate(&pool).await?;
    let addresses = |prefix: &str, n: usize| -> Vec<String> {
        (0..n)
            .map(|i| format!("{prefix}-{i:03}@example.com"))
            .collect()
    };
    let signin_users = addresses("bench", SIGNIN_USERS);
    let known = addresses("reset-a", FORGOT_EACH);
    let unknown = addresses("reset-b", FORGOT_EACH);
    for (email, hash) in signin_users.iter().zip(hashes) {
        service::insert_user(&pool, email, hash).await?;
    }
    for email in &known {
        service::insert_user(&pool, email, &hashes[0]).await?;
    }
    Ok((pool, signin_users, known, unknown))
}

// ---------------------------------------------------------------------------------------
// 3 (reference) and 4: quick pages with nothing else going on

async fn idle_latency(bench: &Bench, report: &mut Report) -> anyhow::Result<()> {
    eprintln!("bench: (3) latency probe, idle, {IDLE_PROBE_FOR:?}");
    let idle = probe(&bench.base, IDLE_PROBE_FOR).await?;
    let section = "3. latency";
    let page_p99 = idle.page.p(0.99);
    report.add(
        section,
        "GET /sign-in p99, idle",
        "signin_page_p99_ms_idle",
        page_p99,
        "ms",
    );
    let healthz_p99 = idle.healthz.p(0.99);
    report.add(
        section,
        "GET /healthz p99, idle",
        "healthz_p99_ms_idle",
        healthz_p99,
        "ms",
    );
    Ok(())
}

/// Anonymous GET /sign-in as fast as it goes, and the rows those requests wrote.
async fn cheap_pages(bench: &Bench, report: &mut Report) -> anyhow::Result<()> {
    eprintln!(
        "bench: (4) anonymous GET /sign-in on {ANON_CONNECTIONS} connections for {ANON_FOR:?}"
    );
    let mark = service::mark_writes(&bench.pool, &bench.tables).await?;
    let cpu0 = CpuSnapshot::take(bench.service_pid, &bench.pg_pids)?;
    let anon = hammer(&bench.base, "/sign-in", ANON_CONNECTIONS, ANON_FOR).await?;
    let cpu1 = CpuSnapshot::take(bench.service_pid, &bench.pg_pids)?;
    let written = service::rows_written_since(&bench.pool, &bench.tables, &mark).await?;
    let section = "4. cheap pages";
    report.add(
        section,
        "anonymous GET /sign-in/s, no hashing load",
        "signin_page_per_s",
        anon.per_s,
        "/s",
    );
    let p99 = anon.latency.p(0.99);
    report.add(
        section,
        "  p99 at that rate",
        "signin_page_p99_ms_saturated",
        p99,
        "ms",
    );
    let errors = anon.errors as f64;
    report.add(
        section,
        "  failed requests",
        "signin_page_errors",
        errors,
        "",
    );
    report.add(
        section,
        "database rows those requests wrote",
        "anon_rows_written",
        written.total as f64,
        "rows",
    );
    report.meta("anon_rows_written_by_table", json!(written.by_table));
    report.meta("anon_tables_checked", json!(bench.tables));
    report.cpu(section, "anon", &cpu1.since(&cpu0));
    report.meta(
        "rss_mb_after_anon",
        round(rss_mb(bench.service_pid, "VmHWM")?),
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// 1, 2 and 3: the limit and sign-ins, interleaved; round trips per sign-in

/// What the interleaved slices measured.
#[derive(Default)]
struct Slices {
    limits: Vec<Limit>,
    limit_cpu: CpuUsage,
    signin_per_s: Vec<f64>,
    signins: u64,
    signin_secs: f64,
    signin_cpu: CpuUsage,
    probe: Probed,
}

/// Sign-ins and round trips counted between two pauses (nothing under way at either end).
struct Counted {
    signins: u64,
    round_trips: u64,
    pings: u64,
    /// The service's own round trips over as long, with no sign-ins (taken off the above).
    idle_round_trips: u64,
    written: service::Written,
}

async fn sign_in_against_limit(bench: &Bench, report: &mut Report) -> anyhow::Result<()> {
    eprintln!(
        "bench: (1)+(2) {} pairs of a {LIMIT_SLICE:?} argon2id slice and a {:?} slice of \
         sign-ins from {} clients (after {SIGNIN_WARMUP:?} warm-up), (3) probe meanwhile",
        bench.pairs, bench.signin_slice, bench.clients
    );
    let signins = SignIns::start(&bench.direct, &bench.signin_users, bench.clients)?;
    signins.resume();
    tokio::time::sleep(SIGNIN_WARMUP).await;
    signins.pause().await?;
    signins.measure_from_now();
    // The backends as they are after the warm-up: the pool opens more under load.
    let pg_pids = service::postgres_pids(&bench.pool, &bench.db_name).await?;
    let slices = interleave(bench, &signins, &pg_pids).await?;
    let (latency, errors) = signins.finish().await?;
    eprintln!(
        "bench: Postgres round trips and rows of {ROUND_TRIPS_FOR:?} of sign-ins alone, \
         through the relay"
    );
    // The same clients' returning browsers, against the instance behind the relay; the
    // warm-up gives each its device cookie there, as the measured clients had theirs.
    // Each client's first sign-in there is a new device: wait for those mails to go out,
    // so the outbox's round trips for them fall outside the count.
    let mails = wait_for_mail(&bench.mail_dir, 0).await;
    let counting = SignIns::start(&bench.base, &bench.signin_users, bench.clients)?;
    counting.resume();
    tokio::time::sleep(SIGNIN_WARMUP).await;
    counting.pause().await?;
    wait_for_mail(&bench.mail_dir, mails + bench.clients).await;
    counting.measure_from_now();
    let counted = count_round_trips(bench, &counting).await?;
    let (_, counting_errors) = counting.finish().await?;
    if counting_errors > 0 {
        bail!("{counting_errors} sign-ins failed while round trips were counted");
    }
    report_limit(report, &slices);
    argon2_versions(bench, report)?;
    report_sign_in(report, &slices, &latency, errors);
    report_round_trips(report, &counted);
    report_latency_under_load(report, &slices.probe);
    report.meta(
        "rss_mb_after_signin",
        round(rss_mb(bench.direct_pid, "VmHWM")?),
    );
    Ok(())
}

/// The argon2 crate before and after the move to 0.6: 0.5.3 and 0.6 slices taking turns
/// (0.6, 0.5.3, 0.6, 0.5.3), same parameters and hash, nothing else running.
fn argon2_versions(bench: &Bench, report: &mut Report) -> anyhow::Result<()> {
    eprintln!("bench: argon2 0.6 and 0.5.3 taking turns, {LIMIT_SLICE:?} each, twice");
    let (mut new, mut old) = (Vec::new(), Vec::new());
    for _ in 0..2 {
        new.push(argon2_limit(&bench.params, bench.cores, &bench.hashes[0], LIMIT_SLICE)?.per_s);
        old.push(argon2_05_limit(&bench.params, bench.cores, &bench.hashes[0], LIMIT_SLICE)?.per_s);
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let section = "1. limit";
    let label = "  argon2 0.6 verifications/s, slices beside 0.5.3's";
    report.add(section, label, "argon2_06_verify_per_s", mean(&new), "/s");
    let label = "  argon2 0.5.3 (the version before) verifications/s";
    report.add(section, label, "argon2_05_verify_per_s", mean(&old), "/s");
    let label = "  0.6 over 0.5.3";
    report.add(
        section,
        label,
        "argon2_06_over_05",
        mean(&new) / mean(&old),
        "",
    );
    Ok(())
}

/// Limit and sign-in slices taking turns, the first of each pair alternating (limit first,
/// then sign-ins first, ...), so that a machine slowing down moves both sides of a pair.
async fn interleave(bench: &Bench, signins: &SignIns, pg_pids: &[u32]) -> anyhow::Result<Slices> {
    let mut slices = Slices::default();
    for pair in 0..bench.pairs {
        if pair % 2 == 0 {
            limit_slice(bench, pg_pids, &mut slices)?;
            sign_in_slice(bench, signins, pg_pids, &mut slices).await?;
        } else {
            sign_in_slice(bench, signins, pg_pids, &mut slices).await?;
            limit_slice(bench, pg_pids, &mut slices)?;
        }
        eprintln!(
            "bench:   pair {}: limit {:.1}/s, sign-ins {:.1}/s",
            pair + 1,
            slices.limits.last().map_or(f64::NAN, |l| l.per_s),
            slices.signin_per_s.last().copied().unwrap_or(f64::NAN),
        );
    }
    Ok(slices)
}

/// argon2id on every core in this process while the sign-in clients are paused.
fn limit_slice(bench: &Bench, pg_pids: &[u32], slices: &mut Slices) -> anyhow::Result<()> {
    let cpu0 = CpuSnapshot::take(bench.direct_pid, pg_pids)?;
    let limit = argon2_limit(&bench.params, bench.cores, &bench.hashes[0], LIMIT_SLICE)?;
    let cpu1 = CpuSnapshot::take(bench.direct_pid, pg_pids)?;
    slices.limit_cpu.add(&cpu1.since(&cpu0));
    slices.limits.push(limit);
    Ok(())
}

/// Sign-ins for one slice with the probe running; complete sign-ins are counted from the
/// resume to the end of the slice, then the clients pause until none is under way.
async fn sign_in_slice(
    bench: &Bench,
    signins: &SignIns,
    pg_pids: &[u32],
    slices: &mut Slices,
) -> anyhow::Result<()> {
    let cpu0 = CpuSnapshot::take(bench.direct_pid, pg_pids)?;
    let done0 = signins.completed();
    let started = Instant::now();
    signins.resume();
    let probed = probe(&bench.direct, bench.signin_slice).await?;
    let done = signins.completed().saturating_sub(done0);
    let secs = started.elapsed().as_secs_f64();
    let cpu1 = CpuSnapshot::take(bench.direct_pid, pg_pids)?;
    signins.pause().await?;
    slices.signin_cpu.add(&cpu1.since(&cpu0));
    slices.signin_per_s.push(done as f64 / secs);
    slices.signins += done;
    slices.signin_secs += secs;
    slices.probe.extend(probed);
    Ok(())
}

/// Sign-ins alone (no probe) from one pause to the next: every round trip the relay saw
/// and every row written in between belongs to the sign-ins completed in between, less
/// what the service does on its own (the outbox worker's poll every second), measured
/// first over as long with the sign-ins paused and taken off.
async fn count_round_trips(bench: &Bench, signins: &SignIns) -> anyhow::Result<Counted> {
    let counts = |relay: &Relay| (relay.round_trips(), relay.pings());
    let idle0 = counts(&bench.relay);
    tokio::time::sleep(ROUND_TRIPS_FOR).await;
    let idle1 = counts(&bench.relay);
    let mark = service::mark_writes(&bench.pool, &bench.tables).await?;
    let (busy0, done0) = (counts(&bench.relay), signins.completed());
    signins.resume();
    tokio::time::sleep(ROUND_TRIPS_FOR).await;
    signins.pause().await?;
    let (busy1, done1) = (counts(&bench.relay), signins.completed());
    let written = service::rows_written_since(&bench.pool, &bench.tables, &mark).await?;
    let own = |a: u64, b: u64, idle_a: u64, idle_b: u64| {
        b.saturating_sub(a)
            .saturating_sub(idle_b.saturating_sub(idle_a))
    };
    Ok(Counted {
        signins: done1.saturating_sub(done0),
        round_trips: own(busy0.0, busy1.0, idle0.0, idle1.0),
        pings: own(busy0.1, busy1.1, idle0.1, idle1.1),
        idle_round_trips: idle1.0.saturating_sub(idle0.0),
        written,
    })
}

/// Median, minimum and maximum (NaN for none).
fn median_min_max(values: &[f64]) -> (f64, f64, f64) {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    v.sort_by(f64::total_cmp);
    let Some((&min, &max)) = v.first().zip(v.last()) else {
        return (f64::NAN, f64::NAN, f64::NAN);
    };
    let mid = v.len() / 2;
    let median = if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    };
    (median, min, max)
}

fn report_limit(report: &mut Report, slices: &Slices) {
    let rates: Vec<f64> = slices.limits.iter().map(|l| l.per_s).collect();
    let mean = rates.iter().sum::<f64>() / rates.len().max(1) as f64;
    let first = rates.first().copied().unwrap_or(f64::NAN);
    let last = rates.last().copied().unwrap_or(f64::NAN);
    let cpu_ms: Vec<f64> = slices.limits.iter().map(|l| l.cpu_ms).collect();
    let cpu_ms_mean = cpu_ms.iter().sum::<f64>() / cpu_ms.len().max(1) as f64;
    let cpu_ms_min = cpu_ms.iter().copied().fold(f64::NAN, f64::min);
    let section = "1. limit";
    report.add(
        section,
        "argon2id verifications/s (all cores, in-process, mean of the slices)",
        "argon2_verify_per_s",
        mean,
        "/s",
    );
    let label = "  measured in the first limit slice";
    report.add(section, label, "argon2_verify_per_s_before", first, "/s");
    let label = "  measured in the last limit slice";
    report.add(section, label, "argon2_verify_per_s_after", last, "/s");
    let label = "CPU time of one verification (mean of the slices)";
    report.add(section, label, "argon2_verify_cpu_ms", cpu_ms_mean, "ms");
    let label = "  in the fastest slice";
    report.add(section, label, "argon2_verify_cpu_ms_min", cpu_ms_min, "ms");
    report.meta(
        "argon2_verify_per_s_slices",
        json!(rates.iter().map(|r| round(*r)).collect::<Vec<_>>()),
    );
    report.cpu(section, "limit", &slices.limit_cpu);
}

fn report_sign_in(report: &mut Report, slices: &Slices, latency: &Samples, errors: u64) {
    let section = "2. sign-in";
    let per_s = slices.signins as f64 / slices.signin_secs.max(1e-9);
    let limit =
        slices.limits.iter().map(|l| l.per_s).sum::<f64>() / slices.limits.len().max(1) as f64;
    let label = "complete sign-ins/s (GET + POST, 303 to /)";
    report.add(section, label, "signin_per_s", per_s, "/s");
    let label = "ratio to the limit (all sign-in over all limit slices)";
    report.add(section, label, "signin_ratio", per_s / limit, "");
    // Per core this run got (all busy cores but other processes'), on each side: what the
    // ratio comes to when others take a different share of the limit and sign-in slices.
    let per_core = (per_s / slices.signin_cpu.cores_ours().max(1e-9))
        / (limit / slices.limit_cpu.cores_ours().max(1e-9));
    let label = "ratio per core the run got (others' share taken out)";
    report.add(section, label, "signin_ratio_per_core", per_core, "");
    let ratios: Vec<f64> = slices
        .signin_per_s
        .iter()
        .zip(&slices.limits)
        .map(|(s, l)| s / l.per_s)
        .collect();
    let (median, min, max) = median_min_max(&ratios);
    // What a hash costs inside the loaded service, against the limit's mean above: the
    // part of the gap that is not the CPU spent around the hashes.
    let label = "argon2 CPU per sign-in in the service (thread time over sign-ins)";
    let cpu_ms = slices.signin_cpu.argon2_secs() * 1000.0 / (slices.signins as f64).max(1.0);
    report.add(section, label, "signin_argon2_cpu_ms", cpu_ms, "ms");
    let label = "ratio to the limit, median of the per-pair ratios";
    report.add(section, label, "signin_ratio_median", median, "");
    report.add(section, "  lowest pair", "signin_ratio_min", min, "");
    report.add(section, "  highest pair", "signin_ratio_max", max, "");
    report.meta(
        "signin_ratio_pairs",
        json!(ratios.iter().map(|r| round(*r)).collect::<Vec<_>>()),
    );
    report.meta(
        "signin_per_s_slices",
        json!(
            slices
                .signin_per_s
                .iter()
                .map(|r| round(*r))
                .collect::<Vec<_>>()
        ),
    );
    let label = "sign-in p50 (GET + POST)";
    report.add(section, label, "signin_p50_ms", latency.p(0.5), "ms");
    let label = "sign-in p99 (GET + POST)";
    report.add(section, label, "signin_p99_ms", latency.p(0.99), "ms");
    report.add(
        section,
        "failed sign-ins",
        "signin_errors",
        errors as f64,
        "",
    );
    report.cpu(section, "signin", &slices.signin_cpu);
    report.add(
        section,
        "share of the service's, Postgres' and bench's CPU spent in argon2",
        "signin_argon2_share",
        slices.signin_cpu.argon2_share(),
        "",
    );
}

fn report_round_trips(report: &mut Report, counted: &Counted) {
    let section = "2. sign-in";
    let signins = (counted.signins as f64).max(1e-9);
    report.add(
        section,
        "Postgres round trips of statements per complete sign-in",
        "pg_round_trips_per_sign_in",
        counted.round_trips as f64 / signins,
        "",
    );
    report.add(
        section,
        "  plus sqlx's pings as connections return to the pool",
        "pg_pool_pings_per_sign_in",
        counted.pings as f64 / signins,
        "",
    );
    report.add(
        section,
        "database rows written per complete sign-in",
        "signin_rows_written_per_sign_in",
        counted.written.total as f64 / signins,
        "rows",
    );
    report.meta("round_trip_sign_ins", json!(counted.signins));
    report.meta("round_trips_counted", json!(counted.round_trips));
    report.meta("pool_pings_counted", json!(counted.pings));
    report.meta(
        "idle_round_trips_subtracted",
        json!(counted.idle_round_trips),
    );
    report.meta(
        "round_trip_window_secs",
        json!(ROUND_TRIPS_FOR.as_secs_f64()),
    );
    report.meta(
        "signin_rows_written_by_table",
        json!(counted.written.by_table),
    );
}

fn report_latency_under_load(report: &mut Report, probe: &Probed) {
    for (what, key, s) in [
        ("GET /sign-in", "signin_page", &probe.page),
        ("GET /healthz", "healthz", &probe.healthz),
    ] {
        let figures = [
            ("p50", "p50_ms", s.p(0.5), "ms"),
            ("p99", "p99_ms", s.p(0.99), "ms"),
            ("max", "max_ms", s.max(), "ms"),
        ];
        for (label, suffix, value, unit) in figures {
            report.add(
                "3. latency",
                &format!("{what} {label} under sign-in load"),
                &format!("{key}_{suffix}_under_load"),
                value,
                unit,
            );
        }
        report.add(
            "3. latency",
            &format!("{what} samples"),
            &format!("{key}_samples_under_load"),
            s.len() as f64,
            "",
        );
    }
    report.add(
        "3. latency",
        "probe requests that failed",
        "probe_errors_under_load",
        probe.errors as f64,
        "",
    );
}

// ---------------------------------------------------------------------------------------
// 7. Forward auth: nginx's auth_request subrequest, as fast as it goes

async fn forward_auth(bench: &Bench, report: &mut Report) -> anyhow::Result<()> {
    let cookie = sign_in_once(&one_client()?, &bench.base, &bench.signin_users[0]).await?;
    let original = format!("{}/protected/page?x=1", bench.base);
    let section = "7. forward auth";
    report.meta(
        "forward_auth_cache_ms",
        json!(
            std::env::var("LATCHKEY_FORWARD_AUTH_CACHE_MS")
                .ok()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(250)
        ),
    );
    report.meta("forward_auth_connections", json!(CHECK_CONNECTIONS));
    for (who, key, cookie, expect) in [
        (
            "signed in",
            "signed_in",
            CheckCookie::Fixed(cookie),
            reqwest::StatusCode::OK,
        ),
        (
            "stranger, no cookie",
            "no_cookie",
            CheckCookie::None,
            reqwest::StatusCode::UNAUTHORIZED,
        ),
        (
            "stranger, a random cookie each",
            "random_cookie",
            CheckCookie::Random,
            reqwest::StatusCode::UNAUTHORIZED,
        ),
    ] {
        eprintln!(
            "bench: (7) auth-request checks, {who}, {CHECK_CONNECTIONS} connections for {CHECKS_FOR:?}"
        );
        let cookie_header = match &cookie {
            CheckCookie::Fixed(c) => Some(CookieHeader::Fixed(c.clone())),
            CheckCookie::None => None,
            CheckCookie::Random => Some(CookieHeader::Forged),
        };
        let mark = service::mark_writes(&bench.pool, &bench.tables).await?;
        let trips0 = bench.relay.round_trips();
        let cpu0 = CpuSnapshot::take(bench.service_pid, &bench.pg_pids)?;
        let run = hammer_checks(
            &bench.base,
            &original,
            cookie,
            expect,
            CHECK_CONNECTIONS,
            CHECKS_FOR,
        )
        .await?;
        let cpu1 = CpuSnapshot::take(bench.service_pid, &bench.pg_pids)?;
        let trips = bench.relay.round_trips().saturating_sub(trips0);
        let written = service::rows_written_since(&bench.pool, &bench.tables, &mark).await?;
        let checks = (run.per_s * CHECKS_FOR.as_secs_f64()).max(1.0);
        report.add(
            section,
            &format!("auth-request checks/s, {who}"),
            &format!("fa_{key}_per_s"),
            run.per_s,
            "/s",
        );
        report.add(
            section,
            "  p50",
            &format!("fa_{key}_p50_ms"),
            run.latency.p(0.5),
            "ms",
        );
        report.add(
            section,
            "  p99",
            &format!("fa_{key}_p99_ms"),
            run.latency.p(0.99),
            "ms",
        );
        report.add(
            section,
            "  failed or unexpected answers",
            &format!("fa_{key}_errors"),
            run.errors as f64,
            "",
        );
        report.add(
            section,
            "  database rows written per check",
            &format!("fa_{key}_rows_per_check"),
            written.total as f64 / checks,
            "rows",
        );
        report.add(
            section,
            "  Postgres round trips per check",
            &format!("fa_{key}_round_trips_per_check"),
            trips as f64 / checks,
            "",
        );
        report.cpu(section, &format!("fa_{key}"), &cpu1.since(&cpu0));
        forward_auth_wrk(bench, report, &original, who, key, cookie_header.as_ref())?;
    }
    if !crate::wrk::available() {
        eprintln!("bench: (7) wrk is not installed (apt install wrk): its rows are left out");
    }
    Ok(())
}

/// The same checks driven by `wrk` (one thread, as many connections), when installed: its
/// own CPU is known, so the service's figures are not the driver's limit.
fn forward_auth_wrk(
    bench: &Bench,
    report: &mut Report,
    original: &str,
    who: &str,
    key: &str,
    cookie: Option<&CookieHeader>,
) -> anyhow::Result<()> {
    if !crate::wrk::available() {
        return Ok(());
    }
    eprintln!("bench: (7) the same with wrk, {who}");
    let url = format!("{}/api/authz/auth-request", bench.base);
    let mut headers = vec![("x-original-url", original), ("x-original-method", "GET")];
    let script = crate::wrk::forged_cookie_script();
    let script = match cookie {
        Some(CookieHeader::Fixed(c)) => {
            headers.push(("cookie", c.as_str()));
            None
        }
        Some(CookieHeader::Forged) => Some(script.as_path()),
        None => None,
    };
    let trips0 = bench.relay.round_trips();
    let run = crate::wrk::run(&url, &headers, script, CHECK_CONNECTIONS, CHECKS_FOR)?;
    let trips = bench.relay.round_trips().saturating_sub(trips0);
    // A signed-in check answers 200; a stranger's 401 (wrk's "non-2xx").
    let unexpected = if key == "signed_in" {
        run.non_2xx
    } else {
        run.requests.saturating_sub(run.non_2xx)
    } + run.socket_errors;
    let section = "7. forward auth";
    let label = format!("  wrk: checks/s, {who}");
    report.add(
        section,
        &label,
        &format!("fa_{key}_wrk_per_s"),
        run.per_s,
        "/s",
    );
    let label = "  wrk: p50";
    report.add(
        section,
        label,
        &format!("fa_{key}_wrk_p50_ms"),
        run.p50_ms,
        "ms",
    );
    let label = "  wrk: p99";
    report.add(
        section,
        label,
        &format!("fa_{key}_wrk_p99_ms"),
        run.p99_ms,
        "ms",
    );
    let label = "  wrk: failed or unexpected answers";
    report.add(
        section,
        label,
        &format!("fa_{key}_wrk_errors"),
        unexpected as f64,
        "",
    );
    let label = "  wrk: Postgres round trips per check";
    let per_check = trips as f64 / (run.requests.max(1) as f64);
    report.add(
        section,
        label,
        &format!("fa_{key}_wrk_round_trips_per_check"),
        per_check,
        "",
    );
    let label = "  wrk: its own CPU";
    report.add(
        section,
        label,
        &format!("fa_{key}_wrk_driver_cores"),
        run.driver_cores,
        "cores",
    );
    Ok(())
}

/// What `wrk` sends as the cookie.
enum CookieHeader {
    Fixed(String),
    Forged,
}

// ---------------------------------------------------------------------------------------
// 8. The OpenID provider (see oidc.rs)

async fn openid(bench: &Bench, res: &Resources, report: &mut Report) -> anyhow::Result<()> {
    let database_url = service::pg_url(&res.pg_base, &res.db_name);
    let ctx = crate::oidc::Ctx {
        base: &bench.base,
        pool: &bench.pool,
        relay: &bench.relay,
        tables: &bench.tables,
        service_pid: bench.service_pid,
        pg_pids: &bench.pg_pids,
        tmp: &res.tmp,
        database_url: &database_url,
        email: &bench.signin_users[1],
        run_for: Duration::from_secs(env_number("LATCHKEY_BENCH_OIDC_SECS").unwrap_or(5)),
    };
    crate::oidc::openid(&ctx, report).await
}

// ---------------------------------------------------------------------------------------
// 6. Forgot password, known and unknown

async fn forgot_password(
    bench: &Bench,
    res: &Resources,
    report: &mut Report,
) -> anyhow::Result<()> {
    eprintln!(
        "bench: (6) POST /forgot-password, {FORGOT_EACH} known and {FORGOT_EACH} unknown addresses"
    );
    let mail_dir = res.tmp.join("mail");
    let before = wait_for_mail(&mail_dir, 0).await;
    let (known_t, unknown_t) = forgot_timings(&bench.base, &bench.known, &bench.unknown).await?;
    let mails = wait_for_mail(&mail_dir, before + bench.known.len()).await - before;
    let (km, um) = (known_t.p(0.5), unknown_t.p(0.5));
    let section = "6. forgot password";
    let rows = [
        ("known address, median", "forgot_known_median_ms", km, "ms"),
        (
            "unknown address, median",
            "forgot_unknown_median_ms",
            um,
            "ms",
        ),
        (
            "known minus unknown, median",
            "forgot_median_diff_ms",
            km - um,
            "ms",
        ),
        (
            "known address, p99",
            "forgot_known_p99_ms",
            known_t.p(0.99),
            "ms",
        ),
        (
            "unknown address, p99",
            "forgot_unknown_p99_ms",
            unknown_t.p(0.99),
            "ms",
        ),
        (
            "reset mails written (expected one per known address)",
            "forgot_mails_written",
            mails as f64,
            "",
        ),
    ];
    for (label, key, value, unit) in rows {
        report.add(section, label, key, value, unit);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// 8. Sign-up, addresses with an account and without

async fn sign_up(bench: &Bench, res: &Resources, report: &mut Report) -> anyhow::Result<()> {
    let unknown: Vec<String> = (0..bench.known.len())
        .map(|i| format!("sign-up-new-{i:04}@example.com"))
        .collect();
    eprintln!(
        "bench: (8) POST /sign-up, {} addresses with an account and {} without",
        bench.known.len(),
        unknown.len()
    );
    let mail_dir = res.tmp.join("mail");
    let before = wait_for_mail(&mail_dir, 0).await;
    let (known_t, unknown_t) =
        sign_up_timings(&bench.base, &bench.known, &unknown, crate::PASSWORD).await?;
    // One mail per request: a link for a new address, a note for one with an account
    // (three warm-up requests included).
    let expected = before + bench.known.len() + unknown.len() + 3;
    let mails = wait_for_mail(&mail_dir, expected).await - before;
    let (km, um) = (known_t.p(0.5), unknown_t.p(0.5));
    let section = "8. sign-up";
    let rows = [
        (
            "address with an account, median",
            "sign_up_known_median_ms",
            km,
            "ms",
        ),
        ("new address, median", "sign_up_unknown_median_ms", um, "ms"),
        (
            "known minus new, median",
            "sign_up_median_diff_ms",
            km - um,
            "ms",
        ),
        (
            "address with an account, p99",
            "sign_up_known_p99_ms",
            known_t.p(0.99),
            "ms",
        ),
        (
            "new address, p99",
            "sign_up_unknown_p99_ms",
            unknown_t.p(0.99),
            "ms",
        ),
        (
            "sign-up mails written (one per request)",
            "sign_up_mails_written",
            mails as f64,
            "",
        ),
    ];
    for (label, key, value, unit) in rows {
        report.add(section, label, key, value, unit);
    }
    Ok(())
}
