//! `trainyard db migrate|status`: apply and inspect the schema migrations.

use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use trainyard_scheduler::store::{self, ConnectOptions};

#[derive(Debug, Subcommand)]
pub enum DbCommand {
    /// Apply pending migrations (the scheduler also does this at start-up).
    Migrate(DbArgs),
    /// Show which migrations are applied.
    Status(DbArgs),
}

#[derive(Debug, Args)]
pub struct DbArgs {
    /// Database URL: postgres://user@host/db or sqlite:PATH.
    #[arg(
        long,
        env = "TRAINYARD_DB",
        default_value = "sqlite:.trainyard/trainyard.db"
    )]
    db: String,
}

pub fn run(cmd: DbCommand) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let (args, migrate) = match &cmd {
            DbCommand::Migrate(a) => (a, true),
            DbCommand::Status(a) => (a, false),
        };
        super::ensure_sqlite_dir(&args.db)?;
        let options = ConnectOptions {
            migrate: false,
            max_connections: 2,
            ..ConnectOptions::default()
        };
        let store = store::connect_with(&args.db, options)
            .await
            .with_context(|| {
                format!(
                    "cannot open the database {}",
                    trainyard_scheduler::store::redact(&args.db)
                )
            })?;
        if migrate {
            store.migrate().await?;
        }
        let status = store.migration_status().await?;
        let pending = status.iter().filter(|m| !m.applied).count();
        for m in &status {
            println!(
                "{:<8} {:>16}  {}",
                if m.applied { "applied" } else { "pending" },
                m.version,
                m.description
            );
        }
        println!(
            "{} of {} migrations applied{}",
            status.len() - pending,
            status.len(),
            if pending > 0 {
                "; run `trainyard db migrate`"
            } else {
                ""
            }
        );
        store.close().await;
        Ok(ExitCode::SUCCESS)
    })
}
