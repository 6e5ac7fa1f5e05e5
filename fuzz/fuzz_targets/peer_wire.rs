//! Bytes from other cluster members: the transfer protocol's request and response framing.
//! Every decoder must return Ok or a typed error, and a request it accepts must encode
//! back to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use warren_peer::wire::{
    decode_item_header, decode_request, decode_response_header, encode_request, ITEM_HEADER,
};

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = decode_request(data) {
        assert_eq!(encode_request(&req).as_deref(), Ok(data));
    }
    if let [a, b, ..] = data {
        let _ = decode_response_header([*a, *b]);
    }
    if data.len() >= ITEM_HEADER {
        let mut h = [0u8; ITEM_HEADER];
        h.copy_from_slice(&data[..ITEM_HEADER]);
        let _ = decode_item_header(h);
    }
});
