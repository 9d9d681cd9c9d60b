#![no_main]
//! See `xencode_node::fuzzing::viewer_frames`.

libfuzzer_sys::fuzz_target!(
    init: xencode_node::fuzzing::quiet_panics(),
    |data: &[u8]| xencode_node::fuzzing::viewer_frames(data)
);
