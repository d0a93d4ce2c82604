# The Hydra configuration, shipped as the package dylora.conf (pyproject.toml maps it here).
