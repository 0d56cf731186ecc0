"""Run at start-up of MLServer's HuggingFace peer only (benchmarks/serve/text.py puts this
folder on its PYTHONPATH). Two shims, neither of which changes inference:

- mlserver-huggingface 1.7.1 imports optimum 1.x's ONNX exporter at import time, which imports
  private helpers that torch 2.9+ moved out of ``torch.onnx.symbolic_opset14``
  (``_attention_scale``...), so the runtime does not import beside the only CPU build of torch
  here (2.13). The helpers still exist, one module further in: put them back where optimum
  looks. Nothing is exported in the benchmark.
- it also runs ``import tensorflow as tf`` at import time, though only a ``framework: tf``
  model touches ``tf`` (its thread settings). The peer's environment installs the runtime
  without TensorFlow (``--no-deps``; a ~600 MB wheel for one unused import), so an empty
  ``tensorflow`` module stands in when the real one is absent. It has a spec but no
  distribution metadata, so transformers still reports TensorFlow as unavailable and the
  pipeline runs on PyTorch.
"""

import contextlib
import importlib.machinery
import importlib.util
import sys
import types

with contextlib.suppress(ImportError):
    import torch.onnx.symbolic_opset14 as public
    from torch.onnx._internal.torchscript_exporter import symbolic_opset14 as internal

    for name in dir(internal):
        if name.startswith("_") and not name.startswith("__") and not hasattr(public, name):
            setattr(public, name, getattr(internal, name))
    for name in ("jit_utils", "symbolic_helper", "_type_utils"):
        if not hasattr(public, name) and hasattr(internal, name):
            setattr(public, name, getattr(internal, name))

if importlib.util.find_spec("tensorflow") is None:
    stand_in = types.ModuleType("tensorflow", "empty stand-in (benchmarks/serve/peers/hf_compat)")
    stand_in.__spec__ = importlib.machinery.ModuleSpec("tensorflow", None)
    sys.modules["tensorflow"] = stand_in
