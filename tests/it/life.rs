//! The life simulation inside `cargo test`: three simulated days of a scripted world through
//! the real daemon path (a bank whose data holder reports its outage on the CDR before
//! `/connectors` does on the first and third days, a maintenance announced on the CDR on the
//! second), every promise checked over the whole run (see `tests/life`).

#[path = "../life/mod.rs"]
mod harness;

/// Seeds that once found a breach stay here as regressions.
const SEEDS: [u64; 1] = [11];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_days_of_a_scripted_world_keep_every_promise() {
    for seed in SEEDS {
        let config = harness::LifeConfig {
            step: std::time::Duration::from_secs(120),
            ..harness::LifeConfig::new(100, 3, seed)
        };
        let report = harness::run(&config)
            .await
            .expect("the life simulation runs");
        println!("seed {seed}\n{}", report.table());
        assert_eq!(report.breaches(), 0, "seed {seed}:\n{}", report.table());
        let checked: u64 = report.rows.iter().map(|r| r.checked).sum();
        assert!(
            checked > 100,
            "the run checked too little: {}",
            report.table()
        );
    }
}
