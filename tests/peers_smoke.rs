//! Smoke tests of the real test peers (filled by the peers work).
