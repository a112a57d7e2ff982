"""The models: the catalogue, architectures as JSON (configs/), block removal, parameters and MACs,
loading (safetensors only), hub downloads, adapters."""
