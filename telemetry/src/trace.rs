//! Traces: filled in below.
