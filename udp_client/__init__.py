"""The headless client. Never imports the engine, onnxruntime or torch."""
