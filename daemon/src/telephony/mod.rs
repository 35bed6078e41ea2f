//! Telephony: SIP signalling (`sip`), SDP offer/answer (`sdp`) and the RTP media engine
//! (`media`). The protocol logic is sans-I/O (events and time in, actions out); the async
//! shells around it own the sockets.

pub mod codec;
pub mod media;
pub mod rtp_ports;
pub mod sdp;
pub mod sip;
