"""The mini world: a procedural tri-modal dataset with known attributes, tiny models with the real
architectures, and the shipped ``mini`` preset (the embedded offline default)."""
