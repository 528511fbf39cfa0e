//! molt-controller's library: recipes, keys and bundle building shared by the `molt` CLI and (later) the server.

pub mod keys;
pub mod recipe;
