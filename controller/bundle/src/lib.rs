//! The bundle toolkit: recipes, signing keys, and building, inspecting and verifying bundles on a host; a library with no server and no terminal, used by the `molt` CLI and by `molt-controller`.

pub mod build;
pub mod inspect;
pub mod keys;
pub mod progress;
pub mod recipe;

pub use progress::Progress;
