//! The streaming SQL engine: ksqlDB statements parsed, planned and run over the log.

pub mod aggregate;
pub mod ast;
pub mod expr;
pub mod functions;
pub mod operator;
pub mod parse;
pub mod plan;
pub mod value;
