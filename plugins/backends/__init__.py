"""Built-in backends: each module registers one backend type."""
