"""The crash pipeline: catching panics, taking dumps, recovering guests, keeping dump files safe."""
