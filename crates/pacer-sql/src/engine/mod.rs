//! The streaming SQL engine: ksqlDB statements parsed, planned and run over the log.

pub mod aggregate;
pub mod ast;
pub mod expr;
pub mod functions;
pub mod parse;
pub mod value;
