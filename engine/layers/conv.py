"""Conv2D: the configuration and shape half; the arithmetic lives in engine.functional."""

from __future__ import annotations

from engine.layers.base import (
    Field,
    Layer,
    Shape,
    compact_pair,
    pair_of,
    same_padding,
    window_output,
)


class Conv2D(Layer):
    type = "Conv2D"
    category = "Convolution"
    description = "Slides learned filters over the image; each filter makes one feature map."
    needs_spatial = True
    fields = (
        Field("filters", "int", help="How many filters, i.e. output feature maps."),
        Field("kernel_size", "pair", help="Filter size: an integer or [height, width]."),
        Field("stride", "pair", 1, help="Step between filter positions: integer or [h, w]."),
        Field(
            "padding",
            "conv_padding",
            "valid",
            help='"valid" (none), "same" (keep size / stride), an integer or [pad_h, pad_w].',
        ),
        Field("use_bias", "bool", True, help="Add a learned bias to each output map."),
    )

    @property
    def kernel(self) -> tuple[int, int]:
        return pair_of(self.config["kernel_size"])

    @property
    def stride(self) -> tuple[int, int]:
        return pair_of(self.config["stride"])

    def pads(self, input_shape: Shape) -> tuple[int, int, int, int]:
        """(top, bottom, left, right) zero padding for this input."""
        p = self.config["padding"]
        if p == "valid":
            return (0, 0, 0, 0)
        if p == "same":
            kh, kw = self.kernel
            sh, sw = self.stride
            return (*same_padding(input_shape[1], kh, sh), *same_padding(input_shape[2], kw, sw))
        ph, pw = pair_of(p)
        return (ph, ph, pw, pw)

    def geometry(self, input_shape: Shape):
        return self.kernel, self.stride, self.pads(input_shape)

    def compute_output_shape(self, input_shape: Shape) -> Shape:
        self.check_input(input_shape)
        oh, ow = window_output(self, input_shape, self.kernel, self.stride, self.pads(input_shape))
        return (self.config["filters"], oh, ow)

    def param_shapes(self, input_shape: Shape) -> dict[str, Shape]:
        kh, kw = self.kernel
        f = self.config["filters"]
        shapes: dict[str, Shape] = {"weight": (f, input_shape[0], kh, kw)}
        if self.config["use_bias"]:
            shapes["bias"] = (f,)
        return shapes

    def macs(self, input_shape: Shape, output_shape: Shape) -> int:
        kh, kw = self.kernel
        f, oh, ow = output_shape
        return f * oh * ow * input_shape[0] * kh * kw

    def summary(self) -> str:
        kh, kw = self.kernel
        text = f"Conv2D {self.config['filters']}@{kh}x{kw}"
        p = self.config["padding"]
        text += f", {p}" if isinstance(p, str) else f", pad {compact_pair(pair_of(p))}"
        if self.stride != (1, 1):
            s = self.stride
            text += f", stride {s[0]}" if s[0] == s[1] else f", stride {s[0]}x{s[1]}"
        return text
