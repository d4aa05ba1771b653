//! A fresh Postgres database per bench instance, so every measurement starts
//! from empty tables; dropped when the instance stops. This is server
//! administration (CREATE/DROP DATABASE), not domain SQL, which stays in
//! `scheduler::store`.

use anyhow::{Context, anyhow};
use sqlx::Connection;

/// A database created for one bench instance.
#[derive(Debug)]
pub struct FreshDatabase {
    /// The URL the bench was given (where the database is administered from).
    admin_url: String,
    pub name: String,
    /// The URL of the new database.
    pub url: String,
}

impl FreshDatabase {
    /// Creates `trainyard_bench_<uuid>` on the server of `base` (a URL of
    /// any database there the user may connect to).
    pub async fn create(base: &str) -> anyhow::Result<Self> {
        let mut conn = sqlx::PgConnection::connect(base).await.with_context(|| {
            format!(
                "cannot connect to {}",
                trainyard_scheduler::store::redact(base)
            )
        })?;
        let name = format!("trainyard_bench_{}", uuid::Uuid::new_v4().simple());
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .with_context(|| format!("cannot create the database {name}"))?;
        let _ = conn.close().await;
        Ok(Self {
            admin_url: base.to_owned(),
            url: with_database(base, &name)?,
            name,
        })
    }

    /// Drops the database (`WITH (FORCE)`: pooled connections may linger).
    pub async fn drop_database(self) {
        let result = async {
            let mut conn = sqlx::PgConnection::connect(&self.admin_url).await?;
            sqlx::query(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .execute(&mut conn)
            .await?;
            conn.close().await
        }
        .await;
        if let Err(err) = result {
            tracing::warn!(database = %self.name, error = %err, "cannot drop the bench database");
        }
    }
}

/// `postgres://u@h:p/old?x=y` → `postgres://u@h:p/<name>?x=y`.
fn with_database(base: &str, name: &str) -> anyhow::Result<String> {
    let (head, query) = match base.split_once('?') {
        Some((h, q)) => (h, Some(q)),
        None => (base, None),
    };
    let scheme_end = head.find("://").ok_or_else(|| {
        anyhow!(
            "{} is not a postgres:// URL",
            trainyard_scheduler::store::redact(base)
        )
    })? + 3;
    let authority_end = head[scheme_end..]
        .find('/')
        .map_or(head.len(), |i| scheme_end + i);
    let mut url = format!("{}/{name}", &head[..authority_end]);
    if let Some(q) = query {
        url.push('?');
        url.push_str(q);
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_database_name_replaces_the_path_and_keeps_the_query() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/test", "b1").unwrap(),
            "postgres://postgres@127.0.0.1:5432/b1"
        );
        assert_eq!(
            with_database("postgresql://u:p@h/db?sslmode=disable", "b2").unwrap(),
            "postgresql://u:p@h/b2?sslmode=disable"
        );
        assert_eq!(
            with_database("postgres://h", "b3").unwrap(),
            "postgres://h/b3"
        );
        assert!(with_database("nonsense", "b").is_err());
    }
}
