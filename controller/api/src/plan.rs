//! A deployment's rollout plan: its waves, the gate before each next wave, and when it halts by itself; as JSON in the API and as text on `molt deploy`'s command line.
//!
//! The plan is data only. The controller decides with it (`molt-controller`'s
//! `waves.rs`): which wave each device is in, and when a wave's gate opens or
//! the deployment halts.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Waves in a plan, at most (a plan is read by people; a hundred waves are a mistake).
pub const MAX_WAVES: usize = 20;

/// Canary devices in a plan, at most.
pub const MAX_CANARIES: usize = 100;

/// The longest soak a plan may ask for: a week.
pub const MAX_SOAK_SECS: u64 = 7 * 24 * 3600;

/// How a deployment reaches its devices.
///
/// The default is today's behaviour: every device at once, no gate, no halt.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RolloutPlan {
    /// The waves' sizes, cumulative over the deployment's devices (canaries
    /// included): `["1%", "10%", "100%"]` gives the first 1 % of the devices,
    /// then up to 10 %, then all. The last must be `100%`.
    pub waves: Vec<WaveSize>,
    /// Devices (ids or names) that form a wave of their own before the others.
    pub canaries: Vec<String>,
    /// The share of a finished wave's devices that must have succeeded before the
    /// next wave starts (percent; aborted devices do not count). Below it the
    /// deployment halts.
    pub success_percent: u8,
    /// After a wave's last success, how long to wait before the next wave, during
    /// which a failure (a health check, a rollback after a reboot) still counts.
    pub soak_secs: u64,
    /// Halt once this many devices failed (`None`: never by itself).
    pub halt_at: Option<Threshold>,
    /// Whether [`RolloutPlan::halt_at`] counts the failures of the current wave or
    /// of the whole deployment.
    pub halt_scope: HaltScope,
    /// On a halt, abort the devices still installing (otherwise they finish).
    pub abort_in_flight: bool,
}

impl Default for RolloutPlan {
    fn default() -> Self {
        RolloutPlan {
            waves: vec![WaveSize::Percent(100)],
            canaries: Vec::new(),
            success_percent: 0,
            soak_secs: 0,
            halt_at: None,
            halt_scope: HaltScope::Overall,
            abort_in_flight: false,
        }
    }
}

impl RolloutPlan {
    /// Checks the plan; the error names the field and what is wrong with it.
    pub fn check(&self) -> Result<(), String> {
        if self.waves.is_empty() {
            return Err("waves: at least one wave (100%)".into());
        }
        if self.waves.len() > MAX_WAVES {
            return Err(format!(
                "waves: {} waves, at most {MAX_WAVES}",
                self.waves.len()
            ));
        }
        for pair in self.waves.windows(2) {
            if let [a, b] = pair {
                if !a.smaller_than(b) {
                    return Err(format!(
                        "waves: {b} after {a}: each wave must be larger than the one before (sizes are cumulative)"
                    ));
                }
            }
        }
        if self.waves.last() != Some(&WaveSize::Percent(100)) {
            return Err(
                "waves: the last wave must be 100% (every device of the deployment)".into(),
            );
        }
        if self.canaries.len() > MAX_CANARIES {
            return Err(format!(
                "canaries: {} devices, at most {MAX_CANARIES}",
                self.canaries.len()
            ));
        }
        if let Some(c) = self
            .canaries
            .iter()
            .find(|c| c.is_empty() || c.len() > 128 || c.chars().any(char::is_control))
        {
            return Err(format!("canaries: {c:?} is no device id or name"));
        }
        if self.success_percent > 100 {
            return Err(format!(
                "success_percent: {} is more than 100",
                self.success_percent
            ));
        }
        if self.soak_secs > MAX_SOAK_SECS {
            return Err(format!(
                "soak_secs: {} is more than a week ({MAX_SOAK_SECS})",
                self.soak_secs
            ));
        }
        Ok(())
    }

    /// Whether this is the default plan (everything at once, no gate, no halt).
    pub fn is_default(&self) -> bool {
        *self == RolloutPlan::default()
    }

    /// The plan in words: `2 canaries, 1%, 10%, 100%; next wave at 95% success;
    /// soak 10m; halts at 2 failures in all`, or `all at once`. Only numbers and
    /// fixed words: a canary's name is not in it.
    pub fn describe(&self) -> String {
        if self.is_default() {
            return "all at once".to_owned();
        }
        format!("{}{}", self.sizes().join(", "), self.terms())
    }

    /// The waves' sizes in words, the canaries first (`1 canary`, `10%`, …).
    pub(crate) fn sizes(&self) -> Vec<String> {
        let mut sizes = Vec::new();
        match self.canaries.len() {
            0 => {}
            1 => sizes.push("1 canary".to_owned()),
            n => sizes.push(format!("{n} canaries")),
        }
        sizes.extend(self.waves.iter().map(ToString::to_string));
        sizes
    }

    /// The gate and the halt in words, each after `; `.
    pub(crate) fn terms(&self) -> String {
        use std::fmt::Write as _;
        let mut text = String::new();
        if self.success_percent > 0 {
            let _ = write!(text, "; next wave at {}% success", self.success_percent);
        }
        if self.soak_secs > 0 {
            let soak = humantime::format_duration(std::time::Duration::from_secs(self.soak_secs));
            let _ = write!(text, "; soak {soak}");
        }
        if let Some(t) = self.halt_at {
            let s = if t == Threshold::Count(1) { "" } else { "s" };
            let scope = match self.halt_scope {
                HaltScope::Wave => "in a wave",
                HaltScope::Overall => "in all",
            };
            let _ = write!(text, "; halts at {t} failure{s} {scope}");
        }
        if self.abort_in_flight {
            text.push_str(", aborting what is installing");
        }
        text
    }
}

/// One wave's cumulative size: a share of the deployment's devices, or a number of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum WaveSize {
    /// `10%`: 1 to 100.
    Percent(u8),
    /// `25`: at least 1.
    Count(u32),
}

impl WaveSize {
    /// The devices, of `total`, that this wave and the ones before it reach. A
    /// share is rounded up, so `1%` of a small fleet is still one device.
    pub fn cumulative(self, total: u64) -> u64 {
        match self {
            WaveSize::Percent(p) => (total * u64::from(p)).div_ceil(100),
            WaveSize::Count(c) => u64::from(c).min(total),
        }
    }

    /// Whether `self` is surely smaller than `other` whatever the fleet's size: two
    /// shares or two counts compare, and a count before a share is allowed (a few
    /// canaries, then a share), a share before a count is not.
    fn smaller_than(&self, other: &WaveSize) -> bool {
        match (self, other) {
            (WaveSize::Percent(a), WaveSize::Percent(b)) => a < b,
            (WaveSize::Count(a), WaveSize::Count(b)) => a < b,
            (WaveSize::Count(_), WaveSize::Percent(_)) => true,
            (WaveSize::Percent(_), WaveSize::Count(_)) => false,
        }
    }
}

impl fmt::Display for WaveSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WaveSize::Percent(p) => write!(f, "{p}%"),
            WaveSize::Count(c) => write!(f, "{c}"),
        }
    }
}

impl FromStr for WaveSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match parse_amount(s)? {
            Amount::Percent(p) => Ok(WaveSize::Percent(p)),
            Amount::Count(0) => Err(format!("{s:?}: a wave of 0 devices")),
            Amount::Count(c) => Ok(WaveSize::Count(c)),
        }
    }
}

/// Serde reads and writes these as their text (`"10%"`), through `FromStr` and `Display`.
macro_rules! as_text {
    ($t:ty) => {
        impl TryFrom<String> for $t {
            type Error = String;

            fn try_from(s: String) -> Result<Self, String> {
                s.parse()
            }
        }

        impl From<$t> for String {
            fn from(v: $t) -> String {
                v.to_string()
            }
        }
    };
}

as_text!(WaveSize);
as_text!(Threshold);

/// How many failures halt a deployment: a number of devices, or a share of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Threshold {
    /// `2`: halt at the second failure.
    Count(u32),
    /// `5%`: halt once 5 % of the counted devices failed.
    Percent(u8),
}

impl Threshold {
    /// Whether `failed` devices of `total` reach the threshold.
    pub fn reached(self, failed: u64, total: u64) -> bool {
        match self {
            Threshold::Count(n) => failed >= u64::from(n),
            Threshold::Percent(p) => failed > 0 && failed * 100 >= u64::from(p) * total,
        }
    }
}

impl fmt::Display for Threshold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Threshold::Count(n) => write!(f, "{n}"),
            Threshold::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl FromStr for Threshold {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match parse_amount(s)? {
            Amount::Percent(p) => Ok(Threshold::Percent(p)),
            Amount::Count(0) => Err(format!(
                "{s:?}: halting at 0 failures would halt at once; leave the threshold out instead"
            )),
            Amount::Count(c) => Ok(Threshold::Count(c)),
        }
    }
}

/// What [`RolloutPlan::halt_at`] counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HaltScope {
    /// The failures of the wave in progress, against its size.
    Wave,
    /// Every failure of the deployment, against all its devices.
    #[default]
    Overall,
}

impl FromStr for HaltScope {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "wave" => Ok(HaltScope::Wave),
            "overall" => Ok(HaltScope::Overall),
            _ => Err(format!("{s:?}: `wave` or `overall`")),
        }
    }
}

/// A share (`1%` to `100%`) or a count, as written.
enum Amount {
    Percent(u8),
    Count(u32),
}

fn parse_amount(s: &str) -> Result<Amount, String> {
    let t = s.trim();
    let digits = |d: &str| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit());
    if let Some(p) = t.strip_suffix('%') {
        let p = p.trim_end();
        return match p.parse::<u8>() {
            Ok(v @ 1..=100) if digits(p) => Ok(Amount::Percent(v)),
            _ => Err(format!("{s:?}: a share is 1% to 100%")),
        };
    }
    match t.parse::<u32>() {
        Ok(c) if digits(t) => Ok(Amount::Count(c)),
        _ => Err(format!("{s:?}: a number of devices or a share like 10%")),
    }
}

/// Reads waves written as a comma-separated list (`1%,10%,50%,100%`).
pub fn parse_waves(text: &str) -> Result<Vec<WaveSize>, String> {
    text.split(',').map(str::parse).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_plan_is_everything_at_once_and_checks() {
        let p = RolloutPlan::default();
        assert!(p.check().is_ok());
        assert!(p.is_default());
        assert_eq!(WaveSize::Percent(100).cumulative(7), 7);
    }

    #[test]
    fn sizes_read_and_print_the_same() {
        for (text, size) in [
            ("1%", WaveSize::Percent(1)),
            ("100%", WaveSize::Percent(100)),
            ("25", WaveSize::Count(25)),
            (" 10 % ", WaveSize::Percent(10)),
        ] {
            assert_eq!(text.parse::<WaveSize>(), Ok(size), "{text:?}");
            assert_eq!(size.to_string().parse::<WaveSize>(), Ok(size), "{text:?}");
        }
    }

    #[test]
    fn hostile_sizes_are_refused_with_what_was_written() {
        for text in [
            "",
            "%",
            "0%",
            "101%",
            "-1",
            "+5",
            "0",
            "1.5%",
            "1e3",
            "10%%",
            "५",
            "4294967296",
        ] {
            let e = text.parse::<WaveSize>().expect_err(text);
            assert!(e.contains(&format!("{text:?}")), "{text:?}: {e}");
        }
        assert!("0".parse::<Threshold>().is_err());
    }

    #[test]
    fn a_share_rounds_up_so_a_small_fleet_still_gets_a_canary() {
        assert_eq!(WaveSize::Percent(1).cumulative(10), 1);
        assert_eq!(WaveSize::Percent(1).cumulative(0), 0);
        assert_eq!(WaveSize::Percent(10).cumulative(10_000), 1000);
        assert_eq!(WaveSize::Percent(50).cumulative(3), 2);
        assert_eq!(WaveSize::Count(25).cumulative(3), 3);
    }

    #[test]
    fn thresholds_count_or_share() {
        assert!(!Threshold::Count(2).reached(1, 10));
        assert!(Threshold::Count(2).reached(2, 10));
        assert!(!Threshold::Percent(10).reached(0, 0));
        assert!(!Threshold::Percent(10).reached(9, 100));
        assert!(Threshold::Percent(10).reached(10, 100));
        assert!(Threshold::Percent(10).reached(1, 3));
    }

    #[test]
    fn plans_that_would_strand_or_confuse_are_refused_by_field() {
        let with = |f: fn(&mut RolloutPlan)| {
            let mut p = RolloutPlan::default();
            f(&mut p);
            p.check().unwrap_err()
        };
        assert!(with(|p| p.waves.clear()).starts_with("waves:"));
        assert!(with(|p| p.waves = parse_waves("10%,5%,100%").unwrap()).contains("5% after 10%"));
        assert!(
            with(|p| p.waves = parse_waves("10%,50%").unwrap()).contains("last wave must be 100%")
        );
        assert!(with(|p| p.waves = parse_waves("50%,5,100%").unwrap()).contains("5 after 50%"));
        assert!(with(|p| p.waves = vec![WaveSize::Percent(100); 21]).contains("at most 20"));
        assert!(with(|p| p.canaries = vec!["a\u{1b}[2J".into()]).starts_with("canaries:"));
        assert!(with(|p| p.success_percent = 101).starts_with("success_percent:"));
        assert!(with(|p| p.soak_secs = MAX_SOAK_SECS + 1).starts_with("soak_secs:"));
        let ok = RolloutPlan {
            waves: parse_waves("5,10%,50%,100%").unwrap(),
            ..RolloutPlan::default()
        };
        assert_eq!(ok.check(), Ok(()));
    }

    #[test]
    fn the_json_is_what_an_operator_would_write() {
        let p = RolloutPlan {
            waves: parse_waves("1%,10%,100%").unwrap(),
            canaries: vec!["dev_a".into()],
            success_percent: 95,
            soak_secs: 600,
            halt_at: Some(Threshold::Count(2)),
            halt_scope: HaltScope::Wave,
            abort_in_flight: true,
        };
        let json = serde_json::to_value(&p).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "waves": ["1%", "10%", "100%"],
                "canaries": ["dev_a"],
                "success_percent": 95,
                "soak_secs": 600,
                "halt_at": "2",
                "halt_scope": "wave",
                "abort_in_flight": true,
            })
        );
        assert_eq!(serde_json::from_value::<RolloutPlan>(json).unwrap(), p);
        // Fields left out take the default; unknown ones are refused.
        let partial: RolloutPlan = serde_json::from_str(r#"{"soak_secs": 5}"#).unwrap();
        assert_eq!(partial.waves, vec![WaveSize::Percent(100)]);
        assert!(serde_json::from_str::<RolloutPlan>(r#"{"wave": ["1%"]}"#).is_err());
        assert!(serde_json::from_str::<RolloutPlan>(r#"{"waves": ["0%"]}"#).is_err());
    }
}
