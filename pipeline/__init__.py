"""The whole CXRFuse flow as one command driven by a config: ``python -m pipeline run CONFIG``."""
