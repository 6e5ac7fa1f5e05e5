//! Building images: walk a directory or a layer tar, cut files into chunks, compress and
//! deduplicate them into a blob, and describe the tree in a bootstrap.
