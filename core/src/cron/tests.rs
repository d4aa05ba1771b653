//! Unit tests for the cron module's internals.
