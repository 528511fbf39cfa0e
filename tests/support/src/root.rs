//! The root check: a test that needs root returns early without it, and says so where the run's summary can count it as skipped.
//!
//! libtest has no "skipped at run time": a test that returns early counts as
//! passed. So every root-only test starts with
//!
//! ```no_run
//! # fn t() {
//! if !molt_test_support::root_or_skip() {
//!     return;
//! }
//! # }
//! ```
//!
//! and when not root, [`root_or_skip`] prints why and appends the test's name as a
//! line to the file named by [`SKIP_LOG`], if that is set. `cargo xtask ci` sets it,
//! moves every logged test from passed to skipped in its summary, and fails the
//! step when it runs as root and a test still logged itself (a broken root check).

use std::io::Write;

/// The environment variable naming the file skipped tests are appended to.
pub const SKIP_LOG: &str = "MOLT_TEST_SKIP_LOG";

/// True when running as root (slot handles, chown, chroot, mounts need it);
/// otherwise prints the skip and logs the test's name to [`SKIP_LOG`].
pub fn root_or_skip() -> bool {
    if rustix::process::geteuid().is_root() {
        return true;
    }
    // libtest runs each test on a thread named after it.
    let current = std::thread::current();
    let name = current.name().unwrap_or("<unnamed thread>");
    println!("skipped: {name} needs root (slot handles, chown, chroot, mounts)");
    if let Some(path) = std::env::var_os(SKIP_LOG) {
        // One short write with O_APPEND: lines from parallel tests do not interleave.
        let logged = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(format!("{name}\n").as_bytes()));
        if let Err(e) = logged {
            // The summary would count this test as passed: fail it instead.
            panic!("cannot log the skip to {}: {e}", path.to_string_lossy());
        }
    }
    false
}
