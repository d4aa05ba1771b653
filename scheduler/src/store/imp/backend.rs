//! [`SqlBackend`]: what the generic SQL layer needs from a database that
//! plain `sqlx::Database` does not give it.
//!
//! Implemented for `sqlx::Postgres` (in `store/postgres.rs`) and
//! `sqlx::Sqlite` (in `store/sqlite.rs`), next to the rest of what differs
//! between the two (how to connect, the pools).

use sqlx::Database;
use sqlx::migrate::Migrator;

use crate::store::Backend;

/// A database the store runs on: `sqlx::Postgres` or `sqlx::Sqlite`.
///
/// It carries only what generic sqlx cannot reach or what really differs
/// between the backends; every query is otherwise the same text on both.
///
/// # The repeated bound list
///
/// Every generic `impl` of the store (`impl<DB: SqlBackend> … for
/// SqlStore<DB>` in `imp/*.rs`) repeats one where-clause, identical in each
/// block: the executor and argument bounds (`&mut DB::Connection:
/// Executor`, `DB::Arguments<'q>: IntoArguments<'q, DB>`,
/// `DB::Connection: Migrate`), the column index types, and `Encode`,
/// `Decode` and `Type` for every type the store binds or reads (`i64`,
/// `i32`, `f64`, `bool`, `String`, `&str`, `Uuid`, `DateTime<Utc>`, the
/// `Json` wrappers and the `Option`s of those it binds, because sqlx
/// implements `Encode` for `Option<T>` per database, not generically).
/// Rust does not imply where-clauses about other types (`i64: Encode<'q,
/// DB>`) from a bound on `DB`, neither from a supertrait nor from a
/// where-clause of this trait, so each impl block states them again. Both
/// backends satisfy the list; a missing entry is a compile error at the
/// call that needs it, never a runtime one.
///
/// # Visibility
///
/// Crate-private in effect: `imp` is a private module, so nothing outside
/// the crate can name or implement this trait. It is declared `pub` only
/// because the inherent impls of the public [`super::SqlStore`] use it as a
/// bound, which the `private_bounds` lint judges by declared visibility.
pub trait SqlBackend: Database {
    /// The store's name for this backend ([`crate::store::StoreBase::backend`]).
    const KIND: Backend;

    /// The statement opening a write transaction; `None`: the pool's own
    /// `BEGIN`. SQLite takes its write lock up front (`BEGIN IMMEDIATE`) so
    /// that concurrent writers queue on `busy_timeout` instead of failing
    /// with `SQLITE_BUSY` halfway through.
    const BEGIN_WRITE: Option<&'static str>;

    /// The statement that queues a wake-up inside a transaction (`$1` the
    /// channel, `$2` the payload); `None` where one process is all there is
    /// and nobody needs waking.
    const NOTIFY: Option<&'static str>;

    /// The term fence's query (`$1` the HA group, `$2` the term): a row
    /// when the lease still carries the term, run first in every fenced
    /// engine transaction. PostgreSQL locks the row `FOR SHARE`.
    const LEASE_FENCE: &'static str;

    /// A query answering one `bool`: whether sqlx's `_sqlx_migrations` table
    /// exists yet (each backend asks its own catalog).
    const MIGRATIONS_TABLE_EXISTS: &'static str;

    /// The migrations embedded for this backend.
    fn migrator() -> &'static Migrator;

    /// Rows an `INSERT`/`UPDATE`/`DELETE` changed. An inherent method of
    /// `PgQueryResult` and `SqliteQueryResult`, which `Database::QueryResult`
    /// has no trait for in sqlx 0.8.
    fn rows_affected(result: &Self::QueryResult) -> u64;
}
