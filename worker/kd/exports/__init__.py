"""The student's files: TorchScript, safetensors with config.json and ONNX for tensor
students (`tensor`); a Hugging Face directory ZIP and ONNX for transformers (`transformer`)."""
