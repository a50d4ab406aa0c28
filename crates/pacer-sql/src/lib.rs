//! Continuous queries over the log, and the functions they use.
//!
//! For now this holds one hand-wired query, [`tracker::Tracker`]: latest position, speed,
//! progress along a course and rank per device. The SQL engine (parser, planner,
//! operators) replaces the hand wiring with `CREATE TABLE … AS SELECT` and keeps these
//! functions.

pub mod course;
pub mod engine;
pub mod geo_fn;
pub mod pull;
pub mod tracker;

pub use course::Course;
pub use tracker::{Tracker, TrackerConfig};
