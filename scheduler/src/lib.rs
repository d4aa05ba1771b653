//! Trainyard scheduler: the store, the scheduling engine and the servers.
pub mod dags;
pub mod logs;
pub mod store;
