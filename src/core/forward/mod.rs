//! Per-viewer forwarding decisions: when a viewer's copy of a track starts, and how its sequence
//! numbers and timestamps are mapped so the viewer sees one continuous stream.

pub mod forwarder;

pub use forwarder::{Decision, DropReason, Forwarder, LayerFrame, SvcLayers};

#[cfg(test)]
mod tests;
