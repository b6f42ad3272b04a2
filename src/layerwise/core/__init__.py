"""The bottom layer: errors, the registry type, config machinery, atomic file writes, the device, the
callback hooks and report sections. It imports nothing else from layerwise; every layer above uses it."""

__version__ = "0.1.0"
