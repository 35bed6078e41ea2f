//! Uplink: store-and-forward of everything that goes upstream (filled by the uplink work).
