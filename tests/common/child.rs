//! Stopping what a test started: a `warren mount` or `warren node` child and its mount.
//! Shared by the `common` and `registry_support` test-support trees (the latter includes
//! this file by path).

use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// SIGTERM (the clean path unmounts by itself), up to `within` for the child to exit, then
/// SIGKILL. The exit status when it exited on its own.
pub fn stop_child(child: &mut Child, within: Duration) -> Option<ExitStatus> {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// Detaches whatever is still mounted at `mountpoint` (a killed daemon's dead FUSE
/// mount); nothing there is not an error.
pub fn detach(mountpoint: &Path) {
    let _ = Command::new("umount")
        .arg("-l")
        .arg(mountpoint)
        .stderr(Stdio::null())
        .status();
}
