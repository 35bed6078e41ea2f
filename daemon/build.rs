//! Link flags the crates below us do not emit themselves.

fn main() {
    // espeak-ng (compiled into the binary by piper-rs → espeak-rs-sys) uses libsonic for its
    // speed-up; its CMake finds the system's (Debian `libsonic-dev`) instead of fetching sonic,
    // but the static espeak-ng archive does not carry the link flag: add it here.
    println!("cargo:rustc-link-lib=dylib=sonic");
    println!("cargo:rerun-if-changed=build.rs");
}
