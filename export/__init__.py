"""Model checkpoint -> ONNX graph + model card (torch and onnx are imported lazily)."""
