//! The rollout-plan flags of `molt deploy`, `molt deploy-to-others` and `molt resume`, read into a [`RolloutPlan`].

use anyhow::{anyhow, Result};
use clap::Args;
use molt_api::plan::{parse_waves, HaltScope, RolloutPlan, Threshold, WaveSize};

/// How the deployment reaches its devices; without any of these, all at once.
#[derive(Args, Default)]
pub struct PlanArgs {
    /// Waves as cumulative shares or counts of the devices, ending at 100%: `1%,10%,50%,100%`.
    #[arg(long, value_name = "LIST", value_parser = waves)]
    waves: Option<Waves>,
    /// A device (id or name) that goes first, in a wave of its own; repeat for several.
    #[arg(long = "canary", value_name = "DEVICE")]
    canaries: Vec<String>,
    /// The share of a finished wave's devices that must succeed before the next starts
    /// (`95%`); below it the deployment halts.
    #[arg(long, value_name = "PERCENT", value_parser = parse_percent, allow_hyphen_values = true)]
    success: Option<u8>,
    /// How long after a wave's last success the next one waits, a failure still
    /// counting meanwhile (`10m`, `1h`).
    #[arg(long, value_name = "DURATION", value_parser = parse_soak)]
    soak: Option<u64>,
    /// Halt once this many devices failed (`2`), or this share of them (`5%`).
    #[arg(long, value_name = "N|PERCENT", allow_hyphen_values = true)]
    halt_at: Option<Threshold>,
    /// What --halt-at counts: the failures of the wave in progress, or of the whole deployment.
    #[arg(long, value_name = "wave|overall")]
    halt_scope: Option<HaltScope>,
    /// On a halt, abort the devices still installing (otherwise they finish).
    #[arg(long)]
    abort_in_flight: bool,
}

impl PlanArgs {
    /// The plan the flags give, `None` when no flag was given.
    pub fn plan(&self) -> Option<RolloutPlan> {
        let given = self.waves.is_some()
            || !self.canaries.is_empty()
            || self.success.is_some()
            || self.soak.is_some()
            || self.halt_at.is_some()
            || self.halt_scope.is_some()
            || self.abort_in_flight;
        if !given {
            return None;
        }
        let d = RolloutPlan::default();
        Some(RolloutPlan {
            waves: self.waves.clone().map_or(d.waves, |w| w.0),
            canaries: self.canaries.clone(),
            success_percent: self.success.unwrap_or(d.success_percent),
            soak_secs: self.soak.unwrap_or(d.soak_secs),
            halt_at: self.halt_at,
            halt_scope: self.halt_scope.unwrap_or(d.halt_scope),
            abort_in_flight: self.abort_in_flight,
        })
    }
}

/// `--waves`' list as one value (clap would take a `Vec` for a repeated flag).
#[derive(Clone)]
struct Waves(Vec<WaveSize>);

fn waves(s: &str) -> Result<Waves, String> {
    parse_waves(s).map(Waves)
}

fn parse_percent(s: &str) -> Result<u8> {
    let digits = s.trim().trim_end_matches('%').trim_end();
    match digits.parse::<u8>() {
        Ok(p @ 0..=100) if digits.bytes().all(|b| b.is_ascii_digit()) => Ok(p),
        _ => Err(anyhow!("{s:?}: a share from 0% to 100%")),
    }
}

fn parse_soak(s: &str) -> Result<u64> {
    let d = humantime::parse_duration(s.trim())
        .map_err(|e| anyhow!("{s:?}: {e} (write it like 30s, 10m or 1h)"))?;
    Ok(d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cmd {
        #[command(flatten)]
        plan: PlanArgs,
    }

    fn plan(args: &[&str]) -> Result<Option<RolloutPlan>, String> {
        let mut argv = vec!["molt"];
        argv.extend_from_slice(args);
        Cmd::try_parse_from(argv)
            .map(|c| c.plan.plan())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn no_flag_no_plan_and_flags_fill_the_rest_with_defaults() {
        assert_eq!(plan(&[]), Ok(None));
        let p = plan(&["--waves", "1%,10%,100%", "--soak", "10m", "--halt-at", "2"])
            .unwrap()
            .unwrap();
        assert_eq!(p.waves, parse_waves("1%,10%,100%").unwrap());
        assert_eq!((p.soak_secs, p.halt_at), (600, Some(Threshold::Count(2))));
        assert_eq!(p.halt_scope, HaltScope::Overall);
        let p = plan(&["--canary", "gw-1", "--canary", "gw-2", "--success", "95%"])
            .unwrap()
            .unwrap();
        assert_eq!(p.canaries, ["gw-1", "gw-2"]);
        assert_eq!(
            (p.success_percent, &p.waves),
            (95, &RolloutPlan::default().waves)
        );
    }

    #[test]
    fn bad_values_name_the_flag_and_what_was_written() {
        for (args, says) in [
            (&["--waves", "10%,0%"][..], "\"0%\""),
            (&["--success", "101%"][..], "\"101%\""),
            (&["--soak", "soon"][..], "\"soon\""),
            (&["--halt-at", "-1"][..], "\"-1\""),
            (&["--halt-scope", "group"][..], "\"group\""),
        ] {
            let e = plan(args).unwrap_err();
            assert!(e.contains(args[0]) && e.contains(says), "{args:?}: {e}");
        }
    }
}
