//! The cgroup module on this host's hierarchies, outside any sandbox.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use pod_manager::cgroup::{CgroupManager, Limits};

use crate::helpers::{alive, cgroups_of, wait_until};

const LIMITS: Limits = Limits {
    memory_bytes: 256 << 20,
    pids_max: 64,
};

/// Starts `sleep` processes inside `cgroup` (a shell joins it, then forks).
fn populate(dirs: &[std::path::PathBuf]) -> std::process::Child {
    let join: String = dirs
        .iter()
        .map(|d| format!("echo $$ > {}/cgroup.procs && ", d.display()))
        .collect();
    std::process::Command::new("/usr/bin/bash")
        .arg("-c")
        .arg(format!(
            "{join} (setsid /usr/bin/sleep 1000 &) ; /usr/bin/sleep 1000 & wait"
        ))
        .stdout(Stdio::null())
        .spawn()
        .unwrap()
}

async fn kills_everything_and_removes_itself(mount: &Path) {
    let me = std::process::id() as i32;
    let manager = CgroupManager::create_at(mount, LIMITS).expect("cgroups are writable here");
    let sandbox = manager.sandbox("sandbox-test").unwrap();
    let mut shell = populate(sandbox.paths());
    wait_until(
        "three processes in the cgroup",
        Duration::from_secs(30),
        || sandbox.pids().len() >= 3,
    )
    .await;
    let members = sandbox.pids();
    sandbox.remove();
    shell.wait().unwrap();
    for pid in &members {
        wait_until("killed members to exit", Duration::from_secs(30), || {
            !alive(*pid as u32)
        })
        .await;
    }
    for dir in sandbox.paths() {
        assert!(!dir.exists(), "{} left behind", dir.display());
    }
    manager.remove();
    assert!(cgroups_of(me).is_empty(), "{:?}", cgroups_of(me));
}

#[tokio::test]
async fn the_hosts_cgroups_kill_everything_and_are_removed() {
    kills_everything_and_removes_itself(Path::new("/sys/fs/cgroup")).await;
}

/// Exercises the v2 code path where this host has a v2 hierarchy beside v1
/// (`/sys/fs/cgroup/unified`, no controllers: cleanup-only cgroups). On a
/// plain v2 host the test above already runs the v2 path.
#[tokio::test]
async fn a_v2_hierarchy_without_controllers_still_kills_and_cleans_up() {
    let unified = Path::new("/sys/fs/cgroup/unified");
    let mount = if unified.join("cgroup.controllers").exists() {
        unified
    } else {
        Path::new("/sys/fs/cgroup")
    };
    let manager = CgroupManager::create_at(mount, LIMITS).expect("a v2 hierarchy is writable");
    if mount == unified {
        assert!(
            !manager.has_limits(),
            "no controllers in the unified hierarchy"
        );
    }
    manager.remove();
    kills_everything_and_removes_itself(mount).await;
}
