//! SIGHUP: the daemon reads its configuration again and applies what can
//! change while it runs (here a fraud threshold), names what cannot
//! (here `pipeline.sink_concurrency`) and leaves it as it was, keeps the
//! running configuration when the new one is invalid, and loses nothing.

use super::*;

fn hup(env: &Env) {
    let pid = env.daemon.as_ref().expect("daemon running").id().to_string();
    assert!(Command::new("kill").args(["-HUP", &pid]).status().expect("kill").success(), "kill -HUP failed");
}

fn wait_log(env: &Env, needle: &str, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let log = env.log();
        if log.contains(needle) {
            return log;
        }
        assert!(Instant::now() < deadline, "{needle:?} not logged within {within:?}:\n{log}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

async fn decisions(env: &Env, ids: std::ops::Range<usize>) -> Vec<String> {
    let mut out = Vec::new();
    for i in ids {
        let item = env.payment(&format!("{}-p{i}", env.prefix)).await.unwrap_or_else(|| panic!("payment {i} missing"));
        out.push(item["decision"].as_s().expect("decision").clone());
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_changes_a_fraud_threshold_mid_stream_and_loses_nothing() {
    let mut env = Env::new("reload", "").await;
    env.start();
    // Each payment on its own customer, card and device, under every rule:
    // score 0, approved at the default thresholds.
    let wave = |from: usize| -> (Vec<(String, String)>, i64) {
        let bodies: Vec<_> = (from..from + 20).map(|i| payment(&env.prefix, i, &format!("c{i}"), 100 + i as u64)).collect();
        (bodies, (from..from + 20).map(|i| 100 + i as i64).sum())
    };
    let (a, total_a) = wave(0);
    env.send(&a).await;
    env.wait_for_payments(20, Duration::from_secs(60)).await;
    assert!(decisions(&env, 0..20).await.iter().all(|d| d == "approve"));

    // Mid-stream: a wave in flight, then the new configuration and SIGHUP.
    let (b, total_b) = wave(100);
    env.send(&b).await;
    let base = std::fs::read_to_string(&env.config).expect("config");
    std::fs::write(&env.config, format!("{base}\n[fraud]\nreview_threshold = 0\n[pipeline]\nsink_concurrency = 3\n"))
        .expect("rewrite config");
    hup(&env);
    let log = wait_log(&env, "Configuration reloaded", Duration::from_secs(20));
    let line = log.lines().find(|l| l.contains("Configuration reloaded")).expect("line");
    assert!(line.contains("fraud.review_threshold"), "the applied field is named: {line}");
    let kept = log.lines().find(|l| l.contains("need a restart")).unwrap_or_else(|| panic!("no restart line:\n{log}"));
    assert!(kept.contains("pipeline.sink_concurrency"), "{kept}");
    assert!(!kept.contains("fraud.review_threshold"), "{kept}");

    let (c, total_c) = wave(200);
    env.send(&c).await;
    let sums = env.wait_for_payments(60, Duration::from_secs(60)).await;
    assert_eq!(sums.get("payments"), Some(&60), "{sums:?}\n{}", env.log());
    assert_eq!(sums.get("payment_amount_cents"), Some(&(total_a + total_b + total_c)), "{sums:?}");
    assert_eq!(env.payment_count().await, 60);
    // The wave in flight at the SIGHUP: each payment decided once, by the
    // old rules or the new.
    let in_flight = decisions(&env, 100..120).await;
    assert!(in_flight.iter().all(|d| d == "approve" || d == "review"), "{in_flight:?}");
    assert!(decisions(&env, 0..20).await.iter().all(|d| d == "approve"), "decided before the reload: unchanged");
    let after = decisions(&env, 200..220).await;
    assert!(after.iter().all(|d| d == "review"), "after the reload every score-0 payment is reviewed: {after:?}");

    // A configuration that does not parse: refused, named, the running one
    // stays, and the daemon goes on.
    std::fs::write(&env.config, format!("{base}\n[fraud]\nreview_threshold = 2000\n")).expect("rewrite config");
    hup(&env);
    let log = wait_log(&env, "Reload refused", Duration::from_secs(20));
    assert!(log.lines().any(|l| l.contains("Reload refused") && l.contains("fraud.review_threshold")), "{log}");
    let (d, _) = wave(300);
    env.send(&d).await;
    let sums = env.wait_for_payments(80, Duration::from_secs(60)).await;
    assert_eq!(sums.get("payments"), Some(&80), "{sums:?}");
    assert!(decisions(&env, 300..320).await.iter().all(|d| d == "review"), "the reloaded threshold stays in force");
    let (status, _) = env.sigterm();
    assert!(status.success(), "{status:?}\n{}", env.log());
}
