//! molt-agent's library: everything the device does, behind the thin CLI in main.rs.
//!
//! The engine decides (bundle verification, slot record, update state machine);
//! this crate carries out: files beneath a directory handle, scripts, fsyncs,
//! the `current` link swap.

pub mod backoff;
pub mod client;
pub mod config;
pub mod crashpoint;
pub mod daemon;
pub mod durability;
pub mod enrollment;
pub mod exec;
pub mod fetch;
pub mod fsops;
pub mod install;
pub mod journal;
pub mod mounts;
pub mod outbox;
pub mod packages;
pub mod perms;
pub mod slotfile;
