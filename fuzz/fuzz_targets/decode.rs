//! Fuzzes `bgp::wire` decoding: the first byte picks the session
//! parameters, the rest is a byte stream split into messages. Besides "no
//! panic", it checks the round trip: a message that decodes without faults
//! re-encodes to bytes that decode to the same message.
#![no_main]

use bgp::wire::{decode, split_stream, AddPathFamilies, Family, Message, SessionParams};
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let mut add_path = AddPathFamilies::EMPTY;
    if sel & 4 != 0 {
        add_path.insert(Family::IPV4_UNICAST);
    }
    if sel & 8 != 0 {
        add_path.insert(Family::IPV6_UNICAST);
    }
    let params = SessionParams {
        four_octet_as: sel & 1 != 0,
        extended_message: sel & 2 != 0,
        add_path,
    };
    let stream = Bytes::copy_from_slice(rest);
    // Decode the input as one message too, header checks and all.
    let _ = decode(&stream, &params);
    for frame in split_stream(stream, params) {
        let Ok(frame) = frame else { break };
        let Ok(msg) = decode(&frame, &params) else { continue };
        if matches!(&msg, Message::Update(u) if !u.faults.is_empty()) {
            continue;
        }
        if let Ok(again) = msg.to_bytes(&params) {
            let back = decode(&again, &params);
            assert_eq!(back.as_ref().ok(), Some(&msg), "round trip changed the message");
        }
    }
});
