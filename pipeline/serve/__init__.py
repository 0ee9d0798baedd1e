"""``dferclip serve``: predict behind HTTP on Ray Serve (docs/serve.md).

:mod:`pipeline.serve.requests` checks request bodies, :mod:`pipeline.serve.backends` runs the
model (PyTorch or the ONNX export), :mod:`pipeline.serve.app` is the Serve application.
"""
