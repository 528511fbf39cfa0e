//! A rollout plan's decisions, as plain functions: which wave each device is in, and whether the wave in progress may hand over to the next, must wait, or halts the deployment.
//!
//! Like `rollout.rs`, nothing here reads a clock or a database: the caller
//! passes the time and the counts, and writes what is decided in the same
//! transaction it read them in. A restarted controller therefore decides
//! exactly what it would have decided before the restart.

use molt_api::plan::{HaltScope, RolloutPlan};

/// The wave that holds the canaries: always the first, empty when the plan names none.
pub const CANARY_WAVE: u32 = 0;

/// How many waves a deployment with `plan` has: the canaries' wave, then the plan's.
pub fn wave_count(plan: &RolloutPlan) -> u32 {
    u32::try_from(plan.waves.len()).map_or(u32::MAX, |n| n.saturating_add(1))
}

/// The wave of each of `devices` (ids, in any order), in the same order.
///
/// `canaries` (ids) form [`CANARY_WAVE`]. The others are spread over the plan's
/// waves in an order that looks random but depends only on `seed` (the
/// deployment) and each id, so that the first wave is not always the devices
/// that enrolled first, and the same deployment always assigns the same way.
/// Sizes are cumulative over all the devices, canaries included: with
/// `["10%", "100%"]` and 100 devices of which 3 are canaries, wave 1 holds 7.
pub fn assign(plan: &RolloutPlan, devices: &[String], canaries: &[String], seed: u64) -> Vec<u32> {
    let total = devices.len() as u64;
    let mut order: Vec<usize> = (0..devices.len())
        .filter(|&i| !canaries.contains(&devices[i]))
        .collect();
    order.sort_by_cached_key(|&i| spread(seed, &devices[i]));
    let mut waves = vec![CANARY_WAVE; devices.len()];
    let mut reached = total - order.len() as u64;
    let mut next = order.into_iter();
    for (n, size) in plan.waves.iter().enumerate() {
        let wave = u32::try_from(n + 1).unwrap_or(u32::MAX);
        let upto = size.cumulative(total);
        while reached < upto {
            let Some(i) = next.next() else { break };
            waves[i] = wave;
            reached += 1;
        }
    }
    // The last wave is 100% (the plan was checked), so nothing is left; should a
    // plan ever get here unchecked, what remains goes with the last wave rather
    // than never.
    for i in next {
        waves[i] = wave_count(plan) - 1;
    }
    waves
}

/// How messages name a wave: the canaries', then the plan's waves from 1.
pub fn wave_name(wave: u32) -> String {
    if wave == CANARY_WAVE {
        "the canaries' wave".to_owned()
    } else {
        format!("wave {wave}")
    }
}

/// A stable pseudo-random key for `id` within deployment `seed`.
fn spread(seed: u64, id: &str) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(&seed.to_le_bytes());
    h.update(id.as_bytes());
    *h.finalize().as_bytes()
}

/// How many devices of a wave (or of a whole deployment) are where.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Devices in all.
    pub total: u64,
    /// Committed the update.
    pub success: u64,
    /// Failed, or rolled back after the swap.
    pub failed: u64,
    /// Aborted: counted neither way.
    pub aborted: u64,
    /// Not final yet (pending, downloading, installing).
    pub unfinished: u64,
    /// When the last of its devices succeeded (Unix seconds).
    pub last_success: Option<u64>,
}

/// What a deployment's plan says now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Gate {
    /// Stop: no new device starts. The reason is for the operator.
    Halt(String),
    /// The wave in progress is not done: wait for reports, or until this time
    /// (Unix seconds) when only the soak is left.
    Wait {
        /// When the soak ends, if that is all that is left.
        until: Option<u64>,
    },
    /// The wave in progress passed its gate: start the next.
    Release,
    /// The last wave passed its gate: nothing is left to start.
    Complete,
}

/// Decides for a deployment in wave `wave` (its devices counted in `current`, the
/// whole deployment's in `overall`) at time `now`.
///
/// In order: a halt threshold reached halts, whatever the wave; a wave with
/// devices not final waits; a finished last wave completes the plan; a finished
/// wave whose successes fall below the plan's share halts; a wave whose last
/// success is younger than the soak waits; else the next wave starts. A wave
/// with no devices passes at once.
pub fn gate(plan: &RolloutPlan, wave: u32, current: &Tally, overall: &Tally, now: u64) -> Gate {
    if let Some(t) = plan.halt_at {
        let (counted, failed, total) = match plan.halt_scope {
            HaltScope::Wave => (
                format!("of {}", wave_name(wave)),
                current.failed,
                current.total,
            ),
            HaltScope::Overall => ("in all".to_string(), overall.failed, overall.total),
        };
        if t.reached(failed, total) {
            return Gate::Halt(format!(
                "{failed} of {total} devices {counted} failed; the plan halts at {t}"
            ));
        }
    }
    if current.unfinished > 0 {
        return Gate::Wait { until: None };
    }
    // After the last wave nothing is left to start: neither its share of successes
    // nor a soak would change anything.
    if wave + 1 >= wave_count(plan) {
        return Gate::Complete;
    }
    let finished = current.success + current.failed;
    if finished > 0 && current.success * 100 < u64::from(plan.success_percent) * finished {
        return Gate::Halt(format!(
            "{} succeeded on {} of {finished} devices, below the {}% the plan asks",
            wave_name(wave),
            current.success,
            plan.success_percent
        ));
    }
    if let Some(at) = current.last_success {
        let until = at.saturating_add(plan.soak_secs);
        if now < until {
            return Gate::Wait { until: Some(until) };
        }
    }
    Gate::Release
}

#[cfg(test)]
mod tests {
    use super::*;
    use molt_api::plan::{parse_waves, Threshold};

    fn plan(waves: &str) -> RolloutPlan {
        RolloutPlan {
            waves: parse_waves(waves).unwrap(),
            ..RolloutPlan::default()
        }
    }

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("dev_{i:05}")).collect()
    }

    fn sizes(waves: &[u32], count: u32) -> Vec<usize> {
        (0..count)
            .map(|w| waves.iter().filter(|&&x| x == w).count())
            .collect()
    }

    #[test]
    fn waves_are_cumulative_shares_of_all_devices() {
        let p = plan("1%,10%,50%,100%");
        let w = assign(&p, &ids(1000), &[], 7);
        assert_eq!(sizes(&w, wave_count(&p)), [0, 10, 90, 400, 500]);
        // Canaries come first and count toward the shares.
        let devices = ids(100);
        let canaries = vec![devices[42].clone(), devices[7].clone(), devices[99].clone()];
        let p = plan("10%,100%");
        let w = assign(&p, &devices, &canaries, 7);
        assert_eq!(sizes(&w, wave_count(&p)), [3, 7, 90]);
        assert_eq!(
            (w[42], w[7], w[99]),
            (CANARY_WAVE, CANARY_WAVE, CANARY_WAVE)
        );
    }

    #[test]
    fn the_spread_is_stable_per_deployment_and_differs_between_them() {
        let p = plan("10%,100%");
        let devices = ids(200);
        let a = assign(&p, &devices, &[], 1);
        assert_eq!(a, assign(&p, &devices, &[], 1));
        // The input's order does not matter, only the ids.
        let mut reversed = devices.clone();
        reversed.reverse();
        let mut b = assign(&p, &reversed, &[], 1);
        b.reverse();
        assert_eq!(a, b);
        assert_ne!(a, assign(&p, &devices, &[], 2));
        // Not simply the first enrolled.
        assert_ne!(a.iter().take(20).filter(|&&x| x == 1).count(), 20);
    }

    #[test]
    fn small_fleets_and_empty_waves() {
        let p = plan("1%,2%,100%");
        // 1% and 2% of 10 both round up to 1 device: wave 2 is empty.
        assert_eq!(sizes(&assign(&p, &ids(10), &[], 3), 4), [0, 1, 0, 9]);
        assert!(assign(&p, &[], &[], 3).is_empty());
        let p = plan("5,100%");
        assert_eq!(sizes(&assign(&p, &ids(3), &[], 3), 3), [0, 3, 0]);
    }

    fn tally(success: u64, failed: u64, unfinished: u64, last_success: Option<u64>) -> Tally {
        Tally {
            total: success + failed + unfinished,
            success,
            failed,
            aborted: 0,
            unfinished,
            last_success,
        }
    }

    #[test]
    fn a_wave_waits_for_its_devices_then_its_soak_then_releases() {
        let mut p = plan("10%,100%");
        p.soak_secs = 600;
        let all = tally(0, 0, 100, None);
        assert_eq!(
            gate(&p, 1, &tally(3, 0, 7, Some(50)), &all, 100),
            Gate::Wait { until: None }
        );
        assert_eq!(
            gate(&p, 1, &tally(10, 0, 0, Some(1000)), &all, 1599),
            Gate::Wait { until: Some(1600) }
        );
        assert_eq!(
            gate(&p, 1, &tally(10, 0, 0, Some(1000)), &all, 1600),
            Gate::Release
        );
        assert_eq!(
            gate(&p, 2, &tally(90, 0, 0, Some(1000)), &all, 1600),
            Gate::Complete
        );
        // The last wave neither soaks nor halts on its share: nothing is left to start.
        p.success_percent = 100;
        assert_eq!(
            gate(&p, 2, &tally(1, 89, 0, Some(1599)), &all, 1600),
            Gate::Complete
        );
        p.success_percent = 0;
        // An empty wave (no canaries) passes at once.
        assert_eq!(
            gate(&p, CANARY_WAVE, &Tally::default(), &all, 0),
            Gate::Release
        );
    }

    #[test]
    fn too_few_successes_halt_once_the_wave_is_final() {
        let mut p = plan("10%,100%");
        p.success_percent = 95;
        let all = tally(0, 0, 100, None);
        assert_eq!(gate(&p, 1, &tally(9, 1, 0, Some(9)), &all, 10), {
            Gate::Halt("wave 1 succeeded on 9 of 10 devices, below the 95% the plan asks".into())
        });
        assert_eq!(
            gate(&p, 1, &tally(19, 1, 0, Some(9)), &all, 10),
            Gate::Release
        );
        // Aborted devices count neither way.
        let mut t = tally(19, 1, 0, Some(9));
        t.aborted = 30;
        t.total += 30;
        assert_eq!(gate(&p, 1, &t, &all, 10), Gate::Release);
    }

    #[test]
    fn the_halt_threshold_counts_per_wave_or_overall_and_wins_over_waiting() {
        let mut p = plan("10%,100%");
        p.halt_at = Some(Threshold::Count(2));
        let wave = tally(1, 2, 7, Some(5));
        let all = tally(50, 3, 47, Some(5));
        assert_eq!(
            gate(&p, 1, &wave, &all, 10),
            Gate::Halt("3 of 100 devices in all failed; the plan halts at 2".into())
        );
        p.halt_scope = HaltScope::Wave;
        p.halt_at = Some(Threshold::Percent(30));
        assert_eq!(
            gate(&p, 1, &wave, &all, 10),
            Gate::Wait { until: None },
            "2 of 10 is below 30%"
        );
        p.halt_at = Some(Threshold::Percent(20));
        assert_eq!(
            gate(&p, 1, &wave, &all, 10),
            Gate::Halt("2 of 10 devices of wave 1 failed; the plan halts at 20%".into())
        );
    }

    #[test]
    fn the_default_plan_releases_everyone_and_never_halts() {
        let p = RolloutPlan::default();
        let devices = ids(50);
        let w = assign(&p, &devices, &[], 9);
        assert!(w.iter().all(|&x| x == 1));
        let all = tally(0, 50, 0, None);
        assert_eq!(
            gate(&p, CANARY_WAVE, &Tally::default(), &all, 0),
            Gate::Release
        );
        assert_eq!(gate(&p, 1, &all, &all, 0), Gate::Complete);
    }
}
