//! TODO: misbehave
