//! `sqlx::migrate!` embeds `migrations/` at compile time; without this, adding or
//! changing a migration file alone would not rebuild the crate, and a binary or test
//! built incrementally would silently run the old set (the upgrade test,
//! `tests/upgrade.rs`, compares the applied migrations with the files).
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
