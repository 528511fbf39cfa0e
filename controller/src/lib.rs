//! molt-controller's library: signing keys, recipes, and building, inspecting and verifying bundles, shared by the `molt` CLI and the server (`server`).

pub mod api;
pub mod build;
pub mod client;
pub mod inspect;
pub mod keys;
pub mod recipe;
pub mod server;
