//! Continuous queries over the log, and the functions they use.
//!
//! [`Engine`] runs ksqlDB statements: persistent, push and pull queries (see `engine`).
//! Tracking is part of the SQL: aggregates over a device's fixes (`track`) read the
//! courses of the [`Geometry`], and window functions rank the groups (a league table).

pub mod course;
pub mod engine;
pub mod geo_fn;
pub mod geometry;
pub mod track;
pub mod zone;

pub use course::Course;
pub use engine::Engine;
pub use geometry::Geometry;
pub use zone::Zone;
