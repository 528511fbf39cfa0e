//! molt's `no_std` core: the bundle format, its streaming verifier, the A/B slot record and the update state machine.
//!
//! The engine does no I/O and never reads a clock. Bytes come in through
//! [`bundle::Decoder::feed`], persisted state goes out through the
//! [`slot::SlotStore`] trait, and update decisions are a pure transition
//! function ([`update::step`]). The Linux agent, the controller and the
//! `molt` CLI are the only places that touch files, sockets and time.
//!
//! [`protocol`] (with `alloc`) holds the device protocol's messages, shared by
//! the agent and the controller.
//!
//! Features are additive: `alloc`, `std` (implies `alloc`), `ruzstd` (a pure
//! Rust zstd decoder for targets without libzstd), `encoder` (bundle
//! building and signing, host side) and `testing` (test doubles).
#![cfg_attr(not(any(test, feature = "std")), no_std)]
// Untrusted input must never panic the engine: no unwrap, expect, panics or
// unchecked indexing outside tests.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing,
        clippy::unreachable
    )
)]

#[cfg(feature = "alloc")]
extern crate alloc;

pub mod bundle;
pub mod error;
pub mod limits;
#[cfg(feature = "alloc")]
pub mod protocol;
pub mod slot;
pub mod text;
pub mod update;

#[cfg(feature = "testing")]
pub mod testing;

pub use error::Error;
pub use limits::Limits;
