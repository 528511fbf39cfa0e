//! End-to-end tests of `molt-controller serve`: the real binary on a free loopback port with a temporary data directory, driven over HTTP(S).
//!
//! The modules live in tests/server/ (a crate root looks for modules beside it,
//! hence the `path` attributes).

#[path = "server/harness.rs"]
mod harness;

#[path = "server/api.rs"]
mod api;
#[path = "server/build.rs"]
mod build;
#[path = "server/conn.rs"]
mod conn;
#[path = "server/fleet_sim.rs"]
mod fleet_sim;
#[path = "server/phased.rs"]
mod phased;
#[path = "server/rollout.rs"]
mod rollout;
#[path = "server/tls.rs"]
mod tls;
