//! The pool's own behaviour: warm and cold claims, hung sandboxes,
//! shutdown clean-up.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use pod_manager::pool::{self, LocalPool, WarmPool};
use warmpod_protocol::{Limits, Status};

use crate::helpers::{
    alive, cgroups_of, descendants, fake_runner, job, test_config, unique_prefix, wait_until,
};

#[tokio::test]
async fn an_empty_pool_makes_the_claim_wait_not_fail() {
    crate::helpers::init_logs();
    let cfg = test_config(&unique_prefix(), &[("WARMPOD_POOL_SIZE", "1")]);
    let pool = LocalPool::start(cfg.local).await.unwrap();
    let a = job("python", "print('a')");
    let b = job("python", "print('b')");
    let first = pool.claim(a.id).await.unwrap();
    assert!(first.warm, "a ready sandbox was there");
    let second = pool.claim(b.id).await.unwrap();
    assert!(!second.warm, "the pool was empty: a cold claim");
    let stats = pool.stats();
    assert_eq!(
        (stats.warm_hits, stats.cold_claims, stats.claimed),
        (1, 1, 2)
    );

    for (j, mut c, want) in [(a, first, "a"), (b, second, "b")] {
        let r = pool.run(&mut c.sandbox, &j).await.unwrap();
        assert_eq!(
            (r.status, r.stdout.trim()),
            (Status::Accepted, want),
            "{r:?}"
        );
        pool.destroy(c.sandbox).await;
    }
    assert_eq!(pool.stats().claimed, 0);
    pool.shutdown().await;
}

#[tokio::test]
async fn a_sandbox_dying_before_ready_is_reported_not_hung() {
    crate::helpers::init_logs();
    // A runner too old for --ready-fd: it refuses the flag and exits
    // without the ready byte (its end of the pipe closes with it).
    let dir = tempfile::tempdir().unwrap();
    let old = dir.path().join("warmpod-runner");
    std::fs::write(
        &old,
        "#!/usr/bin/bash\necho \"error: unexpected argument '$1' found\" >&2\nexit 64\n",
    )
    .unwrap();
    std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o755)).unwrap();
    let cfg = test_config(
        &unique_prefix(),
        &[
            ("WARMPOD_POOL_SIZE", "1"),
            ("WARMPOD_RUNNER_PATH", old.to_str().unwrap()),
        ],
    );
    let err = LocalPool::start(cfg.local).await.unwrap_err();
    let pool::local::StartError::FirstSandbox(pool::Error::Protocol(message)) = &err else {
        panic!("not reported as a failed start: {err:?}");
    };
    assert!(message.contains("exited during start-up"), "{message}");
    assert!(message.contains("exit status: 64"), "{message}");
    assert!(
        message.contains("unexpected argument '--ready-fd' found"),
        "the runner's stderr is in the report: {message}"
    );
}

#[tokio::test]
async fn a_silent_sandbox_times_out_and_is_destroyed() {
    crate::helpers::init_logs();
    let dir = tempfile::tempdir().unwrap();
    let fake = fake_runner(dir.path(), "read -r line\nexec /usr/bin/sleep 1000\n");
    let cfg = test_config(
        &unique_prefix(),
        &[
            ("WARMPOD_POOL_SIZE", "1"),
            ("WARMPOD_RUNNER_PATH", fake.to_str().unwrap()),
            ("WARMPOD_JOB_GRACE_MS", "300"),
        ],
    );
    let pool = LocalPool::start(cfg.local).await.unwrap();
    let mut j = job("python", "print(1)");
    j.limits = Limits {
        wall_time_ms: Some(200),
        ..Limits::default()
    };
    let mut claimed = pool.claim(j.id).await.unwrap();
    let inside = claimed.sandbox.cgroup_pids();
    let err = pool.run(&mut claimed.sandbox, &j).await.unwrap_err();
    assert!(matches!(err, pool::Error::Timeout(_)), "{err}");
    pool.destroy(claimed.sandbox).await;
    for pid in inside {
        assert!(!alive(pid as u32), "pid {pid} of the hung sandbox survived");
    }
    pool.shutdown().await;
}

#[tokio::test]
async fn a_runner_without_an_answer_is_a_protocol_error() {
    crate::helpers::init_logs();
    let dir = tempfile::tempdir().unwrap();
    let fake = fake_runner(dir.path(), "read -r line\necho 'not json'\n");
    let cfg = test_config(
        &unique_prefix(),
        &[
            ("WARMPOD_POOL_SIZE", "1"),
            ("WARMPOD_RUNNER_PATH", fake.to_str().unwrap()),
        ],
    );
    let pool = LocalPool::start(cfg.local).await.unwrap();
    let j = job("python", "print(1)");
    let mut claimed = pool.claim(j.id).await.unwrap();
    let err = pool.run(&mut claimed.sandbox, &j).await.unwrap_err();
    assert!(matches!(err, pool::Error::Protocol(_)), "{err}");
    pool.destroy(claimed.sandbox).await;
    pool.shutdown().await;
}

#[tokio::test]
async fn shutdown_leaves_no_process_or_cgroup_behind() {
    crate::helpers::init_logs();
    let cfg = test_config(&unique_prefix(), &[("WARMPOD_POOL_SIZE", "3")]);
    let pool = LocalPool::start(cfg.local).await.unwrap();
    wait_until("three ready sandboxes", Duration::from_secs(30), || {
        pool.stats().ready == 3
    })
    .await;
    let me = std::process::id();
    let sandboxes: Vec<u32> = pool
        .ready_pids()
        .into_iter()
        .flat_map(|p| std::iter::once(p).chain(descendants(p)))
        .collect();
    assert!(
        sandboxes.len() >= 9,
        "bwrap, its init and the runner per sandbox: {sandboxes:?}"
    );
    let had_cgroups = !cgroups_of(me as i32).is_empty();
    // Each sandbox sits in its own cgroup with the configured limits.
    let mut limited = 0;
    for parent in cgroups_of(me as i32) {
        for sandbox in std::fs::read_dir(&parent).unwrap().flatten() {
            let dir = sandbox.path();
            if !dir.is_dir() {
                continue;
            }
            assert!(
                !std::fs::read_to_string(dir.join("cgroup.procs"))
                    .unwrap()
                    .trim()
                    .is_empty(),
                "empty sandbox cgroup {}",
                dir.display()
            );
            for (file, want) in [
                ("memory.limit_in_bytes", (3072u64 << 20).to_string()),
                ("memory.max", (3072u64 << 20).to_string()),
                ("pids.max", "1024".to_string()),
            ] {
                if let Ok(got) = std::fs::read_to_string(dir.join(file)) {
                    assert_eq!(got.trim(), want, "{}/{file}", dir.display());
                    limited += 1;
                }
            }
        }
    }
    assert!(
        !had_cgroups || limited >= 3,
        "no limits found in the sandbox cgroups"
    );
    pool.shutdown().await;
    for pid in sandboxes {
        assert!(!alive(pid), "sandbox process {pid} survived shutdown");
    }
    assert!(
        cgroups_of(me as i32).is_empty(),
        "cgroups left: {:?}",
        cgroups_of(me as i32)
    );
    if !had_cgroups {
        eprintln!("note: no writable cgroups here; only processes were checked");
    }
    let err = pool.claim(uuid::Uuid::new_v4()).await.unwrap_err();
    assert!(matches!(err, pool::Error::Closed), "{err}");
}

/// Claims, runs and destroys `n` jobs of `language` (Python or
/// JavaScript); checks each result.
async fn run_jobs(pool: &LocalPool, language: &str, n: usize) -> Vec<&'static str> {
    let mut kinds = Vec::new();
    for i in 0..n {
        let print = if language == "javascript" {
            "console.log"
        } else {
            "print"
        };
        let j = job(language, &format!("{print}({i})"));
        let mut claimed = pool.claim_for(j.id, language).await.unwrap();
        kinds.push(claimed.kind());
        let r = pool.run(&mut claimed.sandbox, &j).await.unwrap();
        assert_eq!(
            (r.status, r.stdout.trim()),
            (Status::Accepted, &*i.to_string()),
            "{r:?}"
        );
        pool.destroy(claimed.sandbox).await;
    }
    kinds
}

#[tokio::test]
async fn python_demand_gets_sandboxes_with_python_pre_started() {
    crate::helpers::init_logs();
    let cfg = test_config(
        &unique_prefix(),
        &[
            ("WARMPOD_POOL_SIZE", "2"),
            ("WARMPOD_PRESTART_LANGUAGES", "python"),
        ],
    );
    let pool = LocalPool::start(cfg.local).await.unwrap();
    assert_eq!(pool.ready_kinds(), [None], "no demand seen: generic");
    run_jobs(&pool, "python", 12).await;
    wait_until(
        "a python sandbox and a generic one are ready",
        Duration::from_secs(60),
        || {
            let mut kinds = pool.ready_kinds();
            kinds.sort_unstable();
            kinds == [None, Some("python")]
        },
    )
    .await;
    // A Python job takes the specialised sandbox; its program runs as
    // `python3 -B main.py <args>` would.
    let mut j = job("python", "import sys\nprint(sys.argv)");
    j.args = vec!["a".into(), "b c".into()];
    let mut claimed = pool.claim_for(j.id, "py").await.unwrap();
    assert_eq!(claimed.kind(), "specialised");
    assert_eq!(claimed.sandbox.prestarted(), Some("python"));
    let r = pool.run(&mut claimed.sandbox, &j).await.unwrap();
    assert_eq!(
        (r.status, r.stdout.as_str()),
        (Status::Accepted, "['main.py', 'a', 'b c']\n"),
        "{r:?}"
    );
    pool.destroy(claimed.sandbox).await;
    // Another language takes the generic one, at once.
    let b = job("bash", "echo $((6 * 7))");
    let mut claimed = pool.claim_for(b.id, "bash").await.unwrap();
    assert_eq!(claimed.kind(), "generic");
    assert_eq!(claimed.sandbox.prestarted(), None);
    let r = pool.run(&mut claimed.sandbox, &b).await.unwrap();
    assert_eq!(
        (r.status, r.stdout.as_str()),
        (Status::Accepted, "42\n"),
        "{r:?}"
    );
    pool.destroy(claimed.sandbox).await;
    pool.shutdown().await;
}

#[tokio::test]
async fn javascript_demand_gets_sandboxes_with_node_pre_started() {
    crate::helpers::init_logs();
    let cfg = test_config(
        &unique_prefix(),
        &[
            ("WARMPOD_POOL_SIZE", "2"),
            ("WARMPOD_PRESTART_LANGUAGES", "python,javascript"),
        ],
    );
    let pool = LocalPool::start(cfg.local).await.unwrap();
    run_jobs(&pool, "javascript", 12).await;
    wait_until(
        "a javascript sandbox and a generic one are ready",
        Duration::from_secs(60),
        || {
            let mut kinds = pool.ready_kinds();
            kinds.sort_unstable();
            kinds == [None, Some("javascript")]
        },
    )
    .await;
    // Inside bubblewrap the program runs as `node main.js <args>` would,
    // in the job's directory, with the bootstrap file beside it.
    let code = "const fs = require('fs');\n\
                console.log(JSON.stringify([process.argv.slice(1), process.execArgv, __filename === process.cwd() + '/main.js', fs.readdirSync('.'), fs.readdirSync('/tmp').length]));";
    let mut j = job("javascript", code);
    j.args = vec!["a".into(), "b c".into()];
    let mut claimed = pool.claim_for(j.id, "node").await.unwrap();
    assert_eq!(claimed.kind(), "specialised");
    assert_eq!(claimed.sandbox.prestarted(), Some("javascript"));
    let r = pool.run(&mut claimed.sandbox, &j).await.unwrap();
    let main = r
        .stdout
        .split('"')
        .nth(1)
        .expect("the main path first")
        .to_string();
    assert!(
        main.starts_with(&format!("/tmp/warmpod-{}-", j.id)) && main.ends_with("/main.js"),
        "{r:?}"
    );
    let expected = format!(
        "[[\"{main}\",\"a\",\"b c\"],[\"--max-old-space-size=256\"],true,[\"main.js\"],2]\n"
    );
    assert_eq!(r.stdout, expected, "{r:?}");
    assert_eq!(r.status, Status::Accepted, "{r:?}");
    pool.destroy(claimed.sandbox).await;
    pool.shutdown().await;
}

#[tokio::test]
async fn a_job_never_waits_for_its_kind_and_runs_in_another_languages_sandbox() {
    crate::helpers::init_logs();
    let cfg = test_config(
        &unique_prefix(),
        &[
            ("WARMPOD_POOL_SIZE", "1"),
            ("WARMPOD_PRESTART_LANGUAGES", "python"),
        ],
    );
    let pool = LocalPool::start(cfg.local).await.unwrap();
    run_jobs(&pool, "python", 20).await;
    wait_until(
        "the one ready sandbox has python pre-started",
        Duration::from_secs(60),
        || pool.ready_kinds() == [Some("python")],
    )
    .await;
    let b = job("bash", "echo cold in a python sandbox");
    let mut claimed = pool.claim_for(b.id, "bash").await.unwrap();
    assert_eq!(claimed.kind(), "generic", "served at once, not specialised");
    assert_eq!(claimed.sandbox.prestarted(), Some("python"));
    let r = pool.run(&mut claimed.sandbox, &b).await.unwrap();
    assert_eq!(
        (r.status, r.stdout.as_str()),
        (Status::Accepted, "cold in a python sandbox\n"),
        "{r:?}"
    );
    pool.destroy(claimed.sandbox).await;
    pool.shutdown().await;
}
