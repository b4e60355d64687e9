//! Shared by the datastore's integration tests: scratch PostgreSQL databases.
//!
//! PostgreSQL comes from `LANYARD_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`); `scripts/test` makes sure a server
//! is running.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use sqlx::Connection;

pub fn pg_admin_url() -> String {
    std::env::var("LANYARD_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string())
}

/// A fresh database on the test server, dropped by [`drop_pg_db`].
pub async fn fresh_pg_db() -> (String, String) {
    let admin = pg_admin_url();
    let mut conn = sqlx::PgConnection::connect(&admin)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "PostgreSQL is required for the datastore tests ({admin}): {e}. \
             Run ./scripts/test, which starts it, or set LANYARD_TEST_POSTGRES_URL"
            )
        });
    let name = format!("lanyard_test_{}", lanyard_store::new_id().unwrap());
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .unwrap();
    let base = admin.rsplit_once('/').map(|(b, _)| b.to_string()).unwrap();
    (format!("{base}/{name}"), name)
}

pub async fn drop_pg_db(name: &str) {
    let mut conn = sqlx::PgConnection::connect(&pg_admin_url()).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(&mut conn)
    .await
    .unwrap();
}
