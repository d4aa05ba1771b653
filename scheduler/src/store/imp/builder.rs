//! [`SqlBuilder`]: the multi-row statements' builder, usable in code generic
//! over the database.
//!
//! It writes exactly the text sqlx's `QueryBuilder` writes (the same
//! separators, and placeholders from `Arguments::format_placeholder`: `$n` on
//! PostgreSQL, `?` on SQLite), but [`SqlBuilder::finish`] hands the SQL text
//! and the arguments back as two values the caller owns:
//!
//! ```ignore
//! let (sql, args) = qb.finish()?;
//! sqlx::query_with(&sql, args).execute(&mut **tx).await?;
//! ```
//!
//! Why not `QueryBuilder<'args, DB>`: its `build(&mut self)` returns a query
//! borrowing the builder and holding `DB::Arguments<'args>`, which must be
//! `IntoArguments<'q, DB>` for the borrow's lifetime `'q`. A generic `DB`
//! only promises `DB::Arguments<'q>: IntoArguments<'q, DB>` at one lifetime
//! and a projection does not shrink by variance, so the builder ends up
//! borrowed for all of `'args` and is then dropped while still borrowed
//! (E0597; `SqliteArguments<'q>` escapes that only when the type is
//! concrete). Here the arguments' lifetime is simply inferred as the borrow
//! of the caller's `sql`, a `String` with no lifetime of its own.
//!
//! One difference from `QueryBuilder`: a value that fails to encode is
//! returned as an error by `finish` instead of panicking in `push_bind`.

use std::fmt::{Display, Write};

use sqlx::error::BoxDynError;
use sqlx::{Arguments, Database, Encode, Type};

use crate::store::error::Result;

/// SQL text with its bound arguments, built piece by piece.
pub(crate) struct SqlBuilder<'q, DB: Database> {
    sql: String,
    args: DB::Arguments<'q>,
    /// The first value that failed to encode (or placeholder that failed to
    /// format), reported by [`SqlBuilder::finish`].
    error: Option<BoxDynError>,
}

impl<'q, DB: Database> SqlBuilder<'q, DB> {
    /// Starts with a fragment of SQL (possibly empty).
    pub(crate) fn new(init: impl Into<String>) -> Self {
        Self {
            sql: init.into(),
            args: DB::Arguments::default(),
            error: None,
        }
    }

    /// Appends SQL text as is.
    pub(crate) fn push(&mut self, sql: impl Display) -> &mut Self {
        // Writing into a `String` cannot fail unless `Display` itself does.
        if let Err(e) = write!(self.sql, "{sql}") {
            self.error.get_or_insert(Box::new(e));
        }
        self
    }

    /// Binds a value and appends its placeholder.
    pub(crate) fn push_bind<T>(&mut self, value: T) -> &mut Self
    where
        T: 'q + Encode<'q, DB> + Type<DB>,
    {
        if let Err(e) = self.args.add(value) {
            self.error.get_or_insert(e);
        }
        if let Err(e) = self.args.format_placeholder(&mut self.sql) {
            self.error.get_or_insert(Box::new(e));
        }
        self
    }

    /// A view that puts `separator` before every item but the first.
    pub(crate) fn separated(&mut self, separator: &'static str) -> Separated<'_, 'q, DB> {
        Separated {
            builder: self,
            separator,
            push_separator: false,
        }
    }

    /// `VALUES (…), (…)`: one parenthesised tuple per item, its values pushed
    /// by `push_tuple` (comma-separated).
    pub(crate) fn push_values<I, F>(&mut self, tuples: I, mut push_tuple: F) -> &mut Self
    where
        I: IntoIterator,
        F: FnMut(Separated<'_, 'q, DB>, I::Item),
    {
        self.push("VALUES ");
        let mut rows = self.separated(", ");
        for tuple in tuples {
            rows.push("(");
            push_tuple(rows.builder.separated(", "), tuple);
            rows.push_unseparated(")");
        }
        self
    }

    /// The SQL text and its arguments, for `sqlx::query_with(&sql, args)`.
    pub(crate) fn finish(self) -> Result<(String, DB::Arguments<'q>)> {
        match self.error {
            Some(e) => Err(sqlx::Error::Encode(e).into()),
            None => Ok((self.sql, self.args)),
        }
    }
}

/// Items separated by a fixed string (see [`SqlBuilder::separated`]).
pub(crate) struct Separated<'b, 'q, DB: Database> {
    builder: &'b mut SqlBuilder<'q, DB>,
    separator: &'static str,
    push_separator: bool,
}

impl<'q, DB: Database> Separated<'_, 'q, DB> {
    /// Appends SQL text as the next item.
    pub(crate) fn push(&mut self, sql: impl Display) -> &mut Self {
        if self.push_separator {
            self.builder.push(format_args!("{}{}", self.separator, sql));
        } else {
            self.builder.push(sql);
            self.push_separator = true;
        }
        self
    }

    /// Appends SQL text to the current item (no separator).
    pub(crate) fn push_unseparated(&mut self, sql: impl Display) -> &mut Self {
        self.builder.push(sql);
        self
    }

    /// Binds a value as the next item.
    pub(crate) fn push_bind<T>(&mut self, value: T) -> &mut Self
    where
        T: 'q + Encode<'q, DB> + Type<DB>,
    {
        if self.push_separator {
            self.builder.push(self.separator);
        }
        self.builder.push_bind(value);
        self.push_separator = true;
        self
    }

    /// Binds a value into the current item (no separator).
    pub(crate) fn push_bind_unseparated<T>(&mut self, value: T) -> &mut Self
    where
        T: 'q + Encode<'q, DB> + Type<DB>,
    {
        self.builder.push_bind(value);
        self
    }
}

#[cfg(test)]
mod tests {
    use sqlx::{Arguments, Database, Encode, Postgres, QueryBuilder, Sqlite, Type};

    use super::SqlBuilder;

    /// The same statement through `SqlBuilder` and sqlx's `QueryBuilder`:
    /// (ours, theirs, our argument count), using every call the store uses.
    fn both<DB: Database>() -> (String, String, usize)
    where
        for<'q> i64: Encode<'q, DB> + Type<DB>,
        for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    {
        let rows = [(1_i64, "a"), (2, "b"), (3, "c")];
        let mut ours = SqlBuilder::<DB>::new("INSERT INTO t (x, y) ");
        let mut theirs = QueryBuilder::<DB>::new("INSERT INTO t (x, y) ");
        ours.push_values(&rows, |mut b, (x, y)| {
            b.push_bind(*x).push_bind(*y);
        });
        theirs.push_values(&rows, |mut b, (x, y)| {
            b.push_bind(*x).push_bind(*y);
        });
        ours.push(" WHERE x IN (");
        theirs.push(" WHERE x IN (");
        let mut s = ours.separated(", ");
        for (x, _) in &rows {
            s.push_bind(*x);
        }
        let mut s = theirs.separated(", ");
        for (x, _) in &rows {
            s.push_bind(*x);
        }
        ours.push(") AND (x, y) IN (VALUES ");
        theirs.push(") AND (x, y) IN (VALUES ");
        let mut s = ours.separated(", ");
        for (x, y) in &rows {
            s.push("(");
            s.push_bind_unseparated(*x);
            s.push_unseparated(", ");
            s.push_bind_unseparated(*y);
            s.push_unseparated(")");
        }
        let mut s = theirs.separated(", ");
        for (x, y) in &rows {
            s.push("(");
            s.push_bind_unseparated(*x);
            s.push_unseparated(", ");
            s.push_bind_unseparated(*y);
            s.push_unseparated(")");
        }
        ours.push(")");
        theirs.push(")");
        let (sql, args) = ours.finish().expect("every value encodes");
        (sql, theirs.sql().to_owned(), args.len())
    }

    #[test]
    fn writes_the_same_text_as_query_builder_on_postgres() {
        let (ours, theirs, args) = both::<Postgres>();
        assert_eq!(ours, theirs);
        assert!(
            ours.contains("VALUES ($1, $2), ($3, $4), ($5, $6)"),
            "{ours}"
        );
        assert_eq!(args, 15);
    }

    #[test]
    fn writes_the_same_text_as_query_builder_on_sqlite() {
        let (ours, theirs, args) = both::<Sqlite>();
        assert_eq!(ours, theirs);
        assert!(ours.contains("VALUES (?, ?), (?, ?), (?, ?)"), "{ours}");
        assert_eq!(args, 15);
    }
}
