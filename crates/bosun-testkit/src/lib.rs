//! Starts real bosun processes for tests and benchmarks.
