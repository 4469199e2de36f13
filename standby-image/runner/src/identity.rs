//! Who the program runs as.
//!
//! As root, the runner runs programs as a dedicated uid/gid from
//! [`UID_RANGE`], so that `RLIMIT_NPROC` (counted per real uid, machine
//! wide) counts only this job's processes and `kill(-1)` as that uid
//! reaches only them. Concurrent runners on one machine each hold an
//! exclusive `flock` on `<lock dir>/<uid>.lock` ([`LOCK_DIR`]) for their
//! whole life, so no two share a uid. Not root (a bubblewrap sandbox started
//! as a dedicated uid, or a non-root pod), the program runs as the runner's
//! own uid.
//!
//! The lock file also records whether the last runner that held the uid
//! left it clean (every process reaped): `clean` skips the start-up sweep
//! that kills everything the uid owns; anything else (a runner killed
//! mid-job, a new file) forces it. It says `dirty` while a runner holds it.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::ops::RangeInclusive;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

/// The uids (and gids, the same numbers) handed to programs when root.
pub const UID_RANGE: RangeInclusive<u32> = 61_000..=61_999;

/// Where the per-uid lock files live (root only). Under `/run`, which only
/// root can write, so no other user can squat the directory first.
pub const LOCK_DIR: &str = "/run/warmpod-runner-uids";

/// The identity programs run as.
#[derive(Debug)]
pub enum Identity {
    /// A uid/gid of our own, locked for the runner's life.
    Dedicated {
        /// The program's uid.
        uid: u32,
        /// The program's gid.
        gid: u32,
        /// The held lock; released when the runner exits.
        lock: Flock<File>,
        /// Whether the previous holder left the uid clean.
        was_clean: bool,
    },
    /// The runner's own uid (the runner is not root).
    Inherited {
        /// The runner's uid.
        uid: u32,
        /// Whether processes of this uid may run where we cannot see them
        /// (see [`uid_may_be_shared`]).
        shared: bool,
    },
}

/// Added to `RLIMIT_NPROC` when the uid may be shared with processes we
/// cannot see: they count against the limit too, so a tight limit would
/// starve the program (the supervisor still enforces `max_processes` on the
/// program's own tree, and the container's pids limit is the net).
pub const SHARED_UID_HEADROOM: u64 = 1024;

/// The inode numbers of the initial user and pid namespaces (kernel
/// constants `PROC_USER_INIT_INO`, `PROC_PID_INIT_INO`).
const INIT_USER_NS: &str = "user:[4026531837]";
const INIT_PID_NS: &str = "pid:[4026531836]";

/// Whether our uid may have processes we cannot see in `/proc`: we are in
/// the initial user namespace (so `RLIMIT_NPROC` counts the uid machine
/// wide) but in another pid namespace (so `/proc` shows only ours). That is
/// a container without user namespaces, e.g. a Kubernetes pod where every
/// standby pod of a node runs as the same uid. A bubblewrap sandbox has its
/// own user namespace (its own count); a plain host process sees everything.
fn uid_may_be_shared() -> bool {
    let ns = |kind| fs::read_link(format!("/proc/self/ns/{kind}")).ok();
    shared_in(ns("user").as_deref(), ns("pid").as_deref())
}

/// [`uid_may_be_shared`] for the given namespace links (`None`: unknown).
fn shared_in(user_ns: Option<&Path>, pid_ns: Option<&Path>) -> bool {
    user_ns == Some(Path::new(INIT_USER_NS)) && pid_ns.is_some_and(|p| p != Path::new(INIT_PID_NS))
}

/// Why no identity could be had.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The lock directory is unusable.
    #[error("lock directory {path}: {source}")]
    LockDir {
        /// The directory.
        path: PathBuf,
        /// What failed.
        #[source]
        source: io::Error,
    },
    /// Every uid of the range is taken.
    #[error("all program uids {}..={} are in use", UID_RANGE.start(), UID_RANGE.end())]
    Exhausted,
    /// A pinned uid is not usable.
    #[error("uid {0} cannot be used for programs (root's uid)")]
    BadPin(u32),
}

impl Identity {
    /// Picks the identity for this runner: a locked uid from the range (or
    /// `pinned`, waiting for its lock) when root, our own uid otherwise.
    ///
    /// # Errors
    /// See [`IdentityError`].
    pub fn acquire(pinned: Option<u32>, lock_dir: &Path) -> Result<Self, IdentityError> {
        let euid = nix::unistd::geteuid().as_raw();
        if euid != 0 {
            return Ok(Self::inherited(euid));
        }
        // Unreadable maps (no /proc): assume the initial namespace, where
        // every id exists, rather than fall back to running programs as root.
        let read_map = |path| fs::read_to_string(path).unwrap_or_else(|_| HOST_MAP.to_string());
        let (uid_map, gid_map) = (
            read_map("/proc/self/uid_map"),
            read_map("/proc/self/gid_map"),
        );
        let mapped = [UID_RANGE.start(), UID_RANGE.end()]
            .into_iter()
            .chain(pinned.as_ref())
            .all(|&id| map_covers(&uid_map, id) && map_covers(&gid_map, id));
        if !mapped {
            // Root of a user namespace (e.g. a sandbox) where the program
            // uids do not exist: run programs as ourselves.
            return Ok(Self::inherited(euid));
        }
        if pinned == Some(0) {
            return Err(IdentityError::BadPin(0));
        }
        let lock_err = |source| IdentityError::LockDir {
            path: lock_dir.to_path_buf(),
            source,
        };
        ensure_private_dir(lock_dir).map_err(lock_err)?;
        if let Some(uid) = pinned {
            let file = open_lock(lock_dir, uid).map_err(lock_err)?;
            let lock =
                Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| lock_err(e.into()))?;
            return Self::dedicated(uid, lock).map_err(lock_err);
        }
        // Lowest free uid first: the few uids concurrent runners use get
        // reused, and so are usually found clean.
        for uid in UID_RANGE {
            let file = open_lock(lock_dir, uid).map_err(lock_err)?;
            if let Ok(lock) = Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                return Self::dedicated(uid, lock).map_err(lock_err);
            }
        }
        Err(IdentityError::Exhausted)
    }

    fn inherited(uid: u32) -> Self {
        Self::Inherited {
            uid,
            shared: uid_may_be_shared(),
        }
    }

    /// Takes over a locked uid: reads whether it was left clean, then
    /// marks it dirty until [`mark_clean`](Self::mark_clean).
    fn dedicated(uid: u32, lock: Flock<File>) -> io::Result<Self> {
        let mut state = [0u8; 16];
        let n = lock.read_at(&mut state, 0)?;
        let was_clean = &state[..n] == CLEAN;
        write_state(&lock, DIRTY)?;
        Ok(Self::Dedicated {
            uid,
            gid: uid,
            lock,
            was_clean,
        })
    }

    /// Whether everything the uid owns must be killed before the first
    /// program runs (its last holder may have left processes behind).
    pub fn needs_sweep(&self) -> bool {
        matches!(
            self,
            Self::Dedicated {
                was_clean: false,
                ..
            }
        )
    }

    /// Records that no process of the uid is left, so the next runner can
    /// skip its sweep. Call only once every program process is reaped.
    ///
    /// # Errors
    /// When the lock file cannot be written.
    pub fn mark_clean(&self) -> io::Result<()> {
        match self {
            Self::Dedicated { lock, .. } => write_state(lock, CLEAN),
            Self::Inherited { .. } => Ok(()),
        }
    }

    /// The program's uid.
    pub fn uid(&self) -> u32 {
        match self {
            Self::Dedicated { uid, .. } | Self::Inherited { uid, .. } => *uid,
        }
    }

    /// `(uid, gid)` to switch to before exec, when the runner is root.
    pub fn switch_to(&self) -> Option<(u32, u32)> {
        match self {
            Self::Dedicated { uid, gid, .. } => Some((*uid, *gid)),
            Self::Inherited { .. } => None,
        }
    }

    /// Whether the uid belongs to programs alone (so everything it owns may
    /// be killed).
    pub fn is_dedicated(&self) -> bool {
        matches!(self, Self::Dedicated { .. })
    }

    /// The uid whose processes may all be killed, when dedicated.
    pub fn dedicated_uid(&self) -> Option<u32> {
        self.is_dedicated().then(|| self.uid())
    }

    /// How many tasks (threads included) `RLIMIT_NPROC` must allow beyond
    /// the program's own: 0 for a dedicated uid (cleared at start); else
    /// our own uid's count as far as `/proc` shows, plus
    /// [`SHARED_UID_HEADROOM`] when the uid may also run where we cannot
    /// see.
    pub fn tasks_running(&self) -> u64 {
        match self {
            Self::Dedicated { .. } => 0,
            Self::Inherited { uid, shared } => {
                let headroom = if *shared { SHARED_UID_HEADROOM } else { 0 };
                count_tasks_of(*uid) + headroom
            }
        }
    }

    /// Whether `RLIMIT_NPROC` alone holds the program to `max_processes`
    /// (else the supervisor counts its tasks).
    pub fn nproc_is_exact(&self) -> bool {
        !matches!(self, Self::Inherited { shared: true, .. })
    }
}

/// The id map of the initial user namespace.
const HOST_MAP: &str = "0 0 4294967295";

/// Whether `id` exists in this user namespace according to `map`
/// (`/proc/self/uid_map` format: `inside outside count` lines).
fn map_covers(map: &str, id: u32) -> bool {
    map.lines().any(|line| {
        let mut f = line.split_whitespace().map(|v| v.parse::<u64>());
        match (f.next(), f.next(), f.next()) {
            (Some(Ok(inside)), Some(Ok(_)), Some(Ok(count))) => {
                (inside..inside.saturating_add(count)).contains(&u64::from(id))
            }
            _ => false,
        }
    })
}

fn count_tasks_of(uid: u32) -> u64 {
    let Ok(entries) = fs::read_dir("/proc") else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        })
        .filter_map(|e| fs::read_to_string(e.path().join("status")).ok())
        .filter_map(|status| tasks_if_owned(&status, uid))
        .sum()
}

/// The `Threads:` count of a `/proc/<pid>/status` text whose real uid is
/// `uid`.
fn tasks_if_owned(status: &str, uid: u32) -> Option<u64> {
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
    };
    if field("Uid:")?.parse::<u32>().ok()? != uid {
        return None;
    }
    field("Threads:")?.parse().ok()
}

/// Creates `dir` (0700) if needed and checks it is a real directory owned
/// by us that nobody else can write to.
fn ensure_private_dir(dir: &Path) -> io::Result<()> {
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let meta = fs::symlink_metadata(dir)?;
    let euid = nix::unistd::geteuid().as_raw();
    if !meta.is_dir() || meta.uid() != euid || meta.mode() & 0o022 != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "not a directory owned by us and closed to others",
        ));
    }
    Ok(())
}

/// The lock file's content when its last holder left the uid clean.
const CLEAN: &[u8] = b"clean\n";
/// Its content while a runner holds it (as long as [`CLEAN`]).
const DIRTY: &[u8] = b"dirty\n";

/// Overwrites the state in place (both states have the same length, so no
/// truncation, which costs a metadata update, unless the file is longer).
fn write_state(file: &File, state: &[u8]) -> io::Result<()> {
    file.write_all_at(state, 0)?;
    if file.metadata()?.len() != state.len() as u64 {
        file.set_len(state.len() as u64)?;
    }
    Ok(())
}

fn open_lock(dir: &Path, uid: u32) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(dir.join(format!("{uid}.lock")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_acquisitions_get_distinct_uids() {
        if !nix::unistd::geteuid().is_root() {
            return; // Only root hands out dedicated uids.
        }
        let dir = tempfile::tempdir().unwrap();
        let a = Identity::acquire(None, dir.path()).unwrap();
        let b = Identity::acquire(None, dir.path()).unwrap();
        assert!(a.is_dedicated() && b.is_dedicated());
        assert_ne!(a.uid(), b.uid());
        assert!(UID_RANGE.contains(&a.uid()) && UID_RANGE.contains(&b.uid()));
        let uid = a.uid();
        drop(a);
        let c = Identity::acquire(Some(uid), dir.path()).unwrap();
        assert_eq!(c.switch_to(), Some((uid, uid)));
    }

    #[test]
    fn only_a_uid_left_clean_skips_the_sweep() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let first = Identity::acquire(None, dir.path()).unwrap();
        assert!(first.needs_sweep(), "a new lock file is not known clean");
        let uid = first.uid();
        drop(first); // ended without mark_clean, as a killed runner would
        let second = Identity::acquire(Some(uid), dir.path()).unwrap();
        assert!(second.needs_sweep(), "left dirty");
        second.mark_clean().unwrap();
        drop(second);
        let third = Identity::acquire(Some(uid), dir.path()).unwrap();
        assert!(!third.needs_sweep(), "left clean");
        drop(third); // not marked clean again: dirty once more
        assert!(
            Identity::acquire(Some(uid), dir.path())
                .unwrap()
                .needs_sweep()
        );
        let lock_file = dir.path().join(format!("{uid}.lock"));
        fs::write(&lock_file, "clean\nand more").unwrap();
        let fourth = Identity::acquire(Some(uid), dir.path()).unwrap();
        assert!(fourth.needs_sweep(), "only an exact `clean` counts");
        fourth.mark_clean().unwrap();
        assert_eq!(fs::read_to_string(&lock_file).unwrap(), "clean\n");
    }

    #[test]
    fn only_a_container_without_its_own_user_namespace_shares_the_uid() {
        let p = |s: &'static str| Some(Path::new(s));
        let other_user = p("user:[4026532500]");
        let other_pid = p("pid:[4026532501]");
        let cases = [
            (p(INIT_USER_NS), p(INIT_PID_NS), false, "a host process"),
            (
                p(INIT_USER_NS),
                other_pid,
                true,
                "a pod without user namespaces",
            ),
            (other_user, other_pid, false, "a bubblewrap sandbox"),
            (None, None, false, "no /proc"),
        ];
        for (user, pid, shared, what) in cases {
            assert_eq!(shared_in(user, pid), shared, "{what}");
        }
    }

    #[test]
    fn id_maps_are_read() {
        let host = "         0          0 4294967295\n";
        assert!(map_covers(host, 61_000));
        let sandbox = "         0       1000          1\n";
        assert!(map_covers(sandbox, 0));
        assert!(!map_covers(sandbox, 61_000));
        assert!(!map_covers("", 0));
    }

    #[test]
    fn tasks_are_counted_for_the_owner_only() {
        let status = "Name:\tjava\nUid:\t1000\t1000\t1000\t1000\nThreads:\t17\n";
        assert_eq!(tasks_if_owned(status, 1000), Some(17));
        assert_eq!(tasks_if_owned(status, 1001), None);
        let me = nix::unistd::getuid().as_raw();
        assert!(count_tasks_of(me) >= 1);
    }

    #[test]
    fn root_is_never_a_program_uid() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            Identity::acquire(Some(0), dir.path()),
            Err(IdentityError::BadPin(0))
        ));
    }
}
