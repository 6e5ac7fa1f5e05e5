//! The FUSE file system: serves one RAFS image read-only, file data through the fetch
//! chain. [`filesystem`] answers FUSE requests from the in-memory image; [`session`]
//! mounts it and runs the worker threads.

pub mod filesystem;
pub mod opcodes;
mod push;
pub mod session;

pub use filesystem::RafsFs;
pub use session::{check_mountpoint, open_image, ImageMount, MountError, MountOptions};
