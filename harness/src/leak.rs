//! TODO: leak
