//! warren: a P2P-aware chunk cache node for Nydus RAFS v6 container images.
//!
//! The library follows the data flow: [`rafs`] reads and writes the on-disk image format,
//! [`build`] turns directories and layer tars into images.

pub mod api;
pub mod backend;
pub mod build;
pub mod cli;
pub mod fetch;
pub mod fs;
pub mod node;
pub mod oci;
pub mod rafs;
pub mod store;
