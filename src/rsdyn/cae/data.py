"""The CAE's data: sample blocks of the store held in memory (on the device or in pinned
host memory) or streamed, and the moments of one streaming pass.

A *block* is the rows of one split (train, validation or test sequences) that lie in one
run of consecutive sample chunks of the store (``cae.block_mb`` MiB of chunks, at least
one chunk), so that reading a block reads whole rows of chunks and nothing else. A
*sample* is one sequence's state at one sublayer, a D-vector.

Training order, the same in memory and streamed: every epoch the blocks come in a
permutation seeded by ``cae.seed`` (``block_order``) and the samples of each block in a
permutation seeded by (seed, epoch, block) (``within_block_order``), where the seed is
each training seed's own when several are trained at once (``cae.seeds``); the stream
of samples is then cut into batches of ``batch_size`` that may span two blocks
(``index_batches``). Validation and test passes take the blocks and their samples in
store order. In memory the blocks are read once and kept; streamed they are read from
the store by a torch ``DataLoader`` over blocks (optionally in worker processes), so
memory holds a few blocks. Both give the same batches, hence the same numbers. On CUDA
the blocks stay on the device when they fit (``data_placement``), else each block is
copied from pinned host memory on a side stream while the previous one trains
(``ahead``)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import torch

from rsdyn.cae.settings import DATA_MODES, DEFAULT_BLOCK_MB

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
    """Item ``b``: ``(b, samples)``, the samples of block ``b`` as float32 ``(rows * 2L, D)``
    (row-major: a row's sublayers together) in row order. ``seed`` orders the blocks of
    each epoch (``block_order``) when ``shuffle``, and the samples within a block unless
    the batches name their own seeds.

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

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor]:
        """``(index, samples)``: block ``index``'s samples (rows * 2L, D) in row order (the
        seeded orders within the block are applied by ``BlockSource.batches``)."""
        states = self.states(index)
        return index, states.reshape(-1, states.shape[-1])

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


def index_batches(blocks: Iterator[tuple[torch.Tensor, torch.Tensor | None]], batch_size: int) -> Iterator[torch.Tensor]:
    """Cut a stream of sample blocks into batches of ``batch_size`` samples (the last one
    shorter); a batch may span consecutive blocks. Each block is ``(samples, orders)``:
    samples (m, D) and either None (the samples in their order; batches (B, D)) or int64
    orders (S, m), one permutation of the block per seed (batches (S, B, D), seed k's
    batch the next samples in its own order). Samples are gathered batch by batch, so a
    block is never copied whole per seed."""
    pending: list[torch.Tensor] = []
    held = 0
    for samples, orders in blocks:
        start, n = 0, len(samples)
        while start < n:
            take = min(batch_size - held, n - start)
            pending.append(samples[start : start + take] if orders is None else samples[orders[:, start : start + take]])
            held += take
            start += take
            if held == batch_size:
                yield pending[0] if len(pending) == 1 else torch.cat(pending, dim=-2)
                pending, held = [], 0
    if held:
        yield pending[0] if len(pending) == 1 else torch.cat(pending, dim=-2)


def ahead(blocks: Iterator[tuple[int, torch.Tensor]], device: torch.device) -> Iterator[tuple[int, torch.Tensor]]:
    """``(index, block)`` pairs moved to ``device``, one block ahead: on CUDA the copy of the
    next block (from pinned host memory: asynchronous) runs on a side stream while the
    current one is used, and the current stream waits for it before its first use; on
    the CPU (or for a block already on the device) the blocks pass through."""
    device = torch.device(device)
    if device.type != "cuda":
        for index, block in blocks:
            yield index, block.to(device)
        return
    copy_stream = torch.cuda.Stream(device)
    pending = None
    for index, block in blocks:
        with torch.cuda.stream(copy_stream):
            moved = block.to(device, non_blocking=True)
            ready = torch.cuda.Event()
            ready.record(copy_stream)
        if pending is not None:
            yield _arrived(*pending)
        pending = (index, moved, ready)
    if pending is not None:
        yield _arrived(*pending)


def _arrived(index: int, block: torch.Tensor, ready) -> tuple[int, torch.Tensor]:
    current = torch.cuda.current_stream(block.device)
    current.wait_event(ready)
    block.record_stream(current)  # its memory is not reused before the current stream is done with it
    return index, block


class BlockSource:
    """The samples of one split as batches, from blocks in memory (on the device or on the
    host) or streamed from the store.

    ``n_samples`` is the number of samples (rows x 2L); ``batches(epoch, batch_size)``
    yields the epoch's batches in training order (shuffled) or store order (not), and
    ``batches(epoch, batch_size, seeds)`` one batch per seed; ``blocks()`` yields each
    block's states ``(rows, 2L, D)`` in store order. Blocks not on ``device`` reach it
    through ``ahead`` (pinned host blocks are copied asynchronously, one block ahead).
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

    def _pinned(self, block: torch.Tensor) -> torch.Tensor:
        return block.pin_memory() if self.device.type == "cuda" and block.device.type == "cpu" and not block.is_pinned() else block

    def _blocks(self) -> Iterator[tuple[int, torch.Tensor]]:
        if self.workers == 0:
            for index in BlockSampler(self.dataset):
                item, samples = self.dataset[index]
                yield item, self._pinned(samples)
            return
        if self._loader is None:
            self._loader = torch.utils.data.DataLoader(
                self.dataset, batch_size=None, sampler=BlockSampler(self.dataset), num_workers=self.workers,
                multiprocessing_context="spawn", persistent_workers=False, prefetch_factor=2,
                pin_memory=self.device.type == "cuda",
            )
        for index, samples in self._loader:
            yield int(index), samples

    def batches(self, epoch: int, batch_size: int, seeds: Sequence[int] | None = None) -> Iterator[torch.Tensor]:
        """The epoch's batches on the source's device. Without ``seeds``: (B, D), the samples of
        each block in the order of the dataset's seed (or in store order when not
        shuffling). With ``seeds`` (S of them): (S, B, D), seed k's batches from the
        samples of each block in ``within_block_order(m, seeds[k], epoch, block)``; the
        blocks come in the same order for every seed."""
        self.dataset.set_epoch(epoch)
        order_seeds = None if not self.dataset.shuffle else [self.dataset.seed] if seeds is None else [int(s) for s in seeds]

        def ordered():
            for index, samples in ahead(self._blocks(), self.device):
                if order_seeds is None:
                    yield samples, None
                    continue
                orders = np.stack([within_block_order(len(samples), seed, epoch, index) for seed in order_seeds])
                yield samples, torch.from_numpy(orders).to(samples.device)

        for batch in index_batches(ordered(), batch_size):
            yield batch[0] if seeds is None and order_seeds is not None else batch

    def blocks(self) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        """``(rows, states)`` of every block in store order, states float32 ``(rows, 2L, D)`` on the source's device."""
        stored = ((index, self._pinned(self.dataset.states(index))) for index in range(len(self.dataset.blocks)))
        for index, states in ahead(stored, self.device):
            yield self.dataset.blocks[index], states


def data_placement(device: torch.device | str, n_bytes: int, free_bytes: int | None = None, fraction: float = 0.5) -> str:
    """Where the in-memory blocks live: ``device`` (resident: on the CPU always, on CUDA when
    the float32 data take at most ``fraction`` of the device's free memory ``free_bytes``,
    default ``torch.cuda.mem_get_info``) or ``host`` (pinned host memory, each block
    copied to the device asynchronously when it is used)."""
    device = torch.device(device)
    if device.type != "cuda":
        return "device"
    if free_bytes is None:
        free_bytes = torch.cuda.mem_get_info(device)[0]
    return "device" if n_bytes <= fraction * free_bytes else "host"


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
    placement: str = "device",
) -> dict[str, BlockSource]:
    """A ``BlockSource`` per split (``train`` shuffled, the others in store order).

    A block spans ``block_rows`` consecutive rows: a whole number of sample chunks,
    round(block_mb / chunk size) of them and at least one. ``mode`` ``memory`` reads
    every block once and keeps the split's rows of it (on ``device``); ``stream`` keeps
    only the block layout and reads blocks as they are needed. In memory, ``placement``
    ``device`` keeps the blocks on ``device``, ``host`` keeps them in host memory (pinned
    when ``device`` is CUDA) and copies each to the device when it is used
    (``data_placement`` chooses).
    """
    if placement not in ("device", "host"):
        raise ValueError(f"cae data placement {placement!r}; expected 'device' or 'host'.")
    keep_on = torch.device(device) if placement == "device" else torch.device("cpu")
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
                block = torch.from_numpy(np.ascontiguousarray(chunk[rows - start])).to(keep_on)
                caches[name].append(block.pin_memory() if keep_on.type == "cpu" and torch.device(device).type == "cuda" else block)
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
    return training_moments(source)[0]


def training_moments(source: BlockSource) -> tuple[Moments, Moments]:
    """One pass over the blocks of ``source`` (store order): the per-unit moments of every
    sample (all sublayers pooled; the input map) and the per-(sublayer, unit) moments over
    rows (mean (2L, D): each sublayer's training-set mean, the sublayer-mean predictor)."""
    pooled, sublayer = Moments(), Moments()
    for _, states in source.blocks():
        values = states.cpu().numpy()
        pooled.add(values.reshape(-1, values.shape[-1]))
        sublayer.add(values)
    return pooled, sublayer
