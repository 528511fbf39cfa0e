//! Test doubles shared by the engine's tests and the agent's tests (behind the `testing` feature).

mod tearing;

pub use tearing::{RecordStore, Tear, TearingError, TearingStore};
