"""Installed as the package `cnn_designer_resources` (see pyproject.toml); read through engine.resources."""
