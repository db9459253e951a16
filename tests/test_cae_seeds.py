"""Several training seeds of the CAE at once: the batched layers against per-seed nn.Linear
and nn.LayerNorm, batched training against training each seed alone (per-seed early
stopping and clipping), the device-agnostic data path on the CPU, and what the epoch
loop shows at the terminal."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from torch import nn

from rsdyn.cae.batched import (
    BatchedAutoencoder,
    clip_per_seed,
    parameter_names,
    train_seeds,
)
from rsdyn.cae.data import (
    ahead,
    data_placement,
    index_batches,
    load_sources,
    within_block_order,
)
from rsdyn.cae.model import build_model, train_cae
from rsdyn.core import jobs

# float32 forward passes of a few layers of width <= 16 on inputs of order 10: the
# batched (bmm) and the plain (addmm) products round differently, by a few ulp per layer
FORWARD_TOL = {"rtol": 1e-5, "atol": 1e-5}
# a few epochs of Adam: rounding differences of the gradients (relative ~1e-7) move each
# step by at most ~1e-7 x lr-sized updates; after ~30 steps of lr 1e-2 weights agree to ~1e-5
TRAINING_TOL = {"rtol": 1e-4, "atol": 1e-5}


def scaled(n=240, d=12, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=generator) * torch.linspace(0.5, 5, d) + 3


def with_input_map(model, train):
    """Set the same input map (unit scaling of ``train``) on a single or batched model."""
    reference = build_model(train.shape[1], 3, 0)
    reference.set_input_scaling(train, "unit")
    model.input_mean.copy_(reference.input_mean)
    model.input_scale.copy_(reference.input_scale)
    return model


# --------------------------------------------------------------------------- layers


def test_batched_layers_match_per_seed_linear_and_layernorm():
    seeds = [4, 1, 7]
    batched = BatchedAutoencoder.from_seeds(10, 3, seeds)
    x = torch.randn(9, 10, generator=torch.Generator().manual_seed(2)) * 4
    per_seed_x = torch.randn(3, 9, 10, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        codes, shared_codes = batched.encode(per_seed_x), batched.encode(x)
        out = batched(x)
    for k, seed in enumerate(seeds):
        single = build_model(10, 3, seed)
        # the single model written out layer by layer: nn.Linear, nn.LayerNorm, ReLU
        modules = list(single.encoder)
        assert [type(m) for m in modules] == [nn.Linear, nn.LayerNorm, nn.ReLU] * 2 + [nn.Linear]
        h = per_seed_x[k]
        with torch.no_grad():
            for module in modules:
                h = module(h)
            torch.testing.assert_close(codes[k], h, **FORWARD_TOL)
            torch.testing.assert_close(shared_codes[k], single.encode(x), **FORWARD_TOL)
            torch.testing.assert_close(out[k], single(x), **FORWARD_TOL)


def test_batched_gradients_are_each_seeds_own():
    seeds = [0, 5]
    batched = BatchedAutoencoder.from_seeds(8, 3, seeds)
    x = torch.randn(2, 16, 8, generator=torch.Generator().manual_seed(1))
    torch.mean((batched(x) - x) ** 2, dim=(1, 2)).sum().backward()
    for k, seed in enumerate(seeds):
        single = build_model(8, 3, seed)
        torch.nn.functional.mse_loss(single(x[k]), x[k]).backward()
        for name, parameter in single.named_parameters():
            torch.testing.assert_close(batched.param(name).grad[k], parameter.grad, **FORWARD_TOL)


def test_stacked_state_round_trips_through_seed_models():
    batched = BatchedAutoencoder.from_seeds(12, 4, [3, 9])
    assert batched.names == parameter_names(4)
    for k, seed in enumerate([3, 9]):
        single = build_model(12, 4, seed).state_dict()
        extracted = batched.seed_model(k).state_dict()
        assert all(torch.equal(single[name], extracted[name]) for name in single)
    batched.keep([1])
    assert batched.seeds == [9] and torch.equal(batched.seed_model(0).state_dict()["decoder.0.weight"], build_model(12, 4, 9).state_dict()["decoder.0.weight"])


def test_per_seed_clipping_matches_clip_grad_norm_of_each_seed():
    seeds = [2, 3, 4]
    batched = BatchedAutoencoder.from_seeds(8, 3, seeds)
    x = torch.randn(3, 32, 8, generator=torch.Generator().manual_seed(0)) * torch.tensor([1.0, 10.0, 100.0]).view(3, 1, 1)
    torch.mean((batched(x) - x) ** 2, dim=(1, 2)).sum().backward()
    parameters = [batched.param(name) for name in batched.names]
    norms = clip_per_seed(parameters, 0.5)
    for k, seed in enumerate(seeds):
        single = build_model(8, 3, seed)
        torch.nn.functional.mse_loss(single(x[k]), x[k]).backward()
        expected = torch.nn.utils.clip_grad_norm_(single.parameters(), 0.5)
        torch.testing.assert_close(norms[k], expected, rtol=1e-5, atol=0)
        for name, parameter in single.named_parameters():
            torch.testing.assert_close(batched.param(name).grad[k], parameter.grad, **FORWARD_TOL)


# --------------------------------------------------------------------------- training


def opposite_data():
    """Training states around +2 and validation states around -2 with a varying spread:
    fitting the training set soon makes validation worse, so seeds stop early."""
    generator = torch.Generator().manual_seed(11)
    train = torch.randn(192, 8, generator=generator) * torch.linspace(0.2, 2, 8) + 2.0
    val = torch.randn(48, 8, generator=generator) * torch.linspace(0.2, 2, 8) - 2.0
    return train, val


def batched_run(seeds, train, val, **options):
    model = with_input_map(BatchedAutoencoder.from_seeds(train.shape[1], 3, seeds), train)
    return train_seeds(model, train, val, progress=False, **options)


def single_run(seed, train, val, **options):
    model = with_input_map(build_model(train.shape[1], 3, seed), train)
    return train_cae(model, train, val, seed=seed, progress=False, **options)


OPTIONS = {"lr": 1e-2, "max_epochs": 12, "patience": 2, "batch_size": 32, "grad_clip": 0.5, "warmup_epochs": 0.5}


def without_seconds(history):
    return [{key: value for key, value in record.items() if key != "seconds"} for record in history]


def test_batched_seeds_train_as_each_seed_alone():
    train, val = opposite_data()
    both = batched_run([3, 8], train, val, **OPTIONS)
    assert both.stopped_early == [True, True]
    assert len(both.history[0]) != len(both.history[1])  # they stop at different epochs: the first is frozen, the other goes on
    alone = [batched_run([seed], train, val, **OPTIONS) for seed in (3, 8)]
    for k in range(2):
        assert both.best_epoch[k] == alone[k].best_epoch[0] and len(both.history[k]) == len(alone[k].history[0])
        for ours, theirs in zip(both.history[k], alone[k].history[0]):
            for key in ("train_loss", "val_loss", "grad_norm_max"):  # bmm over 2 or 1 seeds rounds differently
                assert ours[key] == pytest.approx(theirs[key], rel=1e-5), key
        expected = alone[k].model.seed_model(0).state_dict()
        for name, value in both.model.seed_model(k).state_dict().items():
            torch.testing.assert_close(value, expected[name], **TRAINING_TOL)


def test_a_batched_seed_matches_the_single_seed_training():
    train, val = opposite_data()
    both = batched_run([3, 8], train, val, **OPTIONS)
    for k, seed in enumerate([3, 8]):
        single = single_run(seed, train, val, **OPTIONS)
        assert single.best_epoch == both.best_epoch[k] and single.stopped_early == both.stopped_early[k]
        assert len(single.history) == len(both.history[k])
        for ours, theirs in zip(both.history[k], single.history):
            for key in ("train_loss", "val_loss", "grad_norm_max"):
                assert ours[key] == pytest.approx(theirs[key], rel=1e-5), key
            assert ours["lr"] == theirs["lr"]
        expected = single.model.state_dict()
        for name, value in both.model.seed_model(k).state_dict().items():
            torch.testing.assert_close(value, expected[name], **TRAINING_TOL)


def test_a_stopped_seed_keeps_its_best_weights_while_others_train_on():
    train, val = opposite_data()
    result = batched_run([3, 8], train, val, **OPTIONS)
    first = int(np.argmin([len(h) for h in result.history]))
    stopped_at = len(result.history[first])
    assert max(len(h) for h in result.history) > stopped_at and result.epochs == max(len(h) for h in result.history)
    # the same two seeds trained only up to that epoch: identical arithmetic until then, so
    # the stopped seed's weights (those of its best epoch) were not touched afterwards
    capped = batched_run([3, 8], train, val, **dict(OPTIONS, max_epochs=stopped_at))
    ours, theirs = result.model.seed_model(first).state_dict(), capped.model.seed_model(first).state_dict()
    assert all(torch.equal(ours[name], theirs[name]) for name in ours)
    assert without_seconds(result.history[first]) == without_seconds(capped.history[first])


def test_training_stops_at_max_epochs_when_no_seed_stops():
    data = scaled(96, 6)
    result = batched_run([0, 1], data, data, max_epochs=3, patience=10, batch_size=16)
    assert result.epochs == 3 and result.stopped_early == [False, False] and [len(h) for h in result.history] == [3, 3]


def test_a_diverged_seed_is_named():
    data = scaled(64, 6)
    data[:, 0] = float("nan")
    with pytest.raises(FloatingPointError, match=r"seed\(s\) \[0, 1\]"):
        batched_run([0, 1], data, data, max_epochs=2, patience=1, batch_size=16)


# --------------------------------------------------------------------------- data path


def make_store(path, n=23, n_sublayers=4, d=12, sample_chunk=4):
    import zarr

    rng = np.random.default_rng(0)
    states = (np.cumsum(rng.normal(size=(n, n_sublayers, d)), axis=1) * rng.uniform(0.5, 5, d) + rng.normal(0, 10, d)).astype(np.float32)
    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    group.create_array("original", data=states, chunks=(sample_chunk, n_sublayers, d // 2))
    return states


def test_per_seed_batches_take_each_seed_s_order_within_the_shared_block_order(tmp_path):
    from rsdyn.cae.data import block_order, split_blocks

    states = make_store(tmp_path / "a.zarr")
    split = {"train": np.array([0, 2, 3, 5, 9, 10, 11, 17])}
    source = load_sources(tmp_path / "a.zarr", "original", split, seed=3, mode="stream", block_mb=1e-9)["train"]
    got = torch.cat(list(source.batches(epoch=2, batch_size=5, seeds=[7, 3])), dim=1).numpy()
    blocks = split_blocks(split["train"], 4)
    for k, seed in enumerate([7, 3]):
        expected = []
        for b in block_order(len(blocks), 3, 2):  # the blocks in the order of cae.seed, for every seed
            samples = states[blocks[b]].reshape(-1, states.shape[-1])
            expected.append(samples[within_block_order(len(samples), seed, 2, int(b))])
        np.testing.assert_array_equal(got[k], np.concatenate(expected))
    single = torch.cat(list(source.batches(epoch=2, batch_size=5))).numpy()
    np.testing.assert_array_equal(single, got[1])  # the seed equal to cae.seed trains in the single-seed order


@pytest.mark.parametrize("sizes, batch", [([5, 3, 9], 4), ([4, 4], 4), ([1], 3), ([7, 2, 2, 11], 5)])
def test_index_batches_cut_each_seed_s_concatenated_stream(sizes, batch):
    rng = np.random.default_rng(sum(sizes))
    blocks = [torch.arange(sum(sizes[:i]), sum(sizes[: i + 1])).reshape(-1, 1) for i in range(len(sizes))]
    orders = [torch.from_numpy(np.stack([rng.permutation(len(b)) for _ in range(3)])) for b in blocks]
    batches = list(index_batches(iter(zip(blocks, orders)), batch))
    for k in range(3):
        stream = torch.cat([b[o[k]] for b, o in zip(blocks, orders)])
        expected = [stream[i : i + batch] for i in range(0, len(stream), batch)]
        assert len(batches) == len(expected) and all(torch.equal(a[k], e) for a, e in zip(batches, expected))
    plain = list(index_batches(iter((b, None) for b in blocks), batch))
    flat = torch.cat(blocks)
    assert all(torch.equal(a, flat[i * batch : (i + 1) * batch]) for i, a in enumerate(plain))


def test_data_placement_keeps_data_on_the_device_when_it_fits():
    assert data_placement("cpu", 10**12) == "device"
    assert data_placement(torch.device("cuda"), 4 * 2**30, free_bytes=40 * 2**30) == "device"
    assert data_placement(torch.device("cuda"), 30 * 2**30, free_bytes=40 * 2**30) == "host"  # above half the free memory
    blocks = [(0, torch.ones(2, 3)), (1, torch.zeros(1, 3))]
    assert [(i, b.device.type) for i, b in ahead(iter(blocks), torch.device("cpu"))] == [(0, "cpu"), (1, "cpu")]


@pytest.mark.parametrize("mode, placement", [("memory", "device"), ("memory", "host"), ("stream", "device")])
def test_the_device_agnostic_path_trains_like_the_plain_path(tmp_path, mode, placement):
    """Host blocks moved through ``ahead`` (the pinned, asynchronous path on CUDA), resident
    blocks and streamed blocks give the batched seeds the numbers of the plain single-seed
    training on a tensor of the same batches, within ``TRAINING_TOL``."""
    states = make_store(tmp_path / "a.zarr")
    split = {"train": np.arange(0, 18), "val": np.arange(0, 18)}  # validation on the training rows: every epoch improves
    sources = load_sources(tmp_path / "a.zarr", "original", split, seed=2, mode=mode, block_mb=1e-9, device="cpu", placement=placement)
    train = torch.from_numpy(states[split["train"]].reshape(-1, 12))
    model = with_input_map(BatchedAutoencoder.from_seeds(12, 3, [2, 6]), train)
    options = {"lr": 3e-3, "max_epochs": 3, "patience": 5, "batch_size": 16}
    result = train_seeds(model, sources["train"], sources["val"], progress=False, **options)
    for k, seed in enumerate([2, 6]):
        # the plain path: one model, one fixed list of batches (the source's, seed by seed)
        plain = with_input_map(build_model(12, 3, seed), train)
        optimiser = torch.optim.Adam(plain.parameters(), lr=3e-3)
        normaliser = plain.loss_normaliser()
        for epoch in range(1, 4):
            for batch in sources["train"].batches(epoch, 16, [seed]):
                loss = torch.nn.functional.mse_loss(plain(batch[0]), batch[0])
                optimiser.zero_grad()
                (loss / normaliser).backward()
                optimiser.step()
        assert result.best_epoch[k] == 3  # the loss still falls: the last epoch is the best
        expected = plain.state_dict()
        for name, value in result.model.seed_model(k).state_dict().items():
            torch.testing.assert_close(value, expected[name], **TRAINING_TOL)


# --------------------------------------------------------------------------- terminal


def test_the_epoch_estimate_is_the_mean_epoch_time_and_early_stops_reach_the_terminal(monkeypatch):
    import tqdm.std

    from rsdyn.cae import batched

    screen = io.StringIO()
    clock = {"now": 1000.0}
    monkeypatch.setitem(jobs._JOB, "terminal", screen)
    monkeypatch.setitem(jobs._JOB, "name", "cae")
    monkeypatch.setattr(jobs, "PROGRESS_INTERVAL_S", 0.0)  # a line after every epoch
    monkeypatch.setattr(jobs.time, "monotonic", lambda: clock["now"])
    monkeypatch.setattr(tqdm.std, "time", lambda: clock["now"])
    durations = iter([2.0, 2.0, 2.0, 60.0] + [2.0] * 20)  # one slow epoch must not make the estimate jump
    evaluate = batched.mse_per_seed

    def timed(*args, **kwargs):
        clock["now"] += next(durations)
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(batched, "mse_per_seed", timed)
    train, val = opposite_data()
    result = train_seeds(with_input_map(BatchedAutoencoder.from_seeds(8, 3, [3, 8]), train), train, val, **dict(OPTIONS, max_epochs=20))
    lines = screen.getvalue().splitlines()
    epoch_lines = [line for line in lines if " epoch after " in line]
    elapsed = np.cumsum([2.0, 2.0, 2.0, 60.0] + [2.0] * 20)
    assert len(epoch_lines) == result.epochs > 4
    for n, line in enumerate(epoch_lines, start=1):
        mean = elapsed[n - 1] / n
        assert line.endswith(f"about {tqdm.std.tqdm.format_interval((20 - n) * mean)} left"), line
    stops = [line for line in lines if "early stop" in line]
    assert len(stops) == 2 and all(line.startswith("[cae] cae seed ") for line in stops)
    first = int(np.argmin([len(h) for h in result.history]))
    assert f"seed {result.seeds[first]}: early stop after epoch {len(result.history[first])}" in stops[0]
    assert stops[0].endswith("1 seed still training") and stops[1].endswith("0 seeds still training")
