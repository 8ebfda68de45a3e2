//! Debian's `wrk` as a second load driver for the forward-auth checks: a C driver whose own
//! CPU is measured (the children's rusage), printed beside the reqwest driver's figures.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};

/// What one `wrk` run measured.
pub struct WrkRun {
    /// Answers received.
    pub requests: u64,
    pub per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Answers that were not 2xx or 3xx (a stranger's 401s are expected here).
    pub non_2xx: u64,
    /// Socket errors: connect, read, write, timeout.
    pub socket_errors: u64,
    /// wrk's own CPU over the run, in cores.
    pub driver_cores: f64,
}

/// Whether `wrk` is on the PATH (Debian's package `wrk`).
pub fn available() -> bool {
    Command::new("wrk").arg("--version").output().is_ok()
}

/// The Lua script that forges a fresh session cookie per request.
pub fn forged_cookie_script() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/latchkey/wrk/forged-cookie.lua")
}

/// `wrk -t1 -c<connections> -d<secs> --latency` against `url` with `headers`, and `script`
/// when given.
pub fn run(
    url: &str,
    headers: &[(&str, &str)],
    script: Option<&Path>,
    connections: usize,
    run_for: Duration,
) -> anyhow::Result<WrkRun> {
    let mut command = Command::new("wrk");
    command
        .arg("-t1")
        .arg(format!("-c{connections}"))
        .arg(format!("-d{}s", run_for.as_secs().max(1)))
        .arg("--latency");
    for (name, value) in headers {
        command.arg("-H").arg(format!("{name}: {value}"));
    }
    if let Some(script) = script {
        command.arg("-s").arg(script);
    }
    command.arg(url);
    let cpu_before = children_cpu_secs();
    let output = command.output().context("running wrk")?;
    let driver_secs = children_cpu_secs() - cpu_before;
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        bail!(
            "wrk failed: {}{}",
            text,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    parse(&text, driver_secs / run_for.as_secs_f64())
}

/// CPU seconds (user + system) of this process's finished, waited-for children: only wrk
/// finishes during a run (the service is waited for at the end).
fn children_cpu_secs() -> f64 {
    // SAFETY: getrusage only writes the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; RUSAGE_CHILDREN is a valid `who`.
    if unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) } != 0 {
        return f64::NAN;
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

fn parse(text: &str, driver_cores: f64) -> anyhow::Result<WrkRun> {
    let mut run = WrkRun {
        requests: 0,
        per_s: f64::NAN,
        p50_ms: f64::NAN,
        p99_ms: f64::NAN,
        non_2xx: 0,
        socket_errors: 0,
        driver_cores,
    };
    for line in text.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("Requests/sec:") {
            run.per_s = rest.trim().parse().context("wrk's Requests/sec")?;
        } else if let Some((count, _)) = line.split_once(" requests in ") {
            run.requests = count.trim().parse().context("wrk's request count")?;
        } else if let Some(rest) = line.strip_prefix("50%") {
            run.p50_ms = duration_ms(rest.trim())?;
        } else if let Some(rest) = line.strip_prefix("99%") {
            run.p99_ms = duration_ms(rest.trim())?;
        } else if let Some(rest) = line.strip_prefix("Non-2xx or 3xx responses:") {
            run.non_2xx = rest.trim().parse().context("wrk's non-2xx count")?;
        } else if let Some(rest) = line.strip_prefix("Socket errors:") {
            // "connect 0, read 0, write 0, timeout 0"
            run.socket_errors = rest
                .split(',')
                .filter_map(|part| part.split_whitespace().nth(1))
                .filter_map(|n| n.parse::<u64>().ok())
                .sum();
        }
    }
    if !run.per_s.is_finite() {
        bail!("wrk printed no Requests/sec: {text}");
    }
    Ok(run)
}

/// "635.00us", "2.51ms", "1.02s" in milliseconds.
fn duration_ms(value: &str) -> anyhow::Result<f64> {
    let (number, scale) = if let Some(n) = value.strip_suffix("us") {
        (n, 1e-3)
    } else if let Some(n) = value.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = value.strip_suffix('s') {
        (n, 1e3)
    } else {
        bail!("a wrk latency without a unit: {value}");
    };
    Ok(number.parse::<f64>().context("a wrk latency")? * scale)
}
