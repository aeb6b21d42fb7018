"""Error types shared by the engine, so callers can show one clear line instead of a traceback."""


class EngineError(Exception):
    """Base of every error the engine raises on purpose; its message is meant for the user."""


class SpecError(EngineError, ValueError):
    """An architecture that cannot be read: the message names the layer index and field."""


class LayerShapeError(EngineError, ValueError):
    """A layer that cannot work on the shape it receives; the message says how to fix it."""
