//! Migration bookkeeping shared by both backends: status listing and the
//! refusal to run against a schema newer than this binary.

use sqlx::migrate::Migrator;

use super::MigrationStatus;
use super::error::{Result, StoreError};

/// Refuses a database that has a migration applied this binary does not know.
pub(crate) fn check_not_newer(migrator: &Migrator, applied: &[i64]) -> Result<()> {
    let known = migrator.iter().map(|m| m.version).max().unwrap_or(0);
    match applied
        .iter()
        .copied()
        .filter(|v| !migrator.version_exists(*v))
        .max()
    {
        Some(found) => Err(StoreError::SchemaTooNew { found, known }),
        None => Ok(()),
    }
}

pub(crate) fn status_of(migrator: &Migrator, applied: &[i64]) -> Vec<MigrationStatus> {
    migrator
        .iter()
        .filter(|m| m.migration_type.is_up_migration())
        .map(|m| MigrationStatus {
            version: m.version,
            description: m.description.to_string(),
            applied: applied.contains(&m.version),
        })
        .collect()
}
