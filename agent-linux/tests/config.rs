//! Tests of the agent configuration: the example parses, defaults apply, and every error names the file and the field.

use std::path::{Path, PathBuf};
use std::time::Duration;

use molt_agent::config::{self, Config, ConfigError};
use molt_engine::bundle::format::key_id;
use molt_engine::Limits;

/// RFC 8032 test vectors 1 and 2: valid ed25519 public keys.
const KEY1: &str = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";
const KEY2: &str = "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c";
/// 64 hex digits that are not a curve point (y = 2 has no x).
const NOT_A_POINT: &str = "0200000000000000000000000000000000000000000000000000000000000000";

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::from_toml(text, Path::new("/etc/molt/agent.toml"))
}

fn minimal() -> String {
    format!("compatible = \"acme-gw\"\ntrusted_keys = [\"{KEY1}\"]\n")
}

/// Parses `text`, expecting an error about `field`; returns its message.
fn error_about(text: &str, field: &str) -> String {
    let err = parse(text).expect_err("the configuration should be refused");
    let msg = err.to_string();
    assert_eq!(err.field(), Some(field), "{msg}");
    assert!(msg.contains(field), "message does not name {field}: {msg}");
    assert!(
        msg.starts_with("/etc/molt/agent.toml"),
        "message does not name the file: {msg}"
    );
    msg
}

/// [`error_about`] for [`minimal`] plus the lines `extra`.
fn error_about_extra(extra: &str, field: &str) -> String {
    error_about(&format!("{}{extra}", minimal()), field)
}

/// [`error_about_extra`], whose message also says each of `words`.
fn error_saying(extra: &str, field: &str, words: &[&str]) {
    let msg = error_about_extra(extra, field);
    for w in words {
        assert!(msg.contains(w), "no `{w}` in: {msg}");
    }
}

#[test]
fn the_example_file_parses_and_shows_the_defaults() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("agent.example.toml");
    let c = Config::load(&path).unwrap();
    assert_eq!(c.root, Path::new("/"));
    assert_eq!(c.data_dir, Path::new(config::DEFAULT_DATA_DIR));
    assert_eq!(c.data_dir(), Path::new("/var/lib/molt"));
    assert_eq!(c.compatible, "acme-gateway-v2");
    assert_eq!(c.trusted_keys.len(), 1);
    assert!(c.revoked_keys.is_empty());
    // Every value the example writes out is the default, so it documents them truthfully.
    assert_eq!(c.limits, Limits::DEFAULT);
    assert_eq!(c.timeouts, config::Timeouts::default());
    assert_eq!(c.reboot_command, config::DEFAULT_REBOOT_COMMAND);
    assert_eq!(c.trial_boots, config::DEFAULT_TRIAL_BOOTS);
    assert_eq!(c.log_capture_bytes, config::DEFAULT_LOG_CAPTURE_BYTES);
    assert_eq!(c.poll_interval_secs, config::DEFAULT_POLL_INTERVAL_SECS);
    assert_eq!(c.controller, None);
    assert!(c.durable);
    // The built-in copy is the same file.
    assert_eq!(Config::example().compatible, c.compatible);
}

#[test]
fn a_minimal_file_gets_every_default() {
    let c = parse(&minimal()).unwrap();
    assert_eq!(c.root, Path::new("/"));
    assert_eq!(c.data_dir(), Path::new("/var/lib/molt"));
    assert_eq!(c.limits, Limits::DEFAULT);
    assert_eq!(c.timeouts.command, Duration::from_secs(300));
    assert_eq!(c.timeouts.health_check, Duration::from_secs(30));
    assert_eq!(c.timeouts.download_stall, Duration::from_secs(60));
    assert_eq!(c.reboot_command, "systemctl reboot");
    assert_eq!(c.trial_boots, 3);
    assert_eq!(c.log_capture_bytes, 64 * 1024);
    assert_eq!(c.poll_interval_secs, 60);
    assert!(c.durable, "durable unless told otherwise");
    assert_eq!(c.trusted_keys[0].id, key_id(&hex32(KEY1)));
    let volatile = parse(&format!("durable = false\n{}", minimal())).unwrap();
    assert!(!volatile.durable);
    assert!(
        error_about(&format!("durable = \"no\"\n{}", minimal()), "durable").contains("durable")
    );
}

fn hex32(s: &str) -> [u8; 32] {
    let mut b = [0u8; 32];
    hex::decode_to_slice(s, &mut b).unwrap();
    b
}

#[test]
fn every_field_can_be_set() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        r#"root = "{root}"
data_dir = "/state/molt"
compatible = "acme-gw"
trusted_keys = ["{KEY1}", "{KEY2}"]
revoked_keys = ["{revoked}"]
reboot_command = "touch /tmp/rebooted"
trial_boots = 5
log_capture_bytes = 4096
controller = "https://molt.example.com/"
poll_interval_secs = 15

[timeouts]
command_secs = 10
health_check_secs = 5
download_stall_secs = 7

[limits]
max_entries = 10
max_chunk_size = 65536
"#,
        root = dir.path().display(),
        revoked = hex::encode(key_id(&hex32(KEY2))),
    );
    let c = parse(&text).unwrap();
    assert_eq!(c.root, dir.path());
    assert_eq!(c.data_dir, PathBuf::from("state/molt"));
    assert_eq!(c.data_dir(), dir.path().join("state/molt"));
    assert_eq!(c.resolve("/etc/molt/x"), dir.path().join("etc/molt/x"));
    assert_eq!(c.trusted_keys.len(), 2);
    assert_eq!(c.revoked_keys, vec![key_id(&hex32(KEY2))]);
    assert_eq!(c.reboot_command, "touch /tmp/rebooted");
    assert_eq!(c.trial_boots, 5);
    assert_eq!(c.log_capture_bytes, 4096);
    assert_eq!(c.controller.as_deref(), Some("https://molt.example.com"));
    assert_eq!(c.poll_interval_secs, 15);
    assert_eq!(c.timeouts.command, Duration::from_secs(10));
    assert_eq!(c.timeouts.health_check, Duration::from_secs(5));
    assert_eq!(c.timeouts.download_stall, Duration::from_secs(7));
    assert_eq!(
        c.limits,
        Limits {
            max_entries: 10,
            max_chunk_size: 65536,
            ..Limits::DEFAULT
        }
    );
}

#[test]
fn missing_compatible_is_named() {
    let msg = error_about(&format!("trusted_keys = [\"{KEY1}\"]\n"), "compatible");
    assert!(msg.contains("missing field"), "{msg}");
}

#[test]
fn missing_trusted_keys_is_named() {
    error_about("compatible = \"x\"\n", "trusted_keys");
}

#[test]
fn bad_key_hex_names_the_entry_and_its_line() {
    let text = format!(
        "compatible = \"x\"\ntrusted_keys = [\n  \"{KEY1}\",\n  \"{}\",\n]\n",
        &KEY2[..63]
    );
    let msg = error_about(&text, "trusted_keys[1]");
    assert!(msg.starts_with("/etc/molt/agent.toml:4:3: "), "{msg}");
    assert!(msg.contains("64 hex digits"), "{msg}");
}

#[test]
fn a_key_that_is_not_a_curve_point_is_refused() {
    let msg = error_about(
        &format!("compatible = \"x\"\ntrusted_keys = [\"{NOT_A_POINT}\"]\n"),
        "trusted_keys[0]",
    );
    assert!(msg.contains("not a valid ed25519 public key"), "{msg}");
}

#[test]
fn an_empty_key_list_is_refused() {
    let msg = error_about("compatible = \"x\"\ntrusted_keys = []\n", "trusted_keys");
    assert!(msg.contains("at least one key"), "{msg}");
}

#[test]
fn a_bad_revoked_key_id_is_named() {
    error_about_extra("revoked_keys = [\"abc\"]\n", "revoked_keys[0]");
}

#[test]
fn revoking_every_trusted_key_is_refused() {
    let id = hex::encode(key_id(&hex32(KEY1)));
    let revoked = format!("revoked_keys = [\"{id}\"]\n");
    error_saying(&revoked, "revoked_keys", &["every trusted key is revoked"]);
}

#[test]
fn an_unknown_field_is_named_with_its_line() {
    error_saying(
        "colour = \"blue\"\n",
        "colour",
        &["line 3", "unknown field"],
    );
}

#[test]
fn an_unknown_field_in_a_table_is_named() {
    error_saying("[timeouts]\ncommand = 5\n", "command", &["line 4"]);
    error_saying("[limits]\nmax_files = 5\n", "max_files", &["line 4"]);
}

#[test]
fn a_wrong_type_is_named() {
    error_saying("trial_boots = \"three\"\n", "trial_boots", &["line 3"]);
}

#[test]
fn out_of_range_values_are_named() {
    error_about_extra("trial_boots = 0\n", "trial_boots");
    error_about_extra("log_capture_bytes = 10\n", "log_capture_bytes");
    error_about_extra("poll_interval_secs = 0\n", "poll_interval_secs");
    error_about_extra("[timeouts]\ncommand_secs = 0\n", "timeouts.command_secs");
    error_saying(
        "[limits]\nmax_path_len = 5000\n",
        "limits.max_path_len",
        &["4096"],
    );
    error_about_extra("[limits]\nmax_entries = 0\n", "limits.max_entries");
}

#[test]
fn paths_stay_below_the_root() {
    error_saying("data_dir = \"../escape\"\n", "data_dir", &[".."]);
    error_about_extra("root = \"relative/dir\"\n", "root");
}

#[test]
fn other_values_are_checked() {
    error_about_extra("controller = \"ftp://x\"\n", "controller");
    error_about_extra("reboot_command = \" \"\n", "reboot_command");
    error_about(
        &format!("compatible = \"\"\ntrusted_keys = [\"{KEY1}\"]\n"),
        "compatible",
    );
}

#[test]
fn an_unreadable_file_names_the_path() {
    let err = Config::load(Path::new("/no/such/molt/agent.toml")).unwrap_err();
    assert!(matches!(err, ConfigError::Read { .. }));
    assert!(
        err.to_string().contains("/no/such/molt/agent.toml"),
        "{err}"
    );
}

#[test]
fn syntax_errors_keep_line_and_column() {
    let err = parse(&format!("{}trial_boots = \n", minimal())).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("line 3, column"), "{msg}");
}
