//! A fleet simulator: a thousand lightweight devices speaking the real device protocol over loopback, with scripted outcomes, against the real controller.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::thread;

use serde_json::json;

use crate::harness::*;

/// How many devices the simulated fleet has.
const DEVICES: usize = 1000;
/// Threads the simulated devices share.
const THREADS: usize = 8;

/// What a simulated device does with an offer.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Script {
    Succeed,
    /// Fails in the after script (a deterministic failure).
    FailAfter,
}

/// Runs `f` for every index below `n` on [`THREADS`] threads; the results in index order.
fn on_threads<T: Send>(n: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let out: Mutex<BTreeMap<usize, T>> = Mutex::new(BTreeMap::new());
    thread::scope(|s| {
        for t in 0..THREADS {
            let (f, out) = (&f, &out);
            s.spawn(move || {
                for i in (t..n).step_by(THREADS) {
                    let v = f(i);
                    out.lock().unwrap().insert(i, v);
                }
            });
        }
    });
    out.into_inner().unwrap().into_values().collect()
}

/// One round: every device polls once and carries out what it is offered, to the
/// end, as its script says. Returns the devices that were offered `dep`.
fn round(c: &Controller, devices: &[Dev], scripts: &[Script], dep: u64) -> Vec<usize> {
    let offered = on_threads(devices.len(), |i| {
        let o = poll(c, &devices[i], None);
        if o["action"] != "install" {
            return None;
        }
        assert_eq!(o["deployment"], dep, "{o}");
        let d = &devices[i];
        assert_eq!(report(c, d, dep, 1, "downloading", "").status, 200);
        let last = match scripts[i] {
            Script::Succeed => "success",
            Script::FailAfter => "failed",
        };
        assert_eq!(report(c, d, dep, 2, last, "").status, 200);
        Some(i)
    });
    offered.into_iter().flatten().collect()
}

#[test]
fn a_thousand_devices_with_ten_percent_failing_halt_after_the_first_wave() {
    let Stored {
        f: _data,
        c,
        token,
        update,
        ..
    } = stored("4.0.0");
    let t = group(&c, &token, "fleet");
    let devices = on_threads(DEVICES, |i| {
        enroll(&c, &t, &format!("sim-{i:04}"), "acme-gw")
    });
    let d = post_ok(
        &c.api("/deployments"),
        &token,
        json!({"update": update, "group": "fleet",
               "plan": {"waves": ["10%", "50%", "100%"], "success_percent": 95}}),
        201,
    );
    let dep = d["id"].as_u64().unwrap();
    let details = get_ok(&c.api(&format!("/deployments/{dep}")), &token);
    let index: BTreeMap<&str, usize> = devices
        .iter()
        .enumerate()
        .map(|(i, d)| (d.id.as_str(), i))
        .collect();
    let mut wave_of = vec![0; DEVICES];
    for v in details["devices"].as_array().unwrap() {
        wave_of[index[v["id"].as_str().unwrap()]] = v["wave"].as_u64().unwrap();
    }
    let first: Vec<usize> = (0..DEVICES).filter(|&i| wave_of[i] == 1).collect();
    assert_eq!(first.len(), 100, "10% of a thousand");
    // Every tenth device of each wave fails: 10% of the fleet, 10 of wave 1.
    let mut scripts = vec![Script::Succeed; DEVICES];
    for w in 1..=3 {
        let members = (0..DEVICES).filter(|&i| wave_of[i] == w);
        for i in members.step_by(10) {
            scripts[i] = Script::FailAfter;
        }
    }
    let failing = scripts.iter().filter(|&&s| s == Script::FailAfter).count();
    assert_eq!(failing, 100);

    let mut started = round(&c, &devices, &scripts, dep);
    started.sort_unstable();
    assert_eq!(started, first, "exactly the first wave started");
    // The gate: 95% success asked, 90% reached; a second round starts nobody.
    let again = round(&c, &devices, &scripts, dep);
    assert!(
        again.is_empty(),
        "a device of a later wave started: {again:?}"
    );
    let end = get_ok(&c.api(&format!("/deployments/{dep}")), &token);
    let n = |s: &str| end["counts"][s].as_u64().unwrap();
    assert_eq!((n("success"), n("failed"), n("pending")), (90, 10, 900));
    assert_eq!(end["state"], "halted");
    assert_eq!(
        end["rollout"]["halted"],
        "wave 1 succeeded on 90 of 100 devices, below the 95% the plan asks"
    );
}
