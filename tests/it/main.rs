//! The integration tests, one binary (so the shared helpers in `support` compile once): each
//! module runs the built `regtally` on files in temporary folders, as a user would.
//!
//! Tests that need something beyond a Rust toolchain (a `redis-server`, root) are `#[ignore]`d
//! with the reason; `cargo test -- --ignored` runs them, and CI does.

mod bodies;
mod cli;
mod determinism;
mod events;
mod fuzz;
mod objects;
mod property;
mod redis;
mod redis_deployments;
mod state;
mod streaming;
mod support;
mod warehouse;
