import os

import numpy as np
import pytest
import torch

import config
import dataset
import synth
import train
from dataset import EMPTY, decompose, reconstruct, select_frames


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


def test_compose_batch_labels_and_layout():
    torch.manual_seed(0)
    B, T, H, W = 8, 2, 16, 16
    number = torch.tensor([4, 6, 8, 9, 4, 6, 49, 66])
    x = torch.zeros(B, T, 3, H, W)
    for k in range(B):
        x[k] = number[k] / 100.0  # each tracklet is a flat image whose value encodes its number
    tens, units = zip(*map(decompose, number.tolist()))
    xt, t, u, n = dataset.compose_batch(x, torch.tensor(tens), torch.tensor(units), number, prob=1.0,
                                        width=(0.5, 0.5))
    changed = (n != number) | (xt != x).flatten(1).any(1)
    assert changed.any()
    for k in torch.nonzero(n >= 10).flatten():
        if n[k] in (49, 66) and torch.equal(xt[k], x[k]):
            continue  # an untouched real two-digit tracklet
        a, b = divmod(int(n[k]), 10)
        assert (t[k], u[k]) == (a, b)
        assert xt[k, 0, 0, H // 2, 2].item() == pytest.approx(a / 100, abs=1e-5)       # left half: digit a
        assert xt[k, 0, 0, H // 2, W - 3].item() == pytest.approx(b / 100, abs=1e-5)   # right half: digit b
    _, _, _, n2 = dataset.compose_batch(x, torch.tensor(tens), torch.tensor(units), number, prob=1.0,
                                        exclude=[44, 46, 48, 49, 64, 66, 68, 69, 84, 86, 88, 89, 94, 96, 98, 99,
                                                 64, 66, 68, 69])
    assert not set(n2.tolist()) - {4, 6, 8, 9, 49, 66}


def test_compose_paste_keeps_the_second_crop_and_puts_both_bands_at_its_centre():
    torch.manual_seed(1)
    B, T, H, W = 6, 2, 8, 40
    number = torch.tensor([4, 8, 6, 9, 4, 8])
    x = torch.zeros(B, T, 3, H, W)
    for k in range(B):
        x[k] = number[k] / 100.0
        x[k, ..., 0] = 1.0  # a marker at the left edge: only the second crop's edges may survive
    tens, units = zip(*map(decompose, number.tolist()))
    xt, t, u, n = dataset.compose_batch(x, torch.tensor(tens), torch.tensor(units), number, prob=1.0,
                                        width=(0.2, 0.2), mode="paste")
    band = 8  # 0.2 x 40
    composed = torch.nonzero(n >= 10).flatten()
    assert len(composed) > 0
    for k in composed:
        a, b = divmod(int(n[k]), 10)
        assert (t[k], u[k]) == (a, b)
        assert xt[k, 0, 0, 0, 0] == 1.0 and xt[k, 0, 0, 0, 2].item() == pytest.approx(b / 100)  # b's own crop
        assert xt[k, 0, 0, 0, W // 2 - band].item() == pytest.approx(a / 100)       # left band: digit a
        assert xt[k, 0, 0, 0, W // 2 + band - 1].item() == pytest.approx(b / 100)   # right band: digit b


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


def test_shift_moves_each_tracklet_sideways_as_a_whole():
    """--shift: one horizontal move per tracklet (its frames stay aligned), within +-shift of the width."""
    B, T, W = 64, 3, 32
    x = torch.zeros(B, T, 3, 8, W)
    x[..., W // 2] = 1  # a one-pixel vertical bar in the middle column
    torch.manual_seed(0)
    y = dataset.augment(x, degrees=0, translate=0, scale=(1, 1), brightness=0, contrast=0, shift=0.25)
    centre = (y[:, :, 0, 4] * torch.arange(W)).sum(-1) / y[:, :, 0, 4].sum(-1)  # [B, T] bar position
    assert torch.allclose(centre, centre[:, :1].expand(B, T), atol=1e-4)  # frames of a tracklet move together
    moved = centre[:, 0] - W // 2
    assert moved.abs().max() <= 0.25 * W + 1e-4 and moved.abs().max() > 0.15 * W  # uses the range, no more
    assert (moved > 1).any() and (moved < -1).any()


def test_zoom_shrinks_each_tracklet_as_a_whole_without_a_black_frame():
    """--zoom: one shrink per tracklet, by a factor in [1 - zoom, 1]; the edges are padded by their own pixels."""
    B, T, H, W = 64, 3, 32, 32
    x = torch.full((B, T, 3, H, W), 0.5)
    x[..., 8:24, 8:24] = 1.0  # a 16 px bright square in the middle, on grey
    torch.manual_seed(0)
    y = dataset.augment(x, degrees=0, translate=0, scale=(1, 1), brightness=0, contrast=0, zoom=0.4)
    side = ((y[:, :, 0, H // 2] - 0.5).clamp_min(0) * 2).sum(-1)  # [B, T] square width along the middle row
    assert torch.allclose(side, side[:, :1].expand(B, T), atol=1e-4)  # frames of a tracklet shrink together
    factor = side[:, 0] / 16
    assert factor.max() <= 1 + 1e-4 and factor.min() >= 0.6 - 1e-4 and factor.min() < 0.7  # the range, no more
    assert (y >= 0.5 - 1e-4).all()  # no black border where a shrunk frame leaves its edges
    still = dataset.augment(x, degrees=0, translate=0, scale=(1, 1), brightness=0, contrast=0, zoom=0)
    assert torch.allclose(still, x, atol=1e-6)


def test_blur_kernels_are_normalised_gaussians_and_lines():
    torch.manual_seed(0)
    k = dataset.blur_kernels(200)
    assert k.shape == (200, 7, 7) and (k >= 0).all() and torch.allclose(k.sum((1, 2)), torch.ones(200))
    assert torch.allclose(k, k.flip(1, 2), atol=1e-6)  # every kernel is symmetric about its centre: no shift
    # a Gaussian is also symmetric about both axes; a line at a random angle mostly is not
    axis_symmetric = torch.isclose(k, k.flip(1), atol=1e-6).all((1, 2)) & torch.isclose(k, k.flip(2), atol=1e-6).all((1, 2))
    assert 60 < int(axis_symmetric.sum()) < 140


def test_random_blur_blurs_the_chosen_share_of_frames_and_keeps_flat_areas():
    torch.manual_seed(0)
    x = torch.rand(32, 5, 3, 16, 16)
    assert torch.equal(dataset.random_blur(x, 0.0), x)
    y = dataset.random_blur(x, 0.3)
    changed = ~(y == x).flatten(2).all(2)
    assert 0.2 < changed.float().mean() < 0.4
    assert (y[changed].std((1, 2, 3)) < x[changed].std((1, 2, 3))).all()  # blur takes out the noise
    flat = torch.full((2, 3, 3, 16, 16), 0.4)
    assert torch.allclose(dataset.random_blur(flat, 1.0), flat)  # edges replicated: no dark border
    # train.prepare_batch blurs training batches only when asked: same seed, less pixel noise with it
    batch = {"frames": torch.randint(0, 255, (8, 2, 16, 16, 3), dtype=torch.uint8),
             "mask": torch.ones(8, 2, dtype=torch.bool), **{k: torch.full((8,), 4) for k in ("units", "number")},
             "tens": torch.full((8,), EMPTY)}
    noise = []
    for p in (0.0, 1.0):
        torch.manual_seed(0)
        x = train.prepare_batch(batch, config.Config(blur_aug=p), torch.device("cpu"), train=True)[0]
        noise.append(float((x[..., 1:] - x[..., :-1]).abs().mean()))
    assert noise[1] < 0.7 * noise[0]
    with pytest.raises(config.ConfigError, match="blur_aug must be in"):
        config.load(["--blur_aug=1.5"])


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


def _composed_numbers(cfg, rounds=5) -> set:
    """Every number train.prepare_batch composes from a batch of single-digit tracklets 4, 6, 8, 9."""
    torch.manual_seed(0)
    number = torch.tensor([4, 6, 8, 9] * 8)
    tens, units = zip(*map(decompose, number.tolist()))
    frames = torch.randint(0, 255, (32, 2, 16, 16, 3), dtype=torch.uint8)
    batch = {"frames": frames, "mask": torch.ones(32, 2, dtype=torch.bool),
             "tens": torch.tensor(tens), "units": torch.tensor(units), "number": number}
    return set().union(*(train.prepare_batch(batch, cfg, torch.device("cpu"), train=True)[4].tolist()
                         for _ in range(rounds)))


def test_composition_never_makes_a_test_number():
    cfg = config.Config(compose_prob=1.0, test_classes=[44, 46, 48, 49, 64, 66, 68, 69],
                        compose_exclude=[84, 86, 88, 89])
    made = _composed_numbers(cfg)
    excluded = set(cfg.test_classes) | set(cfg.compose_exclude)
    assert not made & excluded and made - {4, 6, 8, 9}  # composites were made (94, 96, ...), none excluded


def test_composition_on_the_embedded_data_never_makes_a_scored_unseen_number(tmp_path):
    # a plain train.py run: only the held-out 48/64/88 are test classes, yet 44..86 are scored by evaluate.py
    made = _composed_numbers(config.Config(compose_prob=1.0))
    assert made - {4, 6, 8, 9} and not made & set(synth.EVALUATED_UNSEEN)
    own = _composed_numbers(config.Config(compose_prob=1.0, data_root=str(tmp_path)))  # a user's data: only
    assert 44 in own and not own & {48, 64, 88}                                         # the test numbers


def test_compose_allow_lets_scored_unseen_pairs_through_but_never_a_test_number():
    allowed = [44, 46, 68, 69, 84, 86]
    made = _composed_numbers(config.Config(compose_prob=1.0, compose_allow=allowed), rounds=10)
    assert set(allowed) <= made and not made & {48, 64, 88}
    # the same for a user's data, where --compose_exclude is how ablate.py keeps 44..86 out
    made = _composed_numbers(config.Config(compose_prob=1.0, compose_exclude=allowed, compose_allow=[44]), rounds=10)
    assert 44 in made and not made & {46, 48, 64, 68, 69, 84, 86, 88}
    made = _composed_numbers(config.Config(compose_prob=1.0, compose_allow=[48, 88]), rounds=10)
    assert not made & {48, 64, 88}  # a test number stays unseen whatever --compose_allow says


def test_mix_renders_replaces_whole_tracklets_and_relabels_them():
    torch.manual_seed(0)
    x, mask = torch.rand(6, 3, 3, 8, 8), torch.tensor([[True, True, False]] * 6)
    number = torch.tensor([4, 6, 8, 9, 49, 66])
    labels = torch.tensor([41, 7, 95, 30])
    renders = (torch.arange(4) * 60).view(4, 1, 1, 1).expand(4, 8, 8, 3).to(torch.uint8)  # flat grey levels
    y, m, tens, units, num = dataset.mix_renders(x, mask, number, renders, labels, share=0.5)
    changed = [b for b in range(6) if not torch.equal(y[b], x[b])]
    assert len(changed) == 3
    for b in range(6):
        if b in changed:  # every frame of the tracklet is one render, and the label is that render's
            k = int(round(float(y[b, 0, 0, 0, 0]) * 255 / 60))
            assert torch.allclose(y[b], torch.full_like(y[b], k * 60 / 255)) and m[b].all() and num[b] == labels[k]
        else:
            assert torch.equal(m[b], mask[b]) and num[b] == number[b]
        expected = decompose(int(num[b]))
        assert (int(tens[b]), int(units[b])) == expected
    assert decompose(7) == (EMPTY, 7) and decompose(41) == (4, 1)
    same = dataset.mix_renders(x, mask, number, renders, labels, share=0.0)
    assert torch.equal(same[0], x) and same[2].tolist() == [EMPTY] * 4 + [4, 6] and same[4].tolist() == number.tolist()


def test_glyph_bank_never_renders_a_scored_number_and_leaves_the_rng_alone():
    cfg = config.Config(glyph_mix=0.25, glyph_images=120, img_size=32, seed=3)
    state = torch.get_rng_state()
    frames, labels = train.glyph_bank(cfg)
    assert torch.equal(torch.get_rng_state(), state)
    assert frames.shape == (120, 32, 32, 3) and frames.dtype == torch.uint8
    made = set(labels.tolist())
    assert not made & set(train.never_synthesised(cfg)) and len({n for n in made if n >= 10}) > 20
    assert train.glyph_bank(config.Config()) is None
    with pytest.raises(config.ConfigError, match="glyph_mix must be in"):
        config.load(["--glyph_mix=1"], env_file="")


def test_class_weights_count_the_renders_in_the_share_the_loss_sees_them():
    cfg = config.Config(glyph_mix=0.25)
    tracklets = [4] * 90 + [49] * 10
    glyphs = (None, torch.tensor([41, 15, 7, 90]))
    nums = train.loss_numbers(cfg, tracklets, glyphs)
    assert len(nums) == 100 + 33 and nums[:100] == tracklets and set(nums[100:]) == {41, 15, 7, 90}
    plain = train.Criterion(cfg, tracklets, "cpu").weights["tens"]
    mixed = train.Criterion(cfg, nums, "cpu").weights["tens"]
    assert plain[1] == plain[2]                      # tens 1 absent from the tracklets: the absent weight
    assert mixed[1] > 10 * plain[1] and mixed[4] < plain[4]  # counted from the renders; tens 4 less rare
    assert train.loss_numbers(config.Config(), tracklets, None) == tracklets


def test_criterion_with_auto_empty_suppression():
    """--empty_suppression=auto: the criterion's tens weights are those of the balancing factor of the
    numbers it is given, and differ from the fixed 0.01 where single digits are not 94% of them."""
    numbers = [4] * 110 + [5] * 90 + [42] * 60 + [57] * 40
    tens = [dataset.decompose(n)[0] for n in numbers]
    auto = train.Criterion(config.Config(empty_suppression="auto"), numbers, "cpu").weights["tens"]
    s = dataset.balanced_empty_suppression(tens)
    assert torch.allclose(auto, dataset.class_weights(tens, 11, empty_index=EMPTY, empty_suppression=s))
    fixed = train.Criterion(config.Config(empty_suppression=0.01), numbers, "cpu").weights["tens"]
    assert auto[EMPTY] > 2 * fixed[EMPTY] and torch.equal(auto[:EMPTY], fixed[:EMPTY])


def test_swap_digits_exchanges_the_two_digit_bands_of_a_print_and_its_label():
    torch.manual_seed(0)
    B, T, W = 6, 3, 40
    cols = torch.arange(W, dtype=torch.float).expand(B, T, 3, 8, W).clone()  # each pixel holds its column index
    number = torch.tensor([49, 89, 66, 40, 4, 48])
    tens, units = (torch.tensor(v) for v in zip(*map(decompose, number.tolist())))
    x, t, u, n = dataset.swap_digits(cols, tens, units, number, prob=1.0, exclude=[84])
    assert n.tolist() == [94, 98, 66, 40, 4, 48]  # 66 is its own swap, 40 would be '04', 84 is excluded
    assert t.tolist() == [9, 9, 6, 4, EMPTY, 4] and u.tolist() == [4, 8, 6, 0, 4, 8]
    assert torch.equal(x[2:], cols[2:]) and number.tolist()[0] == 49  # the inputs are left alone
    c = W // 2
    for i in (0, 1):
        moved = (x[i, 0, 0, 0] != cols[i, 0, 0, 0]).nonzero().flatten()
        w = len(moved) // 2
        assert round(0.2 * W) <= w <= round(0.3 * W) and moved.tolist() == list(range(c - w, c + w))
        assert x[i, 0, 0, 0, c - w:c].tolist() == list(range(c, c + w))  # the right band now stands left
        assert torch.equal(x[i], x[i, :1].expand_as(x[i]))  # one pitch for every frame of the tracklet
    kept, *_ = dataset.swap_digits(cols, tens, units, number, prob=0.0)
    assert torch.equal(kept, cols)


def test_swapped_labels_reach_the_class_weights():
    assert dataset.swapped_counts([49] * 4 + [4] * 3 + [66] * 2 + [48], 0.5, exclude=[84]) == \
        [4] * 3 + [48] + [49] * 2 + [94] * 2 + [66] * 2
    cfg = config.load(["--head=ctc", "--swap_digits=0.5", "--test_classes=48,64,88"])[0]
    numbers = train.loss_numbers(cfg, [4] * 50 + [49] * 10 + [89] * 10, None)
    assert numbers.count(94) == numbers.count(98) == 5 and numbers.count(49) == 5
    w = train.Criterion(cfg, numbers, "cpu").weights["number"]
    assert w[94] == w[49] > 10 * w[84]  # 94 weighs as a present number; 84 (scored unseen) stays absent
