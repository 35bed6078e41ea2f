# Included into the CMake builds of whisper-rs-sys and llama-cpp-sys-2 (CMAKE_PROJECT_INCLUDE in
# .cargo/config.toml; both build scripts forward CMAKE_* variables to CMake).
#
# Why: whisper-rs-sys asks rustc to link `static=ggml`, `ggml-base`, `ggml-cpu`, and rustc must
# find those archives when it compiles whisper-rs-sys itself. Its search paths are its CMake
# build tree (recursively) and its install dir; a `-L native=target/ggml-prefix/lib` in
# [build] rustflags does not help: rustc runs registry crates in their own source directory,
# where that relative path does not exist. So this links the ONE ggml's archives from the prefix
# (packaging/build-ggml.sh) into the build tree under ggml-prefix-lib/, where whisper-rs-sys's
# search finds them. Symlinks: the same archives, nothing copied.
if(NOT DEFINED EDGEVOICE_GGML_LINKED)
  set(EDGEVOICE_GGML_LINKED ON)
  set(_ev_lib "")
  foreach(_ev_p IN LISTS CMAKE_PREFIX_PATH)
    if(EXISTS "${_ev_p}/lib/libggml.a" AND _ev_lib STREQUAL "")
      set(_ev_lib "${_ev_p}/lib")
    endif()
  endforeach()
  if(_ev_lib STREQUAL "")
    message(FATAL_ERROR "the ggml prefix is missing (no lib/libggml.a in CMAKE_PREFIX_PATH "
      "'${CMAKE_PREFIX_PATH}'): run `make ggml` (packaging/build-ggml.sh) first")
  endif()
  file(MAKE_DIRECTORY "${CMAKE_BINARY_DIR}/ggml-prefix-lib")
  foreach(_ev_a ggml ggml-base ggml-cpu)
    file(CREATE_LINK "${_ev_lib}/lib${_ev_a}.a" "${CMAKE_BINARY_DIR}/ggml-prefix-lib/lib${_ev_a}.a"
      SYMBOLIC)
  endforeach()
endif()
