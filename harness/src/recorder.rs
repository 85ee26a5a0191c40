//! TODO: recorder
