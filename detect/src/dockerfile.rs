//! Dockerfile generation from a plan (next step).
