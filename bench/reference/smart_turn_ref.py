"""Pipecat's own Smart Turn v3 inference path, timed: its vendored Whisper feature code
(pipecat-ai 1.14.0, pipecat/audio/turn/smart_turn/_whisper_features.py, do_normalize=True as
LocalSmartTurnAnalyzerV3 calls it) and onnxruntime with its session options, on one raw
little-endian f32 16 kHz clip. Prints one JSON object: the score, the features (for the bench to
compare with ours) and per-run timings in ms.

Usage: smart_turn_ref.py MODEL CLIP.f32 FEATURES_OUT.f32 THREADS RUNS
"""

import importlib.util
import json
import os
import sys
import time

import numpy as np
import onnxruntime as ort


def pipecat_features_module():
    # Loaded by file: importing the pipecat package would pull in its whole dependency tree.
    spec = importlib.util.find_spec("pipecat")
    path = os.path.join(
        os.path.dirname(spec.origin), "audio", "turn", "smart_turn", "_whisper_features.py"
    )
    module_spec = importlib.util.spec_from_file_location("pipecat_whisper_features", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def last_8_seconds(audio):
    n = 8 * 16000
    return audio[-n:] if len(audio) > n else np.pad(audio, (n - len(audio), 0))


def main():
    model, clip, features_out, threads, runs = sys.argv[1:6]
    features = pipecat_features_module()
    options = ort.SessionOptions()
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.inter_op_num_threads = 1
    options.intra_op_num_threads = int(threads)
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(model, sess_options=options)
    audio = last_8_seconds(np.fromfile(clip, dtype="<f4"))

    feature_ms, inference_ms = [], []
    for _ in range(int(runs) + 5):  # the first 5 are warm-up
        started = time.perf_counter()
        log_mel = features.compute_whisper_log_mel_features(audio, do_normalize=True)
        middle = time.perf_counter()
        output = session.run(None, {"input_features": np.expand_dims(log_mel, 0)})
        ended = time.perf_counter()
        feature_ms.append((middle - started) * 1000)
        inference_ms.append((ended - middle) * 1000)
    log_mel.astype("<f4").tofile(features_out)
    print(
        json.dumps(
            {
                "score": float(output[0][0].item()),
                "features_ms": feature_ms[5:],
                "inference_ms": inference_ms[5:],
                "onnxruntime": ort.__version__,
            }
        )
    )


if __name__ == "__main__":
    main()
