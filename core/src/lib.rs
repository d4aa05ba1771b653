//! Trainyard core: the pure domain model (DAG spec, validation, cron, resources, states).
//!
//! This crate does no I/O, speaks no SQL and knows nothing of protobuf; the
//! scheduler and worker crates depend on it, never the other way round.

pub mod cron;
pub mod dag;
pub mod error;
pub mod ids;
pub mod resources;
pub mod state;
pub mod suggest;
