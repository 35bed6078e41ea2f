//! SIP signalling.
