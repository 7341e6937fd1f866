//! placeholder
pub use arbor_actors as actors;
