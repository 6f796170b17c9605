"""The text recognizer shipped in the rapidocr_onnxruntime wheel, run as a PyTorch module (ocr.py)."""
import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFont

import config
import dataset
import model as model_lib
import ocr
import synth


@pytest.fixture(scope="module")
def rec():
    return ocr.TextRecognizer("ppocr_v4").eval()


@pytest.fixture(scope="module")
def shipped():
    return ocr.ShippedRecognizer("ppocr_v4", threads=1)


def line_of(text: str, width: int = 96) -> np.ndarray:
    """A printed number on a white 48-row line, uint8 [48, width, 3]."""
    im = Image.new("RGB", (width, config.LINE_HEIGHT), (255, 255, 255))
    font = ImageFont.truetype(str(synth.FONT_DIR / "DejaVuSans-Bold.ttf"), 34)
    ImageDraw.Draw(im).text((4, 4), text, fill=(0, 0, 0), font=font)
    return np.asarray(im)


def as_input(lines: np.ndarray) -> np.ndarray:
    return lines.transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1.0


def test_pytorch_module_matches_the_shipped_runtime(rec, shipped):
    """The weights are loaded right: the same probabilities as onnxruntime on the shipped file (measured: 3e-6)."""
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.uniform(-1, 1, (2, 3, 48, 96)).astype(np.float32),
                        as_input(np.stack([line_of("48"), line_of("7")]))])
    with torch.no_grad():
        ours = torch.softmax(rec(torch.from_numpy(x)), -1).numpy()
    ref = shipped.probs(x)
    assert ours.shape == ref.shape == (4, 12, len(rec.charset))
    assert np.abs(ours - ref).max() < 1e-3


def test_it_reads_printed_numbers_before_any_training(rec, shipped):
    x = as_input(np.stack([line_of(t) for t in ("48", "64", "88", "7")]))
    assert [t for t, _ in shipped.read(x)] == ["48", "64", "88", "7"]
    with torch.no_grad():
        probs = torch.softmax(rec(torch.from_numpy(x)), -1).numpy()
    assert [ocr.greedy_decode(p, rec.charset)[0] for p in probs] == ["48", "64", "88", "7"]


def test_digit_classifier_is_the_recognizer_restricted_to_digits_and_blank(rec):
    head = rec.digit_classifier()
    feats = torch.randn(3, 12, rec.dim)
    with torch.no_grad():
        full, digits = rec.classifier(feats), head(feats)
    rows = rec.digit_rows()
    assert [rec.charset[r] for r in rows] == [str(d) for d in range(10)] + ["<blank>"]
    assert torch.allclose(digits, full[..., rows], atol=1e-5)


def test_text_trunk_takes_imagenet_normalised_lines_or_its_own_maps(rec):
    trunk = model_lib.TextTrunk("ppocr_v4").eval()
    lines = np.stack([line_of("48"), line_of("9")])
    x = dataset.normalize(dataset.to_input(torch.from_numpy(lines)[None], "cpu"))[0]
    with torch.no_grad():
        a = trunk(x)
        b = rec.neck(rec.stem(torch.from_numpy(as_input(lines))))
        c = trunk(trunk.maps(x))
    assert a.shape == (2, 12, rec.dim)
    assert torch.allclose(a, b, atol=1e-4) and torch.equal(a, c)


def test_map_store_serves_the_trunk_maps_of_every_view(tmp_path, rec):
    for i, n in enumerate((48, 7)):
        im = Image.new("RGB", (40, 80), (200, 200, 200))
        ImageDraw.Draw(im).text((8, 20), str(n), fill=(0, 0, 0))
        (tmp_path / str(n)).mkdir()
        im.save(tmp_path / str(n) / "a.jpg")
    samples = [dataset.Sample(str(tmp_path / str(n)), n, [str(tmp_path / str(n) / "a.jpg")], None, str(n))
               for n in (48, 7)]
    views = {"line_width": 64, "bands": 3, "band_height": 0.4}
    frames = dataset.FrameStore(samples, config.LINE_HEIGHT, 1.0, views=views)
    lines = frames.get(samples[0].frames)
    assert lines.shape == (3, 48, 64, 3) and (lines[:, :, -1] == 128).all()  # three bands, grey padding on the right
    store = ocr.MapStore(frames, "ppocr_v4", cache_dir=str(tmp_path / "cache"))
    maps = store.get(samples[0].frames + samples[1].frames)
    assert maps.shape == (6, rec.channels, 1, 8) and maps.dtype == np.float16
    with torch.no_grad():
        ref = rec.stem(torch.from_numpy(as_input(lines)))
    assert np.abs(maps[:3].astype(np.float32) - ref.numpy()).max() < 0.05
    again = ocr.MapStore(frames, "ppocr_v4", cache_dir=str(tmp_path / "cache"))  # read back from the cache
    assert np.array_equal(again.get(samples[1].frames), maps[3:])


def test_band_boxes_cover_the_crop_from_top_to_bottom():
    assert dataset.band_boxes(100, 3, 0.4) == [(0, 40), (30, 70), (60, 100)]
    assert dataset.band_boxes(50, 1, 1.0) == [(0, 50)]


def test_zero_shot_vote_counts_only_jersey_numbers():
    votes = ocr.digit_reads([("48", 0.9), ("4B", 0.8), ("048", 0.9), ("07", 0.9), ("48", 0.5), ("8", 0.3), ("", 0),
                             ("④", 0.9), ("４８", 0.9)])  # a circled and full-width digits are not jersey numbers
    assert votes == pytest.approx({48: 1.4, 8: 0.3})
    zs = ocr.ZeroShot("ppocr_v4")
    lines = np.stack([np.stack([line_of("64"), line_of("64"), line_of("A")]),
                      np.stack([line_of("B"), line_of("-"), line_of("")])])
    numbers, conf, _ = zs(lines)
    assert numbers[0] == 64 and conf[0] == 1.0
    assert numbers[1] == -1 and conf[1] == 0.0  # nothing readable: no answer


def test_a_missing_recognizer_package_is_one_clear_error(monkeypatch):
    monkeypatch.setitem(config.RECOGNIZERS, "ppocr_v4", ("no_such_package_xyz", "m.onnx", "", "no-such==1.0", "MIT"))
    with pytest.raises(ocr.RecognizerMissing, match="pip install no-such==1.0"):
        ocr.model_path("ppocr_v4")
