//! Trainyard worker: GPU discovery ([`gpu`]), host resources ([`host`]),
//! task execution ([`exec`]) and their wire form ([`convert`]). The
//! connection loop to the scheduler builds on these.

pub mod agent;
pub mod convert;
pub mod exec;
pub mod gpu;
pub mod host;
