"""Configuration: ablation files, typed and validated, expanded into points."""
