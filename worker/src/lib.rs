//! Trainyard worker: GPU discovery ([`gpu`]), host resources ([`host`]) and
//! task execution ([`exec`]). The connection loop to the scheduler builds on
//! these.

pub mod exec;
pub mod gpu;
pub mod host;
