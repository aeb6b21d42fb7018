"""What MaxPool2D and AvgPool2D share: window config, shapes, ONNX/PyTorch attributes."""

from __future__ import annotations

from engine.layers.base import Field, Layer, Op, Shape, pair_of, same_padding, window_output


class Pool2D(Layer):
    category = "Pooling"
    needs_spatial = True
    shows_feature_maps = True
    keeps_maps = True
    palette_defaults = {"pool_size": 2}
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

    def onnx_attrs(self, in_shape: Shape) -> dict:
        top, bottom, left, right = self.pads(in_shape)
        return {"kernel_shape": list(self.kernel), "strides": list(self.stride), "pads": [top, left, bottom, right]}

    def torch_pool(self, in_shape: Shape, plain: str, padded: str) -> str:
        pads = self.pads(in_shape)
        if not any(pads):
            return f"{plain}({self.kernel}, stride={self.stride})"
        return f"{padded}({self.kernel}, {self.stride}, pads={pads})"


class PoolOp(Op):
    def __init__(self, *a):
        super().__init__(*a)
        self.kernel = self.layer.kernel
        self.stride = self.layer.stride
        self.pads = self.layer.pads(self.in_shape)
