//! Trainyard worker: GPU discovery and task execution.
