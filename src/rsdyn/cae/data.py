"""The CAE's data: its corpus and store (``cae.corpus``), sample blocks of the store held
in memory or streamed, and the statistics of one streaming pass.

A *block* is the rows of one split (train, validation or test sequences) that lie in one
run of consecutive sample chunks of the store (``cae.block_mb`` MiB of chunks, at least
one chunk), so that reading a block reads whole rows of chunks and nothing else. A
*sample* is one sequence's state at one sublayer, a D-vector.

Training order, the same in memory and streamed: every epoch the blocks come in a seeded
permutation (``block_order``) and the samples of each block in a permutation seeded by
(seed, epoch, block) (``within_block_order``); the stream of samples is then cut into
batches of ``batch_size`` that may span two blocks (``rebatch``). Validation and test
passes take the blocks and their samples in store order. In memory the blocks are read
once and kept; streamed they are read from the store by a torch ``DataLoader`` over
blocks (optionally in worker processes), so memory holds a few blocks. Both give the
same batches, hence the same numbers.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import torch

from rsdyn.cae.metrics import ev_block_from_sequence_stats
from rsdyn.cae.settings import DATA_MODES, DEFAULT_BLOCK_MB

# --------------------------------------------------------------------------- corpus and store


# --------------------------------------------------------------------------- blocks


def split_blocks(rows: np.ndarray, span: int) -> list[np.ndarray]:
    """The sorted ``rows`` of one split grouped by block of ``span`` consecutive rows
    (``row // span``), in store order; blocks without a row of the split are left out."""
    rows = np.sort(np.asarray(rows, dtype=np.int64))
    if rows.size == 0:
        return []
    chunk = rows // int(span)
    cuts = np.flatnonzero(np.diff(chunk)) + 1
    return np.split(rows, cuts)


def block_rows(sample_chunk: int, row_bytes: int, block_mb: float = DEFAULT_BLOCK_MB) -> int:
    """Rows per block: the whole sample chunks (of ``sample_chunk`` rows of ``row_bytes``
    bytes) closest to ``block_mb`` MiB, at least one chunk. Bigger blocks mix more
    sequences into each batch; memory holds a few of them."""
    chunk_bytes = sample_chunk * row_bytes
    return int(sample_chunk * max(1, round(block_mb * 2**20 / chunk_bytes)))


def block_order(n_blocks: int, seed: int, epoch: int) -> np.ndarray:
    """The seeded order in which the blocks of epoch ``epoch`` are visited."""
    return np.random.default_rng([seed, epoch]).permutation(n_blocks)


def within_block_order(n_samples: int, seed: int, epoch: int, block: int) -> np.ndarray:
    """The seeded order of the ``n_samples`` samples of block ``block`` in epoch ``epoch``
    (independent of which process reads the block)."""
    return np.random.default_rng([seed, epoch, block, 1]).permutation(n_samples)


def read_rows(array, rows: np.ndarray, store_path=None) -> np.ndarray:
    """float32 ``(len(rows), 2L, D)`` of the given sorted rows of a zarr array; reads only the
    chunks that hold them. A NaN or infinite value (a missing chunk reads as NaN) raises
    ``rsdyn.core.store.StoreError`` naming the store, array and chunk."""
    from rsdyn.core.store import require_finite

    rows = np.asarray(rows, dtype=np.int64)
    values = np.ascontiguousarray(array.oindex[rows], dtype=np.float32)
    require_finite(values, store_path if store_path is not None else array.store, array, array.basename, rows)
    return values


def _open_array(store_path, condition: str):
    from rsdyn.core.store import ignoring_snakemake_marker, open_group

    with ignoring_snakemake_marker():
        return open_group(store_path)[condition]


class BlockDataset(torch.utils.data.Dataset):
    """Item ``b``: the samples of block ``b`` as float32 ``(rows * 2L, D)`` (row-major: a
    row's sublayers together), permuted by ``within_block_order`` when ``shuffle``.

    Reads the store at ``store_path`` (opened lazily, so that worker processes open their
    own handle) unless ``cache`` holds the blocks' states already (the in-memory mode).
    """

    def __init__(self, store_path, condition: str, blocks: Sequence[np.ndarray], seed: int = 0, shuffle: bool = False,
                 cache: Sequence[torch.Tensor] | None = None):
        self.store_path = None if store_path is None else str(store_path)
        self.condition = condition
        self.blocks = [np.asarray(block, dtype=np.int64) for block in blocks]
        self.seed = seed
        self.shuffle = shuffle
        self.cache = cache
        self.epoch = 0
        self._array = None

    def __len__(self) -> int:
        return len(self.blocks)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def states(self, index: int) -> torch.Tensor:
        """float32 ``(rows, 2L, D)`` of block ``index``, in row order."""
        if self.cache is not None:
            return self.cache[index]
        if self._array is None:
            self._array = _open_array(self.store_path, self.condition)
        return torch.from_numpy(read_rows(self._array, self.blocks[index], self.store_path))

    def __getitem__(self, index: int) -> torch.Tensor:
        states = self.states(index)
        samples = states.reshape(-1, states.shape[-1])
        if self.shuffle:
            order = within_block_order(len(samples), self.seed, self.epoch, int(index))
            samples = samples[torch.from_numpy(order).to(samples.device)]
        return samples

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_array"] = None  # a zarr handle is not sent to workers; each opens its own
        return state


class BlockSampler(torch.utils.data.Sampler):
    """Block indices of the current epoch: ``block_order`` when shuffling, else store order."""

    def __init__(self, dataset: BlockDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __iter__(self) -> Iterator[int]:
        n = len(self.dataset)
        order = block_order(n, self.dataset.seed, self.dataset.epoch) if self.dataset.shuffle else np.arange(n)
        return iter(int(i) for i in order)


def rebatch(blocks: Iterator[torch.Tensor], batch_size: int) -> Iterator[torch.Tensor]:
    """Cut a stream of ``(m, D)`` sample blocks into batches of ``batch_size`` samples (the
    last one shorter); a batch may span consecutive blocks."""
    pending: list[torch.Tensor] = []
    held = 0
    for block in blocks:
        start = 0
        while start < len(block):
            take = min(batch_size - held, len(block) - start)
            pending.append(block[start : start + take])
            held += take
            start += take
            if held == batch_size:
                yield pending[0] if len(pending) == 1 else torch.cat(pending)
                pending, held = [], 0
    if held:
        yield pending[0] if len(pending) == 1 else torch.cat(pending)


class BlockSource:
    """The samples of one split as batches, from blocks in memory or streamed from the store.

    ``n_samples`` is the number of samples (rows x 2L); ``batches(epoch, batch_size)``
    yields the epoch's batches in training order (shuffled) or store order (not);
    ``blocks()`` yields each block's states ``(rows, 2L, D)`` in store order.
    """

    def __init__(self, dataset: BlockDataset, n_sublayers: int, workers: int = 0, device: torch.device | str = "cpu"):
        self.dataset = dataset
        self.n_sublayers = n_sublayers
        self.n_rows = int(sum(len(block) for block in dataset.blocks))
        self.n_samples = self.n_rows * n_sublayers
        self.device = torch.device(device)
        self.workers = 0 if dataset.cache is not None else int(workers)
        self._loader = None

    def __len__(self) -> int:
        return self.n_samples

    def _blocks(self) -> Iterator[torch.Tensor]:
        if self.workers == 0:
            for index in BlockSampler(self.dataset):
                yield self.dataset[index]
            return
        if self._loader is None:
            self._loader = torch.utils.data.DataLoader(
                self.dataset, batch_size=None, sampler=BlockSampler(self.dataset), num_workers=self.workers,
                multiprocessing_context="spawn", persistent_workers=False, prefetch_factor=2,
            )
        yield from self._loader

    def batches(self, epoch: int, batch_size: int) -> Iterator[torch.Tensor]:
        self.dataset.set_epoch(epoch)
        for batch in rebatch(self._blocks(), batch_size):
            yield batch.to(self.device, non_blocking=True)

    def blocks(self) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        """``(rows, states)`` of every block in store order, states float32 ``(rows, 2L, D)`` on the source's device."""
        for index, rows in enumerate(self.dataset.blocks):
            yield rows, self.dataset.states(index).to(self.device)


def data_mode(mode: str, n_bytes: int, memory_gb: float) -> str:
    """``memory`` or ``stream`` for ``cae.data``: ``auto`` keeps the data in memory when its
    float32 size ``n_bytes`` is at most ``memory_gb`` GiB."""
    if mode not in DATA_MODES:
        raise ValueError(f"cae.data = {mode!r}; allowed: {', '.join(DATA_MODES)}.")
    if mode != "auto":
        return mode
    return "memory" if n_bytes <= memory_gb * 2**30 else "stream"


def load_sources(
    store_path,
    condition: str,
    split: Mapping[str, np.ndarray],
    *,
    seed: int,
    mode: str,
    workers: int = 0,
    device: torch.device | str = "cpu",
    block_mb: float = DEFAULT_BLOCK_MB,
) -> dict[str, BlockSource]:
    """A ``BlockSource`` per split (``train`` shuffled, the others in store order).

    A block spans ``block_rows`` consecutive rows: a whole number of sample chunks,
    round(block_mb / chunk size) of them and at least one. ``mode`` ``memory`` reads
    every block once and keeps the split's rows of it (on ``device``); ``stream`` keeps
    only the block layout and reads blocks as they are needed.
    """
    array = _open_array(store_path, condition)
    span = block_rows(array.chunks[0], array.shape[1] * array.shape[2] * 4, block_mb)
    n_sublayers = array.shape[1]
    blocks = {name: split_blocks(rows, span) for name, rows in split.items()}
    caches: dict[str, list[torch.Tensor] | None] = {name: None for name in split}
    if mode == "memory":
        caches = {name: [] for name in split}
        by_block = {name: {int(rows[0]) // span: rows for rows in blocks[name]} for name in split}
        for index, start in enumerate(range(0, array.shape[0], span)):
            wanted = {name: by_block[name][index] for name in split if index in by_block[name]}
            if not wanted:
                continue
            chunk = read_rows(array, np.arange(start, min(start + span, array.shape[0])), store_path)
            for name, rows in wanted.items():
                caches[name].append(torch.from_numpy(np.ascontiguousarray(chunk[rows - start])).to(device))
    elif mode != "stream":
        raise ValueError(f"cae data mode {mode!r}; expected 'memory' or 'stream'.")
    return {
        name: BlockSource(
            BlockDataset(store_path, condition, blocks[name], seed=seed, shuffle=name == "train", cache=caches[name]),
            n_sublayers, workers=workers, device=device,
        )
        for name in split
    }


# --------------------------------------------------------------------------- streamed statistics


class Moments:
    """Count, mean and sum of squared deviations (M2) over axis 0 of the blocks added, in
    float64, combined exactly (Chan et al.) so that a streamed pass equals one pass over
    all data up to rounding: mean and M2 have the shape of one sample."""

    def __init__(self):
        self.count = 0
        self.mean: np.ndarray | None = None
        self.m2: np.ndarray | None = None

    def add(self, block: np.ndarray) -> None:
        block = np.asarray(block, dtype=np.float64)
        n = block.shape[0]
        if n == 0:
            return
        mean = block.mean(axis=0)
        m2 = ((block - mean) ** 2).sum(axis=0)
        if self.count == 0:
            self.count, self.mean, self.m2 = n, mean, m2
            return
        total = self.count + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + delta**2 * (self.count * n / total)
        self.count = total

    @property
    def variance(self) -> np.ndarray:
        """Population variance (M2 / count)."""
        return self.m2 / self.count


def unit_moments(source: BlockSource) -> Moments:
    """Per-unit mean and M2 of every sample of ``source`` (one pass over its blocks, store order)."""
    moments = Moments()
    for _, states in source.blocks():
        moments.add(states.reshape(-1, states.shape[-1]).cpu().numpy())
    return moments


class HeldOutStatistics:
    """What the test-set evaluation needs, accumulated block by block (float64).

    ``add(states, reconstruction)`` takes one block's (rows, 2L, D) states X and
    reconstructions Y. Kept: per (sublayer, unit) moments of X over sequences; per
    sublayer the sum of squared residuals; per sequence and sublayer the mean and the
    (population) variance over units of X and of the residual R = X - Y
    (``sequence_stats``, (n, 2L, 4): mean_x, var_x, mean_r, var_r), from which any
    resample of sequences gives the block variances.
    """

    def __init__(self):
        self.unit = Moments()
        self.residual_ss: np.ndarray | None = None
        self.per_sequence: list[np.ndarray] = []

    def add(self, states: np.ndarray, reconstruction: np.ndarray) -> None:
        x = np.asarray(states, dtype=np.float64)
        r = x - np.asarray(reconstruction, dtype=np.float64)
        self.unit.add(x)
        ss = (r**2).sum(axis=(0, 2))
        self.residual_ss = ss if self.residual_ss is None else self.residual_ss + ss
        mean_x, mean_r = x.mean(axis=2), r.mean(axis=2)
        var_x = ((x - mean_x[..., None]) ** 2).mean(axis=2)
        var_r = ((r - mean_r[..., None]) ** 2).mean(axis=2)
        self.per_sequence.append(np.stack([mean_x, var_x, mean_r, var_r], axis=-1))

    def sequence_stats(self) -> np.ndarray:
        return np.concatenate(self.per_sequence)

    def results(self) -> dict[str, np.ndarray | float]:
        """Per-sublayer and pooled test metrics (see ``rsdyn.cae.run_cae``)."""
        n, (n_sublayers, d_model) = self.unit.count, self.unit.mean.shape
        own_spread = self.unit.m2.sum(axis=1)
        pooled_mean = self.unit.mean.mean(axis=0)
        pooled_spread = own_spread + n * ((self.unit.mean - pooled_mean) ** 2).sum(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            return {
                "ev_per_sublayer": 1.0 - self.residual_ss / np.where(own_spread > 0, own_spread, np.nan),
                "ev_per_sublayer_pooled_reference": 1.0 - self.residual_ss / np.where(pooled_spread > 0, pooled_spread, np.nan),
                "ev_block_per_sublayer": ev_block_from_sequence_stats(self.sequence_stats()),
                "test_mse_per_sublayer": self.residual_ss / (n * d_model),
                "test_variance_per_sublayer": own_spread / (n * d_model),
                "test_loss": float(self.residual_ss.sum() / (n * n_sublayers * d_model)),
                "test_r2_pooled": float(1.0 - self.residual_ss.sum() / pooled_spread.sum()),
            }


