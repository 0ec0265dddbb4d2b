//! Smoke test of the load harness: `keygate-load --quick` over every scenario, against the
//! real `keygate` binary. Checks that every JSON line carries its fields and that every
//! success rate is 100 %. Performance is never asserted here (see BENCHMARKS.md).

use std::process::Command;

use serde_json::Value;

fn has(line: &Value, fields: &[&str]) {
    for f in fields {
        assert!(line.get(*f).is_some(), "field {f} missing in {line}");
    }
}

#[test]
fn quick_run_reports_every_scenario_with_full_success() {
    let out = Command::new(env!("CARGO_BIN_EXE_keygate-load"))
        .args(["--quick", "--scenario", "all", "--keygate-bin"])
        .arg(env!("CARGO_BIN_EXE_keygate"))
        .output()
        .expect("harness runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "harness failed: {stderr}\n{stdout}");
    let lines: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();

    let find = |scenario: &str, target: &str| -> &Value {
        lines
            .iter()
            .find(|l| l["scenario"] == scenario && l["target"] == target)
            .unwrap_or_else(|| panic!("no line for {scenario}/{target}:\n{stdout}"))
    };
    for target in ["bare", "keygate"] {
        let l = find("overhead", target);
        has(
            l,
            &[
                "requests",
                "rps",
                "p50_ms",
                "p90_ms",
                "p99_ms",
                "cpu_s_per_1k",
                "peak_rss_kb",
                "paced_rate",
                "paced_p99_ms",
                "paced_cpu_s_per_1k",
                "paced_success_rate",
                "paced_q_success_rate",
            ],
        );
        for f in ["success_rate", "paced_success_rate", "paced_q_success_rate"] {
            assert_eq!(l[f], 1.0, "overhead/{target} {f}: {l}");
        }
        let l = find("streaming", target);
        has(
            l,
            &[
                "requests",
                "rps",
                "p99_ms",
                "ttfe_p50_ms",
                "ttfe_p99_ms",
                "cpu_s_per_1k",
                "peak_rss_kb",
            ],
        );
        assert_eq!(l["success_rate"], 1.0, "streaming/{target}: {l}");
        let l = find("open_streams", target);
        has(
            l,
            &[
                "streams",
                "opened",
                "rss_base_kb",
                "rss_open_kb",
                "rss_per_stream_bytes",
            ],
        );
        assert_eq!(l["success_rate"], 1.0, "open_streams/{target}: {l}");
        let l = find("big_bodies", target);
        has(
            l,
            &[
                "bodies",
                "body_bytes",
                "bytes_in_flight",
                "peak_rss_kb",
                "peak_rss_over_bytes_in_flight",
            ],
        );
        assert_eq!(l["success_rate"], 1.0, "big_bodies/{target}: {l}");
    }
    for scenario in ["overhead", "streaming", "open_streams", "big_bodies"] {
        let l = find(scenario, "keygate/bare");
        assert!(l.as_object().is_some_and(|m| m.len() > 3), "ratio line {l}");
    }
    let l = find("rotation", "keygate");
    has(
        l,
        &[
            "requests",
            "success_rate",
            "attempts_per_request",
            "upstream_attempts_per_request",
            "limited",
            "max_429_per_burst",
        ],
    );
    assert_eq!(l["success_rate"], 1.0, "rotation: {l}");
    let limited = l["limited"].as_object().expect("limited keys");
    assert_eq!(limited.len(), 3, "every limited key got requests: {l}");
    for (k, v) in limited {
        assert!(v["r429"].as_u64().is_some_and(|n| n >= 1), "{k}: {v}");
    }
    assert!(
        l["attempts_per_request"].as_f64().is_some_and(|a| a > 1.0),
        "some requests rotated: {l}"
    );
}
