//! The janitor deletes claimed pods left by a crashed manager, and nothing
//! else.

use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use pod_manager::pool::WarmPool;
use pod_manager::pool::kube::KubeMetrics;
use pod_manager::pool::kube::janitor::Janitor;
use serde_json::json;

use crate::fake_api::FakeOptions;
use crate::helpers::{client, config, fake, pool};

fn claimed_pod(name: &str, pool: &str, claimed_at: Timestamp) -> serde_json::Value {
    json!({
        "metadata": {
            "name": name,
            "labels": {"app.kubernetes.io/name": "warmpod-standby", "warmpod.io/pool": pool,
                       "warmpod.io/state": "claimed", "warmpod.io/job": "j", "warmpod.io/claimed-by": "dead-manager"},
            "annotations": {"warmpod.io/claimed-at": claimed_at.to_string()},
        },
        "spec": {"containers": [{"name": "runner"}]},
        "status": {"phase": "Running"},
    })
}

#[tokio::test]
async fn abandoned_claimed_pods_are_deleted_and_others_kept() {
    // Arrange
    let fake = fake(FakeOptions {
        replicas: 1,
        ..FakeOptions::default()
    })
    .await;
    let pool_name = fake.options().pool.clone();
    let hour_ago = Timestamp::now() - SignedDuration::from_hours(1);
    fake.insert_pod(claimed_pod("old-claimed", &pool_name, hour_ago));
    fake.insert_pod(claimed_pod("young-claimed", &pool_name, Timestamp::now()));
    fake.insert_pod(claimed_pod("other-pool", "another-pool", hour_ago));
    let mut cfg = config(&fake, "manager-1");
    cfg.janitor_max_age = Duration::from_secs(300);
    let pods = kube::Api::namespaced(client(&fake), &cfg.namespace);
    let janitor = Janitor::new(pods, &cfg, KubeMetrics::default());

    // Act
    let deleted = janitor.sweep().await.expect("sweep");

    // Assert
    assert_eq!(deleted, ["old-claimed"]);
    fake.with(|st| {
        assert!(!st.pods.contains_key("old-claimed"));
        assert!(
            st.pods.contains_key("young-claimed"),
            "a job may still run there"
        );
        assert!(st.pods.contains_key("other-pool"), "not our pool");
    });
    let standby = fake.with(|st| crate::fake_api::pods_in_state(st, "standby").len());
    assert_eq!(standby, 1, "standby pods untouched");
}

#[tokio::test]
async fn a_crashed_managers_claim_is_cleaned_up() {
    // Arrange: a manager claims a pod and "crashes" (never destroys it).
    let fake = fake(FakeOptions {
        replicas: 1,
        ..FakeOptions::default()
    })
    .await;
    let (crashed, _) = pool(&fake, "manager-crashed").await;
    let leftover = crashed.claim(uuid::Uuid::new_v4()).await.unwrap().sandbox;
    let name = leftover.name().to_owned();
    std::mem::forget(leftover);
    drop(crashed);
    let mut cfg = config(&fake, "manager-2");
    cfg.janitor_max_age = Duration::ZERO;
    let janitor = Janitor::new(
        kube::Api::namespaced(client(&fake), &cfg.namespace),
        &cfg,
        KubeMetrics::default(),
    );

    // Act
    let deleted = janitor.sweep().await.unwrap();

    // Assert
    assert_eq!(deleted, std::slice::from_ref(&name));
    assert!(fake.with(|st| !st.pods.contains_key(&name)));
}
