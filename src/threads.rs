//! How many CPU threads libtorch gets, and how its OpenMP threads wait.
//!
//! On a busy machine (a shared CI runner, a laptop that is also training) libtorch's OpenMP threads
//! spun at every barrier for cores that other processes held: an audit that takes 2 s idle took 216 s
//! beside four CPU-bound processes on 2 cores. Two remedies, both decided here:
//! - the OpenMP runtime spins briefly, then sleeps (`OMP_WAIT_POLICY=ACTIVE`, `GOMP_SPINCOUNT=30000`)
//!   unless the user chose. libgomp reads its environment once, in its constructor, before `main`;
//!   the process hands it these settings by executing itself again from the executable's
//!   `.preinit_array`, before any library's constructor ([`run_with_openmp_wait_settings`]);
//! - the thread count comes from the CPUs the process may really use: its CPU affinity, its cgroup's
//!   CPU quota (v2 `cpu.max`, v1 `cpu.cfs_quota_us`, the smallest along the hierarchy, as Go 1.25's
//!   container-aware GOMAXPROCS and the JVM read them), less the CPUs other processes are busy on
//!   (runnable tasks in `/proc/stat`, sampled; not with `--no-timings`, whose report must not depend on
//!   the moment). `--threads` and `threads` in the config win.
use std::ffi::{c_char, c_int, CStr};
use std::path::PathBuf;

unsafe extern "C" {
    fn sysconf(name: c_int) -> std::ffi::c_long;
    fn execve(path: *const c_char, argv: *const *const c_char, envp: *const *const c_char)
        -> c_int;
    fn readlink(path: *const c_char, buf: *mut c_char, size: usize) -> isize;
}

/// The OpenMP wait settings trainlint runs libgomp with, unless the user set either variable: spin
/// for 30,000 iterations (tens of microseconds), then sleep. ACTIVE keeps the spin when the process's
/// own threads outnumber the CPUs (libgomp then throttles an unset policy to 100 spins, which made
/// the checks that train on worker threads 30% slower per step); the bounded count makes threads sleep
/// soon when other processes want the CPUs.
const WAIT_SETTINGS: [&CStr; 2] = [c"OMP_WAIT_POLICY=ACTIVE", c"GOMP_SPINCOUNT=30000"];

/// Set beside [`WAIT_SETTINGS`] when trainlint chose them (and in what it runs).
const CHOSEN_BY_TRAINLINT: &CStr = c"TRAINLINT_OPENMP_WAIT=1";

/// Runs before any shared library's constructor (see the module docs). libgomp reads its settings
/// from the environment in its constructor, once, and the C library's own start-up points `environ`
/// back at the array the process was given after this function runs, so a `setenv` here is lost
/// (`OMP_DISPLAY_ENV=VERBOSE` showed `GOMP_SPINCOUNT = '300000'`, libgomp's unset default). The only
/// way to hand libgomp a setting is the environment the process starts with: unless the user chose
/// (either variable set), the process executes itself again, at once, with [`WAIT_SETTINGS`] added.
/// Nothing has run yet (no constructor, no thread), so this costs one more start of the dynamic
/// loader (~2 ms). When the executable cannot be executed again (no `/proc`, started through the
/// dynamic loader), the process goes on with libgomp's defaults, and the report says so.
extern "C" fn run_with_openmp_wait_settings(
    _argc: c_int,
    argv: *const *const c_char,
    env: *const *const c_char,
) {
    if argv.is_null() || env.is_null() {
        return;
    }
    // SAFETY: `argv` and `env` are the NULL-terminated arrays of NUL-terminated strings the dynamic
    // loader passes to `.preinit_array` functions; they live for the whole process. `execve` only
    // returns on failure, leaving the process as it was.
    unsafe {
        let mut vars = Vec::new();
        let mut i = 0;
        while !(*env.add(i)).is_null() {
            let var = *env.add(i);
            let bytes = CStr::from_ptr(var).to_bytes();
            if [
                &b"OMP_WAIT_POLICY="[..],
                b"GOMP_SPINCOUNT=",
                b"TRAINLINT_OPENMP_WAIT=",
            ]
            .iter()
            .any(|name| bytes.starts_with(name))
            {
                return;
            }
            vars.push(var);
            i += 1;
        }
        let mut exe = [0 as c_char; 4096];
        let n = readlink(c"/proc/self/exe".as_ptr(), exe.as_mut_ptr(), exe.len() - 1);
        if n <= 0 {
            return;
        }
        let exe = CStr::from_ptr(exe.as_ptr()).to_bytes();
        let name = exe.rsplit(|&b| b == b'/').next().unwrap_or(exe);
        if name.starts_with(b"ld-") || name.starts_with(b"ld.so") {
            return;
        }
        vars.extend(WAIT_SETTINGS.iter().map(|s| s.as_ptr()));
        vars.push(CHOSEN_BY_TRAINLINT.as_ptr());
        vars.push(std::ptr::null());
        execve(c"/proc/self/exe".as_ptr(), argv, vars.as_ptr());
    }
}

#[used]
#[unsafe(link_section = ".preinit_array")]
static PREINIT: extern "C" fn(c_int, *const *const c_char, *const *const c_char) =
    run_with_openmp_wait_settings;

/// How libgomp's threads wait, and who chose it.
pub fn openmp_wait_policy() -> String {
    let var = |name: &str| std::env::var(name).ok();
    let spin = var("GOMP_SPINCOUNT");
    let policy = var("OMP_WAIT_POLICY").map(|p| p.to_ascii_lowercase());
    let what = match (&policy, &spin) {
        (None, None) => return "the OpenMP default".into(),
        (Some(p), Some(s)) => format!("{p}, {s} spins then sleep"),
        (Some(p), None) => p.clone(),
        (None, Some(s)) => format!("{s} spins then sleep"),
    };
    if var("TRAINLINT_OPENMP_WAIT").is_some() {
        format!("{what} (set by trainlint)")
    } else {
        format!("{what} (from the environment)")
    }
}

/// What the process may use, and what the thread count was decided from.
#[derive(Debug, Clone, PartialEq)]
pub struct ThreadPlan {
    pub threads: usize,
    /// One line: why this many.
    pub reason: String,
}

/// The CPUs this process may run on (`sched_getaffinity`), or the online CPUs when that fails.
fn affinity_cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// The CPUs the machine has online (`sysconf(_SC_NPROCESSORS_ONLN)`).
fn online_cpus() -> usize {
    // SAFETY: sysconf has no preconditions and only reads a configuration value.
    let n = unsafe { sysconf(84) }; // _SC_NPROCESSORS_ONLN on Linux
    if n > 0 {
        n as usize
    } else {
        affinity_cpus()
    }
}

/// A cgroup CPU limit in CPUs (quota / period), from the `cpu.max` text of cgroup v2 ("max 100000" or
/// "150000 100000").
fn parse_cpu_max(text: &str) -> Option<f64> {
    let mut parts = text.split_whitespace();
    let quota = parts.next()?;
    let period: f64 = parts
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or(100_000.0);
    if quota == "max" || period <= 0.0 {
        return None;
    }
    let quota: f64 = quota.parse().ok()?;
    (quota > 0.0).then_some(quota / period)
}

/// A cgroup v1 limit from `cpu.cfs_quota_us` (−1: none) and `cpu.cfs_period_us`.
fn parse_cfs(quota: &str, period: &str) -> Option<f64> {
    let quota: f64 = quota.trim().parse().ok()?;
    let period: f64 = period.trim().parse().ok()?;
    (quota > 0.0 && period > 0.0).then_some(quota / period)
}

/// Where a cgroup hierarchy is mounted, from `/proc/self/mountinfo`: (mount point, root within the
/// hierarchy) of the cgroup2 mount (`v2`) or of the v1 mount whose options include `cpu`.
fn cgroup_mount(mountinfo: &str, v2: bool) -> Option<(PathBuf, String)> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let fields: Vec<&str> = left.split(' ').collect();
        let mut right = right.split(' ');
        let fstype = right.next()?;
        let super_options = right.nth(1).unwrap_or_default();
        let (root, mount_point) = (fields.get(3)?, fields.get(4)?);
        let wanted = if v2 {
            fstype == "cgroup2"
        } else {
            fstype == "cgroup" && super_options.split(',').any(|o| o == "cpu")
        };
        wanted.then(|| (PathBuf::from(mount_point), root.to_string()))
    })
}

/// This process's cgroup path in the v2 hierarchy (`0::/path`) or in the v1 `cpu` one.
fn cgroup_path(proc_cgroup: &str, v2: bool) -> Option<String> {
    proc_cgroup.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (id, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let wanted = if v2 {
            id == "0" && controllers.is_empty()
        } else {
            controllers.split(',').any(|c| c == "cpu")
        };
        wanted.then(|| path.to_string())
    })
}

/// The smallest CPU quota from this process's cgroup up to the hierarchy's root, in CPUs.
fn cgroup_cpu_limit() -> Option<f64> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let proc_cgroup = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let mut limits = Vec::new();
    for v2 in [true, false] {
        let (Some((mount, root)), Some(path)) =
            (cgroup_mount(&mountinfo, v2), cgroup_path(&proc_cgroup, v2))
        else {
            continue;
        };
        // Inside a container the mount's root is the container's own cgroup.
        let relative = path.strip_prefix(root.as_str()).unwrap_or(&path);
        let mut dir = mount.join(relative.trim_start_matches('/'));
        loop {
            let limit = if v2 {
                std::fs::read_to_string(dir.join("cpu.max"))
                    .ok()
                    .and_then(|t| parse_cpu_max(&t))
            } else {
                match (
                    std::fs::read_to_string(dir.join("cpu.cfs_quota_us")),
                    std::fs::read_to_string(dir.join("cpu.cfs_period_us")),
                ) {
                    (Ok(q), Ok(p)) => parse_cfs(&q, &p),
                    _ => None,
                }
            };
            limits.extend(limit);
            if dir == mount || !dir.pop() || !dir.starts_with(&mount) {
                break;
            }
        }
    }
    limits.into_iter().reduce(f64::min)
}

/// Runnable tasks on the machine besides this one: the median of a few samples of `procs_running`
/// in `/proc/stat` (which counts this process's running thread too).
fn other_runnable() -> Option<f64> {
    let sample = || -> Option<f64> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        stat.lines()
            .find_map(|l| l.strip_prefix("procs_running "))
            .and_then(|n| n.trim().parse::<f64>().ok())
    };
    let mut samples = Vec::new();
    for i in 0..5 {
        if i > 0 {
            std::thread::sleep(std::time::Duration::from_millis(4));
        }
        samples.extend(sample());
    }
    if samples.is_empty() {
        return None;
    }
    samples.sort_by(f64::total_cmp);
    Some((samples[samples.len() / 2] - 1.0).max(0.0))
}

/// The thread count: `configured` (0 = decide), else the CPUs the process may use (affinity and
/// cgroup quota), less those other processes keep busy when `follow_load`, at least 1.
///
/// Following the load makes the count, and with it the last digits of what libtorch computes, depend
/// on the moment: a reproducible report (`--no-timings`) does not follow it.
pub fn plan(configured: usize, follow_load: bool) -> ThreadPlan {
    if configured > 0 {
        return ThreadPlan {
            threads: configured,
            reason: "set by --threads or `threads` in the config".into(),
        };
    }
    decide(
        affinity_cpus(),
        cgroup_cpu_limit(),
        online_cpus(),
        follow_load.then(other_runnable).flatten(),
    )
}

fn decide(affinity: usize, quota: Option<f64>, online: usize, busy: Option<f64>) -> ThreadPlan {
    let mut threads = affinity.max(1);
    let mut why = vec![format!(
        "{affinity} CPU{} in the affinity mask",
        if affinity == 1 { "" } else { "s" }
    )];
    if let Some(quota) = quota {
        let cpus = (quota.ceil() as usize).max(1);
        if cpus < threads {
            threads = cpus;
        }
        why.push(format!("a cgroup CPU quota of {quota:.2}"));
    }
    if let Some(busy) = busy {
        let free = (online as f64 - busy).floor().max(1.0) as usize;
        if free < threads {
            threads = free;
            why.push(format!(
                "{busy:.0} runnable task{} of other processes on {online} online CPUs",
                if busy == 1.0 { "" } else { "s" }
            ));
        }
    }
    ThreadPlan {
        threads,
        reason: why.join(", "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_limits_are_read_as_go_and_the_jvm_read_them() {
        assert_eq!(parse_cpu_max("max 100000\n"), None);
        assert_eq!(parse_cpu_max("150000 100000\n"), Some(1.5));
        assert_eq!(parse_cpu_max("50000 100000"), Some(0.5));
        assert_eq!(parse_cfs("-1\n", "100000\n"), None);
        assert_eq!(parse_cfs("200000\n", "100000\n"), Some(2.0));
        let mountinfo = "\
30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate
31 23 0:27 /docker/abc /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct";
        assert_eq!(
            cgroup_mount(mountinfo, true),
            Some((PathBuf::from("/sys/fs/cgroup"), "/".into()))
        );
        assert_eq!(
            cgroup_mount(mountinfo, false),
            Some((
                PathBuf::from("/sys/fs/cgroup/cpu,cpuacct"),
                "/docker/abc".into()
            ))
        );
        let cgroup = "12:cpu,cpuacct:/docker/abc\n0::/user.slice/x.scope\n";
        assert_eq!(
            cgroup_path(cgroup, true).as_deref(),
            Some("/user.slice/x.scope")
        );
        assert_eq!(cgroup_path(cgroup, false).as_deref(), Some("/docker/abc"));
    }

    #[test]
    fn the_count_is_the_smallest_of_affinity_quota_and_free_cpus() {
        assert_eq!(decide(8, None, 8, Some(0.0)).threads, 8);
        assert_eq!(decide(8, Some(1.5), 8, Some(0.0)).threads, 2);
        assert_eq!(decide(8, Some(0.5), 8, None).threads, 1);
        // Four CPU-bound processes on 2 cores: one thread, and the reason says why.
        let busy = decide(2, None, 2, Some(4.0));
        assert_eq!(busy.threads, 1);
        assert!(
            busy.reason
                .contains("4 runnable tasks of other processes on 2 online CPUs"),
            "{}",
            busy.reason
        );
        // A quota on a large busy host: the free CPUs of the host do not raise the quota.
        assert_eq!(decide(64, Some(2.0), 64, Some(40.0)).threads, 2);
        assert_eq!(plan(3, true).threads, 3);
    }
}
