//! Isolation of one sandbox, seen from the program inside.

use std::time::Duration;

use pod_manager::pool::{LocalPool, WarmPool};
use serde_json::Value;
use warmpod_protocol::{JobResult, Status};

use crate::helpers::{alive, descendants, job, test_config, unique_prefix, wait_until};

async fn pool(size: &str) -> LocalPool {
    crate::helpers::init_logs();
    let cfg = test_config(&unique_prefix(), &[("WARMPOD_POOL_SIZE", size)]);
    LocalPool::start(cfg.local)
        .await
        .expect("local pool starts")
}

/// Runs a Python program in a fresh sandbox and returns its result.
async fn run_python(pool: &LocalPool, source: &str) -> JobResult {
    let j = job("python", source);
    let mut claimed = pool.claim(j.id).await.unwrap();
    let result = pool
        .run(&mut claimed.sandbox, &j)
        .await
        .expect("sandbox answers");
    pool.destroy(claimed.sandbox).await;
    result
}

/// Runs a Python program printing one JSON value and parses it.
async fn probe(pool: &LocalPool, source: &str) -> Value {
    let r = run_python(pool, source).await;
    assert_eq!(r.status, Status::Accepted, "probe failed: {r:?}");
    serde_json::from_str(r.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {:?}", r.stdout))
}

/// The host uid of process `pid` (all four of real, effective, saved, fs).
fn host_uids(pid: u32) -> Vec<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    line.split_whitespace()
        .skip(1)
        .map(|u| u.parse().unwrap())
        .collect()
}

#[tokio::test]
async fn every_sandbox_process_is_in_its_cgroup_as_its_own_uid() {
    assert!(nix::unistd::geteuid().is_root(), "this test needs root");
    let pool = pool("2").await;
    let (mut uids, mut held) = (Vec::new(), Vec::new());
    for _ in 0..2 {
        let claimed = pool.claim(uuid::Uuid::new_v4()).await.unwrap();
        let bwrap = claimed.sandbox.pid().expect("running");
        let members = claimed.sandbox.cgroup_pids();
        let processes: Vec<u32> = std::iter::once(bwrap).chain(descendants(bwrap)).collect();
        assert!(processes.len() >= 2, "bwrap and the runner: {processes:?}");
        for p in &processes {
            assert!(members.contains(&(*p as i32)), "{p} not in {members:?}");
            let ids = host_uids(*p);
            assert!(
                ids.iter().all(|u| *u == ids[0] && *u >= 62_000),
                "{p}: {ids:?}"
            );
        }
        uids.push(host_uids(bwrap)[0]);
        // Held until the end, so the next claim gets another slot.
        held.push(claimed.sandbox);
    }
    assert_ne!(uids[0], uids[1], "two sandboxes share a uid");
    for sandbox in held {
        pool.destroy(sandbox).await;
    }
    pool.shutdown().await;
}

#[tokio::test]
async fn cannot_reach_host_ports_on_loopback() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let pool = pool("1").await;
    let got = probe(
        &pool,
        &format!(
            r#"
import json, socket
out = {{}}
for port in (5672, {port}):
    s = socket.socket()
    s.settimeout(3)
    try:
        s.connect(("127.0.0.1", port))
        out[str(port)] = "connected"
    except OSError as e:
        out[str(port)] = "error %s" % e.errno
ifaces = [l.split(":")[0].strip() for l in open("/proc/net/dev").read().splitlines()[2:]]
out["ifaces"] = ifaces
print(json.dumps(out))
"#
        ),
    )
    .await;
    for p in ["5672".to_string(), port.to_string()] {
        assert_ne!(got[&p], "connected", "reached host port {p}: {got}");
    }
    assert_eq!(got["ifaces"], serde_json::json!(["lo"]), "{got}");
    assert!(listener.accept().is_err(), "the host listener was reached");
    pool.shutdown().await;
}

#[tokio::test]
async fn cannot_read_host_secrets_or_workspaces() {
    let pool = pool("1").await;
    let got = probe(
        &pool,
        r#"
import json, os
out = {}
for p in ["/root", "/work", "/home", "/var", "/run", "/etc/shadow", "/etc/hostname", "/etc/os-release"]:
    try:
        if os.path.isdir(p):
            os.listdir(p)
        else:
            open(p).read()
        out[p] = "readable"
    except OSError as e:
        out[p] = "error %s" % e.errno
out["env"] = sorted(os.environ)
print(json.dumps(out))
"#,
    )
    .await;
    for p in [
        "/root",
        "/work",
        "/home",
        "/var",
        "/run",
        "/etc/shadow",
        "/etc/hostname",
    ] {
        assert_ne!(got[p], "readable", "{p} is readable: {got}");
    }
    let env = got["env"].to_string();
    for leak in ["AMQP", "WARMPOD", "CARGO", "RUST"] {
        assert!(!env.contains(leak), "{leak} variables leak in: {env}");
    }
    pool.shutdown().await;
}

#[tokio::test]
async fn sees_only_its_own_processes() {
    let pool = pool("1").await;
    let got = probe(
        &pool,
        r#"
import json, os
procs = {}
for p in os.listdir("/proc"):
    if p.isdigit():
        try:
            procs[p] = open("/proc/%s/comm" % p).read().strip()
        except OSError:
            pass
print(json.dumps(procs))
"#,
    )
    .await;
    let procs = got.as_object().unwrap();
    assert!(procs.len() <= 6, "too many processes visible: {got}");
    assert_eq!(procs["1"], "bwrap", "{got}");
    for comm in procs.values() {
        let comm = comm.as_str().unwrap();
        assert!(
            ["bwrap", "warmpod-runner", "python3"].contains(&comm),
            "foreign process {comm} visible: {got}"
        );
    }
    pool.shutdown().await;
}

#[tokio::test]
async fn writes_only_to_its_work_dir_and_tmp() {
    let pool = pool("1").await;
    let got = probe(
        &pool,
        r#"
import json, os
out = {}
for p in ["x", "/tmp/x", "/x", "/usr/x", "/etc/x", "/opt/x", "/opt/warmpod/x", "/dev/x", "/dev/shm/x", "/proc/x", "/bin/x"]:
    try:
        with open(p, "w") as f:
            f.write("x")
        out[p] = "written"
    except OSError as e:
        out[p] = "error %s" % e.errno
print(json.dumps(out))
"#,
    )
    .await;
    assert_eq!(got["x"], "written", "work dir not writable: {got}");
    assert_eq!(got["/tmp/x"], "written", "/tmp not writable: {got}");
    for (path, outcome) in got.as_object().unwrap() {
        if path != "x" && path != "/tmp/x" {
            assert_ne!(outcome, "written", "{path} is writable: {got}");
        }
    }
    pool.shutdown().await;
}

#[tokio::test]
async fn nothing_of_a_job_survives_into_the_next() {
    let pool = pool("1").await;
    let first = job(
        "python",
        r#"
import subprocess
open("/tmp/leftover", "w").write("secret")
open("leftover", "w").write("secret")
subprocess.Popen(["/usr/bin/sleep", "1000"], start_new_session=True,
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
print("planted")
"#,
    );
    let mut claimed = pool.claim(first.id).await.unwrap();
    let r = pool.run(&mut claimed.sandbox, &first).await.unwrap();
    assert_eq!(r.stdout.trim(), "planted", "{r:?}");
    let inside = claimed.sandbox.cgroup_pids();
    let bwrap = claimed.sandbox.pid().unwrap();
    pool.destroy(claimed.sandbox).await;
    assert!(!alive(bwrap), "the sandbox process survived destroy");
    for pid in inside {
        assert!(
            !alive(pid as u32),
            "process {pid} of the sandbox survived destroy"
        );
    }

    let got = probe(
        &pool,
        r#"
import json, os
comms = []
for p in os.listdir("/proc"):
    if p.isdigit():
        try:
            comms.append(open("/proc/%s/comm" % p).read().strip())
        except OSError:
            pass
print(json.dumps({
    "tmp": os.path.exists("/tmp/leftover"),
    "cwd": os.path.exists("leftover"),
    "tmp_listing": os.listdir("/tmp"),
    "sleep": "sleep" in comms,
}))
"#,
    )
    .await;
    assert_eq!(got["tmp"], false, "{got}");
    assert_eq!(got["cwd"], false, "{got}");
    assert_eq!(got["sleep"], false, "the daemon survived: {got}");
    pool.shutdown().await;
}

#[tokio::test]
async fn kill_minus_one_inside_kills_only_the_sandbox() {
    let mut sentinel = std::process::Command::new("/usr/bin/sleep")
        .arg("60")
        .spawn()
        .unwrap();
    let pool = pool("2").await;
    wait_until("two ready sandboxes", Duration::from_secs(30), || {
        pool.stats().ready == 2
    })
    .await;
    let bomb = job("bash", "kill -9 -1\necho survived");
    let mut claimed = pool.claim(bomb.id).await.unwrap();
    // The runner shares the program's uid inside, so it may die too: then
    // the sandbox answers nothing, which the consumer reports as an
    // infrastructure failure. Either way nothing outside may be hit.
    let _ = pool.run(&mut claimed.sandbox, &bomb).await;
    pool.destroy(claimed.sandbox).await;

    assert!(
        sentinel.try_wait().unwrap().is_none(),
        "a host process was killed"
    );
    // The other sandbox, started before, still works.
    let r = crate::sandbox::run_python(&pool, "print('alive')").await;
    assert_eq!(r.stdout.trim(), "alive", "{r:?}");
    sentinel.kill().unwrap();
    sentinel.wait().unwrap();
    pool.shutdown().await;
}

#[tokio::test]
async fn every_language_runs_inside_a_sandbox() {
    let pool = pool("1").await;
    let (code, out) = pool
        .run_runner_command(&["--check"], Duration::from_secs(120))
        .await
        .unwrap();
    assert_eq!(code, Some(0), "warmpod-runner --check failed inside: {out}");
    let programs = [
        ("python", "print('hi python')"),
        ("javascript", "console.log('hi javascript')"),
        ("bash", "echo hi bash"),
        (
            "c",
            "#include <stdio.h>\nint main(void) { puts(\"hi c\"); return 0; }",
        ),
        (
            "cpp",
            "#include <iostream>\nint main() { std::cout << \"hi cpp\" << std::endl; }",
        ),
        (
            "java",
            "public class Main { public static void main(String[] a) { System.out.println(\"hi java\"); } }",
        ),
    ];
    for (lang, source) in programs {
        let j = job(lang, source);
        let mut claimed = pool.claim(j.id).await.unwrap();
        let r = pool.run(&mut claimed.sandbox, &j).await.unwrap();
        pool.destroy(claimed.sandbox).await;
        assert_eq!(
            (r.status, r.stdout.trim()),
            (Status::Accepted, format!("hi {lang}").as_str()),
            "{lang}: {r:?}"
        );
    }
    let versions = pool.runtime_versions().await.unwrap();
    for lang in ["python", "javascript", "c", "cpp", "java", "bash"] {
        assert!(
            versions.get(lang).is_some_and(|v| !v.is_empty()),
            "{lang} missing: {versions:?}"
        );
    }
    pool.shutdown().await;
}

/// A pool whose cgroup limits are far below what the job may ask for, so
/// the cgroup (not the runner) stops the program.
async fn tight_pool(memory_mb: &str, pids: &str) -> LocalPool {
    crate::helpers::init_logs();
    let cfg = test_config(
        &unique_prefix(),
        &[
            ("WARMPOD_POOL_SIZE", "1"),
            ("WARMPOD_SANDBOX_MEMORY_MB", memory_mb),
            ("WARMPOD_SANDBOX_PIDS_MAX", pids),
        ],
    );
    LocalPool::start(cfg.local)
        .await
        .expect("local pool starts")
}

/// Runs `j`, destroys the sandbox and checks nothing of it is left.
async fn run_and_destroy(pool: &LocalPool, j: &warmpod_protocol::Job) -> Option<JobResult> {
    let mut claimed = pool.claim(j.id).await.unwrap();
    let result = pool.run(&mut claimed.sandbox, j).await.ok();
    let inside = claimed.sandbox.cgroup_pids();
    pool.destroy(claimed.sandbox).await;
    for pid in inside {
        assert!(!alive(pid as u32), "process {pid} survived destroy");
    }
    result
}

#[tokio::test]
async fn the_cgroup_memory_limit_is_the_outer_net() {
    let pool = tight_pool("96", "1024").await;
    if pool.stats().ready == 0 {
        wait_until("a ready sandbox", Duration::from_secs(30), || {
            pool.stats().ready > 0
        })
        .await;
    }
    let mut j = job(
        "python",
        "b = []\nfor _ in range(40):\n    b.append(bytearray(16 * 1024 * 1024))\nprint('allocated', len(b))",
    );
    j.limits.memory_kb = Some(1_048_576);
    let r = run_and_destroy(&pool, &j).await;
    eprintln!(
        "outcome: {:?}",
        r.as_ref().map(|r| (r.status, r.signal, &r.message))
    );
    if let Some(r) = &r {
        assert_ne!(
            r.status,
            Status::Accepted,
            "640 MiB fit in a 96 MiB cgroup: {r:?}"
        );
    }
    // The pool goes on with fresh sandboxes.
    let ok = run_python(&pool, "print('next')").await;
    assert_eq!(ok.stdout.trim(), "next", "{ok:?}");
    pool.shutdown().await;
}

#[tokio::test]
async fn a_fork_bomb_is_capped_by_the_cgroup_and_fully_killed() {
    let pool = tight_pool("3072", "48").await;
    let mut j = job("bash", "bomb() { bomb | bomb & }; bomb\nsleep 5");
    j.limits.max_processes = Some(512);
    j.limits.wall_time_ms = Some(2_000);
    let r = run_and_destroy(&pool, &j).await;
    eprintln!(
        "outcome: {:?}",
        r.as_ref().map(|r| (r.status, r.signal, &r.message))
    );
    if let Some(r) = &r {
        assert_ne!(r.status, Status::Accepted, "{r:?}");
    }
    let ok = run_python(&pool, "print('next')").await;
    assert_eq!(ok.stdout.trim(), "next", "{ok:?}");
    pool.shutdown().await;
}
