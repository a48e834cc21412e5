"""Self-contained inference engines (stdlib + numpy + onnxruntime only), pushed alone to boards."""
