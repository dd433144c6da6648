"""Model cards, inference backends and the streaming separator.

Light on import: onnxruntime is imported by the backend that needs it, when it is built.
"""
