import os

import numpy as np
import pytest
import torch

import config
import dataset
import engine
import synth
from config import EMPTY
from dataset import decompose, reconstruct, select_frames


def test_decompose_reconstruct_all_numbers():
    for n in range(100):
        t, u = decompose(n)
        assert (t == EMPTY) == (n < 10) and 0 <= u <= 9
        assert reconstruct(t, u) == n
    t = torch.tensor([decompose(n)[0] for n in range(100)])
    u = torch.tensor([decompose(n)[1] for n in range(100)])
    assert torch.equal(reconstruct(t, u), torch.arange(100))
    assert decompose(48) == (4, 8) and decompose(7) == (10, 7)
    tt, tu = decompose(torch.arange(100))  # the tensor form gives the same digits
    assert torch.equal(tt, t) and torch.equal(tu, u)


RNG = np.random.default_rng(0)


@pytest.mark.parametrize("strategy", ["uniform", "random", "center"])
def test_anchor_first_and_distinct(strategy):
    idx = select_frames(12, anchor=7, seq_len=5, strategy=strategy, rng=RNG)
    assert len(idx) == 5 and idx[0] == 7 and 7 not in idx[1:] and len(set(idx)) == 5


def test_strategies_pick_expected_frames():
    assert select_frames(9, None, 3, "uniform", RNG) == [0, 4, 8]
    assert select_frames(9, None, 3, "center", RNG) == [3, 4, 5]
    assert select_frames(9, 0, 3, "center", RNG) == [0, 4, 5]  # window over non-anchor frames 1..8
    r = select_frames(20, None, 4, "random", RNG)
    assert r == sorted(r) and len(set(r)) == 4


def test_short_folders_repeat_last_frame():
    assert select_frames(2, None, 5, "uniform", RNG) == [0, 1, 1, 1, 1]
    assert select_frames(3, 2, 5, "uniform", RNG) == [2, 0, 1, 1, 1]
    assert select_frames(1, 0, 4, "random", RNG) == [0, 0, 0, 0]
    assert select_frames(2, None, 5, "uniform", RNG, pad=False) == [0, 1]


def test_unknown_strategy_raises():
    with pytest.raises(ValueError):
        select_frames(10, None, 3, "bogus", RNG)


def test_crawl_counts_skips(tiny_root):
    os.makedirs(tiny_root / "abc" / "s" / "0")
    os.makedirs(tiny_root / "100" / "s" / "0")
    os.makedirs(tiny_root / "4" / "player_9_seq_9" / "0")  # empty sub-tracklet
    (tiny_root / "48" / "player_0_seq_0" / "0" / "notes.txt").write_text("x")
    samples, skipped = dataset.crawl(str(tiny_root))
    assert len(samples) == 12 and {s.number for s in samples} == {4, 48, 49}
    assert skipped["folder name not a number 0..99"] == 2 and skipped["empty sub-tracklet folder"] == 1
    with_anchor = [s for s in samples if s.anchor is not None]
    assert len(with_anchor) == 6 and all("_anchor" in s.frames[s.anchor] for s in with_anchor)
    only_4, _ = dataset.crawl(str(tiny_root), [4])
    assert {s.number for s in only_4} == {4}


def test_frame_store_decodes_once_and_skips_unreadable(tiny_root, tmp_path):
    bad = tiny_root / "4" / "player_0_seq_0" / "1" / "1_999_0.jpg"
    bad.write_bytes(b"not a jpeg")
    samples, skipped = dataset.crawl(str(tiny_root))
    store = dataset.FrameStore(samples, 32, 2.0, str(tmp_path / "cache"))
    assert store.frames.shape[1:] == (32, 32, 3) and store.frames.dtype == np.uint8
    cleaned = store.drop_unreadable(samples, skipped)
    assert skipped["unreadable image"] == 1 and len(cleaned) == len(samples)
    assert len(list((tmp_path / "cache").glob("frames_*.npz"))) == 1
    again = dataset.FrameStore(samples, 32, 2.0, str(tmp_path / "cache"))  # from the cache
    assert np.array_equal(again.frames, store.frames)


def test_pooled_decoding_matches_one_process_and_reuses_its_pool(tiny_root):
    samples, _ = dataset.crawl(str(tiny_root))
    paths = sorted({p for s in samples for p in s.frames}) * 20  # enough frames for the pool (> 128)
    one, ok1 = dataset._decode_all(paths, 32, 2.0, (0, 0, 1, 1), workers=1)
    two, ok2 = dataset._decode_all(paths, 32, 2.0, (0, 0, 1, 1), workers=2)
    assert len(paths) > 128 and ok1.all() and np.array_equal(ok1, ok2) and np.array_equal(one, two)
    assert dataset.decode_pool(2) is dataset.decode_pool(2)  # kept: no fork per call
    r, w = os.pipe()
    if (pid := os.fork()) == 0:  # a forked child (a DataLoader worker) must not use its parent's pool
        own = dataset.decode_pool(2)
        os.write(w, b"1" if own is not dataset._POOLS[(os.getppid(), 2)] else b"0")
        own.terminate()
        os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(r, 1) == b"1"


@pytest.mark.parametrize("size", [(1, 1), (2, 5), (3, 3), (17, 40), (61, 23)])
def test_sharpen_2_is_pillows_sharpness_byte_for_byte(tmp_path, size):
    """load_frame's one-kernel sharpening = ImageEnhance.Sharpness(2.0), edges and tiny images included."""
    from PIL import Image, ImageEnhance
    rng = np.random.default_rng(sum(size))
    img = Image.fromarray(rng.integers(0, 256, (*size[::-1], 3), dtype=np.uint8))
    path = str(tmp_path / "f.png")
    img.save(path)
    want = np.asarray(ImageEnhance.Sharpness(img).enhance(2.0).resize((24, 24), Image.LANCZOS))
    assert np.array_equal(dataset.load_frame(path, 24, 2.0), want)
    assert np.array_equal(dataset.load_frame(path, 24, 2.0, enhance=True), want)
    assert not np.array_equal(dataset.load_frame(path, 24, 1.0), want) or min(size) < 3  # PIL filters skip those


def test_crop_keeps_only_its_box_and_has_its_own_cache(tmp_path):
    """--crop cuts the box out before the resize (so it keeps the pixels), and never reads a full-frame cache."""
    from PIL import Image
    img = np.zeros((200, 80, 3), np.uint8)
    img[:100] = (250, 0, 0)  # top half red, bottom half blue: a tall full-body crop
    img[100:] = (0, 0, 250)
    root = tmp_path / "data" / "4" / "player_0_seq_0" / "0"
    root.mkdir(parents=True)
    Image.fromarray(img).save(root / "0_0_0.png")
    top = dataset.load_frame(str(root / "0_0_0.png"), 32, 1.0, (0.0, 0.0, 1.0, 0.4))
    assert top.shape == (32, 32, 3) and (top[..., 0] > 200).all() and (top[..., 2] < 50).all()
    band = dataset.load_frame(str(root / "0_0_0.png"), 32, 1.0, (0.0, 0.25, 1.0, 0.75))  # half of each colour
    assert (band[:14, :, 0] > 200).all() and (band[-14:, :, 2] > 200).all()
    samples, _ = dataset.crawl(str(tmp_path / "data"))
    cache = str(tmp_path / "cache")
    full = dataset.FrameStore(samples, 32, 1.0, cache)
    cropped = dataset.FrameStore(samples, 32, 1.0, cache, crop=[0, 0, 1, 0.4])
    assert np.array_equal(cropped.frames[0], top) and not np.array_equal(full.frames[0], top)
    assert len(list((tmp_path / "cache").glob("frames_*.npz"))) == 2
    cfg = config.Config(crop=[0.0, 0.7, 1.0, 0.6])
    assert any(e.startswith("crop must be") for e in cfg.validate())
    assert not config.Config(crop=[0, 0.05, 1, 0.65]).validate()


def test_two_processes_building_the_same_frame_cache_both_finish(tiny_root, tmp_path, monkeypatch):
    """ablate --jobs=2 starts runs on the same data at once: a second process writes and renames its cache
    file while the first is between writing and renaming its own (this crashed when both used one temp name)."""
    samples, _ = dataset.crawl(str(tiny_root))
    cache, pid, save = str(tmp_path / "cache"), os.getpid(), np.savez
    other = []

    def savez_then_other_process(path, **arrays):
        save(path, **arrays)
        if not other:
            other.append(None)
            monkeypatch.setattr(dataset.os, "getpid", lambda: pid + 1)
            other[0] = dataset.FrameStore(samples, 32, 2.0, cache)
            monkeypatch.setattr(dataset.os, "getpid", lambda: pid)
    monkeypatch.setattr(dataset.np, "savez", savez_then_other_process)
    store = dataset.FrameStore(samples, 32, 2.0, cache)
    assert np.array_equal(store.frames, other[0].frames)
    left = [p.name for p in (tmp_path / "cache").iterdir()]
    assert len(left) == 1 and left[0].startswith("frames_") and ".tmp" not in left[0]  # no temp file left


def test_dataset_items_and_collate(tiny_root, tmp_path):
    samples, _ = dataset.crawl(str(tiny_root))
    store = dataset.FrameStore(samples, 32, 2.0)
    ds = dataset.TrackletDataset(samples, store, seq_len=5, strategy="uniform", use_anchor=True)
    frames, t, u, n, i = ds[0]
    assert frames.shape == (5, 32, 32, 3) and (t, u) == decompose(n)
    var = dataset.TrackletDataset(samples, store, seq_len=5, strategy="uniform", pad=False)
    batch = dataset.collate([var[k] for k in range(4)])
    lengths = [min(5, len(samples[k].frames)) for k in range(4)]
    assert batch["frames"].shape == (4, max(lengths), 32, 32, 3)
    assert batch["mask"].sum(1).tolist() == lengths


def test_eval_without_anchor_never_uses_anchor_frame(tiny_root):
    samples, _ = dataset.crawl(str(tiny_root))
    ds = dataset.TrackletDataset(samples, dataset.FrameStore(samples, 32, 2.0), 5, "uniform", use_anchor=False)
    for k, s in enumerate(samples):
        if s.anchor is not None:
            assert s.anchor not in ds.frame_indices(k)


def test_effective_number_weights_by_hand():
    labels = [0] * 100 + [1] * 10 + [EMPTY] * 1000
    w = dataset.class_weights(labels, 11, "effective_number", beta=0.99, absent_weight=0.001, empty_index=EMPTY,
                              empty_suppression=0.1, sqrt=False)
    eff = lambda n: (1 - 0.99) / (1 - 0.99 ** n)  # noqa: E731
    assert w[0].item() == pytest.approx(eff(100)) and w[1].item() == pytest.approx(eff(10))
    assert w[EMPTY].item() == pytest.approx(eff(1000) * 0.1) and w[5].item() == pytest.approx(0.001)
    ws = dataset.class_weights(labels, 11, "effective_number", beta=0.99, empty_index=EMPTY, empty_suppression=0.1)
    assert torch.allclose(ws, w.sqrt())


@pytest.mark.parametrize("sqrt", [True, False])
def test_balanced_empty_suppression_gives_empty_an_average_digits_weight(sqrt):
    """SPEC.md's counts (94% single digits) and a split of 55%: after the factor, count x weight of 'empty'
    equals the mean over the tens digits present; never above 1; 1 when nothing is left to balance."""
    spec = {4: 1029, 6: 867, 8: 2057, 9: 1499, 49: 121, 66: 145, 89: 87}
    half = {**{d: 200 for d in range(1, 10)}, **{n: 60 for n in (12, 15, 23, 34, 42, 57, 61, 70, 85)}}
    for counts in (spec, half):
        tens = [dataset.decompose(n)[0] for n, c in counts.items() for _ in range(c)]
        s = dataset.balanced_empty_suppression(tens, sqrt=sqrt)
        w = dataset.class_weights(tens, 11, empty_index=EMPTY, empty_suppression=s, sqrt=sqrt)
        n = torch.bincount(torch.tensor(tens), minlength=11).double()
        digits = n[:EMPTY] > 0
        assert 0 < s < 1 and float(n[EMPTY] * w[EMPTY]) == pytest.approx(float((n[:EMPTY] * w[:EMPTY])[digits].mean()))
    few_singles = [dataset.decompose(n)[0] for n in [3] * 5 + [45] * 100 + [67] * 100]
    assert dataset.balanced_empty_suppression(few_singles, sqrt=sqrt) == 1.0  # no boost for a rare 'empty'
    assert dataset.balanced_empty_suppression([EMPTY] * 10, sqrt=sqrt) == 1.0  # single digits only
    assert dataset.balanced_empty_suppression([4] * 10, sqrt=sqrt) == 1.0  # no single digit


def test_balanced_weights_by_hand():
    w = dataset.class_weights([0, 0, 0, 1], 3, "balanced", absent_weight=0.5, sqrt=False)
    assert w.tolist() == pytest.approx([4 / (2 * 3), 4 / (2 * 1), 0.5])


def test_augment_keeps_shape_and_range():
    x = torch.rand(2, 3, 3, 32, 32)
    y = dataset.augment(x)
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1 and not torch.equal(x, y)


def _augment_textbook(x, degrees=5.0, translate=0.05, scale=(0.95, 1.05), brightness=0.2, contrast=0.2):
    """The same recipe the plain way (affine_grid, out-of-place jitter on the grey mean), same draws."""
    B, T, C, H, W = x.shape
    n = B * T
    ang = torch.empty(n).uniform_(-degrees, degrees).deg2rad_()
    s = torch.empty(n).uniform_(*scale)
    tx, ty = (torch.empty(n).uniform_(-translate, translate) * 2 for _ in range(2))
    cos, sin = torch.cos(ang) / s, torch.sin(ang) / s
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    flat = torch.nn.functional.grid_sample(x.reshape(n, C, H, W), torch.nn.functional.affine_grid(
        theta, (n, C, H, W), align_corners=False), align_corners=False)
    b, c = (torch.empty(n, 1, 1, 1).uniform_(1 - j, 1 + j) for j in (brightness, contrast))
    flat = (flat * b).clamp(0, 1)
    gray = (0.299 * flat[:, 0] + 0.587 * flat[:, 1] + 0.114 * flat[:, 2]).mean((1, 2)).view(n, 1, 1, 1)
    return ((flat - gray) * c + gray).clamp(0, 1).view(B, T, C, H, W)


def test_augment_is_the_textbook_recipe_and_identity_without_jitter():
    x = dataset.to_input(torch.randint(0, 256, (3, 2, 24, 20, 3), dtype=torch.uint8), torch.device("cpu"))
    torch.manual_seed(1)
    fast = dataset.augment(x)
    torch.manual_seed(1)
    assert torch.allclose(fast, _augment_textbook(x), atol=1e-5)
    still = dataset.augment(x, degrees=0, translate=0, scale=(1, 1), brightness=0, contrast=0)
    assert torch.allclose(still, x, atol=1e-6)


@pytest.mark.parametrize("use_anchor", [True, False])
def test_keep_frames_decodes_only_what_is_read_and_reads_the_same_frames(tiny_root, use_anchor):
    samples, _ = dataset.crawl(str(tiny_root))
    chooser = dataset.TrackletDataset(samples, None, 3, "uniform", use_anchor=use_anchor)
    picks = [chooser.frame_indices(k) for k in range(len(samples))]
    kept = dataset.keep_frames(samples, picks)
    again = dataset.TrackletDataset(kept, None, 3, "uniform", use_anchor=use_anchor)
    for k, (s, t) in enumerate(zip(samples, kept)):
        assert len(t.frames) == len(set(picks[k])) <= 3 < len(s.frames) + 3
        assert [t.frames[j] for j in again.frame_indices(k)] == [s.frames[j] for j in picks[k]]


def test_criterion_with_auto_empty_suppression():
    """--empty_suppression=auto: the criterion's tens weights are those of the balancing factor of the
    numbers it is given, and differ from the fixed 0.01 where single digits are not 94% of them."""
    numbers = [4] * 110 + [5] * 90 + [42] * 60 + [57] * 40
    tens = [dataset.decompose(n)[0] for n in numbers]
    auto = engine.Criterion(config.Config(empty_suppression="auto"), numbers, "cpu").weights["tens"]
    s = dataset.balanced_empty_suppression(tens)
    assert torch.allclose(auto, dataset.class_weights(tens, 11, empty_index=EMPTY, empty_suppression=s))
    fixed = engine.Criterion(config.Config(empty_suppression=0.01), numbers, "cpu").weights["tens"]
    assert auto[EMPTY] > 2 * fixed[EMPTY] and torch.equal(auto[:EMPTY], fixed[:EMPTY])
