//! molt's end-to-end tests live in tests/tests/; what they share (the real binaries as processes, devices in temp roots) is the `molt-test-support` crate in tests/support/.
