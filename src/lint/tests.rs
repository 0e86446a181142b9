//! Unit tests for the lint.
