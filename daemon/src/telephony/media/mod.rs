//! RTP media engine (filled by the media work).
