//! placeholder
pub mod activator;
