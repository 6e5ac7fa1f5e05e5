//! Serializes an [`Image`] into a RAFS v6 bootstrap.
