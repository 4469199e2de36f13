//! The standby Deployment follows queue depth and in-flight jobs.

use std::time::Duration;

use pod_manager::pool::WarmPool;
use pod_manager::pool::kube::ScalePolicy;
use tokio_util::sync::CancellationToken;

use crate::fake_api::{FakeOptions, pods_in_state};
use crate::helpers::{config, fake, pool, pool_with, wait_in_flight};

#[tokio::test]
async fn the_pool_scales_up_and_down_with_queue_depth() {
    // Arrange: min 1, max 5, no hysteresis, no delay.
    let fake = fake(FakeOptions {
        replicas: 1,
        ..FakeOptions::default()
    })
    .await;
    let (pool, _) = pool(&fake, "manager-1").await;
    let scaler = pool.scaler();

    // Act + Assert: a burst scales up to the maximum...
    assert_eq!(scaler.reconcile(10).await.unwrap(), 5);
    assert_eq!(fake.with(|st| st.replicas), 5);
    fake.wait_for("five standby pods", |st| {
        pods_in_state(st, "standby").len() == 5
    })
    .await;
    // ...an empty queue scales down to the minimum...
    assert_eq!(scaler.reconcile(0).await.unwrap(), 1);
    assert_eq!(fake.with(|st| pods_in_state(st, "standby").len()), 1);
    // ...and in-flight jobs count as demand.
    let a = pool.claim(uuid::Uuid::new_v4()).await.unwrap().sandbox;
    let b = pool.claim(uuid::Uuid::new_v4()).await.unwrap().sandbox;
    wait_in_flight(&pool, 2).await;
    assert_eq!(
        scaler.reconcile(1).await.unwrap(),
        3,
        "1 queued + 2 running"
    );
    pool.destroy(a).await;
    pool.destroy(b).await;
}

#[tokio::test]
async fn hysteresis_and_the_scale_down_delay_hold_the_size() {
    let fake = fake(FakeOptions {
        replicas: 4,
        ..FakeOptions::default()
    })
    .await;
    let mut cfg = config(&fake, "manager-1");
    cfg.scale = ScalePolicy {
        min: 1,
        max: 10,
        hysteresis: 1,
        scale_down_delay: Duration::from_secs(3600),
        interval: Duration::from_secs(3600),
    };
    let (pool, _) = pool_with(&fake, cfg).await;
    let scaler = pool.scaler();

    assert_eq!(
        scaler.reconcile(3).await.unwrap(),
        4,
        "one below: inside the band"
    );
    assert_eq!(
        scaler.reconcile(0).await.unwrap(),
        4,
        "far below, but not for an hour yet"
    );
    assert_eq!(scaler.reconcile(6).await.unwrap(), 6, "up at once");
    assert_eq!(fake.with(|st| st.replicas), 6);
}

#[tokio::test]
async fn the_scaler_loop_follows_its_depth_source() {
    let fake = fake(FakeOptions {
        replicas: 1,
        ..FakeOptions::default()
    })
    .await;
    let mut cfg = config(&fake, "manager-1");
    cfg.scale.interval = Duration::from_millis(20);
    let (pool, _) = pool_with(&fake, cfg).await;
    let stop = CancellationToken::new();
    let task = tokio::spawn(pool.scaler().run(|| async { Some(4) }, stop.clone()));

    fake.wait_for("the scaler to reach 4 replicas", |st| st.replicas == 4)
        .await;

    stop.cancel();
    task.await.unwrap();
}

#[tokio::test]
async fn every_manager_counts_the_jobs_of_all_managers() {
    // Arrange: manager A runs two jobs; manager B runs none.
    let fake = fake(FakeOptions {
        replicas: 2,
        ..FakeOptions::default()
    })
    .await;
    let (a, _) = pool(&fake, "manager-a").await;
    let (b, _) = pool(&fake, "manager-b").await;
    let one = a.claim(uuid::Uuid::new_v4()).await.unwrap().sandbox;
    let two = a.claim(uuid::Uuid::new_v4()).await.unwrap().sandbox;
    wait_in_flight(&a, 2).await;
    wait_in_flight(&b, 2).await;

    // Act: both scalers look at the same empty queue.
    let from_a = a.scaler().reconcile(0).await.unwrap();
    let from_b = b.scaler().reconcile(0).await.unwrap();

    // Assert: the same target (min 1, max 5, no delay: 0 queued + 2
    // running), so they never fight over the replicas.
    assert_eq!((from_a, from_b), (2, 2));
    a.destroy(one).await;
    a.destroy(two).await;
    wait_in_flight(&b, 0).await;
}
