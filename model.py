"""JerseyTemporalNet: ResNet backbone + spatial attention -> 2-layer BiLSTM -> temporal attention -> digit heads.

    frames [B, T, 3, H, W]
      -> ResNet-18/34/50 trunk (first `freeze_fraction` of its parameter tensors frozen)     per frame
      -> spatial attention (1x1 conv C->C/8, BN, ReLU, 1x1 conv ->1, sigmoid) x features, global avg pool
      -> BiLSTM (2 layers, hidden 256, dropout 0.3)                                          over time
      -> temporal attention (Linear 2H->H, tanh, Linear ->1, masked softmax over T), weighted sum
      -> head 'digits':        tens (11 = digits + empty) and units (11) residual MLP heads
         head 'ctc':           no head on the pooled vector: each frame's feature map is read column by column
                               (height attention-pooled, Conv1d, 11 classes = digits + blank) and scored for
                               every number 0..99 by CTC (Shi et al. 2016); frames are mixed by the temporal
                               attention weights: log P(N) = logsumexp_t(log w_t + log P_t(N))
    A pretrained text recognizer (ocr.py) can stand in for the trunk: its trunk and neck read text lines cut
    from bands of the crop, its own classifier (cut to digits and blank) is the ctc head's column reader.
"""
import copy
import socket
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

import config
import ocr
import utils
from config import BACKBONES, EMPTY, IMAGENET_MEAN, IMAGENET_STD, RECOGNIZERS

BLANK = 10  # CTC blank among the column classes (digits 0-9 keep their own index)
NEG = -1e30  # log of "impossible" in the CTC forward pass
SMALL_CNNS = {"cnn": 6, "cnn_narrow": 3}  # small trunks: name -> how many of the six convs are 3x3, the rest 3x1


def _resnet(name: str, pretrained: bool) -> tuple[nn.Module, bool]:
    ctor = getattr(torchvision.models, name)
    if not pretrained:
        return ctor(weights=None), False
    weights = torchvision.models.get_model_weights(ctor).DEFAULT
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(15)  # offline machines fail fast instead of hanging on the download
    try:
        return ctor(weights=weights), True
    except Exception as err:  # noqa: BLE001 - no cache and no network: train from scratch, say so once
        warnings.warn(f"ImageNet weights for {name} unavailable ({type(err).__name__}: {str(err)[:120]}); "
                      f"using random initialisation. Put {weights.url.rsplit('/', 1)[-1]} in "
                      f"{torch.hub.get_dir()}/checkpoints to use them.", stacklevel=2)
        return ctor(weights=None), False
    finally:
        socket.setdefaulttimeout(old)


def _conv(cin: int, cout: int, width: int = 3) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, (3, width), padding=(1, width // 2), bias=False), nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True)]


def small_cnn(wide_convs: int = 6) -> nn.Sequential:
    """A 6-conv, stride-8 trunk for training from scratch: 1.13 M parameters and 0.14 GMACs per 64 px frame
    (ResNet-18: 11.2 M, 0.15). ResNet's stride-4 stem blurs 8-px digits away; this keeps an 8x8 map at 64 px.
    Each cell of its map sees 62x62 px, the whole crop, so every feature can hold both digits of a print and
    a model can learn '49' as one pattern. Only the first `wide_convs` convs are 3x3, the rest 3x1 (vertical
    only), which narrows the strip of the crop a map column sees: 22 px with 3 (cnn_narrow, 0.44 M parameters;
    measured in tests/test_ctc.py), so a column sees about one digit of a two-digit print."""
    w = [3 if i < wide_convs else 1 for i in range(6)]
    return nn.Sequential(*_conv(3, 32, w[0]), nn.MaxPool2d(2), *_conv(32, 64, w[1]), nn.MaxPool2d(2),
                         *_conv(64, 128, w[2]), *_conv(128, 128, w[3]), nn.MaxPool2d(2), *_conv(128, 256, w[4]),
                         *_conv(256, 256, w[5]))


def trunk(name: str, pretrained: bool) -> tuple[nn.Sequential, bool]:
    """Feature-map extractor [N, 3, H, W] -> [N, C, h, w] and whether ImageNet weights were loaded."""
    if name not in BACKBONES:
        raise ValueError(f"backbone must be one of {list(BACKBONES)}, got {name!r}")
    if name in SMALL_CNNS:
        return small_cnn(SMALL_CNNS[name]), False
    resnet, loaded = _resnet(name, pretrained)
    return nn.Sequential(*list(resnet.children())[:-2]), loaded  # drop avgpool and fc


class TextTrunk(nn.Module):
    """A pretrained text recognizer's trunk and neck (ocr.TextRecognizer) as a per-frame feature extractor:
    ImageNet-normalised lines [N, 3, 48, W] -> per-column features [N, W/8, D]. It also takes the trunk's own
    maps [N, C, 1, W/8] (C != 3), which training caches when the trunk is frozen (train.py)."""

    def __init__(self, name: str):
        super().__init__()
        rec = ocr.TextRecognizer(name)
        self.name, self.frozen_stem = name, True
        self.stem, self.neck, self.channels, self.dim = rec.stem, rec.neck, rec.channels, rec.dim
        self.digits = rec.digit_classifier()
        # ImageNet normalisation -> the recognizer's (x - 0.5) / 0.5: 2 * (x * std + mean) - 1
        std, mean = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        self.register_buffer("scale", 2 * std, persistent=False)
        self.register_buffer("shift", 2 * mean - 1, persistent=False)

    def maps(self, x):
        if x.shape[1] != 3:
            return x
        x = x * self.scale + self.shift
        if self.frozen_stem and x.device.type == "cpu" and not torch.is_grad_enabled():
            # the shipped trunk, unchanged, in onnxruntime: the same maps (to ~1e-5) at 5x the speed on a CPU
            sess = ocr.shipped_stem(self.name)
            return torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: x.float().numpy()})[0])
        return self.stem(x)

    def forward(self, x):
        return self.neck(self.maps(x))

    def finetune(self, mode: str) -> None:
        """none: nothing of the recognizer learns; neck: its neck does; all: the trunk too."""
        self.frozen_stem = mode != "all"
        for p in self.stem.parameters():
            p.requires_grad = mode == "all"
        for p in self.neck.parameters():
            p.requires_grad = mode in ("neck", "all")


class InitError(ValueError):
    """backbone_init names weights that cannot be used for this backbone."""


def load_trunk(net: nn.Module, path: str) -> None:
    """Copy pretrain.py trunk weights into `net` (a trunk()); one clear error if they do not fit."""
    try:
        net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True)["trunk"])
    except (OSError, RuntimeError, KeyError, TypeError, EOFError) as err:
        raise InitError(f"backbone_init {path!r} does not fit this backbone "
                        f"({type(err).__name__}: {str(err).splitlines()[0][:120]})") from None


class SpatialAttention(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(c, c // 8, 1), nn.BatchNorm2d(c // 8), nn.ReLU(inplace=True),
                                 nn.Conv2d(c // 8, 1, 1), nn.Sigmoid())

    def forward(self, x):
        return x * self.net(x)


class TemporalAttention(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.score = nn.Sequential(nn.Linear(dim, dim // 2), nn.Tanh(), nn.Linear(dim // 2, 1))

    def forward(self, h, mask):
        s = self.score(h).squeeze(-1).float()
        if mask is not None:
            s = s.masked_fill(~mask, float("-inf"))
        w = torch.softmax(s, dim=1)
        return (w.unsqueeze(-1).to(h.dtype) * h).sum(1), w


class ColumnReader(nn.Module):
    """Feature map [N, C, h, w] -> per-column log-probabilities [N, max(w, min_cols), 11] (index 10 = blank).

    One classifier slides along the width, so a digit is read the same wherever it sits: the left digit
    of a two-digit print uses the weights that read single digits in the middle. Each column pools its
    own rows with a learned softmax (the number sits on a few rows of the back). Maps narrower than
    `min_cols` (ResNet at 64 px: 2) are stretched so that '88' (8, blank, 8) still fits; a print two
    columns wide needs that too."""

    def __init__(self, c: int, hidden: int, dropout: float, min_cols: int = 8, context: int = 1):
        super().__init__()
        self.min_cols = min_cols
        self.rows = nn.Conv2d(c, 1, 1)
        # context: columns on each side the classifier also sees (0: every column is read alone)
        self.net = nn.Sequential(nn.Conv1d(c, hidden, 2 * context + 1, padding=context), nn.BatchNorm1d(hidden),
                                 nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Conv1d(hidden, 11, 1))

    def forward(self, fmap):
        a = torch.softmax(self.rows(fmap).float(), dim=2).to(fmap.dtype)
        cols = (a * fmap).sum(2)
        if cols.shape[-1] < self.min_cols:
            cols = F.interpolate(cols, size=self.min_cols, mode="linear", align_corners=False)
        return torch.log_softmax(self.net(cols).float().transpose(1, 2), -1)


def _ctc_tables():
    """Extended labels (blank-separated) of the numbers 0..99, padded to 5 states, which states may be
    entered by skipping a blank, and the two final states of each."""
    ext = torch.full((100, 5), -1, dtype=torch.long)
    for n in range(100):
        digits = [n] if n < 10 else [n // 10, n % 10]
        ext[n, :2 * len(digits) + 1] = torch.tensor([BLANK] + [v for d in digits for v in (d, BLANK)])
    skip = torch.zeros(100, 5, dtype=torch.bool)
    skip[:, 2:] = (ext[:, 2:] != BLANK) & (ext[:, 2:] >= 0) & (ext[:, 2:] != ext[:, :-2])
    ends = torch.tensor([[1, 2] if n < 10 else [3, 4] for n in range(100)])
    return ext, skip, ends


def ctc_number_logprob(logp):
    """Column log-probs [N, W, 11] -> [N, 100]: log P(digit string of N) summed over every CTC alignment
    (the forward algorithm of Graves et al. 2006, for all 100 numbers at once; equals -F.ctc_loss).
    Impossible states hold a large finite negative, not -inf: logsumexp over all -inf has a NaN gradient."""
    ext, skip, ends = (t.to(logp.device) for t in CTC_TABLES)
    N, W, _ = logp.shape
    e = logp[:, :, ext.clamp(min=0)].masked_fill(ext < 0, NEG)  # [N, W, 100, 5]
    neg = torch.full((N, 100, 1), NEG, device=logp.device)
    alpha = torch.cat([e[:, 0, :, :2], neg.expand(N, 100, 3)], 2)
    for t in range(1, W):
        one = torch.cat([neg, alpha[..., :-1]], 2)
        two = torch.cat([neg, neg, alpha[..., :-2]], 2).masked_fill(~skip, NEG)
        alpha = torch.logsumexp(torch.stack([alpha, one, two]), 0) + e[:, t]
    return torch.logsumexp(alpha.gather(2, ends.expand(N, 100, 2)), 2)


def ctc_mixture(cols, attn, blank_penalty: float = 0.0):
    """Per-frame column log-probs [B, T, W, 11] and attention [B, T] -> log P(number) [B, 100]: a mixture over
    frames, so the number need only be readable in the frames attention trusts. `blank_penalty` (decoding only)
    is taken off the blank's log-prob in every column: the insertion bonus of speech decoders, which makes
    reading one more digit cheaper."""
    if blank_penalty:
        cols = cols - blank_penalty * F.one_hot(torch.tensor(BLANK, device=cols.device), 11).to(cols.dtype)
    B, T = cols.shape[:2]
    per_frame = ctc_number_logprob(cols.flatten(0, 1)).view(B, T, 100)
    return torch.logsumexp(per_frame + attn.clamp_min(1e-30).log().unsqueeze(-1), 1)


class DigitHead(nn.Module):
    """Linear-BN-ReLU-dropout-Linear-BN plus a linear shortcut, ReLU, dropout, Linear -> classes."""

    def __init__(self, dim: int, hidden: int, classes: int, dropout: float):
        super().__init__()
        self.main = nn.Sequential(nn.Linear(dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                                  nn.Dropout(dropout), nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden))
        self.shortcut = nn.Linear(dim, hidden)
        self.out = nn.Sequential(nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(hidden, classes))

    def forward(self, x):
        return self.out(self.main(x) + self.shortcut(x))


class JerseyTemporalNet(nn.Module):
    def __init__(self, backbone="resnet18", pretrained=True, freeze_fraction=0.6, lstm_hidden=256, lstm_layers=2,
                 dropout=0.3, head_hidden=256, head="digits", channels_last=False, init_path="", ctc_columns=8,
                 ctc_context=1, blank_penalty=0.0, finetune="neck"):
        super().__init__()
        self.blank_penalty = blank_penalty  # ctc head, eval mode only (ctc_mixture)
        self.text = backbone in RECOGNIZERS
        if self.text:
            if head != "ctc":
                raise ValueError(f"a text-recognizer backbone reads with head='ctc', got {head!r}")
            self.backbone, self.pretrained_loaded = TextTrunk(backbone), True
            c = self.backbone.dim
        else:
            self.backbone, self.pretrained_loaded = trunk(backbone, pretrained)
            if init_path and not self.pretrained_loaded:
                load_trunk(self.backbone, init_path)
                self.pretrained_loaded = True
            c = BACKBONES[backbone]
        self.spatial = nn.Identity() if self.text else SpatialAttention(c)
        self.lstm = nn.LSTM(c, lstm_hidden, lstm_layers, batch_first=True, bidirectional=True,
                            dropout=dropout if lstm_layers > 1 else 0.0)
        d = 2 * lstm_hidden
        self.temporal = TemporalAttention(d)
        # is a number visible in the tracklet at all (SoccerNet's -1)? Learned where the data has -1 tracklets
        self.visible = nn.Linear(d, 1)
        self.head_type = head
        if head == "digits":
            self.tens = DigitHead(d, head_hidden, 11, dropout)
            self.units = DigitHead(d, head_hidden, 11, dropout)
        elif head == "ctc" and self.text:  # the recognizer's own classifier, cut to digits and blank
            self.columns = self.backbone.digits
        elif head == "ctc":
            self.columns = ColumnReader(c, head_hidden, dropout, ctc_columns, ctc_context)
        else:
            raise ValueError(f"head must be 'digits' or 'ctc', got {head!r}")
        self.channels_last = channels_last and not self.text
        if self.text:
            self.backbone.finetune(finetune)
        else:
            self.freeze_backbone(freeze_fraction)

    def freeze_backbone(self, fraction: float) -> int:
        """Freeze the first `fraction` of the backbone's parameter tensors (unfreeze the rest); returns count."""
        params = list(self.backbone.parameters())
        k = int(len(params) * fraction)
        for i, p in enumerate(params):
            p.requires_grad = i >= k
        return k

    def unfreeze(self, fraction: float) -> int:
        """Make the last `fraction` of the backbone trainable (e.g. 0.6 after a warm-up); returns frozen count."""
        return self.freeze_backbone(1.0 - fraction)

    def encode(self, x, mask=None):
        """[B, T, 3, H, W] -> sequence embedding [B, 2H], temporal attention weights [B, T] and, for the ctc
        head, per-frame column log-probabilities [B, T, W, 11] (else None)."""
        B, T = x.shape[:2]
        f, cols = self.frame_features(x.flatten(0, 1), None if self.training else repeats(x))
        f, cols = f.view(B, T, -1), None if cols is None else cols.view(B, T, *cols.shape[1:])
        if mask is not None and not bool(mask.all()):
            lengths = mask.sum(1).clamp(min=1).cpu()
            packed = nn.utils.rnn.pack_padded_sequence(f, lengths, batch_first=True, enforce_sorted=False)
            h, _ = self.lstm(packed)
            h, _ = nn.utils.rnn.pad_packed_sequence(h, batch_first=True, total_length=T)
        else:
            h, _ = self.lstm(f)
        return (*self.temporal(h, mask), cols)

    def frame_features(self, f, repeated=None):
        """[N, 3, H, W] -> pooled features [N, C] and column log-probs (ctc head) or None. Frames flagged in
        `repeated` (exact copies of the frame before them, as padding makes for short tracklets) reuse that
        frame's outputs instead of running the trunk again; only in eval mode, where BatchNorm makes each
        frame's output independent of the batch."""
        if repeated is not None and bool(repeated.any()):
            keep = ~repeated
            src = keep.cumsum(0) - 1
            pooled, cols = self.frame_features(f[keep])
            return pooled[src], None if cols is None else cols[src]
        if self.text:
            feats = self.backbone(f)
            return feats.mean(1), torch.log_softmax(self.columns(feats).float(), -1)
        if self.channels_last:
            f = f.contiguous(memory_format=torch.channels_last)
        fmap = self.spatial(self.backbone(f))
        return fmap.mean((2, 3)), self.columns(fmap) if self.head_type == "ctc" else None

    def forward(self, x, mask=None):
        z, attn, cols = self.encode(x, mask)
        visible = self.visible(z).squeeze(-1)
        if self.head_type == "ctc":  # the columns too, so evaluate.py can decode again with another blank penalty
            penalty = 0.0 if self.training else self.blank_penalty
            return {"number": ctc_mixture(cols, attn, penalty), "attention": attn, "columns": cols, "visible": visible}
        return {"tens": self.tens(z), "units": self.units(z), "attention": attn, "visible": visible}

    @torch.inference_mode()
    def predict(self, x, mask=None):
        """Numbers, confidences, per-digit probabilities and attention for a batch (argmax decoding)."""
        was_training = self.training
        self.eval()
        out = self(x, mask)
        self.train(was_training)
        p_num, p_tens, p_units = probabilities(out)
        conf, number = p_num.max(1)
        return {"number": number, "confidence": conf, "tens_probs": p_tens, "units_probs": p_units,
                "number_probs": p_num, "attention": out["attention"].float()}


def repeats(x) -> torch.Tensor:
    """[B, T, ...] -> flat [B*T] bool: frame t is an exact copy of frame t-1 of its own sequence."""
    same = torch.zeros(x.shape[:2], dtype=torch.bool, device=x.device)
    same[:, 1:] = (x[:, 1:] == x[:, :-1]).flatten(2).all(2)
    return same.flatten()


CTC_TABLES = _ctc_tables()


def probabilities(out):
    """(p_number [B, 100], p_tens [B, 11] with index 10 = empty, p_units [B, 10]) for either head."""
    if "number" in out:
        p_num = torch.softmax(out["number"].float(), 1)
        p_tens = torch.cat([p_num[:, 10:].view(-1, 9, 10).sum(2), p_num[:, :10].sum(1, keepdim=True)], 1)
        p_tens = torch.cat([torch.zeros_like(p_tens[:, :1]), p_tens], 1)  # tens digit 0 never exists
        p_units = p_num[:, :10] + p_num[:, 10:].view(-1, 9, 10).sum(1)
        return p_num, p_tens, p_units
    p_tens = torch.softmax(out["tens"].float(), 1)
    p_units = torch.softmax(out["units"].float()[:, :10], 1)  # units 'empty' is not a digit
    return number_probs(p_tens, p_units), p_tens, p_units


def number_probs(p_tens, p_units):
    """Joint distribution over 0..99 from independent digit heads; tens 0 and tens empty both give N < 10."""
    single = (p_tens[:, EMPTY] + p_tens[:, 0]).unsqueeze(1) * p_units
    two = (p_tens[:, 1:10, None] * p_units[:, None, :]).flatten(1)
    return torch.cat([single, two], 1)


class Ensemble(nn.Module):
    """Several checkpoints read as one (evaluate.py / predict.py --checkpoint=a.pth,b.pth): the mean of their
    probabilities over the 100 numbers, returned as log-probabilities, as a ctc head's scores are, so every
    decoding rule reads it unchanged. Members read the same frames; the attention is the first one's."""

    def __init__(self, members):
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x, mask=None):
        outs = [m(x, mask) for m in self.members]
        p_num = torch.stack([probabilities(o)[0] for o in outs]).mean(0)
        visible = torch.stack([torch.sigmoid(o["visible"].float()) for o in outs]).mean(0)
        return {"number": p_num.clamp_min(1e-30).log(), "attention": outs[0]["attention"],
                "visible": torch.logit(visible, eps=1e-6)}


def build(cfg, pretrained: bool | None = None, init_path: str = "") -> JerseyTemporalNet:
    """The one place a model is made from a config (train, evaluate, analyze and checkpoints use it).
    `init_path`: pretrain.py trunk weights, used when ImageNet weights are off or cannot be had."""
    return JerseyTemporalNet(backbone=cfg.backbone, pretrained=cfg.pretrained if pretrained is None else pretrained,
                             freeze_fraction=cfg.freeze_fraction, lstm_hidden=cfg.lstm_hidden, dropout=cfg.dropout,
                             head_hidden=cfg.head_hidden, head=cfg.head, channels_last=True, init_path=init_path,
                             ctc_context=cfg.ctc_context, blank_penalty=cfg.blank_penalty, finetune=cfg.finetune)


def model_from_checkpoint(ckpt: dict, path: str = "checkpoint"):
    """Rebuild the exact model a checkpoint was trained with, from what it stores alone."""
    try:
        cfg = config.from_dict(ckpt["config"])
        net = build(cfg, pretrained=False)
    except (TypeError, ValueError, AttributeError) as err:  # a config from another version of this repo
        raise utils.CheckpointError(f"{path}: its config does not describe a model this code can build "
                                    f"({type(err).__name__}: {str(err).splitlines()[0][:160]})") from None
    try:
        result = net.load_state_dict(ckpt["model"], strict=False)  # a checkpoint from before the visible head
        if result.unexpected_keys or any(not k.startswith("visible.") for k in result.missing_keys):
            net.load_state_dict(ckpt["model"])  # raises with torch's own list of what differs
    except RuntimeError as err:
        raise utils.CheckpointError(f"{path}: weights do not match the architecture it describes "
                                    f"({str(err).splitlines()[0][:160]})") from None
    return net, cfg


def fused_for_inference(net: JerseyTemporalNet) -> JerseyTemporalNet:
    """An eval-mode copy with every conv + BatchNorm pair of the trunk folded into one conv (torch.fx):
    one pass over memory less per layer, ~10% faster on CPU, the same outputs up to rounding. Never train it.
    A text reader comes back as it is (its frozen trunk runs in onnxruntime on a CPU, TextTrunk.maps)."""
    from torch.fx.experimental.optimization import fuse
    if isinstance(net, Ensemble):
        return Ensemble([fused_for_inference(m) for m in net.members])
    if net.text:
        return net.eval()
    net = copy.deepcopy(net).eval()
    net.backbone = fuse(net.backbone)
    return net


def available_quant_engine() -> str | None:
    """The quantized CPU engine this PyTorch build offers (x86, fbgemm or qnnpack, in that order), or None."""
    return next((e for e in ("x86", "fbgemm", "qnnpack") if e in torch.backends.quantized.supported_engines), None)


def quant_engine() -> str:
    """available_quant_engine, made torch's current one; RuntimeError where there is none."""
    engine = available_quant_engine()
    if engine is None:
        raise RuntimeError("this PyTorch build has no quantized CPU engine (x86, fbgemm or qnnpack)")
    torch.backends.quantized.engine = engine
    return engine


def _prepared_trunk(net: JerseyTemporalNet, input_shape):
    """(a CPU copy of the trunk prepared for INT8 by torch.ao FX: conv, BN and ReLU fused, per-channel weights,
    observers on every activation; the engine it was prepared for)."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import prepare_fx
    engine = quant_engine()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization is deprecated in favour of torchao; it still works
        trunk = prepare_fx(copy.deepcopy(net.backbone).cpu().eval(), get_default_qconfig_mapping(engine),
                           example_inputs=(torch.zeros(1, *input_shape),))
    return trunk, engine


def _observed_trunk(net: JerseyTemporalNet, calibration: torch.Tensor):
    """_prepared_trunk with its observers fed `calibration` (normalised frames [N, 3, H, W])."""
    trunk, engine = _prepared_trunk(net, calibration.shape[1:])
    with torch.no_grad():
        for chunk in calibration.split(64):
            trunk(chunk.contiguous(memory_format=torch.channels_last) if net.channels_last else chunk)
    return trunk, engine


def _observers(trunk) -> dict:
    return {k: v for k, v in trunk.state_dict().items() if "activation_post_process" in k}


def int8_ranges(net: JerseyTemporalNet, calibration: torch.Tensor) -> dict:
    """The activation ranges an INT8 trunk needs, observed on `calibration` (normalised frames [N, 3, H, W]; no
    labels). Plain tensors and strings, so a checkpoint can carry them (train.py stores them at every epoch) and
    int8_trunk needs no calibration pass, nor enough input frames for one, at prediction time."""
    trunk, engine = _observed_trunk(net, calibration)
    return {"engine": engine, "input_shape": list(calibration.shape[1:]), "observers": _observers(trunk)}


def int8_trunk(net: JerseyTemporalNet, calibration: torch.Tensor | None = None, ranges: dict | None = None
               ) -> JerseyTemporalNet:
    """An eval-mode CPU copy whose trunk runs in INT8: post-training static quantization with the activation
    ranges `ranges` (int8_ranges, e.g. from a checkpoint), else observed on `calibration` (normalised frames
    [N, 3, H, W]; the footage about to be read will do). The trunk is ~80% of the model's time on CPU and INT8
    runs it about twice as fast as bfloat16; the LSTM, attention and heads keep the usual precision. Raises
    RuntimeError where PyTorch has no quantized CPU engine or the ranges were observed for another engine."""
    from torch.ao.quantization.quantize_fx import convert_fx
    if ranges is None:
        trunk, _ = _observed_trunk(net, calibration)
    else:
        trunk, engine = _prepared_trunk(net, ranges["input_shape"])
        if ranges["engine"] != engine:
            raise RuntimeError(f"activation ranges observed for quantized engine {ranges['engine']}, "
                               f"this machine runs {engine}")
        if set(ranges["observers"]) != set(_observers(trunk)):
            raise RuntimeError("the stored activation ranges do not fit this trunk")
        trunk.load_state_dict(ranges["observers"], strict=False)  # observers only: the weights are net's own
    net = copy.deepcopy(net).cpu().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net.backbone = convert_fx(trunk)
    return net


def count_parameters(model: nn.Module) -> tuple[int, int]:
    total = sum(p.numel() for p in model.parameters())
    return total, sum(p.numel() for p in model.parameters() if p.requires_grad)
