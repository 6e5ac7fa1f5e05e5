//! The transfer protocol, version 1: one QUIC bidirectional stream per request.
//!
//! ```text
//! request   u8 version | u8 flags (bit 0: "ask as owner", bit 1: "no redirect") | u16 count
//!           count x ( u8 algo | [32] digest | u32 size | u16 len | blob id | u32 chunk index )
//! response  u8 version | u8 status (0 accepted, 1 busy, 2 bad request)
//!           then per entry, in any order:
//!           u16 entry | u8 outcome (0 data, 1 miss, 2 failed, 3 holder) | u32 len | len bytes
//!           (a holder item's bytes are the address of a member that holds the chunk)
//! ```
//!
//! The response header goes out before any chunk is looked up, so a requester can tell a
//! slow owner (still fetching from the origin) from a dead one. Integers are big-endian.
//! Every decoder here takes bytes from other machines: they bound every length before
//! they allocate and never panic.

use crate::chunk::{ChunkId, ChunkWant, DigestAlgo, OriginHint};

/// The protocol version this node speaks (the first byte of every message).
pub const VERSION: u8 = 1;
/// Most chunks one request may name.
pub const MAX_BATCH: usize = 256;
/// Longest blob id accepted (sha256 hex is 64).
pub const MAX_BLOB_ID: usize = 255;
/// Largest chunk a response may carry (RAFS chunks are at most 16 MiB).
pub const MAX_CHUNK: u32 = 16 << 20;
/// Largest request on the wire.
pub const MAX_REQUEST: usize = 4 + MAX_BATCH * (1 + 32 + 4 + 2 + MAX_BLOB_ID + 4);
/// Size of a response item's header.
pub const ITEM_HEADER: usize = 7;

const FLAG_AS_OWNER: u8 = 1;
const FLAG_NO_REDIRECT: u8 = 2;
/// Longest holder address in a response (`[v6 address]:port` fits).
pub const MAX_HOLDER_ADDR: u32 = 64;

/// What is wrong with a message from a peer.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    /// Another protocol version.
    #[error("protocol version {0} (this node speaks {VERSION})")]
    Version(u8),
    /// The message ended inside the named field.
    #[error("message cut short: {0}")]
    Truncated(&'static str),
    /// Bytes after the last entry.
    #[error("{0} trailing bytes after the request")]
    Trailing(usize),
    /// Too few or too many chunks in one request.
    #[error("request names {0} chunks (1..={MAX_BATCH} allowed)")]
    BatchSize(usize),
    /// A digest algorithm code this node does not know.
    #[error("unknown digest algorithm {0}")]
    Algo(u8),
    /// A blob id that is too long or not UTF-8.
    #[error("blob id of {0} bytes (at most {MAX_BLOB_ID}, UTF-8)")]
    BlobId(usize),
    /// An unknown flags, status or outcome code.
    #[error("unknown {0} code {1}")]
    Code(&'static str, u8),
    /// A chunk length over the limit, or a length where none belongs.
    #[error("chunk of {0} bytes (at most {MAX_CHUNK})")]
    ChunkSize(u32),
}

/// A request: the chunks wanted, and whether the asked node should fetch what it lacks
/// from the origin (it is their owner) or only serve what it holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// Fetch what is missing from the origin (the asked node owns the chunks).
    pub as_owner: bool,
    /// Answer with bytes, never with a holder to ask instead (the asker came back from one).
    pub no_redirect: bool,
    /// The chunks, at most [`MAX_BATCH`].
    pub wants: Vec<ChunkWant>,
}

/// How the asked node took a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Answers follow.
    Accepted,
    /// Over its rate or load limits: ask elsewhere.
    Busy,
    /// The request did not decode.
    BadRequest,
}

/// What became of one requested chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The chunk's bytes follow.
    Data,
    /// Not held (and, when asked as owner, not fetchable: the node does not know the blob).
    Miss,
    /// The origin fetch failed.
    Failed,
    /// Ask the member whose address follows: it holds the chunk (the asked node has served
    /// it often enough and spreads the load).
    Holder,
}

/// The header of one response item; `len` bytes of chunk data follow it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ItemHeader {
    /// Index of the entry in the request.
    pub entry: u16,
    /// What became of it.
    pub outcome: Outcome,
    /// Bytes of chunk data that follow (0 unless `Data`).
    pub len: u32,
}

/// The request's bytes; refuses an empty or oversized batch and overlong blob ids.
pub fn encode_request(req: &Request) -> Result<Vec<u8>, WireError> {
    if req.wants.is_empty() || req.wants.len() > MAX_BATCH {
        return Err(WireError::BatchSize(req.wants.len()));
    }
    let mut out = Vec::with_capacity(4 + req.wants.len() * 110);
    out.push(VERSION);
    let mut flags = 0;
    if req.as_owner {
        flags |= FLAG_AS_OWNER;
    }
    if req.no_redirect {
        flags |= FLAG_NO_REDIRECT;
    }
    out.push(flags);
    out.extend_from_slice(&(req.wants.len() as u16).to_be_bytes());
    for w in &req.wants {
        let blob = w.origin.blob_id.as_bytes();
        if blob.len() > MAX_BLOB_ID {
            return Err(WireError::BlobId(blob.len()));
        }
        out.push(w.id.algo.code());
        out.extend_from_slice(&w.id.digest);
        out.extend_from_slice(&w.size.to_be_bytes());
        out.extend_from_slice(&(blob.len() as u16).to_be_bytes());
        out.extend_from_slice(blob);
        out.extend_from_slice(&w.origin.chunk_index.to_be_bytes());
    }
    Ok(out)
}

/// Reads big-endian fields off a byte slice, failing on a short read.
struct Cursor<'a> {
    buf: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], WireError> {
        if self.buf.len() < n {
            return Err(WireError::Truncated(what));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, WireError> {
        Ok(self.take(1, what)?[0])
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, WireError> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, WireError> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
}

/// Decodes a whole request; every length is bounded before anything is allocated.
pub fn decode_request(buf: &[u8]) -> Result<Request, WireError> {
    let mut c = Cursor { buf };
    let version = c.u8("version")?;
    if version != VERSION {
        return Err(WireError::Version(version));
    }
    let flags = c.u8("flags")?;
    if flags & !(FLAG_AS_OWNER | FLAG_NO_REDIRECT) != 0 {
        return Err(WireError::Code("flags", flags));
    }
    let count = c.u16("count")? as usize;
    if count == 0 || count > MAX_BATCH {
        return Err(WireError::BatchSize(count));
    }
    let mut wants = Vec::with_capacity(count);
    for _ in 0..count {
        let code = c.u8("digest algorithm")?;
        let algo = DigestAlgo::from_code(code).ok_or(WireError::Algo(code))?;
        let mut digest = [0u8; 32];
        digest.copy_from_slice(c.take(32, "digest")?);
        let size = c.u32("chunk size")?;
        if size > MAX_CHUNK {
            return Err(WireError::ChunkSize(size));
        }
        let len = c.u16("blob id length")? as usize;
        if len > MAX_BLOB_ID {
            return Err(WireError::BlobId(len));
        }
        let blob_id = std::str::from_utf8(c.take(len, "blob id")?)
            .map_err(|_| WireError::BlobId(len))?
            .to_string();
        let chunk_index = c.u32("chunk index")?;
        wants.push(ChunkWant {
            id: ChunkId { algo, digest },
            route: digest,
            size,
            origin: OriginHint {
                blob_id,
                chunk_index,
            },
        });
    }
    if !c.buf.is_empty() {
        return Err(WireError::Trailing(c.buf.len()));
    }
    Ok(Request {
        as_owner: flags & FLAG_AS_OWNER != 0,
        no_redirect: flags & FLAG_NO_REDIRECT != 0,
        wants,
    })
}

/// The first two bytes of a response.
pub fn encode_response_header(status: Status) -> [u8; 2] {
    let code = match status {
        Status::Accepted => 0,
        Status::Busy => 1,
        Status::BadRequest => 2,
    };
    [VERSION, code]
}

/// Reads the first two bytes of a response.
pub fn decode_response_header(b: [u8; 2]) -> Result<Status, WireError> {
    if b[0] != VERSION {
        return Err(WireError::Version(b[0]));
    }
    match b[1] {
        0 => Ok(Status::Accepted),
        1 => Ok(Status::Busy),
        2 => Ok(Status::BadRequest),
        other => Err(WireError::Code("status", other)),
    }
}

/// The header of one response item.
pub fn encode_item_header(h: ItemHeader) -> [u8; ITEM_HEADER] {
    let mut out = [0u8; ITEM_HEADER];
    out[..2].copy_from_slice(&h.entry.to_be_bytes());
    out[2] = match h.outcome {
        Outcome::Data => 0,
        Outcome::Miss => 1,
        Outcome::Failed => 2,
        Outcome::Holder => 3,
    };
    out[3..].copy_from_slice(&h.len.to_be_bytes());
    out
}

/// Reads one item header; refuses oversized lengths and bodies on misses.
pub fn decode_item_header(b: [u8; ITEM_HEADER]) -> Result<ItemHeader, WireError> {
    let outcome = match b[2] {
        0 => Outcome::Data,
        1 => Outcome::Miss,
        2 => Outcome::Failed,
        3 => Outcome::Holder,
        other => return Err(WireError::Code("outcome", other)),
    };
    let len = u32::from_be_bytes([b[3], b[4], b[5], b[6]]);
    let fits = match outcome {
        Outcome::Data => len <= MAX_CHUNK,
        Outcome::Holder => (1..=MAX_HOLDER_ADDR).contains(&len),
        Outcome::Miss | Outcome::Failed => len == 0,
    };
    if !fits {
        return Err(WireError::ChunkSize(len));
    }
    Ok(ItemHeader {
        entry: u16::from_be_bytes([b[0], b[1]]),
        outcome,
        len,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn want() -> impl Strategy<Value = ChunkWant> {
        (
            any::<bool>(),
            any::<[u8; 32]>(),
            0..=MAX_CHUNK,
            "[a-f0-9]{0,80}",
            any::<u32>(),
        )
            .prop_map(|(sha, digest, size, blob_id, chunk_index)| ChunkWant {
                id: ChunkId {
                    algo: if sha {
                        DigestAlgo::Sha256
                    } else {
                        DigestAlgo::Blake3
                    },
                    digest,
                },
                route: digest,
                size,
                origin: OriginHint {
                    blob_id,
                    chunk_index,
                },
            })
    }

    proptest! {
        #[test]
        fn requests_round_trip(as_owner: bool, no_redirect: bool, wants in prop::collection::vec(want(), 1..20)) {
            let req = Request { as_owner, no_redirect, wants };
            let bytes = encode_request(&req).unwrap();
            prop_assert_eq!(decode_request(&bytes).unwrap(), req);
        }

        #[test]
        fn decoders_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
            let _ = decode_request(&bytes);
            if bytes.len() >= ITEM_HEADER {
                let mut h = [0u8; ITEM_HEADER];
                h.copy_from_slice(&bytes[..ITEM_HEADER]);
                let _ = decode_item_header(h);
            }
        }

        #[test]
        fn truncated_requests_are_errors(wants in prop::collection::vec(want(), 1..4), cut in 1usize..50) {
            let bytes = encode_request(&Request { as_owner: true, no_redirect: false, wants }).unwrap();
            let keep = bytes.len().saturating_sub(cut);
            prop_assert!(decode_request(&bytes[..keep]).is_err());
        }

        #[test]
        fn item_headers_round_trip(entry: u16, len in 0..=MAX_CHUNK) {
            let h = ItemHeader { entry, outcome: Outcome::Data, len };
            prop_assert_eq!(decode_item_header(encode_item_header(h)).unwrap(), h);
        }
    }

    #[test]
    fn hostile_lengths_are_refused() {
        let mut bytes = vec![VERSION, 0];
        bytes.extend_from_slice(&u16::MAX.to_be_bytes());
        assert_eq!(decode_request(&bytes), Err(WireError::BatchSize(65535)));
        let h = [0, 0, 0, 0xff, 0xff, 0xff, 0xff];
        assert!(matches!(
            decode_item_header(h),
            Err(WireError::ChunkSize(_))
        ));
        let miss_with_body = [0, 0, 1, 0, 0, 0, 1];
        assert!(decode_item_header(miss_with_body).is_err());
    }
}
