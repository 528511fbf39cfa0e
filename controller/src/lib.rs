//! molt-controller's library: signing keys, recipes, and building, inspecting and verifying bundles for the `molt` CLI (and later the server).

mod ahead;
pub mod api;
pub mod build;
pub mod client;
pub mod inspect;
pub mod keys;
pub mod recipe;
pub mod server;
