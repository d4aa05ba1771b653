//! The `trainyard` command-line interface.
fn main() {}
