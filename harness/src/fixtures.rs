//! TODO: fixtures
