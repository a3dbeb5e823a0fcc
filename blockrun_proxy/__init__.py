"""blockrun-proxy: an OpenAI-compatible sidecar that pays BlockRun's x402 gateway per call."""

__version__ = "0.1.0"
