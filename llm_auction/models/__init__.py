"""Models: Ad-LLM backends (transformers, vLLM), text encoders, the pCTR network and its ONNX
scorer, and the user simulator. Depends on ``schemas`` and ``auction`` only."""
