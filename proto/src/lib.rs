//! Generated gRPC code for the scheduler <-> worker protocol, package `trainyard.v1`.
//!
//! Domain types never derive prost: the scheduler and worker convert at their
//! transport edges.
