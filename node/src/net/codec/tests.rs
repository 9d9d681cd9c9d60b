//! The stream codec on in-memory streams: batches round-trip in order, and
//! every limit is a marker (a strike), never an allocation or a hang.

use futures::executor::block_on;

use super::*;

fn read(bytes: Vec<u8>) -> io::Result<RawFrame> {
    let protocol = StreamProtocol::new(xencode_protocol::wire::SYNC_PROTOCOL);
    block_on(FrameCodec.read_request(&protocol, &mut futures::io::Cursor::new(bytes)))
}

fn encode(frames: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for f in frames {
        out.extend_from_slice(&(f.len() as u32).to_be_bytes());
        out.extend_from_slice(f);
    }
    out
}

#[test]
fn a_batch_round_trips_in_order() {
    let protocol = StreamProtocol::new(xencode_protocol::wire::SYNC_PROTOCOL);
    let frames = vec![b"one".to_vec(), Vec::new(), b"three".to_vec()];
    let mut wire = futures::io::Cursor::new(Vec::new());
    block_on(FrameCodec.write_request(&protocol, &mut wire, RawFrame::Frames(frames.clone())))
        .expect("write");
    assert_eq!(
        read(wire.into_inner()).expect("read"),
        RawFrame::Frames(frames)
    );
}

#[test]
fn limits_are_markers_and_damage_is_an_error() {
    // One frame too many.
    let many: Vec<&[u8]> = vec![b"x"; MAX_BATCH_FRAMES + 1];
    assert!(matches!(read(encode(&many)), Ok(RawFrame::Oversize(_))));
    // Frames that are each allowed but together too large (declared only).
    let mut big = encode(&[&[0u8; 16]]);
    big.extend_from_slice(&(MAX_FRAME_BYTES as u32).to_be_bytes());
    assert!(matches!(read(big), Ok(RawFrame::Oversize(_))));
    // A second frame cut short, a length prefix cut short, nothing at all.
    let mut cut = encode(&[b"fine"]);
    cut.extend_from_slice(&10u32.to_be_bytes());
    cut.extend_from_slice(b"abc");
    assert!(read(cut).is_err());
    let mut half = encode(&[b"fine"]);
    half.extend_from_slice(&[0, 0]);
    assert!(read(half).is_err());
    assert!(read(Vec::new()).is_err());
    // Sending over the limits is refused before anything is written.
    let protocol = StreamProtocol::new(xencode_protocol::wire::SYNC_PROTOCOL);
    let mut wire = futures::io::Cursor::new(Vec::new());
    let too_many = RawFrame::Frames(vec![vec![1]; MAX_BATCH_FRAMES + 1]);
    assert!(block_on(FrameCodec.write_request(&protocol, &mut wire, too_many)).is_err());
    assert!(wire.into_inner().is_empty());
}
