//! The contract on PostgreSQL (a schema of its own per test). Needs `DATABASE_URL`.

mod support;

contract_tests!(support::postgres, #[ignore = "needs PostgreSQL: set DATABASE_URL"]);
