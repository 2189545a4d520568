"""PyTorch modules with Caffe's exact semantics, one per Caffe layer kind.

This file imports nothing but torch and math: ``zoo convert`` copies it verbatim into the
generated ``model.py``, so a converted model loads with plain torch and no toolkit installed.
Every module records its constructor arguments in ``self.args`` so the generated code can
rebuild it; weights are parameters or buffers named after Caffe's blob order where it matters.
Parameters start uninitialised (torch.empty): they are always loaded from Caffe's blobs, and
untouched memory costs nothing while a converter swaps in the real arrays.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn


class CaffeModule(nn.Module):
    def __init__(self, **args):
        super().__init__()
        self.args = args

    def extra_repr(self):
        return ", ".join(f"{k}={v!r}" for k, v in self.args.items())


def _bshape(n_axes, axis, shape):
    """A view shape that places `shape` at `axis` of an n_axes tensor (Caffe's broadcasting)."""
    return [1] * axis + list(shape) + [1] * (n_axes - axis - len(shape))


class Identity(CaffeModule):
    def forward(self, *xs):
        return xs[0] if len(xs) == 1 else xs


class Convolution(CaffeModule):
    """Caffe Convolution; several bottoms share the weights (one top each)."""
    transposed = False

    def __init__(self, in_channels, out_channels, kernel, stride, pad, dilation, group, bias, nd=2):
        super().__init__(in_channels=in_channels, out_channels=out_channels, kernel=kernel, stride=stride,
                         pad=pad, dilation=dilation, group=group, bias=bias, nd=nd)
        shape = (in_channels, out_channels // group) if self.transposed else (out_channels, in_channels // group)
        self.weight = nn.Parameter(torch.empty(*shape, *kernel))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None

    def _convolve(self, x):
        a = self.args
        return {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[a["nd"]](
            x, self.weight, self.bias, a["stride"], a["pad"], a["dilation"], a["group"])

    def forward(self, *xs):
        ys = tuple(self._convolve(x) for x in xs)
        return ys[0] if len(ys) == 1 else ys


class Deconvolution(Convolution):
    """Caffe Deconvolution: weights (C_in, C_out/group, k...), as PyTorch's transposed convolution."""
    transposed = True

    def _convolve(self, x):
        a = self.args
        return {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[a["nd"]](
            x, self.weight, self.bias, a["stride"], a["pad"], 0, a["group"], a["dilation"])


def _torch_ceil_size(size, kernel, stride, pad):
    """The output size of PyTorch's ceil-mode pooling."""
    out = -(-(size + 2 * pad - kernel) // stride) + 1
    if (out - 1) * stride >= size + pad:
        out -= 1
    return out


class Pooling(CaffeModule):
    """Caffe pooling: MAX ignores padding; AVE divides by the window clipped to [-pad, size+pad)."""

    def __init__(self, method, kernel, stride, pad, in_size, out_size, right, crop):
        # right, crop: the extra right pad or the crop per axis that make floor-mode pooling over the
        # explicitly padded input give Caffe's out_size (converters.layers.pooling.pool_pads)
        super().__init__(method=method, kernel=kernel, stride=stride, pad=pad, in_size=in_size, out_size=out_size,
                         right=right, crop=crop)
        self.right, self.crop = list(right), list(crop)
        # PyTorch's own ceil-mode pooling computes Caffe's windows and AVE divisor (it was ported from
        # Caffe) whenever it yields the same output size; it is much faster than explicit padding.
        self.native = method != "STOCHASTIC" and all(
            2 * pad[i] <= kernel[i] and _torch_ceil_size(in_size[i], kernel[i], stride[i], pad[i]) == out_size[i]
            for i in range(2))
        if method == "AVE" and not self.native:
            self.register_buffer("scale", self._scale(), persistent=False)

    def _scale(self):
        a = self.args
        rows = []
        for i in range(2):
            k, s, p, size, out = a["kernel"][i], a["stride"][i], a["pad"][i], a["in_size"][i], a["out_size"][i]
            rows.append(torch.tensor([min(o * s - p + k, size + p) - (o * s - p) for o in range(out)],
                                     dtype=torch.float64))
        area = rows[0][:, None] * rows[1][None, :]
        return (a["kernel"][0] * a["kernel"][1] / area).to(torch.float32)

    def _padded(self, x, value):
        a = self.args
        if self.crop[0] or self.crop[1]:
            x = x[..., :x.shape[-2] - self.crop[0], :x.shape[-1] - self.crop[1]]
        pad = (a["pad"][1], self.right[1], a["pad"][0], self.right[0])
        return F.pad(x, pad, value=value) if any(pad) else x

    def forward(self, x):
        a = self.args
        if self.native and a["method"] == "MAX":
            return F.max_pool2d(x, a["kernel"], a["stride"], a["pad"], ceil_mode=True)
        if self.native:
            return F.avg_pool2d(x, a["kernel"], a["stride"], a["pad"], ceil_mode=True, count_include_pad=True)
        if a["method"] == "MAX":
            return F.max_pool2d(self._padded(x, float("-inf")), a["kernel"], a["stride"])
        if a["method"] == "AVE":
            return F.avg_pool2d(self._padded(x, 0.0), a["kernel"], a["stride"]) * self.scale
        # STOCHASTIC at test time, as Caffe's GPU kernel (its only implementation): the probability-
        # weighted average sum(x^2) / (FLT_MIN + sum(x)) over windows starting at o*stride (Caffe has
        # no padding for it), clipped to the input: zeros past its end add nothing
        k, area = a["kernel"], a["kernel"][0] * a["kernel"][1]
        right = [max(0, (a["out_size"][i] - 1) * a["stride"][i] + k[i] - a["in_size"][i]) for i in range(2)]
        xp = F.pad(x, (0, right[1], 0, right[0])) if any(right) else x
        num = F.avg_pool2d(xp * xp, k, a["stride"]) * area
        den = F.avg_pool2d(xp, k, a["stride"]) * area + 1.17549435e-38
        return (num / den)[..., :a["out_size"][0], :a["out_size"][1]]


class GlobalPooling(CaffeModule):
    def __init__(self, method):
        super().__init__(method=method)

    def forward(self, x):
        if self.args["method"] == "MAX":
            return torch.amax(x, dim=(2, 3), keepdim=True)
        return torch.mean(x, dim=(2, 3), keepdim=True)


class SPP(CaffeModule):
    def __init__(self, levels):
        super().__init__(levels=levels)
        self.pools = nn.ModuleList([Pooling(**lv) for lv in levels])

    def forward(self, x):
        outs = [p(x) for p in self.pools]
        if len(outs) == 1:
            return outs[0]
        return torch.cat([o.flatten(1) for o in outs], 1)


class InnerProduct(CaffeModule):
    def __init__(self, in_features, out_features, axis, bias, transpose):
        super().__init__(in_features=in_features, out_features=out_features, axis=axis, bias=bias,
                         transpose=transpose)
        shape = (in_features, out_features) if transpose else (out_features, in_features)
        self.weight = nn.Parameter(torch.empty(*shape))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None

    def forward(self, x):
        a = self.args
        x = x.flatten(a["axis"]) if x.dim() > a["axis"] + 1 else x
        w = self.weight.t() if a["transpose"] else self.weight
        return F.linear(x, w, self.bias)


class LRN(CaffeModule):
    def __init__(self, size, alpha, beta, k, region):
        super().__init__(size=size, alpha=alpha, beta=beta, k=k, region=region)

    def forward(self, x):
        a = self.args
        n = a["size"]
        pre = (n - 1) // 2
        sq = x * x
        if a["region"] == "ACROSS_CHANNELS":
            # window sums over channels as differences of a running sum (zero-padded like Caffe)
            c = torch.cumsum(F.pad(sq, (0, 0, 0, 0, pre + 1, n - 1 - pre)), dim=1)
            s = (c[:, n:] - c[:, :-n]) / n
            return x * torch.pow(a["k"] + a["alpha"] * s, -a["beta"])
        s = F.avg_pool2d(F.pad(sq, (pre, n - 1 - pre, pre, n - 1 - pre)), n, stride=1)
        return x * torch.pow(1.0 + a["alpha"] * s, -a["beta"])


class ReLU(CaffeModule):
    def __init__(self, negative_slope=0.0):
        super().__init__(negative_slope=negative_slope)

    def forward(self, x):
        s = self.args["negative_slope"]
        return F.relu(x) if s == 0 else F.leaky_relu(x, s)


class PReLU(CaffeModule):
    def __init__(self, channels, shared):
        super().__init__(channels=channels, shared=shared)
        self.weight = nn.Parameter(torch.empty(() if shared else (channels,)))

    def forward(self, x):
        w = self.weight.reshape(_bshape(x.dim(), 1, [1 if self.args["shared"] else self.args["channels"]]))
        return torch.clamp(x, min=0) + w * torch.clamp(x, max=0)


class Elementwise(CaffeModule):
    """Caffe's parameter-free neurons."""

    def __init__(self, op, **args):
        super().__init__(op=op, **args)

    def forward(self, x):
        a, op = self.args, self.args["op"]
        if op == "Sigmoid":
            return torch.sigmoid(x)
        if op == "TanH":
            return torch.tanh(x)
        if op == "AbsVal":
            return torch.abs(x)
        if op == "BNLL":
            return F.softplus(x)
        if op == "ELU":
            return F.elu(x, a["alpha"])
        if op == "Power":
            y = x * a["scale"] + a["shift"] if (a["scale"] != 1 or a["shift"] != 0) else x
            return y if a["power"] == 1 else torch.pow(y, a["power"])
        if op == "Exp":  # Caffe: base^shift * exp(ln(base)*scale * x), the two factors apart
            base, shift = a["base"], a["shift"]
            inner = (1.0 if base == -1 else math.log(base)) * a["scale"]
            f32 = torch.tensor(shift, dtype=torch.float32)  # base^shift in float, inf where Caffe's is
            outer = 1.0 if shift == 0 else float(torch.exp(f32) if base == -1 else torch.float_power(base, f32).float())
            y = torch.exp(x * inner if inner != 1 else x)
            return y * outer if outer != 1 else y
        if op == "Log":  # Caffe: log(scale*x + shift) * (1/ln(base))
            y = x * a["scale"] if a["scale"] != 1 else x
            y = torch.log(y + a["shift"] if a["shift"] != 0 else y)
            return y if a["base"] == -1 else y * (1.0 / math.log(a["base"]))
        if op == "Threshold":
            return (x > a["threshold"]).to(x.dtype)
        if op == "Clip":  # max(min, min(x, max)): all `min` when min > max, as Caffe
            return torch.clamp(torch.clamp(x, max=a["max"]), min=a["min"])
        if op == "Swish":
            return x * torch.sigmoid(a["beta"] * x)
        raise ValueError(op)


class Dropout(CaffeModule):
    """Caffe Dropout: in training a fresh mask keeps each value with probability 1 - ratio and scales it by
    1 / (1 - ratio); at test the identity, unless ``sample_at_test`` (caffe-segnet's sample_weights_test:
    Monte Carlo dropout, the training mask at test too, drawn from torch's RNG so torch.manual_seed repeats it).
    Without ``scale_train`` (caffe-fast-rcnn's scale_train: false) the kept values stay unscaled in training
    and the test output is the input times ``test_scale`` (1 - ratio as Caffe's float computes it)."""

    def __init__(self, ratio, sample_at_test=False, scale_train=True, test_scale=1.0):
        super().__init__(ratio=ratio, sample_at_test=sample_at_test, scale_train=scale_train, test_scale=test_scale)

    def forward(self, x):
        a = self.args
        sampling = self.training or a["sample_at_test"]
        if a["scale_train"]:
            return F.dropout(x, a["ratio"], sampling)
        if sampling:
            return x * (torch.rand_like(x) >= a["ratio"]).to(x.dtype)
        return x * a["test_scale"]


class BatchNorm(CaffeModule):
    """Caffe BatchNorm: stored sums [mean*s, var*s, s]; TRAIN uses batch statistics and updates the sums."""

    def __init__(self, channels, eps, maf, use_global_stats):
        super().__init__(channels=channels, eps=eps, maf=maf, use_global_stats=use_global_stats)
        self.register_buffer("mean", torch.zeros(channels))
        self.register_buffer("variance", torch.zeros(channels))
        self.register_buffer("scale_factor", torch.zeros(1))

    def forward(self, x):
        a = self.args
        c = a["channels"]
        view = _bshape(x.dim(), 1, [c])
        use_global = a["use_global_stats"] if a["use_global_stats"] is not None else not self.training
        if use_global:
            s = self.scale_factor[0]
            factor = torch.where(s == 0, torch.zeros_like(s), 1.0 / s)
            mean, var = self.mean * factor, self.variance * factor
        else:
            dims = [d for d in range(x.dim()) if d != 1]
            mean = x.mean(dim=dims)
            var = ((x - mean.reshape(view)) ** 2).mean(dim=dims)
            with torch.no_grad():
                m = x.numel() // c
                self.scale_factor.mul_(a["maf"]).add_(1.0)
                self.mean.mul_(a["maf"]).add_(mean.detach())
                self.variance.mul_(a["maf"]).add_(var.detach() * (m / max(m - 1, 1)))
        return (x - mean.reshape(view)) / torch.sqrt(var.reshape(view) + a["eps"])


class Scale(CaffeModule):
    """y = x * gamma (+ beta), gamma a parameter or the second bottom, broadcast from `axis`."""

    def __init__(self, axis, shape, has_weight, bias):
        super().__init__(axis=axis, shape=shape, has_weight=has_weight, bias=bias)
        self.weight = nn.Parameter(torch.ones(tuple(shape))) if has_weight else None
        self.bias = nn.Parameter(torch.empty(tuple(shape))) if bias else None

    def forward(self, x, *operand):
        a = self.args
        # an operand blob broadcasts by its own shape: at axis 0 it holds the batch, which may differ
        view = _bshape(x.dim(), a["axis"], operand[0].shape if operand else a["shape"])
        w = operand[0] if operand else self.weight
        y = x * w.reshape(view) if w is not None else x
        return y + self.bias.reshape(view) if self.bias is not None else y


class Bias(CaffeModule):
    """y = x + beta, beta a parameter or the second bottom, broadcast from `axis`."""

    def __init__(self, axis, shape, own):
        super().__init__(axis=axis, shape=shape, own=own)
        self.bias = nn.Parameter(torch.empty(tuple(shape))) if own else None

    def forward(self, x, *operand):
        b = operand[0] if operand else self.bias
        return x + b.reshape(_bshape(x.dim(), self.args["axis"], b.shape))


class Eltwise(CaffeModule):
    def __init__(self, op, coeff):
        super().__init__(op=op, coeff=coeff)

    def forward(self, *xs):
        a = self.args
        if a["op"] == "PROD":
            y = xs[0]
            for x in xs[1:]:
                y = y * x
            return y
        if a["op"] == "MAX":
            y = xs[0]
            for x in xs[1:]:
                y = torch.maximum(y, x)
            return y
        coeff = a["coeff"] or [1.0] * len(xs)
        y = xs[0] if coeff[0] == 1 else xs[0] * coeff[0]
        for c, x in zip(coeff[1:], xs[1:]):
            y = y + x if c == 1 else y + c * x
        return y


class Concat(CaffeModule):
    def __init__(self, axis):
        super().__init__(axis=axis)

    def forward(self, *xs):
        return torch.cat(xs, self.args["axis"])


class Slice(CaffeModule):
    def __init__(self, axis, sizes):
        super().__init__(axis=axis, sizes=sizes)

    def forward(self, x):
        if len(self.args["sizes"]) == 1:
            return x
        return tuple(torch.split(x, self.args["sizes"], self.args["axis"]))


class Split(CaffeModule):
    def __init__(self, n):
        super().__init__(n=n)

    def forward(self, x):
        return x if self.args["n"] == 1 else tuple(x for _ in range(self.args["n"]))


class Reshape(CaffeModule):
    """Caffe Reshape/Flatten: `start` axes copied, then `dims` (0 copy, -1 infer), then the tail."""

    def __init__(self, start, end, dims):
        super().__init__(start=start, end=end, dims=dims)

    def forward(self, x):
        a = self.args
        shape = list(x.shape)
        end = len(shape) if a["end"] is None else a["end"]
        mid = [shape[a["start"] + i] if d == 0 else d for i, d in enumerate(a["dims"])]
        return x.reshape(shape[:a["start"]] + mid + shape[end:])


class Crop(CaffeModule):
    def __init__(self, axis, offsets):
        super().__init__(axis=axis, offsets=offsets)

    def forward(self, x, ref):
        a = self.args
        for i, off in enumerate(a["offsets"]):
            ax = a["axis"] + i
            x = x.narrow(ax, off, ref.shape[ax])
        return x


class Softmax(CaffeModule):
    def __init__(self, axis):
        super().__init__(axis=axis)

    def forward(self, x):
        return torch.softmax(x, self.args["axis"])


class MVN(CaffeModule):
    def __init__(self, normalize_variance, across_channels, eps):
        super().__init__(normalize_variance=normalize_variance, across_channels=across_channels, eps=eps)

    def forward(self, x):
        a = self.args
        if x.dim() < 4:  # Caffe's MVN works on (num, channels, height, width); missing axes are 1
            x = x.reshape(list(x.shape) + [1] * (4 - x.dim()))
        dims = (1, 2, 3) if a["across_channels"] else (2, 3)
        y = x - x.mean(dim=dims, keepdim=True)
        if a["normalize_variance"]:
            y = y / (torch.sqrt((y * y).mean(dim=dims, keepdim=True)) + a["eps"])
        return y


class Reduction(CaffeModule):
    def __init__(self, op, axis, coeff):
        super().__init__(op=op, axis=axis, coeff=coeff)

    def forward(self, x):
        a = self.args
        y = x.flatten(a["axis"]) if a["axis"] < x.dim() else x.unsqueeze(-1)
        if a["op"] == "ASUM":
            y = y.abs()
        elif a["op"] == "SUMSQ":
            y = y * y
        y = y.mean(-1) if a["op"] == "MEAN" else y.sum(-1)
        return y * a["coeff"] if a["coeff"] != 1 else y


class ArgMax(CaffeModule):
    def __init__(self, axis, top_k, out_max_val):
        super().__init__(axis=axis, top_k=top_k, out_max_val=out_max_val)

    @staticmethod
    def _top(x, k, dim):
        """Caffe sorts (value, index) pairs in descending order: of equal values, the highest index first."""
        values, idx = torch.sort(x.flip(dim), dim=dim, descending=True, stable=True)
        return values.narrow(dim, 0, k), (x.shape[dim] - 1 - idx.narrow(dim, 0, k))

    def forward(self, x):
        a = self.args
        if a["axis"] is not None:
            values, idx = self._top(x, a["top_k"], a["axis"])
            return values if a["out_max_val"] else idx.to(x.dtype)
        values, idx = self._top(x.flatten(1), a["top_k"], 1)
        out = torch.stack([idx.to(x.dtype), values], 1) if a["out_max_val"] else idx.to(x.dtype).unsqueeze(1)
        return out.reshape(list(out.shape) + [1] * (x.dim() - 3))


class Tile(CaffeModule):
    def __init__(self, axis, tiles):
        super().__init__(axis=axis, tiles=tiles)

    def forward(self, x):
        reps = [1] * x.dim()
        reps[self.args["axis"]] = self.args["tiles"]
        return x.repeat(*reps)


# -- SSD (weiliu89/caffe `ssd` branch): Permute, PriorBox, Normalize, DetectionOutput -----------------

class Permute(CaffeModule):
    def __init__(self, order):
        super().__init__(order=order)

    def forward(self, x):
        return x.permute(self.args["order"])


def _legacy_hw(shape):
    """Caffe's legacy height() and width(): axes 2 and 3, 1 where the blob has fewer axes."""
    return (shape[2] if len(shape) > 2 else 1), (shape[3] if len(shape) > 3 else 1)


class PriorBox(CaffeModule):
    """SSD's priors [1, 2, H*W*priors*4] (boxes, then variances) from the feature map's and image's sizes.
    `sizes` lists each prior's (width, height) at one location, in Caffe's order; centres, sizes and
    steps are float32 as in Caffe, each coordinate divided in double."""

    def __init__(self, sizes, clip, variance, img_h, img_w, step_h, step_w, offset):
        super().__init__(sizes=sizes, clip=clip, variance=variance, img_h=img_h, img_w=img_w, step_h=step_h,
                         step_w=step_w, offset=offset)

    def forward(self, x, *image):
        a = self.args
        h, w = _legacy_hw(x.shape)
        img_h, img_w = (a["img_h"], a["img_w"]) if a["img_h"] and a["img_w"] else _legacy_hw(image[0].shape)
        f32 = dict(dtype=torch.float32, device=x.device)
        if a["step_h"] and a["step_w"]:
            step_h, step_w = torch.tensor(a["step_h"], **f32), torch.tensor(a["step_w"], **f32)
        else:
            step_h = torch.tensor(img_h, **f32) / h
            step_w = torch.tensor(img_w, **f32) / w
        cy = ((torch.arange(h, **f32) + a["offset"]) * step_h).double().reshape(h, 1, 1)
        cx = ((torch.arange(w, **f32) + a["offset"]) * step_w).double().reshape(1, w, 1)
        bw, bh = (torch.tensor([s[i] for s in a["sizes"]], **f32).double().reshape(1, 1, -1) for i in (0, 1))
        corners = torch.broadcast_tensors((cx - bw / 2.0) / img_w, (cy - bh / 2.0) / img_h,
                                          (cx + bw / 2.0) / img_w, (cy + bh / 2.0) / img_h)
        boxes = torch.stack(corners, -1).float()
        if a["clip"]:
            boxes = boxes.clamp(0.0, 1.0)
        var = torch.tensor(a["variance"], **f32).expand(boxes.shape)
        return torch.stack([boxes.reshape(-1), var.reshape(-1)]).unsqueeze(0)


class Normalize(CaffeModule):
    """SSD's L2 normalisation: x / sqrt(sum x^2 + eps) over each image (across_spatial) or each position's
    channels, then a scale (one shared, or one per channel)."""

    def __init__(self, channels, across_spatial, channel_shared, eps):
        super().__init__(channels=channels, across_spatial=across_spatial, channel_shared=channel_shared, eps=eps)
        self.weight = nn.Parameter(torch.empty(() if channel_shared else (channels,)))

    def forward(self, x):
        a = self.args
        flat = x.reshape(x.shape[0], x.shape[1], -1)
        if a["across_spatial"]:  # Caffe multiplies by the norm's reciprocal
            norm = torch.sqrt((flat * flat).sum((1, 2), keepdim=True) + a["eps"])
            y = flat * (1.0 / norm)
        else:
            y = flat / torch.sqrt((flat * flat).sum(1, keepdim=True) + a["eps"])
        y = y * (self.weight if a["channel_shared"] else self.weight.reshape(1, -1, 1))
        return y.reshape(x.shape)


def decode_boxes(code_type, priors, variances, loc, encoded_in_target):
    """SSD's DecodeBBox in float32: priors, variances [P, 4]; loc [..., P, L, 4] -> boxes like loc."""
    pb, var = priors.unsqueeze(1), variances.unsqueeze(1)
    if encoded_in_target:
        var = torch.ones_like(var)
    if code_type == "CORNER":
        return pb + var * loc
    size = pb[..., 2:] - pb[..., :2]
    if code_type == "CORNER_SIZE":
        return pb + var * loc * torch.cat([size, size], -1)
    centre = (var[..., :2] * loc[..., :2]) * size + (pb[..., :2] + pb[..., 2:]) * 0.5
    half = torch.exp(var[..., 2:] * loc[..., 2:]) * size * 0.5
    return torch.cat([centre - half, centre + half], -1)


def box_areas(boxes):
    """SSD's BBoxSize: width * height, 0 for a box with xmax < xmin or ymax < ymin."""
    wh = boxes[..., 2:] - boxes[..., :2]
    return torch.where(wh.amin(-1) < 0, torch.zeros_like(wh[..., 0]), wh[..., 0] * wh[..., 1])


def jaccard(box, area, boxes, areas):
    """SSD's JaccardOverlap (normalized, no "+1") of `box` [..., 1, 4] with each of `boxes` [..., K, 4]."""
    iwh = torch.minimum(box[..., 2:], boxes[..., 2:]) - torch.maximum(box[..., :2], boxes[..., :2])
    inter = iwh[..., 0] * iwh[..., 1]
    iou = inter / ((area + areas) - inter)
    return torch.where((iwh[..., 0] > 0) & (iwh[..., 1] > 0), iou, torch.zeros_like(iou))


class DetectionOutput(CaffeModule):
    """SSD's DetectionOutput: decode, per class ApplyNMSFast (score threshold, top_k by a stable sort,
    greedy NMS with the adaptive eta), keep_top_k per image; rows [1, 1, N, 7] (image, label, score,
    xmin, ymin, xmax, ymax) per image by label, then score; one row [i, -1, ...] per image when the
    whole batch has none."""

    def __init__(self, num_classes, share_location, background_label_id, nms_threshold, top_k, eta,
                 confidence_threshold, keep_top_k, code_type, variance_encoded_in_target):
        super().__init__(num_classes=num_classes, share_location=share_location,
                         background_label_id=background_label_id, nms_threshold=nms_threshold, top_k=top_k,
                         eta=eta, confidence_threshold=confidence_threshold, keep_top_k=keep_top_k,
                         code_type=code_type, variance_encoded_in_target=variance_encoded_in_target)

    def forward(self, loc, conf, prior, *rest):
        a = self.args
        n, c = loc.shape[0], a["num_classes"]
        p = _legacy_hw(prior.shape)[0] // 4
        labels = [k for k in range(c) if k != a["background_label_id"]]
        pri = prior.reshape(-1, 4)
        boxes = decode_boxes(a["code_type"], pri[:p], pri[p:2 * p],
                             loc.reshape(n, p, 1 if a["share_location"] else c, 4), a["variance_encoded_in_target"])
        boxes = boxes.permute(0, 2, 1, 3)
        boxes = boxes.expand(n, len(labels), p, 4) if a["share_location"] else boxes[:, labels]
        scores = conf.reshape(n, p, c).permute(0, 2, 1)[:, labels]
        thr = torch.tensor(a["confidence_threshold"], dtype=torch.float32, device=loc.device)
        masked = torch.where(scores > thr, scores, torch.full_like(scores, -math.inf))
        k = p if a["top_k"] < 0 else min(a["top_k"], p)
        values, order = torch.sort(masked, dim=-1, descending=True, stable=True)
        values, order = values[..., :k], order[..., :k]
        cand = boxes.gather(2, order.unsqueeze(-1).expand(n, len(labels), k, 4))
        keep = self._nms(cand, values > thr)
        if a["keep_top_k"] > -1:
            flat = torch.where(keep, values, torch.full_like(values, -math.inf)).reshape(n, -1)
            rank = torch.sort(flat, dim=-1, descending=True, stable=True)[1][:, :a["keep_top_k"]]
            chosen = torch.zeros_like(flat, dtype=torch.bool).scatter(1, rank, True)
            keep = keep & chosen.reshape(keep.shape)
        idx = keep.nonzero()
        if idx.shape[0] == 0:
            rows = torch.full((n, 7), -1.0, dtype=loc.dtype, device=loc.device)
            rows[:, 0] = torch.arange(n, dtype=loc.dtype, device=loc.device)
        else:
            label = torch.tensor(labels, dtype=loc.dtype, device=loc.device)[idx[:, 1]]
            picked = (idx[:, 0], idx[:, 1], idx[:, 2])
            rows = torch.cat([idx[:, :1].to(loc.dtype), label.unsqueeze(1), values[picked].unsqueeze(1),
                              cand[picked]], 1)
        return rows.reshape(1, 1, -1, 7)

    def _nms(self, cand, valid):
        """ApplyNMSFast over candidates sorted by score, every image and class at once."""
        a = self.args
        areas = box_areas(cand)
        keep = torch.zeros_like(valid)
        thr = torch.full(valid.shape[:2], a["nms_threshold"], dtype=torch.float32, device=cand.device)
        for j in range(valid.shape[2]):
            iou = jaccard(cand[:, :, j:j + 1], areas[:, :, j:j + 1], cand, areas)
            suppressed = ((iou > thr.unsqueeze(-1)) & keep).any(-1)
            kept = valid[:, :, j] & ~suppressed
            keep[:, :, j] = kept
            if a["eta"] < 1:
                thr = torch.where(kept & (thr > 0.5), thr * a["eta"], thr)
        return keep


class Embed(CaffeModule):
    def __init__(self, input_dim, num_output, bias):
        super().__init__(input_dim=input_dim, num_output=num_output, bias=bias)
        self.weight = nn.Parameter(torch.empty(input_dim, num_output))
        self.bias = nn.Parameter(torch.empty(num_output)) if bias else None

    def forward(self, x):
        y = F.embedding(x.long(), self.weight)
        return y + self.bias if self.bias is not None else y


class Parameter(CaffeModule):
    def __init__(self, shape):
        super().__init__(shape=shape)
        self.weight = nn.Parameter(torch.empty(tuple(shape)))

    def forward(self):
        return self.weight


class LSTM(CaffeModule):
    """Caffe's LSTM over (T, N, ...) with sequence-continuation flags cont (T, N); gates i, f, o, g.
    With expose_hidden, h_0 and c_0 (1, N, H) follow the inputs and h_T, c_T follow the output."""

    def __init__(self, input_size, hidden, static_size, expose_hidden=False):
        super().__init__(input_size=input_size, hidden=hidden, static_size=static_size, expose_hidden=expose_hidden)
        h = hidden
        self.weight_xc = nn.Parameter(torch.empty(4 * h, input_size))
        self.bias_c = nn.Parameter(torch.empty(4 * h))
        self.weight_xc_static = nn.Parameter(torch.empty(4 * h, static_size)) if static_size else None
        self.weight_hc = nn.Parameter(torch.empty(4 * h, h))

    def forward(self, x, cont, *rest):
        t_steps, n, h = x.shape[0], x.shape[1], self.args["hidden"]
        static = rest[:1] if self.args["static_size"] else ()
        gates_x = F.linear(x.flatten(2), self.weight_xc, self.bias_c)
        if static:
            gates_x = gates_x + F.linear(static[0].flatten(1), self.weight_xc_static).unsqueeze(0)
        if self.args["expose_hidden"]:
            h_prev, c_prev = (s.reshape(n, h) for s in rest[len(static):len(static) + 2])
        else:
            h_prev = c_prev = x.new_zeros(n, h)
        outs = []
        for t in range(t_steps):
            keep = cont[t].reshape(n, 1)
            gates = gates_x[t] + F.linear(h_prev * keep, self.weight_hc)
            i, f, o, g = gates.split(h, 1)
            c_prev = keep * torch.sigmoid(f) * c_prev + torch.sigmoid(i) * torch.tanh(g)
            h_prev = torch.sigmoid(o) * torch.tanh(c_prev)
            outs.append(h_prev)
        out = torch.stack(outs, 0)
        return (out, h_prev.unsqueeze(0), c_prev.unsqueeze(0)) if self.args["expose_hidden"] else out


class RNN(CaffeModule):
    """Caffe's RNN: h_t = tanh(W_hh (cont*h_{t-1}) + W_xh x_t + b_h); o_t = tanh(W_ho h_t + b_o).
    With expose_hidden, h_0 (1, N, H) follows the inputs and h_T follows the output."""

    def __init__(self, input_size, hidden, static_size, expose_hidden=False):
        super().__init__(input_size=input_size, hidden=hidden, static_size=static_size, expose_hidden=expose_hidden)
        h = hidden
        self.weight_xh = nn.Parameter(torch.empty(h, input_size))
        self.bias_h = nn.Parameter(torch.empty(h))
        self.weight_xh_static = nn.Parameter(torch.empty(h, static_size)) if static_size else None
        self.weight_hh = nn.Parameter(torch.empty(h, h))
        self.weight_ho = nn.Parameter(torch.empty(h, h))
        self.bias_o = nn.Parameter(torch.empty(h))

    def forward(self, x, cont, *rest):
        t_steps, n, h = x.shape[0], x.shape[1], self.args["hidden"]
        static = rest[:1] if self.args["static_size"] else ()
        pre = F.linear(x.flatten(2), self.weight_xh, self.bias_h)
        if static:
            pre = pre + F.linear(static[0].flatten(1), self.weight_xh_static).unsqueeze(0)
        h_prev = rest[len(static)].reshape(n, h) if self.args["expose_hidden"] else x.new_zeros(n, h)
        outs = []
        for t in range(t_steps):
            h_prev = torch.tanh(pre[t] + F.linear(h_prev * cont[t].reshape(n, 1), self.weight_hh))
            outs.append(torch.tanh(F.linear(h_prev, self.weight_ho, self.bias_o)))
        out = torch.stack(outs, 0)
        return (out, h_prev.unsqueeze(0)) if self.args["expose_hidden"] else out


# -- fork layers (converters/layers/mobile.py, segmentation.py, rcnn.py) ---------------------------

class ShuffleChannel(CaffeModule):
    """ShuffleNet's channel shuffle: (N, g, C/g, ...) -> (N, C/g, g, ...)."""

    def __init__(self, group):
        super().__init__(group=group)

    def forward(self, x):
        g = self.args["group"]
        shape = list(x.shape)
        return x.reshape([shape[0], g, shape[1] // g] + shape[2:]).transpose(1, 2).reshape(shape)


class Axpy(CaffeModule):
    """SENet's Axpy: a * x + y with a (N, C, 1, 1) scaling x per channel."""

    def forward(self, a, x, y):
        return a.reshape(a.shape[0], a.shape[1], *([1] * (x.dim() - 2))) * x + y


class Interp(CaffeModule):
    """PSPNet/DeepLab Interp: crop by -pad_beg/-pad_end, then align-corners bilinear to (height, width)."""

    def __init__(self, crop, height, width):
        super().__init__(crop=crop, height=height, width=width)

    def forward(self, x, *reference):  # a reference blob only gave the size
        a = self.args
        beg, end = a["crop"]
        if beg or end:
            x = x[..., beg:x.shape[-2] - end, beg:x.shape[-1] - end]
        if (x.shape[-2], x.shape[-1]) == (a["height"], a["width"]):
            return x
        return F.interpolate(x, size=(a["height"], a["width"]), mode="bilinear", align_corners=True)


class BN(CaffeModule):
    """The forks' BN: SegNet/ENet INFERENCE (x * scale + shift), SegNet LEARN (this batch's statistics,
    var = E[x^2] - E[x]^2, eps 1e-9, whatever the phase) and PSPNet (stored mean and variance at test).
    Blobs are (1, C, 1, 1): scale, shift (SegNet) or slope, bias, mean, variance (PSPNet)."""

    def __init__(self, channels, mode, eps):
        super().__init__(channels=channels, mode=mode, eps=eps)
        shape = (1, channels, 1, 1)
        self.weight = nn.Parameter(torch.empty(shape))
        self.bias = nn.Parameter(torch.empty(shape))
        if mode == "PSPNET":
            self.register_buffer("mean", torch.zeros(shape))
            self.register_buffer("variance", torch.ones(shape))

    def forward(self, x):
        a = self.args
        if a["mode"] == "INFERENCE":
            return x * self.weight + self.bias
        if a["mode"] == "PSPNET":
            return (x - self.mean) / torch.sqrt(self.variance + a["eps"]) * self.weight + self.bias
        mean = x.mean(dim=(0, 2, 3), keepdim=True)
        var = (x * x).mean(dim=(0, 2, 3), keepdim=True) - mean * mean
        return (x - mean) / torch.sqrt(var + a["eps"]) * self.weight + self.bias


class MaxPoolingWithMask(Pooling):
    """Caffe's MAX pooling with its second top: the flat index h*W + w of each maximum within its
    channel plane (the first of equal values in scan order), as float."""

    def forward(self, x):
        a = self.args
        width = x.shape[-1]
        xp = self._padded(x, float("-inf"))
        y, idx = F.max_pool2d(xp, a["kernel"], a["stride"], return_indices=True)
        wp = xp.shape[-1]
        row, col = idx // wp - a["pad"][0], idx % wp - a["pad"][1]
        return y, (row * width + col).to(x.dtype)


class UpsampleMask(CaffeModule):
    """SegNet's Upsample: each value goes to the position its pooling mask recorded; the rest is zero."""

    def __init__(self, height, width):
        super().__init__(height=height, width=width)

    def forward(self, x, mask):
        a = self.args
        n, c = x.shape[0], x.shape[1]
        out = x.new_zeros(n, c, a["height"] * a["width"])
        out = out.scatter(2, mask.reshape(n, c, -1).long(), x.reshape(n, c, -1))
        return out.reshape(n, c, a["height"], a["width"])


class UpsampleNearest(CaffeModule):
    """The one-bottom Upsample (YOLO forks): each value repeated scale x scale times."""

    def __init__(self, scale):
        super().__init__(scale=scale)

    def forward(self, x):
        s = self.args["scale"]
        return x.repeat_interleave(s, dim=2).repeat_interleave(s, dim=3)


def _c_round(x):
    """C's round(): halves away from zero (torch.round rounds them to even)."""
    x = x.double()
    return torch.sign(x) * torch.floor(torch.abs(x) + 0.5)


def _roi_edges(start, end, pooled, limit):
    """Caffe's ROI bins along one axis, (R, pooled) each: [floor(p*step), ceil((p+1)*step)) + start clipped to
    [0, limit], step = max(end - start + 1, 1) / pooled in float32."""
    step = torch.clamp(end - start + 1, min=1).float()[:, None] / pooled
    p = torch.arange(pooled, dtype=torch.float32, device=start.device)[None]
    lo = (torch.floor(p * step).long() + start[:, None]).clamp(0, limit)
    hi = (torch.ceil((p + 1) * step).long() + start[:, None]).clamp(0, limit)
    return lo, hi


def _level(length):
    """floor(log2(length)) for length >= 1, in integers: the sparse-table level whose window fits the bin."""
    level = torch.zeros_like(length)
    for k in range(1, max(int(length.max()) if length.numel() else 1, 1).bit_length()):  # no ROIs: no bins
        level += length >= (1 << k)
    return level


def _double(planes, axis: int, level: int):
    """From the max over windows of 2^level along ``axis`` (stride 1) to the max over 2^(level + 1)."""
    s, n = 1 << level, planes.shape[axis]
    return torch.maximum(planes.narrow(axis, 0, n - s), planes.narrow(axis, s, n - s))


def _window_maxima(planes, pairs):
    """(i, j, max over every 2^i x 2^j window at stride 1) of (n, h, w, c) planes, for sorted level pairs:
    each doubling step done once (rows first, then columns from the rows' map)."""
    rows, i = planes, 0
    for want_i in sorted({p[0] for p in pairs}):
        while i < want_i:
            rows, i = _double(rows, 1, i), i + 1
        cols, j = rows, 0
        for want_j in sorted(p[1] for p in pairs if p[0] == want_i):
            while j < want_j:
                cols, j = _double(cols, 2, j), j + 1
            yield i, j, cols


def _bin_max(planes, batch, hs, he, ws, we):
    """(bins, c): the max of (n, h, w, c) planes over each bin [hs, he) x [ws, we) of item batch, an empty
    bin 0. One level pair at a time (at most three maps alive): its bins' four corner windows, gathered."""
    full = (he > hs) & (we > ws)
    levels = _level(he - hs) * 64 + _level(we - ws)  # one key per (rows, cols) level pair; levels < 64
    out = planes.new_zeros(batch.shape[0], planes.shape[3])
    for i, j, m in _window_maxima(planes, [divmod(k, 64) for k in torch.unique(levels[full]).tolist()]):
        at = torch.nonzero(full & (levels == i * 64 + j)).reshape(-1)
        base = batch[at] * m.shape[1]
        r0, r1 = (base + hs[at]) * m.shape[2], (base + he[at] - (1 << i)) * m.shape[2]
        c0, c1 = ws[at], we[at] - (1 << j)
        m = m.reshape(-1, planes.shape[3])
        best, read = m.index_select(0, r0 + c0), None
        for corner in (r0 + c1, r1 + c0, r1 + c1):
            read = torch.index_select(m, 0, corner, out=read)
            torch.maximum(best, read, out=best)
        out.index_copy_(0, at, best)
    return out


class ROIPooling(CaffeModule):
    """Fast R-CNN ROIPooling: rows (batch, x1, y1, x2, y2) scaled and rounded, bins floor/ceil of the
    ROI's size / pooled size, max over each bin, an empty bin 0. All bins at once as range-max queries:
    a bin of h x w is the max of four (overlapping) 2^floor(log2 h) x 2^floor(log2 w) windows, read from
    the map's sliding-window max at that level (max is exact whatever overlaps); one map per level pair.
    (The per-ROI loop it replaced: benchmarks/roi_pooling.py, 300 ROIs on VGG16's conv5_3.)"""

    def __init__(self, pooled_h, pooled_w, spatial_scale):
        super().__init__(pooled_h=pooled_h, pooled_w=pooled_w, spatial_scale=spatial_scale)

    def forward(self, x, rois):
        a = self.args
        ph, pw = a["pooled_h"], a["pooled_w"]
        rois = rois.reshape(-1, 5)
        n, c, h, w = x.shape
        scale = torch.tensor(a["spatial_scale"], dtype=torch.float32, device=x.device)
        x1, y1, x2, y2 = _c_round(rois[:, 1:].float() * scale).to(torch.int64).unbind(1)
        hs, he = (v[:, :, None].expand(-1, ph, pw).reshape(-1) for v in _roi_edges(y1, y2, ph, h))
        ws, we = (v[:, None, :].expand(-1, ph, pw).reshape(-1) for v in _roi_edges(x1, x2, pw, w))
        batch = rois[:, 0].to(torch.int64)[:, None].expand(-1, ph * pw).reshape(-1)
        out = _bin_max(x.permute(0, 2, 3, 1).contiguous(), batch, hs, he, ws, we)
        return out.reshape(-1, ph, pw, c).permute(0, 3, 1, 2).contiguous()


def _integral(x):
    """Zero-padded 2-D running sums in float64: any box sum as four corner reads."""
    s = torch.cumsum(torch.cumsum(x.double(), dim=-2), dim=-1)
    return F.pad(s, (1, 0, 1, 0))


class PSROIPooling(CaffeModule):
    """R-FCN's position-sensitive ROI pooling: bin (i, j) of output channel d averages input channel
    (d * group + i) * group + j over the bin; bins from round(coordinate) (+1 at the end) * spatial_scale,
    floor/ceil, clipped; an empty bin 0."""

    def __init__(self, output_dim, group_size, spatial_scale):
        super().__init__(output_dim=output_dim, group_size=group_size, spatial_scale=spatial_scale)

    def forward(self, x, rois):
        a = self.args
        g, d = a["group_size"], a["output_dim"]
        rois = rois.reshape(-1, 5)
        n, c, h, w = x.shape
        ss = torch.tensor(a["spatial_scale"], dtype=torch.float32, device=x.device)
        r = _c_round(rois[:, 1:].float()).float()
        x1, y1 = r[:, 0] * ss, r[:, 1] * ss
        x2, y2 = (r[:, 2] + 1) * ss, (r[:, 3] + 1) * ss
        bin_h = torch.clamp(y2 - y1, min=0.1) / g
        bin_w = torch.clamp(x2 - x1, min=0.1) / g
        p = torch.arange(g, dtype=torch.float32, device=x.device)
        hs = torch.clamp(torch.floor(p[None] * bin_h[:, None] + y1[:, None]), 0, h).long()
        he = torch.clamp(torch.ceil((p[None] + 1) * bin_h[:, None] + y1[:, None]), 0, h).long()
        ws = torch.clamp(torch.floor(p[None] * bin_w[:, None] + x1[:, None]), 0, w).long()
        we = torch.clamp(torch.ceil((p[None] + 1) * bin_w[:, None] + x1[:, None]), 0, w).long()
        s = _integral(x).reshape(-1)
        b = rois[:, 0].long().reshape(-1, 1, 1, 1)
        ch = torch.arange(d * g * g, device=x.device).reshape(1, d, g, g)
        plane = (b * c + ch) * ((h + 1) * (w + 1))

        def at(rows, cols):
            return s[plane + rows[:, None, :, None] * (w + 1) + cols[:, None, None, :]]

        total = at(he, we) - at(hs, we) - at(he, ws) + at(hs, ws)
        area = ((he - hs)[:, None, :, None] * (we - ws)[:, None, None, :]).double()
        out = torch.where(area > 0, total / area.clamp(min=1), torch.zeros_like(total))
        return out.to(x.dtype)


class Proposal(CaffeModule):
    """py-faster-rcnn's rpn.proposal_layer.ProposalLayer at TEST: anchors + deltas, clipped to the image,
    boxes under min_size * scale dropped, the pre_nms_top_n best, NMS, the post_nms_top_n kept; rows
    (0, x1, y1, x2, y2). ``anchors`` are the (A, 4) base anchors (generate_anchors). With ``scores_top``
    (a prototxt giving two tops) also the kept boxes' foreground scores, (R, 1), as a second output.
    Equal scores: the lower anchor index ((h, w, a) order) first, as ONNX TopK does (py-faster-rcnn's
    numpy argsort is unstable there: no order to match)."""

    def __init__(self, anchors, feat_stride, pre_nms_top_n=6000, post_nms_top_n=300, nms_thresh=0.7, min_size=16,
                 scores_top=False):
        super().__init__(anchors=anchors, feat_stride=feat_stride, pre_nms_top_n=pre_nms_top_n,
                         post_nms_top_n=post_nms_top_n, nms_thresh=nms_thresh, min_size=min_size,
                         scores_top=scores_top)

    def _anchors(self, height, width, device):
        a = self.args
        base = torch.tensor(a["anchors"], dtype=torch.float64, device=device)
        sx = torch.arange(width, dtype=torch.float64, device=device) * a["feat_stride"]
        sy = torch.arange(height, dtype=torch.float64, device=device) * a["feat_stride"]
        yy, xx = torch.meshgrid(sy, sx, indexing="ij")
        shifts = torch.stack([xx.reshape(-1), yy.reshape(-1), xx.reshape(-1), yy.reshape(-1)], 1)
        return (base[None] + shifts[:, None]).reshape(-1, 4).float()

    def forward(self, scores, deltas, im_info):
        a = self.args
        num = len(a["anchors"])
        height, width = scores.shape[-2], scores.shape[-1]
        boxes = self._anchors(height, width, scores.device)
        scores = scores[:1, num:].permute(0, 2, 3, 1).reshape(-1)
        deltas = deltas[:1].permute(0, 2, 3, 1).reshape(-1, 4)
        widths = boxes[:, 2] - boxes[:, 0] + 1.0
        heights = boxes[:, 3] - boxes[:, 1] + 1.0
        cx = deltas[:, 0] * widths + (boxes[:, 0] + 0.5 * widths)
        cy = deltas[:, 1] * heights + (boxes[:, 1] + 0.5 * heights)
        pw, ph = torch.exp(deltas[:, 2]) * widths, torch.exp(deltas[:, 3]) * heights
        info = im_info.reshape(-1)
        x1 = torch.minimum(torch.maximum(cx - 0.5 * pw, info.new_zeros(())), info[1] - 1)
        y1 = torch.minimum(torch.maximum(cy - 0.5 * ph, info.new_zeros(())), info[0] - 1)
        x2 = torch.minimum(torch.maximum(cx + 0.5 * pw, info.new_zeros(())), info[1] - 1)
        y2 = torch.minimum(torch.maximum(cy + 0.5 * ph, info.new_zeros(())), info[0] - 1)
        props = torch.stack([x1, y1, x2, y2], 1)
        min_size = a["min_size"] * info[2]
        keep = ((x2 - x1 + 1) >= min_size) & ((y2 - y1 + 1) >= min_size)
        props, scores = props[keep], scores[keep]
        order = torch.argsort(scores, descending=True, stable=True)[:a["pre_nms_top_n"]]
        props, scores = props[order], scores[order]
        kept = _nms(props.cpu(), a["nms_thresh"], a["post_nms_top_n"]).to(props.device)  # a loop: on the CPU
        props = props[kept]
        rois = torch.cat([props.new_zeros(props.shape[0], 1), props], 1)
        return (rois, scores[kept].reshape(-1, 1)) if a["scores_top"] else rois


def _nms(boxes, thresh, limit):
    """Greedy NMS over boxes sorted by score, overlap with Fast R-CNN's +1 pixel sizes; at most limit kept."""
    x1, y1, x2, y2 = boxes.unbind(1)
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    alive = torch.ones(boxes.shape[0], dtype=torch.bool)
    keep = []
    for i in range(boxes.shape[0]):
        if len(keep) >= limit:
            break
        if not alive[i]:
            continue
        keep.append(i)
        w = torch.clamp(torch.minimum(x2[i], x2) - torch.maximum(x1[i], x1) + 1, min=0)
        h = torch.clamp(torch.minimum(y2[i], y2) - torch.maximum(y1[i], y1) + 1, min=0)
        inter = w * h
        alive &= inter / (areas[i] + areas - inter) <= thresh
    return torch.tensor(keep, dtype=torch.int64)


# -- training-only layers (used by `zoo train`) ----------------------------------------------------

class SoftmaxWithLoss(CaffeModule):
    """Mean of -log(max(p, FLT_MIN)) over the non-ignored items (normalization VALID by default)."""

    def __init__(self, axis, ignore_label, normalization):
        super().__init__(axis=axis, ignore_label=ignore_label, normalization=normalization)

    def forward(self, x, label):
        a = self.args
        logp = torch.log_softmax(x, a["axis"]).clamp(min=math.log(1.17549435e-38))
        logp = logp.movedim(a["axis"], -1).reshape(-1, x.shape[a["axis"]])
        lab = label.reshape(-1).long()
        valid = torch.ones_like(lab, dtype=torch.bool) if a["ignore_label"] is None else lab != a["ignore_label"]
        picked = logp.gather(1, torch.where(valid, lab, torch.zeros_like(lab)).unsqueeze(1)).squeeze(1)
        total = -(picked * valid.to(x.dtype)).sum()
        norm = {"FULL": lab.numel(), "VALID": valid.sum(), "BATCH_SIZE": x.shape[0], "NONE": 1}[a["normalization"]]
        norm = torch.clamp(torch.as_tensor(norm, dtype=x.dtype), min=1.0)
        return total / norm


class EuclideanLoss(CaffeModule):
    def forward(self, a, b):
        return ((a - b) ** 2).sum() / (2 * a.shape[0])


class SigmoidCrossEntropyLoss(CaffeModule):
    def __init__(self, normalization):
        super().__init__(normalization=normalization)

    def forward(self, x, target):
        loss = F.binary_cross_entropy_with_logits(x, target.reshape(x.shape), reduction="sum")
        norm = x.shape[0] if self.args["normalization"] in ("BATCH_SIZE",) else (
            x.numel() if self.args["normalization"] in ("FULL", "VALID") else 1)
        return loss / max(norm, 1)


class Accuracy(CaffeModule):
    def __init__(self, axis, top_k, ignore_label):
        super().__init__(axis=axis, top_k=top_k, ignore_label=ignore_label)

    def forward(self, x, label):
        a = self.args
        scores = x.movedim(a["axis"], -1).reshape(-1, x.shape[a["axis"]])
        lab = label.reshape(-1).long()
        top = scores.topk(a["top_k"], 1).indices
        hit = (top == lab.unsqueeze(1)).any(1)
        valid = torch.ones_like(hit) if a["ignore_label"] is None else lab != a["ignore_label"]
        return (hit & valid).sum().to(x.dtype) / valid.sum().clamp(min=1).to(x.dtype)
