//! Trainyard scheduler: the store, the scheduling engine and the servers.
