"""CNN Designer's Qt GUI. Importing this package does not import Qt; `designer.app` does."""
