//! Shared code of the vlalign experiment binaries. This crate is the only place a backend is
//! chosen: see [`device`].

pub mod device;
pub mod setup;
pub mod world;
