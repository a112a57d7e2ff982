"""The toy world: a tiny SD-format teacher trained offline on procedural shapes."""
