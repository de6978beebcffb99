"""The model registry: versions as immutable, content-addressed bundles; aliases that move
atomically."""
