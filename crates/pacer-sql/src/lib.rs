//! Continuous queries over the log, and the functions they use.
//!
//! [`Engine`] runs ksqlDB statements: persistent, push and pull queries (see `engine`).
//! [`tracker::Tracker`] is the hand-wired tracking query (latest position, speed, progress
//! along a course, rank per device) until the tracking functions move into the engine.

pub mod course;
pub mod engine;
pub mod geo_fn;
pub mod tracker;

pub use course::Course;
pub use engine::Engine;
pub use tracker::{Tracker, TrackerConfig};
