"""Deployment runtime: ``.lbt`` model files and torch-free inference on lowbit's native kernels.

    from lowbit.runtime import load
    net = load("model.lbt")            # NumPy + the compiled extension; torch is not imported
    logits = net.predict(images_uint8)  # (N, C, H, W) 8-bit pixels -> float32 logits

``lowbit export CHECKPOINT -o MODEL.lbt`` writes the file (:mod:`lowbit.runtime.export`, which needs torch).
"""

from .engine import BinaryNetwork, load  # noqa: F401
from .modelfile import FORMAT_VERSION, load_model_file, save_model_file  # noqa: F401
