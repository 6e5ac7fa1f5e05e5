//! Bootstrap bytes from outside: `parse` must return Ok or a typed error, never panic,
//! hang or allocate without bound. An image it accepts must walk, and if the writer can
//! represent it, the written bootstrap must parse again with the same tree.
#![no_main]

use libfuzzer_sys::fuzz_target;
use warren::rafs::dirent::parse_dir_blocks;
use warren::rafs::reader::parse;
use warren::rafs::writer::write_bootstrap;

fuzz_target!(|data: &[u8]| {
    // The directory-block decoder on its own: any bytes may be a directory's data.
    let _ = parse_dir_blocks(data);

    let Ok(bs) = parse(data) else { return };
    let paths: Vec<Vec<u8>> = bs.image.walk().into_iter().map(|(p, _)| p).collect();
    // The writer may refuse an image it cannot represent (a typed error); what it
    // does write must be a bootstrap the reader accepts, holding the same paths.
    let Ok(bytes) = write_bootstrap(&bs.image) else {
        return;
    };
    let again = match parse(&bytes) {
        Ok(again) => again,
        Err(e) => panic!("re-serialized bootstrap does not parse: {e}"),
    };
    let again_paths: Vec<Vec<u8>> = again.image.walk().into_iter().map(|(p, _)| p).collect();
    assert_eq!(
        paths, again_paths,
        "re-serialized bootstrap has another tree"
    );
});
