//! The local backend: each sandbox is a `bwrap` (bubblewrap) process with
//! `warmpod-runner` already started inside it and blocked on stdin.
//!
//! A sandbox has its own user, pid, network (none at all), ipc, uts, mount
//! and cgroup namespaces; sees read-only binds of `/usr` (and the `/bin`,
//! `/lib*` links into it), `/etc/alternatives`, `/etc/ld.so.cache`, the
//! JVM's `/etc/java-*`, a synthesized `/etc/passwd` and `/etc/group`, and
//! the runner; gets a private size-limited tmpfs `/tmp` (its only writable
//! place); a read-only root and `/dev`; a clean environment. When the
//! pod-manager is root, sandbox slot `i` runs as uid/gid `uid_base + i`;
//! with writable cgroups each sandbox lives in its own cgroup with memory
//! and pids limits (see [`crate::cgroup`]). Destroying a sandbox kills its
//! cgroup (or its bwrap process, whose pid namespace then dies) and reaps
//! it; nothing of one job survives into the next.
//!
//! A background refill task keeps `pool_size` sandboxes ready; a sandbox
//! counts as ready once its runner said so: bwrap gets the write end of a
//! pipe as descriptor 3 (passed through into the sandbox), the runner
//! (`--ready-fd 3`) writes one byte on it and closes it right before it
//! blocks reading its job, after any pre-start. So a claim never waits for
//! bubblewrap's set-up or an interpreter's start, and the pod-manager
//! waits for an event, not by polling `/proc`. EOF without the byte (the
//! sandbox died first), or no byte within the start timeout, is a failed
//! start. The runner must know `--ready-fd`: deploy both together.
//!
//! Sandboxes may be specialised: their runner started with `--prestart
//! <language>` holds that language's interpreter already started (see the
//! runner's `prestart` module). The refill splits the pool between generic
//! and specialised sandboxes by the recent job mix ([`super::mix`], over
//! `prestart_languages`); a claim takes a ready sandbox specialised for
//! the job's language if there is one, else a generic one, else any ready
//! one (whose runner then runs the job cold), and never waits for a
//! specialised one.

use std::collections::{BTreeMap, VecDeque};
use std::ffi::CString;
use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::pipe;
use tokio::sync::Notify;
use uuid::Uuid;
use warmpod_protocol::{Job, JobResult, Language};

use super::mix::{self, DemandMix, Split};
use super::{Claimed, Error, PoolStats, Result, WarmPool};
use crate::cgroup::{self, CgroupManager, SandboxCgroup};
use crate::config::LocalConfig;
use crate::process::{self, Process};
use crate::spawn::{Identity, READY_FD};

/// Where the runner appears inside a sandbox.
pub const RUNNER_IN_SANDBOX: &str = "/opt/warmpod/warmpod-runner";
/// The sandbox's host name.
pub const SANDBOX_HOSTNAME: &str = "warmpod";
/// `PATH` inside a sandbox.
const SANDBOX_PATH: &str = "/usr/local/bin:/usr/bin:/bin";
/// How long a sandbox may take to become ready before it is given up.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a sandbox that closed its readiness pipe without the byte may
/// take to finish exiting (for its exit status and last stderr in the
/// report) before it is killed.
const EXIT_REPORT_GRACE: Duration = Duration::from_secs(2);
/// How long `warmpod-runner --versions` may take (it starts every runtime).
const VERSIONS_TIMEOUT: Duration = Duration::from_secs(60);
/// The runner's stderr kept for diagnostics.
const STDERR_TAIL_BYTES: usize = 16 * 1024;

/// Why the local pool cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A binary or directory it needs is missing or unusable.
    #[error(
        "{what} {path} is unusable (build the runner with `cargo build -p warmpod-runner`, \
         or set WARMPOD_RUNNER_PATH / WARMPOD_BWRAP; `make deps` installs bubblewrap)"
    )]
    Missing {
        /// What it is.
        what: &'static str,
        /// Where we looked.
        path: PathBuf,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// The first sandbox did not come up (bubblewrap or user namespaces
    /// unusable, runner broken).
    #[error("the first sandbox did not start")]
    FirstSandbox(#[source] Error),
}

/// A claimed local sandbox.
#[derive(Debug)]
pub struct LocalSandbox {
    slot: usize,
    child: Process,
    stdin: Option<pipe::Sender>,
    stdout: BufReader<pipe::Receiver>,
    stderr_tail: Arc<Mutex<Vec<u8>>>,
    /// The task filling `stderr_tail`; it ends at EOF (every process of
    /// the sandbox gone).
    stderr_task: Option<tokio::task::JoinHandle<()>>,
    cgroup: Option<SandboxCgroup>,
    /// The language whose interpreter its runner pre-started, if any.
    prestart: Option<&'static str>,
}

impl LocalSandbox {
    /// The language key whose interpreter the sandbox's runner pre-started
    /// (`None`: a generic sandbox).
    pub fn prestarted(&self) -> Option<&'static str> {
        self.prestart
    }

    /// The host pid of the sandbox's `bwrap` process.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Host pids of every process in the sandbox's cgroup (empty without
    /// cgroups).
    pub fn cgroup_pids(&self) -> Vec<i32> {
        self.cgroup
            .as_ref()
            .map(SandboxCgroup::pids)
            .unwrap_or_default()
    }

    fn stderr_tail(&self) -> String {
        let tail = self
            .stderr_tail
            .lock()
            .map(|t| t.clone())
            .unwrap_or_default();
        String::from_utf8_lossy(&tail).trim().to_string()
    }
}

/// The bubblewrap pool. Cheap to clone; clones share the pool.
#[derive(Clone)]
pub struct LocalPool {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: LocalConfig,
    /// The runner copy and the synthesized `/etc` files; held for its
    /// `Drop`, which removes them (sandboxes see them through `bwrap_args`).
    _runtime: RuntimeDir,
    /// The bwrap binary, as a C string for exec.
    bwrap_path: CString,
    /// bwrap's argv (`bwrap`, its options, the runner's path), the same
    /// for every sandbox: built once at start (they read `/etc` and the
    /// top-level directories of `/`).
    bwrap_argv: Vec<CString>,
    cgroups: Option<Arc<CgroupManager>>,
    /// Whether sandboxes get their own uid (we are root).
    per_sandbox_uid: bool,
    ready: Mutex<VecDeque<LocalSandbox>>,
    /// Woken (all waiters) whenever a sandbox becomes ready or the pool
    /// closes; claimers re-check the ready queue.
    ready_changed: Notify,
    /// Wakes the refill task: a sandbox was claimed or a slot freed.
    refill: Notify,
    /// Woken (all waiters) when the pool closes: sandboxes still starting
    /// give up.
    closing: Notify,
    /// Slots (uids, cgroup names) not held by any live sandbox.
    free_slots: Mutex<Vec<usize>>,
    starting: AtomicU64,
    /// The kind (pre-started language or generic) of each sandbox starting.
    starting_kinds: Mutex<Vec<Option<&'static str>>>,
    /// Recent demand per pre-startable language.
    mix: Mutex<DemandMix>,
    claimed: AtomicU64,
    warm_hits: AtomicU64,
    cold_claims: AtomicU64,
    closed: AtomicBool,
    /// Serialises one-off sandboxes (versions, checks) on the spare slot.
    oneoff: tokio::sync::Mutex<()>,
}

impl LocalPool {
    /// Checks the host, sets up cgroups, starts the first sandbox (so a
    /// broken set-up fails here, not on the first job), then fills the
    /// rest in the background.
    ///
    /// Must be called inside a tokio runtime whose worker threads live as
    /// long as the pool: bubblewrap's `--die-with-parent` ties each sandbox
    /// to the thread that spawned it.
    ///
    /// # Errors
    /// See [`StartError`].
    pub async fn start(cfg: LocalConfig) -> std::result::Result<Self, StartError> {
        for (what, path) in [
            ("bwrap", &cfg.bwrap_path),
            ("warmpod-runner", &cfg.runner_path),
        ] {
            fs::metadata(path).map_err(|source| StartError::Missing {
                what,
                path: path.clone(),
                source,
            })?;
        }
        let per_sandbox_uid = nix::unistd::geteuid().is_root();
        let slots = 2 * cfg.pool_size + 1;
        let runtime = RuntimeDir::create(&cfg, slots, per_sandbox_uid).map_err(|source| {
            StartError::Missing {
                what: "runtime directory",
                path: std::env::temp_dir(),
                source,
            }
        })?;
        let cgroups = if cfg.cgroups {
            let limits = cgroup::Limits {
                memory_bytes: cfg.memory_mb * 1024 * 1024,
                pids_max: cfg.pids_max,
            };
            match tokio::task::spawn_blocking(move || CgroupManager::create(limits)).await {
                Ok(Ok(m)) => Some(Arc::new(m)),
                Ok(Err(reason)) => {
                    tracing::warn!(%reason, "cgroups unavailable: sandboxes are limited by rlimits alone");
                    None
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cgroup probe failed: sandboxes are limited by rlimits alone");
                    None
                }
            }
        } else {
            tracing::warn!(
                "cgroups disabled (WARMPOD_CGROUPS=off): sandboxes are limited by rlimits alone"
            );
            None
        };
        match &cgroups {
            Some(m) if m.has_limits() => tracing::info!(
                cgroups = %m.describe(),
                memory_mb = cfg.memory_mb,
                pids_max = cfg.pids_max,
                "each sandbox gets its own cgroup with memory and pids limits"
            ),
            Some(m) => tracing::warn!(
                cgroups = %m.describe(),
                "sandbox cgroups without limits (cleanup only): limits rely on rlimits"
            ),
            None => {}
        }
        if per_sandbox_uid {
            tracing::info!(
                uids = %format!("{}..{}", cfg.uid_base, cfg.uid_base as usize + slots - 1),
                "each sandbox runs as its own unprivileged uid"
            );
        } else {
            tracing::warn!(
                "not running as root: sandboxes run as our own uid (per-sandbox uids unavailable)"
            );
        }
        // The spare slot (the last) is for one-off sandboxes.
        let free_slots = (0..slots - 1).rev().collect();
        let mix = DemandMix::new(&cfg.prestart_languages);
        let bwrap_path =
            c_string(cfg.bwrap_path.as_os_str().as_encoded_bytes().to_vec()).map_err(|source| {
                StartError::Missing {
                    what: "bwrap",
                    path: cfg.bwrap_path.clone(),
                    source,
                }
            })?;
        let bwrap_argv = std::iter::once("bwrap".to_string())
            .chain(bwrap_args(&runtime, cfg.tmp_mb))
            .chain(std::iter::once(RUNNER_IN_SANDBOX.to_string()))
            .map(|a| c_string(a.into_bytes()))
            .collect::<std::io::Result<Vec<_>>>()
            .map_err(|source| StartError::Missing {
                what: "runtime directory",
                path: runtime.path.clone(),
                source,
            })?;
        let pool = Self {
            inner: Arc::new(Inner {
                cfg,
                _runtime: runtime,
                bwrap_path,
                bwrap_argv,
                cgroups,
                per_sandbox_uid,
                ready: Mutex::new(VecDeque::new()),
                ready_changed: Notify::new(),
                refill: Notify::new(),
                closing: Notify::new(),
                free_slots: Mutex::new(free_slots),
                starting: AtomicU64::new(0),
                starting_kinds: Mutex::new(Vec::new()),
                mix: Mutex::new(mix),
                claimed: AtomicU64::new(0),
                warm_hits: AtomicU64::new(0),
                cold_claims: AtomicU64::new(0),
                closed: AtomicBool::new(false),
                oneoff: tokio::sync::Mutex::new(()),
            }),
        };
        let first_slot = pool.inner.take_slot().expect("a fresh pool has free slots");
        pool.inner.starting.fetch_add(1, Ordering::SeqCst);
        let first = pool.inner.start_sandbox(first_slot, None).await;
        pool.inner.starting.fetch_sub(1, Ordering::SeqCst);
        match first {
            Ok(sandbox) => pool.inner.push_ready(sandbox),
            Err(e) => {
                pool.inner.release_slot(first_slot);
                pool.inner.remove_cgroups().await;
                return Err(StartError::FirstSandbox(e));
            }
        }
        tokio::spawn(refill(pool.inner.clone()));
        Ok(pool)
    }

    /// Host pids of the ready sandboxes' `bwrap` processes.
    pub fn ready_pids(&self) -> Vec<u32> {
        let ready = self.inner.ready.lock().expect("ready queue lock");
        ready.iter().filter_map(LocalSandbox::pid).collect()
    }

    /// The kinds of the ready sandboxes, oldest first: the language whose
    /// interpreter is pre-started, or `None` for generic ones.
    pub fn ready_kinds(&self) -> Vec<Option<&'static str>> {
        let ready = self.inner.ready.lock().expect("ready queue lock");
        ready.iter().map(|s| s.prestart).collect()
    }

    /// Runs `warmpod-runner <args>` in a fresh one-off sandbox (not from
    /// the pool) and returns its exit code and stdout. Used for
    /// `--versions` and `--check`.
    ///
    /// # Errors
    /// The sandbox could not start, or did not finish within `timeout`.
    pub async fn run_runner_command(
        &self,
        args: &[&str],
        timeout: Duration,
    ) -> Result<(Option<i32>, String)> {
        let _guard = self.inner.oneoff.lock().await;
        let slot = 2 * self.inner.cfg.pool_size;
        let (mut sandbox, _) = self.inner.spawn(slot, args, false)?;
        drop(sandbox.stdin.take());
        let mut out = Vec::new();
        let read = tokio::time::timeout(timeout, async {
            (&mut sandbox.stdout)
                .take(1024 * 1024)
                .read_to_end(&mut out)
                .await?;
            sandbox.child.wait().await
        })
        .await;
        let result = match read {
            Ok(Ok(status)) => Ok((status.code(), String::from_utf8_lossy(&out).into_owned())),
            Ok(Err(source)) => Err(Error::Io {
                context: format!("running the runner with {args:?}"),
                source,
            }),
            Err(_) => Err(Error::Timeout(timeout)),
        };
        let stderr = sandbox.stderr_tail();
        self.inner.kill_and_reap(sandbox).await;
        match result {
            Ok((Some(code), _)) if code != 0 && !stderr.is_empty() => {
                tracing::warn!(?args, code, %stderr, "runner command failed");
                result
            }
            other => other,
        }
    }
}

impl WarmPool for LocalPool {
    type Sandbox = LocalSandbox;

    async fn claim(&self, job_id: Uuid) -> Result<Claimed<LocalSandbox>> {
        self.claim_for(job_id, "").await
    }

    async fn claim_for(&self, _job_id: Uuid, language: &str) -> Result<Claimed<LocalSandbox>> {
        let inner = &self.inner;
        let key = Language::find(language).map(|l| l.key);
        if let Some(key) = key {
            inner.mix.lock().expect("mix lock").observe(key);
        }
        let mut warm = true;
        loop {
            let wait = inner.ready_changed.notified();
            tokio::pin!(wait);
            wait.as_mut().enable();
            if inner.closed.load(Ordering::SeqCst) {
                return Err(Error::Closed);
            }
            let popped = {
                let split = inner.split();
                let starting = inner.starting_kinds();
                let mut ready = inner.ready.lock().expect("ready queue lock");
                take_best(&mut ready, key, split.as_ref(), &starting)
            };
            if let Some(sandbox) = popped {
                inner.claimed.fetch_add(1, Ordering::SeqCst);
                let counter = if warm {
                    &inner.warm_hits
                } else {
                    &inner.cold_claims
                };
                counter.fetch_add(1, Ordering::SeqCst);
                inner.refill.notify_one();
                let specialised = warm && key.is_some() && sandbox.prestart == key;
                return Ok(Claimed {
                    sandbox,
                    warm,
                    specialised,
                });
            }
            warm = false;
            inner.refill.notify_one();
            wait.await;
        }
    }

    async fn run(&self, sandbox: &mut LocalSandbox, job: &Job) -> Result<JobResult> {
        let budget = super::answer_deadline(job, self.inner.cfg.job_grace);
        let mut line = serde_json::to_vec(job).map_err(|e| Error::Protocol(e.to_string()))?;
        line.push(b'\n');
        let cap = super::answer_cap(job);
        let exchange = async {
            let mut stdin = sandbox
                .stdin
                .take()
                .ok_or_else(|| Error::Protocol("sandbox already used".into()))?;
            stdin.write_all(&line).await.map_err(|source| Error::Io {
                context: "writing the job to the runner".into(),
                source,
            })?;
            stdin.flush().await.map_err(|source| Error::Io {
                context: "writing the job to the runner".into(),
                source,
            })?;
            drop(stdin);
            let mut answer = Vec::new();
            (&mut sandbox.stdout)
                .take(cap)
                .read_until(b'\n', &mut answer)
                .await
                .map_err(|source| Error::Io {
                    context: "reading the runner's result".into(),
                    source,
                })?;
            Ok::<_, Error>(answer)
        };
        let answer = match tokio::time::timeout(budget, exchange).await {
            Ok(answer) => answer?,
            Err(_) => return Err(Error::Timeout(budget)),
        };
        if answer.last() != Some(&b'\n') {
            let why = if answer.len() as u64 >= cap {
                format!("result line longer than {cap} bytes")
            } else {
                "runner exited without a result line".to_string()
            };
            return Err(Error::Protocol(format!(
                "{why}; runner stderr: {:?}",
                sandbox.stderr_tail()
            )));
        }
        let result: JobResult = serde_json::from_slice(&answer)
            .map_err(|e| Error::Protocol(format!("result line is not a JobResult: {e}")))?;
        if result.id != job.id {
            return Err(Error::Protocol(format!(
                "result is for job {}, not {}",
                result.id, job.id
            )));
        }
        Ok(result)
    }

    async fn destroy(&self, sandbox: LocalSandbox) {
        self.inner.claimed.fetch_sub(1, Ordering::SeqCst);
        let slot = sandbox.slot;
        self.inner.kill_and_reap(sandbox).await;
        self.inner.release_slot(slot);
    }

    fn stats(&self) -> PoolStats {
        let inner = &self.inner;
        PoolStats {
            ready: inner.ready.lock().map(|q| q.len() as u64).unwrap_or(0),
            claimed: inner.claimed.load(Ordering::SeqCst),
            starting: inner.starting.load(Ordering::SeqCst),
            warm_hits: inner.warm_hits.load(Ordering::SeqCst),
            cold_claims: inner.cold_claims.load(Ordering::SeqCst),
        }
    }

    async fn runtime_versions(&self) -> Result<BTreeMap<String, String>> {
        let (code, out) = self
            .run_runner_command(&["--versions"], VERSIONS_TIMEOUT)
            .await?;
        if code != Some(0) {
            return Err(Error::Protocol(format!(
                "warmpod-runner --versions exited with {code:?}"
            )));
        }
        serde_json::from_str(out.trim()).map_err(|e| {
            Error::Protocol(format!(
                "warmpod-runner --versions printed no version map: {e}"
            ))
        })
    }

    async fn shutdown(&self) {
        let inner = &self.inner;
        if inner.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        inner.ready_changed.notify_waiters();
        inner.closing.notify_waiters();
        inner.refill.notify_one();
        let drained: Vec<_> = inner
            .ready
            .lock()
            .expect("ready queue lock")
            .drain(..)
            .collect();
        for sandbox in drained {
            let slot = sandbox.slot;
            inner.kill_and_reap(sandbox).await;
            inner.release_slot(slot);
        }
        // Sandboxes still starting notice `closed` and destroy themselves;
        // claimed ones are destroyed by their owners. Wait for both, then
        // remove the parent cgroup.
        let deadline = Instant::now() + READY_TIMEOUT + Duration::from_secs(5);
        while (inner.starting.load(Ordering::SeqCst) > 0
            || inner.claimed.load(Ordering::SeqCst) > 0)
            && Instant::now() < deadline
        {
            let freed = inner.refill.notified();
            let _ = tokio::time::timeout(Duration::from_millis(100), freed).await;
        }
        inner.remove_cgroups().await;
    }
}

/// Takes the best ready sandbox for a job of language `key` (see
/// [`mix::pick`]).
fn take_best(
    ready: &mut VecDeque<LocalSandbox>,
    key: Option<&'static str>,
    split: Option<&Split>,
    starting: &[Option<&'static str>],
) -> Option<LocalSandbox> {
    let kinds: Vec<Option<&'static str>> = ready.iter().map(|s| s.prestart).collect();
    ready.remove(mix::pick(&kinds, key, split, starting)?)
}

impl Inner {
    fn take_slot(&self) -> Option<usize> {
        self.free_slots.lock().expect("slot lock").pop()
    }

    fn release_slot(&self, slot: usize) {
        if slot < 2 * self.cfg.pool_size {
            self.free_slots.lock().expect("slot lock").push(slot);
        }
        self.refill.notify_one();
    }

    fn push_ready(&self, sandbox: LocalSandbox) {
        self.ready
            .lock()
            .expect("ready queue lock")
            .push_back(sandbox);
        self.ready_changed.notify_waiters();
    }

    /// How the job mix splits the pool (`None`: nothing is pre-started).
    fn split(&self) -> Option<Split> {
        if self.cfg.prestart_languages.is_empty() {
            return None;
        }
        Some(self.mix.lock().expect("mix lock").split(self.cfg.pool_size))
    }

    /// The kinds of the sandboxes starting now.
    fn starting_kinds(&self) -> Vec<Option<&'static str>> {
        self.starting_kinds
            .lock()
            .map(|k| k.clone())
            .unwrap_or_default()
    }

    /// The kind of sandbox to start next, by the job mix.
    fn next_kind(&self) -> Option<&'static str> {
        let split = self.split()?;
        let ready: Vec<Option<&'static str>> = self
            .ready
            .lock()
            .map(|q| q.iter().map(|s| s.prestart).collect())
            .unwrap_or_default();
        let starting = self.starting_kinds();
        split.next_kind(|kind| {
            ready
                .iter()
                .chain(&starting)
                .filter(|k| **k == kind)
                .count()
        })
    }

    fn ready_and_starting(&self) -> usize {
        self.ready.lock().map(|q| q.len()).unwrap_or(0)
            + self.starting.load(Ordering::SeqCst) as usize
    }

    /// Spawns the bwrap process of `slot` running the runner with `args`;
    /// with `ready_pipe`, bwrap gets a pipe's write end as [`READY_FD`]
    /// and its read end comes back too.
    fn spawn(
        &self,
        slot: usize,
        args: &[&str],
        ready_pipe: bool,
    ) -> Result<(LocalSandbox, Option<pipe::Receiver>)> {
        let io_err = |context: &str| {
            let context = context.to_string();
            move |source| Error::Io { context, source }
        };
        let cgroup = match &self.cgroups {
            Some(m) => Some(
                m.sandbox(&format!("sandbox-{slot}"))
                    .map_err(io_err("creating the sandbox cgroup"))?,
            ),
            None => None,
        };
        let procs = match &cgroup {
            Some(cg) => cg
                .procs_files()
                .map_err(io_err("opening the sandbox cgroup"))?,
            None => Vec::new(),
        };
        let identity = self.per_sandbox_uid.then(|| {
            let id = self.cfg.uid_base + slot as u32;
            Identity { uid: id, gid: id }
        });
        let mut argv = self.bwrap_argv.clone();
        for arg in args {
            argv.push(c_string(arg.as_bytes().to_vec()).map_err(io_err("runner arguments"))?);
        }
        let started = process::start(&self.bwrap_path, &argv, &procs, identity, ready_pipe);
        drop(procs);
        let started = match started {
            Ok(started) => started,
            Err(source) => {
                if let Some(cg) = cgroup {
                    cg.remove();
                }
                return Err(Error::Io {
                    context: "starting bwrap".into(),
                    source,
                });
            }
        };
        let stdout = BufReader::new(started.stdout);
        let stderr_tail = Arc::new(Mutex::new(Vec::new()));
        let (tail, mut stderr) = (stderr_tail.clone(), started.stderr);
        let stderr_task = tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = stderr.read(&mut buf).await {
                if let Ok(mut t) = tail.lock() {
                    t.extend_from_slice(&buf[..n]);
                    let excess = t.len().saturating_sub(STDERR_TAIL_BYTES);
                    t.drain(..excess);
                }
            }
        });
        let sandbox = LocalSandbox {
            slot,
            child: started.process,
            stdin: Some(started.stdin),
            stdout,
            stderr_tail,
            stderr_task: Some(stderr_task),
            cgroup,
            prestart: None,
        };
        Ok((sandbox, started.ready))
    }

    /// Spawns a sandbox (its runner pre-starting `prestart`'s interpreter,
    /// if given) and waits for its runner's ready byte: it can take a job.
    async fn start_sandbox(
        &self,
        slot: usize,
        prestart: Option<&'static str>,
    ) -> Result<LocalSandbox> {
        let fd = READY_FD.to_string();
        let mut args = vec!["--ready-fd", fd.as_str()];
        if let Some(language) = prestart {
            args.extend(["--prestart", language]);
        }
        let (mut sandbox, ready) = self.spawn(slot, &args, true)?;
        sandbox.prestart = prestart;
        let mut ready = ready.ok_or_else(|| Error::Protocol("no readiness pipe".into()))?;
        let mut byte = [0u8; 1];
        let failure = tokio::select! {
            read = ready.read(&mut byte) => match read {
                Ok(1..) => return Ok(sandbox),
                Ok(0) => self.died_before_ready(&mut sandbox).await,
                Err(source) => Error::Io {
                    context: "waiting for the sandbox's ready byte".into(),
                    source,
                },
            },
            () = tokio::time::sleep(READY_TIMEOUT) => Error::Timeout(READY_TIMEOUT),
            () = self.until_closed() => Error::Closed,
        };
        self.kill_and_reap(sandbox).await;
        Err(failure)
    }

    /// The error for a sandbox that closed its readiness pipe without the
    /// byte: every holder of the write end (bwrap, the runner) is gone or
    /// gave up. Waits briefly for its exit status and last stderr.
    async fn died_before_ready(&self, sandbox: &mut LocalSandbox) -> Error {
        let exited = tokio::time::timeout(EXIT_REPORT_GRACE, async {
            let status = sandbox.child.wait().await;
            if let Some(task) = sandbox.stderr_task.take() {
                let _ = task.await;
            }
            status
        })
        .await;
        let stderr = sandbox.stderr_tail();
        match exited {
            Ok(Ok(status)) => Error::Protocol(format!(
                "sandbox exited during start-up ({status}): {stderr}"
            )),
            _ => Error::Protocol(format!(
                "sandbox closed its readiness pipe without the ready byte: {stderr}"
            )),
        }
    }

    /// Resolves once the pool is closed.
    async fn until_closed(&self) {
        loop {
            let closing = self.closing.notified();
            tokio::pin!(closing);
            closing.as_mut().enable();
            if self.closed.load(Ordering::SeqCst) {
                return;
            }
            closing.await;
        }
    }

    /// Kills everything in the sandbox, reaps its bwrap process and waits
    /// until every process that was in it has exited.
    async fn kill_and_reap(&self, mut sandbox: LocalSandbox) {
        let mut members: Vec<u32> = sandbox.pid().map(descendants).unwrap_or_default();
        members.extend(sandbox.cgroup_pids().into_iter().map(|p| p as u32));
        let _ = sandbox.child.start_kill();
        let cgroup = sandbox.cgroup.take();
        if let Some(cg) = cgroup {
            let _ = tokio::task::spawn_blocking(move || cg.remove()).await;
        }
        if let Err(e) = sandbox.child.wait().await {
            tracing::warn!(error = %e, "reaping a sandbox failed");
        }
        // Killed processes leave the cgroup before they finish exiting;
        // wait for them so "destroyed" means gone.
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut pause = Duration::from_micros(200);
        while members.iter().any(|p| running(*p)) {
            if Instant::now() >= deadline {
                tracing::error!(?members, "sandbox processes outlive SIGKILL");
                break;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }

    async fn remove_cgroups(&self) {
        if let Some(m) = self.cgroups.clone() {
            let _ = tokio::task::spawn_blocking(move || m.remove()).await;
        }
    }
}

/// Keeps `pool_size` sandboxes ready or starting, each start in its own
/// task, with back-off after failures.
async fn refill(inner: Arc<Inner>) {
    // Consecutive failed start-ups, and whether one was reported since the
    // last pause: the pause doubles with each failure (0.2 s .. 6.4 s) and
    // resets after a success.
    let mut failures = 0u32;
    let mut pause_due = false;
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<bool>();
    let record = |ok: bool, failures: &mut u32, pause_due: &mut bool| {
        if ok {
            *failures = 0;
        } else {
            *failures += 1;
            *pause_due = true;
        }
    };
    loop {
        while let Ok(ok) = done_rx.try_recv() {
            record(ok, &mut failures, &mut pause_due);
        }
        if inner.closed.load(Ordering::SeqCst) {
            return;
        }
        if pause_due {
            pause_due = false;
            let pause = Duration::from_millis(100 * 2u64.pow(failures.min(6)));
            tracing::warn!(failures, ?pause, "sandbox start-ups failing; backing off");
            tokio::time::sleep(pause).await;
            continue;
        }
        if inner.ready_and_starting() < inner.cfg.pool_size
            && let Some(slot) = inner.take_slot()
        {
            let kind = inner.next_kind();
            inner.starting.fetch_add(1, Ordering::SeqCst);
            inner.starting_kinds.lock().expect("kinds lock").push(kind);
            tokio::spawn(start_one(inner.clone(), slot, kind, done_tx.clone()));
            continue;
        }
        tokio::select! {
            () = inner.refill.notified() => {}
            Some(ok) = done_rx.recv() => record(ok, &mut failures, &mut pause_due),
        }
    }
}

/// Starts the sandbox of `slot` (of `kind`) and adds it to the ready
/// queue; reports success on `done`.
async fn start_one(
    inner: Arc<Inner>,
    slot: usize,
    kind: Option<&'static str>,
    done: tokio::sync::mpsc::UnboundedSender<bool>,
) {
    let started = inner.start_sandbox(slot, kind).await;
    let ok = started.is_ok();
    match started {
        Ok(sandbox) if !inner.closed.load(Ordering::SeqCst) => inner.push_ready(sandbox),
        Ok(sandbox) => {
            inner.kill_and_reap(sandbox).await;
            inner.release_slot(slot);
        }
        Err(e) => {
            if !inner.closed.load(Ordering::SeqCst) {
                tracing::error!(error = %e, slot, "a sandbox failed to start");
            }
            inner.release_slot(slot);
        }
    }
    if let Ok(mut kinds) = inner.starting_kinds.lock()
        && let Some(at) = kinds.iter().position(|k| *k == kind)
    {
        kinds.remove(at);
    }
    inner.starting.fetch_sub(1, Ordering::SeqCst);
    let _ = done.send(ok);
    inner.refill.notify_one();
}

/// Pids of every process below `pid`.
fn descendants(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let mut frontier = vec![pid];
    while let Some(p) = frontier.pop() {
        let children =
            fs::read_to_string(format!("/proc/{p}/task/{p}/children")).unwrap_or_default();
        for c in children.split_whitespace().filter_map(|c| c.parse().ok()) {
            out.push(c);
            frontier.push(c);
        }
    }
    out
}

/// Whether `pid` exists and has not finished exiting (zombies count as
/// gone: they hold no resources but a pid).
fn running(pid: u32) -> bool {
    process_state(pid).is_some_and(|s| s != 'Z' && s != 'X')
}

fn process_state(pid: u32) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) S ...": the state follows the last ')'.
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// `bytes` as a C string for exec.
fn c_string(bytes: Vec<u8>) -> std::io::Result<CString> {
    CString::new(bytes).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
}

/// The bwrap arguments of every sandbox, up to the command.
fn bwrap_args(runtime: &RuntimeDir, tmp_mb: u64) -> Vec<String> {
    let mut a: Vec<String> = Vec::new();
    let mut push = |args: &[&str]| a.extend(args.iter().map(|s| s.to_string()));
    push(&[
        "--unshare-all",
        "--die-with-parent",
        "--new-session",
        "--cap-drop",
        "ALL",
        "--hostname",
        SANDBOX_HOSTNAME,
        "--clearenv",
        "--setenv",
        "PATH",
        SANDBOX_PATH,
        "--setenv",
        "HOME",
        "/tmp",
        "--setenv",
        "TMPDIR",
        "/tmp",
        "--setenv",
        "LANG",
        "C.UTF-8",
        "--ro-bind",
        "/usr",
        "/usr",
    ]);
    for top in ["/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"] {
        match fs::symlink_metadata(top) {
            Ok(m) if m.file_type().is_symlink() => {
                if let Ok(target) = fs::read_link(top) {
                    push(&["--symlink", &target.to_string_lossy(), top]);
                }
            }
            Ok(m) if m.is_dir() => push(&["--ro-bind", top, top]),
            _ => {}
        }
    }
    for etc in runtime_etc_paths() {
        let etc = etc.to_string_lossy();
        push(&["--ro-bind", &etc, &etc]);
    }
    let rt = |name: &str| runtime.path.join(name).to_string_lossy().into_owned();
    push(&["--ro-bind", &rt("passwd"), "/etc/passwd"]);
    push(&["--ro-bind", &rt("group"), "/etc/group"]);
    push(&["--ro-bind", &rt("warmpod-runner"), RUNNER_IN_SANDBOX]);
    push(&["--proc", "/proc", "--dev", "/dev"]);
    let tmp_bytes = (tmp_mb * 1024 * 1024).to_string();
    push(&["--size", &tmp_bytes, "--perms", "1777", "--tmpfs", "/tmp"]);
    push(&[
        "--chdir",
        "/tmp",
        "--remount-ro",
        "/dev",
        "--remount-ro",
        "/",
    ]);
    a
}

/// The few `/etc` entries the runtimes need: `alternatives` (java, cc),
/// the dynamic loader's cache, the JVM's configuration, the time zone.
fn runtime_etc_paths() -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = ["/etc/alternatives", "/etc/ld.so.cache", "/etc/localtime"]
        .iter()
        .map(PathBuf::from)
        .filter(|p| p.exists())
        .collect();
    if let Ok(entries) = fs::read_dir("/etc") {
        let mut java: Vec<PathBuf> = entries
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("java-"))
            .map(|e| e.path())
            .collect();
        java.sort();
        out.extend(java);
    }
    out
}

/// A private, root-owned directory (0755) holding what every sandbox binds
/// read-only: a copy of the runner (the build directory may not be
/// reachable by sandbox uids) and minimal `/etc/passwd` and `/etc/group`.
struct RuntimeDir {
    path: PathBuf,
}

impl RuntimeDir {
    fn create(cfg: &LocalConfig, slots: usize, per_sandbox_uid: bool) -> std::io::Result<Self> {
        remove_stale_runtime_dirs();
        let path = std::env::temp_dir().join(format!(
            "warmpod-pm-{}-{}",
            std::process::id(),
            Uuid::new_v4().simple()
        ));
        fs::DirBuilder::new().mode(0o755).create(&path)?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755))?;
        let dir = Self { path };
        let runner = dir.path.join("warmpod-runner");
        fs::copy(&cfg.runner_path, &runner)?;
        fs::set_permissions(&runner, fs::Permissions::from_mode(0o755))?;
        let mut passwd = String::from("root:x:0:0:root:/nonexistent:/usr/sbin/nologin\n");
        let mut group = String::from("root:x:0:\n");
        let ids: Vec<u32> = if per_sandbox_uid {
            (0..slots as u32).map(|i| cfg.uid_base + i).collect()
        } else {
            vec![nix::unistd::geteuid().as_raw()]
        };
        for id in ids {
            passwd.push_str(&format!(
                "sandbox:x:{id}:{id}:sandbox:/tmp:/usr/sbin/nologin\n"
            ));
            group.push_str(&format!("sandbox:x:{id}:\n"));
        }
        passwd.push_str("nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n");
        group.push_str("nogroup:x:65534:\n");
        for (name, text) in [("passwd", passwd), ("group", group)] {
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .open(dir.path.join(name))?;
            f.write_all(text.as_bytes())?;
        }
        Ok(dir)
    }
}

/// Removes runtime directories (`warmpod-pm-<pid>-<uuid>`) of pod-managers
/// that died without cleaning up (SIGKILL).
fn remove_stale_runtime_dirs() {
    let Ok(entries) = fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("warmpod-pm-"))
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(pid, _)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(meta) = fs::symlink_metadata(entry.path()) else {
            continue;
        };
        let ours = meta.is_dir() && meta.uid() == nix::unistd::geteuid().as_raw();
        if ours && !PathBuf::from(format!("/proc/{pid}")).exists() {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

impl Drop for RuntimeDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

impl std::fmt::Debug for LocalPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalPool")
            .field("stats", &self.stats())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sandbox_has_no_network_and_a_read_only_root() {
        let rt = RuntimeDir {
            path: PathBuf::from("/nonexistent-test-dir"),
        };
        let args = bwrap_args(&rt, 64);
        std::mem::forget(rt);
        for needed in [
            "--unshare-all",
            "--die-with-parent",
            "--new-session",
            "--clearenv",
        ] {
            assert!(args.iter().any(|a| a == needed), "missing {needed}");
        }
        assert!(!args.iter().any(|a| a == "--share-net"));
        assert_eq!(args[args.len() - 2..], ["--remount-ro", "/"]);
        for forbidden in ["/root", "/home", "/work", "/var", "/run"] {
            assert!(!args.iter().any(|a| a == forbidden), "{forbidden} is bound");
        }
        assert!(
            !args.iter().any(|a| a == "/etc"),
            "the host's /etc is bound"
        );
    }

    #[test]
    fn process_state_reads_our_own() {
        let mine = process_state(std::process::id());
        assert!(mine.is_some_and(|s| "RS".contains(s)), "{mine:?}");
        assert_eq!(process_state(u32::MAX), None);
    }
}
