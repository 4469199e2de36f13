//! cgroups for local sandboxes: the outer safety net of memory and pids
//! limits, and a reliable way to kill everything a sandbox started.
//!
//! One [`CgroupManager`] per pool owns a parent cgroup named
//! `warmpod-pm-<pid>-<n>`, created under the pod-manager's own cgroup in
//! every hierarchy it uses, with one child per sandbox. Layouts, probed at
//! start-up:
//! - **v2** (`/sys/fs/cgroup/cgroup.controllers` exists): `memory.max`,
//!   `pids.max`, `cgroup.kill`. Limits need the `memory` and `pids`
//!   controllers enabled in the pod-manager's own cgroup; when that is
//!   refused (processes live there and it is not the root), sandboxes still
//!   get a cgroup for killing, without limits, and start-up says so.
//! - **v1** (`/sys/fs/cgroup/{memory,pids}`): `memory.limit_in_bytes` and
//!   `pids.max` in their hierarchies, plus the v2 `unified` hierarchy's
//!   `cgroup.kill` where it is mounted.
//!
//! Processes join a sandbox cgroup themselves, between clone and exec, by
//! writing `0` to the `cgroup.procs` files opened here (see
//! [`SandboxCgroup::procs_files`]), so a sandbox never runs outside it.
//! Dead managers' leftovers are removed at start-up.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Where cgroup hierarchies are mounted.
pub const CGROUP_MOUNT: &str = "/sys/fs/cgroup";
/// Name prefix of every parent cgroup a pod-manager creates.
pub const PARENT_PREFIX: &str = "warmpod-pm-";

/// How long killing and removing one cgroup may take before giving up.
const REMOVE_DEADLINE: Duration = Duration::from_secs(10);

static NEXT_PARENT: AtomicU32 = AtomicU32::new(0);

/// Limits applied to every sandbox cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Memory limit in bytes.
    pub memory_bytes: u64,
    /// Maximum number of processes and threads.
    pub pids_max: u64,
}

/// What one hierarchy directory is used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// A v2 hierarchy; `limits` says whether memory/pids controllers are on.
    V2 { limits: bool },
    /// The v1 memory controller.
    V1Memory,
    /// The v1 pids controller.
    V1Pids,
    /// A v2 hierarchy next to v1 controllers, used only for `cgroup.kill`.
    UnifiedKill,
}

#[derive(Debug, Clone)]
struct Hierarchy {
    role: Role,
    /// Our parent cgroup's directory in this hierarchy.
    parent: PathBuf,
}

/// The pool's parent cgroup in every usable hierarchy.
#[derive(Debug)]
pub struct CgroupManager {
    hierarchies: Vec<Hierarchy>,
    limits: Limits,
}

/// One sandbox's cgroup (a directory per hierarchy).
#[derive(Debug)]
pub struct SandboxCgroup {
    dirs: Vec<PathBuf>,
    /// `cgroup.kill` of a v2 directory, when there is one.
    kill_file: Option<PathBuf>,
}

impl CgroupManager {
    /// Probes the cgroup layout, removes dead managers' leftovers and
    /// creates this pool's parent cgroup.
    ///
    /// # Errors
    /// A human-readable reason why cgroups cannot be used here; the caller
    /// runs on rlimits alone and says so.
    pub fn create(limits: Limits) -> Result<Self, String> {
        Self::create_at(Path::new(CGROUP_MOUNT), limits)
    }

    /// [`create`](Self::create) with the hierarchies mounted at `mount`
    /// instead of `/sys/fs/cgroup` (a v2 mount there is used as v2; else
    /// `mount/{memory,pids}` as v1 plus `mount/unified`).
    ///
    /// # Errors
    /// See [`create`](Self::create).
    pub fn create_at(mount: &Path, limits: Limits) -> Result<Self, String> {
        let own = fs::read_to_string("/proc/self/cgroup")
            .map_err(|e| format!("cannot read /proc/self/cgroup: {e}"))?;
        let name = format!(
            "{PARENT_PREFIX}{}-{}",
            std::process::id(),
            NEXT_PARENT.fetch_add(1, Ordering::Relaxed)
        );
        let mut hierarchies = Vec::new();
        if mount.join("cgroup.controllers").exists() {
            let base = mount.join(rel(own_path(&own, None).unwrap_or("/")));
            let parent = make_parent(&base, &name)?;
            let limits_on = enable_controllers(&base).and_then(|()| enable_controllers(&parent));
            if let Err(e) = &limits_on {
                tracing::warn!(
                    cgroup = %base.display(),
                    error = %e,
                    "cgroup v2: memory/pids controllers cannot be enabled below our own \
                     cgroup; sandboxes get a cgroup for cleanup but no cgroup limits \
                     (run pod-manager in its own delegated cgroup to get them)"
                );
            }
            hierarchies.push(Hierarchy {
                role: Role::V2 {
                    limits: limits_on.is_ok(),
                },
                parent,
            });
        } else {
            for (controller, role) in [("memory", Role::V1Memory), ("pids", Role::V1Pids)] {
                let root = mount.join(controller);
                let Some(path) = own_path(&own, Some(controller)) else {
                    continue;
                };
                if !root.join("cgroup.procs").exists() {
                    continue;
                }
                let parent = make_parent(&root.join(rel(path)), &name)?;
                hierarchies.push(Hierarchy { role, parent });
            }
            let unified = mount.join("unified");
            if unified.join("cgroup.controllers").exists() {
                let base = unified.join(rel(own_path(&own, None).unwrap_or("/")));
                // Optional: without it, killing falls back to signals.
                if let Ok(parent) = make_parent(&base, &name) {
                    hierarchies.push(Hierarchy {
                        role: Role::UnifiedKill,
                        parent,
                    });
                }
            }
            if !hierarchies
                .iter()
                .any(|h| matches!(h.role, Role::V1Memory | Role::V1Pids))
            {
                let manager = Self {
                    hierarchies,
                    limits,
                };
                manager.remove();
                return Err("no writable memory or pids cgroup controller".into());
            }
        }
        Ok(Self {
            hierarchies,
            limits,
        })
    }

    /// A short description for the start-up log.
    pub fn describe(&self) -> String {
        let parts: Vec<String> = self
            .hierarchies
            .iter()
            .map(|h| format!("{:?} at {}", h.role, h.parent.display()))
            .collect();
        parts.join(", ")
    }

    /// Whether memory and pids limits are applied (not only cleanup).
    pub fn has_limits(&self) -> bool {
        self.hierarchies.iter().any(|h| {
            matches!(
                h.role,
                Role::V2 { limits: true } | Role::V1Memory | Role::V1Pids
            )
        })
    }

    /// Creates the cgroup of sandbox `name` with the limits applied.
    ///
    /// # Errors
    /// A directory or limit file could not be written.
    pub fn sandbox(&self, name: &str) -> io::Result<SandboxCgroup> {
        let mut cg = SandboxCgroup {
            dirs: Vec::new(),
            kill_file: None,
        };
        for h in &self.hierarchies {
            let dir = h.parent.join(name);
            if let Err(e) = fs::create_dir(&dir) {
                if e.kind() != io::ErrorKind::AlreadyExists {
                    cg.remove();
                    return Err(e);
                }
                // A leftover of an earlier sandbox with this name: empty it.
                let stale = SandboxCgroup {
                    dirs: vec![dir.clone()],
                    kill_file: None,
                };
                stale.kill_all();
            }
            cg.dirs.push(dir.clone());
            let written = match h.role {
                Role::V2 { limits: true } => write(&dir, "memory.max", self.limits.memory_bytes)
                    .and_then(|()| write(&dir, "pids.max", self.limits.pids_max))
                    .and_then(|()| write_if_present(&dir, "memory.swap.max", 0)),
                Role::V1Memory => write(&dir, "memory.limit_in_bytes", self.limits.memory_bytes)
                    .and_then(|()| {
                        write_if_present(
                            &dir,
                            "memory.memsw.limit_in_bytes",
                            self.limits.memory_bytes,
                        )
                    }),
                Role::V1Pids => write(&dir, "pids.max", self.limits.pids_max),
                Role::V2 { limits: false } | Role::UnifiedKill => Ok(()),
            };
            if let Err(e) = written {
                cg.remove();
                return Err(e);
            }
            if matches!(h.role, Role::V2 { .. } | Role::UnifiedKill)
                && dir.join("cgroup.kill").exists()
            {
                cg.kill_file = Some(dir.join("cgroup.kill"));
            }
        }
        Ok(cg)
    }

    /// Kills whatever is left in the parent cgroup and removes it. Blocking.
    pub fn remove(&self) {
        for h in &self.hierarchies {
            remove_tree(&h.parent);
        }
    }
}

impl Drop for CgroupManager {
    /// Removes the parent cgroup if [`remove`](Self::remove) was not called
    /// (a pool dropped without shutdown); a no-op after it.
    fn drop(&mut self) {
        if self.hierarchies.iter().any(|h| h.parent.exists()) {
            self.remove();
        }
    }
}

impl SandboxCgroup {
    /// Opens every `cgroup.procs` for writing: a process that writes `0` to
    /// each of them (between clone and exec) moves itself into this cgroup.
    ///
    /// # Errors
    /// A file could not be opened.
    pub fn procs_files(&self) -> io::Result<Vec<File>> {
        self.dirs
            .iter()
            .map(|d| OpenOptions::new().write(true).open(d.join("cgroup.procs")))
            .collect()
    }

    /// The cgroup's directory in every hierarchy.
    pub fn paths(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// Pids currently in the cgroup.
    pub fn pids(&self) -> Vec<i32> {
        self.dirs.first().map(|d| read_pids(d)).unwrap_or_default()
    }

    /// Kills every process in the cgroup (`cgroup.kill` where available,
    /// else SIGKILL to each member until none is left). Blocking.
    pub fn kill_all(&self) {
        if let Some(kill_file) = &self.kill_file {
            let _ = fs::write(kill_file, "1");
        }
        let deadline = Instant::now() + REMOVE_DEADLINE;
        for dir in &self.dirs {
            kill_members(dir, deadline);
        }
    }

    /// Kills everything in the cgroup and removes its directories, retrying
    /// while the kernel still reports them busy. Blocking.
    pub fn remove(&self) {
        self.kill_all();
        for dir in &self.dirs {
            remove_dir_retrying(dir, Instant::now() + REMOVE_DEADLINE);
        }
    }
}

/// The cgroup path of this process for a v1 `controller`, or the v2 path
/// when `controller` is `None`.
fn own_path<'a>(proc_self_cgroup: &'a str, controller: Option<&str>) -> Option<&'a str> {
    proc_self_cgroup.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (_id, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let wanted = match controller {
            None => controllers.is_empty(),
            Some(c) => controllers.split(',').any(|x| x == c),
        };
        wanted.then_some(path)
    })
}

fn rel(path: &str) -> &str {
    path.trim_start_matches('/')
}

/// Creates `<base>/<name>`, first removing dead managers' parents in `base`.
fn make_parent(base: &Path, name: &str) -> Result<PathBuf, String> {
    remove_stale_parents(base);
    let parent = base.join(name);
    fs::create_dir(&parent).map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    Ok(parent)
}

/// Removes `warmpod-pm-<pid>-*` directories of processes that are gone.
fn remove_stale_parents(base: &Path) {
    let Ok(entries) = fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(parent_owner) else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            tracing::info!(cgroup = %entry.path().display(), "removing a dead pod-manager's cgroup");
            remove_tree(&entry.path());
        }
    }
}

/// The pid in a parent cgroup's name `warmpod-pm-<pid>-<n>`.
fn parent_owner(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(PARENT_PREFIX)?;
    let (pid, n) = rest.split_once('-')?;
    n.parse::<u32>().ok()?;
    pid.parse().ok()
}

/// Kills and removes a cgroup directory and every child below it.
fn remove_tree(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&entry.path());
            }
        }
    }
    if dir.join("cgroup.kill").exists() {
        let _ = fs::write(dir.join("cgroup.kill"), "1");
    }
    let deadline = Instant::now() + REMOVE_DEADLINE;
    kill_members(dir, deadline);
    remove_dir_retrying(dir, deadline);
}

fn read_pids(dir: &Path) -> Vec<i32> {
    fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// SIGKILLs every member until the cgroup is empty (a fork bomb can add
/// members while we kill; its pids limit keeps that finite).
fn kill_members(dir: &Path, deadline: Instant) {
    let mut pause = Duration::from_micros(200);
    loop {
        let pids = read_pids(dir);
        if pids.is_empty() {
            return;
        }
        for pid in pids {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        if Instant::now() >= deadline {
            tracing::error!(cgroup = %dir.display(), "processes survive SIGKILL; giving up");
            return;
        }
        // Retry back-off of the kill loop: the killed processes need a
        // moment to exit before cgroup.procs shows them gone.
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// `rmdir` fails with EBUSY for a moment after the last member died.
fn remove_dir_retrying(dir: &Path, deadline: Instant) {
    let mut pause = Duration::from_micros(200);
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return,
            Err(e) if Instant::now() >= deadline => {
                tracing::error!(cgroup = %dir.display(), error = %e, "cannot remove cgroup");
                return;
            }
            Err(_) => {
                kill_members(dir, deadline);
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(20));
            }
        }
    }
}

fn enable_controllers(dir: &Path) -> io::Result<()> {
    let available = fs::read_to_string(dir.join("cgroup.controllers"))?;
    for c in ["memory", "pids"] {
        if !available.split_whitespace().any(|x| x == c) {
            return Err(io::Error::other(format!(
                "controller {c} not available in {}",
                dir.display()
            )));
        }
    }
    fs::write(dir.join("cgroup.subtree_control"), "+memory +pids")
}

fn write(dir: &Path, file: &str, value: u64) -> io::Result<()> {
    fs::write(dir.join(file), value.to_string())
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", dir.join(file).display())))
}

fn write_if_present(dir: &Path, file: &str, value: u64) -> io::Result<()> {
    if dir.join(file).exists() {
        write(dir, file, value)
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_paths_are_found_per_controller() {
        let text = "9:name=systemd:/\n8:pids:/a\n4:memory:/process_api/x\n2:cpu,cpuacct:/\n0::/u\n";
        assert_eq!(own_path(text, Some("memory")), Some("/process_api/x"));
        assert_eq!(own_path(text, Some("pids")), Some("/a"));
        assert_eq!(own_path(text, Some("cpuacct")), Some("/"));
        assert_eq!(own_path(text, None), Some("/u"));
        assert_eq!(own_path("0::/\n", Some("memory")), None);
    }

    #[test]
    fn only_our_parent_names_are_stale_candidates() {
        assert_eq!(parent_owner("warmpod-pm-123-0"), Some(123));
        assert_eq!(parent_owner("warmpod-pm-123"), None);
        assert_eq!(parent_owner("warmpod-test-123"), None);
        assert_eq!(parent_owner("warmpod-pm-x-1"), None);
    }
}
