//! Shared helpers for molt's end-to-end tests (the tests themselves live in tests/tests/).
