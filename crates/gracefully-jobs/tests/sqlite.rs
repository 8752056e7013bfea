//! The contract on SQLite (a temporary file database per test).

mod support;

contract_tests!(support::sqlite);
