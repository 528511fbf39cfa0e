//! The operator CLI `molt`.
fn main() {}
