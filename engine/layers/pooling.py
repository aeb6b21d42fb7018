"""Pooling layers: configuration and shapes."""

from __future__ import annotations

from engine.layers.base import Field, Layer, Shape, pair_of, same_padding, window_output


class _Pool2D(Layer):
    category = "Pooling"
    needs_spatial = True
    fields = (
        Field("pool_size", "pair", help="Window size: an integer or [height, width]."),
        Field("stride", "optional_pair", None, help="Step between windows; defaults to pool_size."),
        Field("padding", "pool_padding", "valid", help='"valid" (no padding) or "same" (ceil(n / stride)).'),
    )

    @property
    def kernel(self) -> tuple[int, int]:
        return pair_of(self.config["pool_size"])

    @property
    def stride(self) -> tuple[int, int]:
        s = self.config["stride"]
        return self.kernel if s is None else pair_of(s)

    def pads(self, input_shape: Shape) -> tuple[int, int, int, int]:
        if self.config["padding"] == "valid":
            return (0, 0, 0, 0)
        kh, kw = self.kernel
        sh, sw = self.stride
        return (*same_padding(input_shape[1], kh, sh), *same_padding(input_shape[2], kw, sw))

    def geometry(self, input_shape: Shape):
        return self.kernel, self.stride, self.pads(input_shape)

    def compute_output_shape(self, input_shape: Shape) -> Shape:
        self.check_input(input_shape)
        oh, ow = window_output(self, input_shape, self.kernel, self.stride, self.pads(input_shape))
        return (input_shape[0], oh, ow)

    def summary(self) -> str:
        kh, kw = self.kernel
        text = f"{self.type} {kh}x{kw}"
        if self.stride != self.kernel:
            s = self.stride
            text += f", stride {s[0]}" if s[0] == s[1] else f", stride {s[0]}x{s[1]}"
        if self.config["padding"] == "same":
            text += ", same"
        return text


class MaxPool2D(_Pool2D):
    type = "MaxPool2D"
    description = "Keeps the largest value in each window: smaller maps, some shift tolerance."


class AvgPool2D(_Pool2D):
    type = "AvgPool2D"
    description = "Averages each window (padded cells excluded): smaller, smoother maps."


class GlobalAvgPool2D(Layer):
    type = "GlobalAvgPool2D"
    category = "Pooling"
    description = "Averages each whole feature map to one number: C maps become C features."
    needs_spatial = True

    def compute_output_shape(self, input_shape: Shape) -> Shape:
        self.check_input(input_shape)
        return (input_shape[0],)
