//! Small readers of `/proc`: memory fields of a process and the CPU time a
//! process (or a named group of this process's threads) has used, so the
//! bench can print server CPU per request next to wall-clock figures.

/// A field of `/proc/<pid>/status` given in kB (e.g. `VmRSS`), in KiB;
/// for a count field (e.g. `Threads`) the count.
pub fn status_field(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// CPU time split into user space and kernel, in seconds (or, after
/// [`Cpu::per_call_us`], µs per call).
#[derive(Clone, Copy, Default)]
pub struct Cpu {
    pub user: f64,
    pub sys: f64,
}

impl Cpu {
    pub fn total(self) -> f64 {
        self.user + self.sys
    }

    /// (self − before) in µs per call.
    pub fn per_call_us(self, before: Cpu, calls: u64) -> Cpu {
        let n = calls.max(1) as f64;
        Cpu {
            user: (self.user - before.user) * 1e6 / n,
            sys: (self.sys - before.sys) * 1e6 / n,
        }
    }
}

/// Whether process `pid` exists and has not exited (a zombie has).
pub fn is_running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|t| Some(t[t.rfind(')')? + 2..].starts_with(|c| c != 'Z')))
        .unwrap_or(false)
}

/// User and system CPU seconds from a `stat` file's text.
fn stat_cpu(text: &str) -> Option<Cpu> {
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some(Cpu {
        user: utime / ticks,
        sys: stime / ticks,
    })
}

/// CPU seconds of a `stat` file's reaped children (cutime + cstime).
fn reaped_children_cpu(text: &str) -> Option<f64> {
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let cutime: f64 = fields.get(13)?.parse().ok()?;
    let cstime: f64 = fields.get(14)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some((cutime + cstime) / ticks)
}

/// CPU time process `pid` has used so far (all threads).
pub fn process_cpu(pid: u32) -> Option<Cpu> {
    stat_cpu(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// CPU time used so far by this process's threads whose name starts
/// with `prefix` (tokio names its workers after `thread_name`).
pub fn own_threads_cpu(prefix: &str) -> Option<Cpu> {
    let mut total = Cpu::default();
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim_end().starts_with(prefix) {
            let cpu = std::fs::read_to_string(task.path().join("stat"))
                .ok()
                .as_deref()
                .and_then(stat_cpu)?;
            total.user += cpu.user;
            total.sys += cpu.sys;
        }
    }
    Some(total)
}

/// Machine-wide and per-process CPU counters at one moment, to tell how
/// much of the machine other processes used while a phase ran.
pub struct CpuSnapshot {
    at: std::time::Instant,
    /// Busy CPU seconds of the whole machine (all CPUs), steal excluded.
    busy: f64,
    /// CPU seconds the hypervisor gave to other guests.
    steal: f64,
    /// CPU seconds of this process and of the daemon.
    ours: f64,
}

impl CpuSnapshot {
    pub fn take(daemon_pid: u32) -> Option<CpuSnapshot> {
        CpuSnapshot::taken(&[daemon_pid], false)
    }

    /// [`CpuSnapshot::take`] with several processes of ours (part 9's
    /// daemons and their database backends).
    pub fn take_pids(pids: &[u32]) -> Option<CpuSnapshot> {
        CpuSnapshot::taken(pids, false)
    }

    /// [`CpuSnapshot::take`], counting as ours also the children this
    /// process has reaped (part 8's helper apps, reaped before the
    /// snapshot after them).
    pub fn take_with_children(daemon_pid: u32) -> Option<CpuSnapshot> {
        CpuSnapshot::taken(&[daemon_pid], true)
    }

    fn taken(pids: &[u32], children: bool) -> Option<CpuSnapshot> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let cpu: Vec<f64> = stat
            .lines()
            .next()?
            .split_whitespace()
            .skip(1)
            .map(|v| v.parse().unwrap_or(0.0))
            .collect();
        // user nice system idle iowait irq softirq steal (guest is in user).
        let busy = cpu[0] + cpu[1] + cpu[2] + cpu[5] + cpu[6];
        // SAFETY: sysconf has no preconditions.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        let self_stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let mut own = stat_cpu(&self_stat)?.total();
        if children {
            own += reaped_children_cpu(&self_stat)?;
        }
        Some(CpuSnapshot {
            at: std::time::Instant::now(),
            busy: busy / ticks,
            steal: cpu.get(7).copied().unwrap_or(0.0) / ticks,
            ours: own
                + pids
                    .iter()
                    .map(|&pid| process_cpu(pid).map_or(0.0, Cpu::total))
                    .sum::<f64>(),
        })
    }

    /// Since `before`: (share of the machine used by other processes,
    /// share stolen by the hypervisor), each 0.0–1.0.
    pub fn others_since(&self, before: &CpuSnapshot) -> (f64, f64) {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let capacity = (self.at - before.at).as_secs_f64() * cpus;
        let others = (self.busy - before.busy) - (self.ours - before.ours);
        (
            (others / capacity).clamp(0.0, 1.0),
            ((self.steal - before.steal) / capacity).clamp(0.0, 1.0),
        )
    }
}
