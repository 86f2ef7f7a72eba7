//! Atomic file writes (placeholder: being written).
