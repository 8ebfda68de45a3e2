//! Where the CPU went (Linux /proc: argon2 threads, the service's other threads, its
//! Postgres backends, this process, everyone else), resident memory and the load average.

use std::time::{Duration, Instant};

use anyhow::Context;

/// Cumulative CPU ticks at one instant.
#[derive(Clone)]
pub struct CpuSnapshot {
    at: Instant,
    /// All cores, busy (not idle or iowait), in clock ticks.
    busy: u64,
    argon2: u64,
    service_other: u64,
    postgres: u64,
    bench: u64,
}

/// CPU ticks spent between snapshots: one span, or several spans added up.
#[derive(Clone, Default)]
pub struct CpuUsage {
    secs: f64,
    busy: u64,
    argon2: u64,
    service_other: u64,
    postgres: u64,
    bench: u64,
}

/// utime + stime of a /proc/.../stat line, and its command name.
fn stat_ticks(path: &str) -> Option<(String, u64)> {
    let stat = std::fs::read_to_string(path).ok()?;
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat.get(open + 1..close)?.to_owned();
    let fields: Vec<&str> = stat.get(close + 1..)?.split_whitespace().collect();
    // After the name: state is field 3 of stat(5), utime 14, stime 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((name, utime + stime))
}

/// Busy ticks of all cores from the first line of /proc/stat.
fn machine_busy_ticks() -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let cpu: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest is inside user).
    Ok([0usize, 1, 2, 5, 6, 7]
        .iter()
        .filter_map(|&i| cpu.get(i))
        .sum())
}

impl CpuSnapshot {
    pub fn take(service: u32, postgres: &[u32]) -> anyhow::Result<CpuSnapshot> {
        let at = Instant::now();
        let busy = machine_busy_ticks()?;
        let (mut argon2, mut service_other) = (0, 0);
        let tasks = std::fs::read_dir(format!("/proc/{service}/task"))
            .context("reading the service's threads")?;
        for task in tasks.flatten() {
            let path = task.path().join("stat");
            if let Some((name, ticks)) = path.to_str().and_then(stat_ticks) {
                if name.starts_with("argon2") {
                    argon2 += ticks;
                } else {
                    service_other += ticks;
                }
            }
        }
        let postgres = postgres
            .iter()
            .filter_map(|pid| stat_ticks(&format!("/proc/{pid}/stat")))
            .map(|(_, t)| t)
            .sum();
        let bench = stat_ticks("/proc/self/stat").map_or(0, |(_, t)| t);
        Ok(CpuSnapshot {
            at,
            busy,
            argon2,
            service_other,
            postgres,
            bench,
        })
    }

    /// What was spent from `earlier` to this snapshot.
    pub fn since(&self, earlier: &CpuSnapshot) -> CpuUsage {
        CpuUsage {
            secs: self.at.duration_since(earlier.at).as_secs_f64(),
            busy: self.busy.saturating_sub(earlier.busy),
            argon2: self.argon2.saturating_sub(earlier.argon2),
            service_other: self.service_other.saturating_sub(earlier.service_other),
            postgres: self.postgres.saturating_sub(earlier.postgres),
            bench: self.bench.saturating_sub(earlier.bench),
        }
    }
}

impl CpuUsage {
    /// Adds another span (the slices of one kind in an interleaved phase).
    pub fn add(&mut self, other: &CpuUsage) {
        self.secs += other.secs;
        self.busy += other.busy;
        self.argon2 += other.argon2;
        self.service_other += other.service_other;
        self.postgres += other.postgres;
        self.bench += other.bench;
    }

    /// CPU seconds of the service's hashing threads over the span(s).
    pub fn argon2_secs(&self) -> f64 {
        // SAFETY: sysconf only reads its argument.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        self.argon2 as f64 / hz
    }

    /// Cores in use by each party over the span(s).
    pub fn split(&self) -> [(&'static str, f64); 6] {
        // SAFETY: sysconf only reads its argument.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let secs = self.secs.max(1e-9);
        let cores = |ticks: u64| ticks as f64 / hz / secs;
        let busy = cores(self.busy);
        let argon2 = cores(self.argon2);
        let runtime = cores(self.service_other);
        let postgres = cores(self.postgres);
        let bench = cores(self.bench);
        let other = (busy - argon2 - runtime - postgres - bench).max(0.0);
        [
            ("argon2", argon2),
            ("service_runtime", runtime),
            ("postgres", postgres),
            ("bench", bench),
            ("other_processes", other),
            ("busy_total", busy),
        ]
    }

    /// Cores this run got: everything busy but other processes.
    pub fn cores_ours(&self) -> f64 {
        let split = self.split();
        split[5].1 - split[4].1
    }

    /// Argon2's cores over the service's, its Postgres backends' and this process's.
    pub fn argon2_share(&self) -> f64 {
        let split = self.split();
        let ours: f64 = split[..4].iter().map(|(_, c)| c).sum();
        split[0].1 / ours.max(1e-9)
    }
}

/// This thread's CPU time.
pub fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes only into the timespec it is given.
    unsafe {
        libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts);
    }
    Duration::new(
        u64::try_from(ts.tv_sec).unwrap_or(0),
        u32::try_from(ts.tv_nsec).unwrap_or(0),
    )
}

/// A memory field of /proc/<pid>/status (`VmRSS`, `VmHWM`), in MB of 10⁶ bytes.
pub fn rss_mb(pid: u32, field: &str) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))?;
    Ok(kib * 1024.0 / 1e6)
}

pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}
