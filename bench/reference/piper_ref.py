"""Piper's own engine (piper-tts, ONNX Runtime from PyPI) on the same voice, sentence and
threads as edgevoice's speech bench. Prints one JSON object:
{"load_ms": [...], "first_audio_ms": [...], "rtf": x, "versions": {...}}.

Usage: piper_ref.py VOICE.onnx THREADS RUNS "SENTENCE"
"""

import json
import sys
import time

import onnxruntime
import piper
from piper import PiperVoice


def main() -> None:
    voice_path, threads, runs, sentence = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]

    # Piper 1.8.0 builds its session from a default SessionOptions(); give it our thread
    # settings (intra-op threads, one inter-op thread, as edgevoice's PiperSynthesizer does)
    # without changing anything else in Piper's load path.
    plain_options = onnxruntime.SessionOptions

    def options_with_threads():
        opts = plain_options()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        return opts

    onnxruntime.SessionOptions = options_with_threads

    start = time.perf_counter()
    voice = PiperVoice.load(voice_path)
    load_ms = (time.perf_counter() - start) * 1000.0

    def first_audio_and_total():
        start = time.perf_counter()
        first = None
        samples = 0
        for chunk in voice.synthesize(sentence):
            if first is None:
                first = time.perf_counter() - start
            samples += len(chunk.audio_int16_array)
        total = time.perf_counter() - start
        return first * 1000.0, total, samples / voice.config.sample_rate

    first_audio_and_total()  # warm-up, as the Rust side does
    firsts = []
    rtfs = []
    for _ in range(runs):
        first_ms, total, audio_s = first_audio_and_total()
        firsts.append(first_ms)
        rtfs.append(total / audio_s)
    rtfs.sort()
    print(
        json.dumps(
            {
                "load_ms": load_ms,
                "first_audio_ms": firsts,
                "rtf": rtfs[len(rtfs) // 2],
                "versions": {
                    "piper-tts": getattr(piper, "__version__", "1.8.0"),
                    "onnxruntime": onnxruntime.__version__,
                },
            }
        )
    )


if __name__ == "__main__":
    main()
