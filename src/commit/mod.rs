//! Commitments for proof of inference: what a provider commits to while it generates, so
//! that a router can later check chosen steps.
//!
//! This room holds the cryptographic plumbing only (Merkle trees over per-step data); it runs
//! no model and decides nothing.

pub mod merkle;
