"""A trained model: the one object the trainer produces and model files, export, the CLI and the
GUI take.

Why one type: a network is only usable with everything around its weights (which class each
output means, how an image becomes its input, how it was trained). Carrying those as loose
arguments or several look-alike records let them drift apart; here they travel together, and
`problem()` is the one check that they fit each other.

    tm = trainer.trained()                        # engine.training: the result of a run
    modelfile.save("digits.cnnd", tm)             # engine.modelfile writes it; load() gives one back
    tm = modelfile.load("digits.cnnd")
    tm.predict_files(["seven.png"])               # (N, classes) probabilities, the app's preprocessing
    export_model(tm, "onnx", "digits.onnx")       # engine.export takes it (or a .cnnd path)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from engine import __version__
from engine.data import Preprocessing, load_image
from engine.shapes import Inference, infer, weights_problem
from engine.spec import Spec

if TYPE_CHECKING:
    from engine.model import Model


@dataclass
class TrainedModel:
    """Architecture, weights and what they mean: classes in output order, the preprocessing that
    made the training inputs, the training settings and the per-epoch history."""

    spec: Spec
    #: every weight and running statistic by state_dict name ("layers.{i}.weight" ...), float32
    state: dict[str, np.ndarray]
    classes: list[str]
    preprocessing: Preprocessing
    #: the settings used (TrainConfig plus train_images, val_images, status, message, best_epoch, data)
    training: dict[str, Any] = field(default_factory=dict)
    #: one dict per completed epoch (EpochEnd.to_dict())
    history: list[dict[str, Any]] = field(default_factory=list)
    created: str = ""
    engine_version: str = __version__
    #: the file it was read from or last saved to, if any
    path: Path | None = None
    _model: Model | None = field(default=None, init=False, repr=False, compare=False)

    @classmethod
    def from_model(cls, model: Model, classes: list[str], preprocessing: Preprocessing,
                   training: dict[str, Any] | None = None, history: list[dict[str, Any]] | None = None) -> TrainedModel:
        """Snapshot a live engine Model; `model()` then returns that Model (it must not be trained
        further, or it would no longer match `state`)."""
        tm = cls(model.spec, model.state_dict(), list(classes), preprocessing, dict(training or {}),
                 list(history or []))
        tm._model = model
        return tm

    # --- facts ---------------------------------------------------------------------------------
    @property
    def inference(self) -> Inference:
        return infer(self.spec)

    @property
    def binary(self) -> bool:
        """One Sigmoid output: probabilities are [1 - p, p] (engine.shapes.Inference.binary)."""
        return self.inference.binary

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.spec.input_shape)  # type: ignore[return-value]

    @property
    def name(self) -> str:
        if self.path is not None:
            return self.path.stem
        return self.spec.name or "model"

    @property
    def trained(self) -> bool:
        return bool(self.history)

    def problem(self) -> str | None:
        """Why these parts do not make a usable model, as one sentence with the fix; None when they do.
        Model files check this before writing and after reading, export before exporting."""
        inf = self.inference
        if not inf.valid:
            return f"the architecture is invalid: {inf.error_message}"
        n = inf.num_classes
        if n is None:
            return "the last layer must output a flat vector of class scores: add Flatten and Dense(classes)"
        bad = weights_problem(inf.weight_shapes(), self.state)
        if bad is not None:
            return bad
        classes = self.classes
        if not isinstance(classes, list) or not all(isinstance(c, str) and c for c in classes):
            return '"classes" must be a list of non-empty class names'
        if len(set(classes)) != len(classes):
            return '"classes" has duplicate names'
        if len(classes) != n:
            return f"{len(classes)} class names but the architecture outputs {n} classes"
        p = self.preprocessing
        if (p.channels, p.height, p.width) != self.input_shape:
            return (f"preprocessing makes {p.channels}x{p.height}x{p.width} images but the architecture's input "
                    f"is {'x'.join(map(str, self.input_shape))}")
        return None

    # --- using it --------------------------------------------------------------------------------
    def build_model(self, seed: int = 0) -> Model:
        """A new engine Model with these weights (the seed only matters if it is trained further)."""
        from engine.model import Model

        model = Model(self.spec, seed=seed)
        model.load_state_dict(self.state, strict=True)
        return model

    def model(self) -> Model:
        """The engine Model with these weights, built once and shared (for predictions and views)."""
        if self._model is None:
            self._model = self.build_model()
        return self._model

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """(N, classes) probabilities for preprocessed inputs (N, C, H, W). Weights that overflow on
        an input give NaN rows (callers say so in words), never NumPy's warnings on the terminal."""
        with np.errstate(all="ignore"):
            return self.model().predict_proba(np.asarray(x, dtype=np.float32))

    def predict_files(self, paths: list[str | os.PathLike]) -> np.ndarray:
        """(N, classes) probabilities for image files, preprocessed exactly as in training."""
        if not paths:
            return np.zeros((0, len(self.classes)), np.float32)
        return self.predict_proba(np.concatenate([load_image(p, self.preprocessing) for p in paths]))

    def close(self) -> None:
        """Release the shared Model's helper process, if it has one."""
        if self._model is not None:
            self._model.close()
