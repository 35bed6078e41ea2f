"""Reference sentence embeddings for daemon/benches/embed.rs: Hugging Face `tokenizers` and
ONNX Runtime's Python API on the same model files, mean-pooled over the attention mask and
L2-normalised as sentence-transformers does.

Reads JSON from stdin: {"model": path, "tokenizer": path, "threads": n, "runs": n,
"texts": [..]}. Writes JSON to stdout: {"ids": [[..]..], "embeddings": [[..]..],
"ms": [per-run ms of embedding texts[0]], "version": onnxruntime's}.
"""
import json
import sys
import time

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer


def main():
    req = json.load(sys.stdin)
    tok = Tokenizer.from_file(req["tokenizer"])
    tok.no_padding()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = req["threads"]
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(req["model"], opts, providers=["CPUExecutionProvider"])
    names = {i.name for i in sess.get_inputs()}

    def embed(text):
        enc = tok.encode(text)
        ids = np.array([enc.ids], dtype=np.int64)
        mask = np.array([enc.attention_mask], dtype=np.int64)
        feed = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in names:
            feed["token_type_ids"] = np.zeros_like(ids)
        hidden = sess.run(["last_hidden_state"], feed)[0][0]
        pooled = (hidden * mask[0][:, None]).sum(0) / max(mask.sum(), 1e-9)
        return enc.ids, pooled / max(np.linalg.norm(pooled), 1e-12)

    out = {"ids": [], "embeddings": [], "ms": [], "version": ort.__version__}
    for text in req["texts"]:
        ids, vec = embed(text)
        out["ids"].append(ids)
        out["embeddings"].append([float(x) for x in vec])
    for _ in range(req["runs"]):
        start = time.perf_counter()
        embed(req["texts"][0])
        out["ms"].append((time.perf_counter() - start) * 1000.0)
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
