//! The streaming SQL engine: ksqlDB statements parsed, planned and run over the log.

pub mod functions;
pub mod value;
