//! The `kubernetes` target: manifests from the app's settings (typed, API v1.33), applied with
//! server-side apply; rollout watch, rollback and strategies build on them.

pub mod manifest;
pub mod spec;

pub use manifest::{Manifests, Revision, render};
pub use spec::{KubeSpec, SpecError, StrategyKind};
