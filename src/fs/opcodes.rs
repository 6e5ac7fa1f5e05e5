//! FUSE opcode names, for per-operation metrics.

pub fn name(opcode: u32) -> &'static str {
    match opcode {
        1 => "lookup",
        2 => "forget",
        3 => "getattr",
        5 => "readlink",
        14 => "open",
        15 => "read",
        17 => "statfs",
        18 => "release",
        22 => "getxattr",
        23 => "listxattr",
        25 => "flush",
        26 => "init",
        27 => "opendir",
        28 => "readdir",
        29 => "releasedir",
        34 => "access",
        42 => "batch_forget",
        44 => "readdirplus",
        _ => "other",
    }
}
