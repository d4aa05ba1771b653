//! Trainyard scheduler: the store, the scheduling engine and the servers.
pub mod app;
pub mod clock;
pub mod dags;
pub mod engine;
pub mod grpc;
pub mod ha;
pub mod http;
pub mod logs;
pub mod metrics;
pub mod retention;
pub mod store;
pub mod tls;
