//! What a process used, from `/proc`: CPU, peak RSS, write I/O.

use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

/// user + sys seconds of a process from its `stat` file (USER_HZ is 100 on Linux).
pub fn cpu_secs_of(path: &str) -> Option<f64> {
    cpu_split_of(path).map(|(user, sys)| user + sys)
}

/// User and sys seconds of a process from its `stat` file.
pub fn cpu_split_of(path: &str) -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string(path).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime / 100.0, stime / 100.0))
}

pub fn self_cpu() -> f64 {
    cpu_secs_of("/proc/self/stat").unwrap_or(f64::NAN)
}

pub fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

/// Resets the process's peak RSS (`VmHWM`) to its current RSS.
pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// This process's write counters (`/proc/self/io`), every thread's: `wchar` and `syscw`
/// count every `write`-family call (files, sockets, wake-ups), `write_bytes` the bytes it
/// dirtied in the page cache (what the disk will get, page by page).
#[derive(Clone, Copy, Debug, Default)]
pub struct Io {
    pub wchar: u64,
    pub syscw: u64,
    pub write_bytes: u64,
}

impl Io {
    pub fn now() -> Self {
        let text = std::fs::read_to_string("/proc/self/io").unwrap_or_default();
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0)
        };
        Self {
            wchar: field("wchar"),
            syscw: field("syscw"),
            write_bytes: field("write_bytes"),
        }
    }

    pub fn since(self, before: Io) -> Io {
        Io {
            wchar: self.wchar.saturating_sub(before.wchar),
            syscw: self.syscw.saturating_sub(before.syscw),
            write_bytes: self.write_bytes.saturating_sub(before.write_bytes),
        }
    }
}

/// A child's peak RSS (MiB) so far: its `VmHWM`, read while it runs. Not `wait4`'s
/// `ru_maxrss`: a child spawned through `exec` carries its parent's high-water mark over
/// (the kernel keeps the larger of the two), so this harness's own RSS (a seeding
/// connection's page cache, say) would be reported as the child's.
fn child_peak_rss_mib(child: &Child) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).ok()?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

/// Whether the child exited, its peak RSS sampled first (it is gone once reaped).
fn poll_exit(child: &mut Child, peak: &mut f64) -> anyhow::Result<Option<ExitStatus>> {
    if let Some(rss) = child_peak_rss_mib(child) {
        *peak = peak.max(rss);
    }
    Ok(child.try_wait()?)
}

/// Waits for a child, sampling its peak RSS every 10 ms: its status, peak RSS (MiB),
/// stdout and stderr (when piped).
pub fn wait_with_peak(mut child: Child) -> anyhow::Result<(ExitStatus, f64, String, String)> {
    use std::io::Read;
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let (status, peak, out, err) = std::thread::scope(|scope| {
        let out = scope.spawn(|| read_all(stdout.as_mut().map(|s| s as &mut dyn Read)));
        let err = scope.spawn(|| read_all(stderr.as_mut().map(|s| s as &mut dyn Read)));
        let mut peak = 0.0;
        let status = loop {
            if let Some(status) = poll_exit(&mut child, &mut peak)? {
                break status;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let out = out.join().unwrap_or_default();
        let err = err.join().unwrap_or_default();
        anyhow::Ok((status, peak, out, err))
    })?;
    Ok((status, peak, out, err))
}

/// SIGTERM, then waits (polling every 50 ms, so the runtime goes on) up to `grace` for the
/// child to exit, then SIGKILL: its status, its peak RSS (MiB), and whether it had to be
/// killed.
pub async fn terminate(
    mut child: Child,
    grace: Duration,
) -> anyhow::Result<(ExitStatus, f64, bool)> {
    let mut peak = 0.0;
    if let Some(status) = poll_exit(&mut child, &mut peak)? {
        return Ok((status, peak, false));
    }
    // SAFETY: signalling our own child, which has not been reaped.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let deadline = Instant::now() + grace;
    let mut killed = false;
    loop {
        if let Some(status) = poll_exit(&mut child, &mut peak)? {
            return Ok((status, peak, killed));
        }
        if !killed && Instant::now() >= deadline {
            child.kill()?;
            killed = true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What [`wait_cpu`] measured of a child: its status, user + sys CPU seconds from
/// `wait4`'s rusage (the child's own and its reaped children's), wall seconds from `since`,
/// its stdout and stderr (when piped).
pub struct Finished {
    pub status: ExitStatus,
    pub cpu: f64,
    pub wall: f64,
    pub stdout: String,
    pub stderr: String,
}

/// Waits for a child with `wait4` and reads its CPU times from the rusage (not its
/// `ru_maxrss`, which carries the parent's high-water mark: see [`child_peak_rss_mib`]).
/// Wall time is from `since` (the spawn) to the reaping.
pub fn wait_cpu(mut child: Child, since: Instant) -> anyhow::Result<Finished> {
    use std::io::Read;
    use std::os::unix::process::ExitStatusExt;
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    std::thread::scope(|scope| {
        let out = scope.spawn(|| read_all(stdout.as_mut().map(|s| s as &mut dyn Read)));
        let err = scope.spawn(|| read_all(stderr.as_mut().map(|s| s as &mut dyn Read)));
        let pid = child.id() as libc::pid_t;
        let mut raw = 0;
        // SAFETY: an all-zero rusage is valid; wait4 fills it for our own unreaped child.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        let reaped = loop {
            // SAFETY: valid pointers to locals; the child is ours and not yet reaped.
            let r = unsafe { libc::wait4(pid, &mut raw, 0, &mut usage) };
            if r == -1 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted
            {
                continue;
            }
            break r;
        };
        let wall = since.elapsed().as_secs_f64();
        if reaped != pid {
            anyhow::bail!("wait4 of {pid}: {}", std::io::Error::last_os_error());
        }
        let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        Ok(Finished {
            status: ExitStatus::from_raw(raw),
            cpu: secs(usage.ru_utime) + secs(usage.ru_stime),
            wall,
            stdout: out.join().unwrap_or_default(),
            stderr: err.join().unwrap_or_default(),
        })
    })
}

/// A child's pipe read to its end (empty when not piped or unreadable).
fn read_all(pipe: Option<&mut dyn std::io::Read>) -> String {
    let mut text = String::new();
    if let Some(p) = pipe {
        p.read_to_string(&mut text).ok();
    }
    text
}
