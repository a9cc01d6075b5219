"""``datasets=`` of a trainer and ``get_dataset_shard()``: what is accepted, how it is split, how it travels.

What a trainer accepts as a dataset (checked at construction, before anything is written):

- with every executor, a *sized indexable*: an object with ``__len__`` and ``__getitem__`` by position (a numpy
  array, a list, tuple or range, a torch ``Tensor``, a torch map-style ``Dataset`` with ``__len__``, a pandas
  ``DataFrame`` or ``Series``, whose rows are indexed with ``.iloc``, or any such object of the user's);
- with ``executor="ray"`` only, a ``ray.data.Dataset`` or a function of no argument that returns one (Ray's
  ``GenDataset``), split with Ray Data's ``streaming_split(world_size, equal=True)`` for each attempt (see
  ``backends/ray.py``): ``get_dataset_shard()`` then returns the rank's ``DataIterator``, as in Ray Train.

The split of a sized indexable is contiguous and in order, as ``numpy.array_split``: rank ``r`` of ``n`` gets the
``r``-th of ``n`` consecutive blocks whose sizes differ by at most one (the first ``len % n`` ranks get one item
more). Every item lands in exactly one rank's shard, nothing is padded or dropped, and the split depends only on
the length and the world size, so it is the same after a restart.

How a shard travels to its worker: an object whose slice holds only its own items (an array, a tensor, a list,
a tuple, a range, a DataFrame) is sliced in the driver, and each worker receives its slice alone (the dataset
crosses the wire once in all, not once per worker); any other object (a torch ``Dataset`` that loads items by
index, say) travels whole, once to each worker, which wraps it in a lazy view of its rows
(``torch.utils.data.Subset`` for a torch Dataset, else an :class:`IndexView`).
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, NamedTuple, overload

import cloudpickle

from trainkeep.errors import ConfigError, ConfigTypeError

ACCEPTED = ("a sized indexable (an object with __len__ and __getitem__ by position: a numpy array, a list or "
            "tuple, a torch Tensor, a torch map-style Dataset with __len__, a pandas DataFrame or Series)")
"""What every executor accepts, as the error messages say it."""

RAY_ACCEPTED = "a ray.data.Dataset or a function of no argument that returns one"
"""What the Ray executor accepts besides ``ACCEPTED``."""


# ---------------------------------------------------------------------------------------------- DataConfig


class DataConfig:
    """Which datasets are split among the workers, as Ray Train's ``DataConfig`` (its names and defaults).

    Args:
        datasets_to_split: "all" (the default) or a list of dataset names. A dataset not split gives every
            worker all of it: the object itself for a sized indexable, a ``DataIterator`` of the whole
            ``ray.data.Dataset`` with the Ray executor. Names that are not datasets of the trainer are ignored,
            as in Ray.
        execution_options: Ray Data's ``ExecutionOptions`` for the split (one for all, or a dict by name);
            the Ray executor only.
        enable_shard_locality: pass the ranks' nodes as ``streaming_split``'s locality hints (Ray executor).

    Raises:
        ConfigTypeError (a TypeError) for a ``datasets_to_split`` that is neither "all" nor a list of str, and
        for an ``enable_shard_locality`` that is not a bool.
    """

    def __init__(self, datasets_to_split: str | list[str] = "all", execution_options: Any = None,
                 enable_shard_locality: bool = True) -> None:
        if not (datasets_to_split == "all" or (isinstance(datasets_to_split, list)
                                               and all(isinstance(n, str) for n in datasets_to_split))):
            raise ConfigTypeError(f"`datasets_to_split` should be a 'all' or a list of strings of dataset names, got "
                                  f"{type(datasets_to_split).__name__} {datasets_to_split!r}")
        if not isinstance(enable_shard_locality, bool):
            raise ConfigTypeError(f"enable_shard_locality must be a bool, got {enable_shard_locality!r}")
        self.datasets_to_split = datasets_to_split
        self.execution_options = execution_options
        self.enable_shard_locality = enable_shard_locality

    def is_split(self, name: str) -> bool:
        """Return True when dataset ``name`` is split among the workers (else each gets all of it)."""
        return self.datasets_to_split == "all" or name in self.datasets_to_split

    def options_for(self, name: str) -> Any:
        """Return the ``ExecutionOptions`` of dataset ``name``, or None to leave the dataset's own."""
        if isinstance(self.execution_options, dict):
            return self.execution_options.get(name)
        return self.execution_options

    def __repr__(self) -> str:
        return (f"DataConfig(datasets_to_split={self.datasets_to_split!r}, execution_options="
                f"{self.execution_options!r}, enable_shard_locality={self.enable_shard_locality!r})")


def check_config(config: Any, executor: str) -> DataConfig:
    """Return ``config`` (a DataConfig, default ``DataConfig()``) once ``executor`` can honour it.

    Raises:
        ConfigTypeError (a TypeError) when it is not a DataConfig; ConfigError (a ValueError) for
        ``execution_options`` with the local executor, which runs no Ray Data.
    """
    if config is None:
        return DataConfig()
    if not isinstance(config, DataConfig):
        raise ConfigTypeError(f"dataset_config must be None or a trainkeep.DataConfig, got {config!r}")
    if config.execution_options is not None and executor != "ray":
        raise ConfigError(f"DataConfig(execution_options={config.execution_options!r}) sets Ray Data's execution, "
                          "which only the Ray executor runs (executor='ray'); leave it None with the local executor")
    return config


class Unsplit(NamedTuple):
    """A dataset that every worker gets whole (``DataConfig.datasets_to_split`` leaves it out)."""

    dataset: Any


# ---------------------------------------------------------------------------------------------- the checks


def check(datasets: Any, executor: str) -> dict[str, Any]:
    """Return ``datasets`` as a dict, once every entry is one that ``executor`` can shard.

    Raises:
        ConfigTypeError (a TypeError) naming the dataset, the type given and what is accepted, when ``datasets``
        is not None or a dict, a key is not a str, or a value is neither a sized indexable nor, with the Ray
        executor, a ``ray.data.Dataset`` (or a function returning one).
    """
    if datasets is None:
        return {}
    if not isinstance(datasets, dict):
        raise ConfigTypeError(f"datasets must be None or a dict of name -> dataset, e.g. datasets={{'train': ...}}, "
                              f"got {type(datasets).__name__}")
    for name, dataset in datasets.items():
        if not isinstance(name, str):
            raise ConfigTypeError(f"datasets keys must be str (the name get_dataset_shard() takes), got "
                                  f"{name!r} ({type(name).__name__})")
        _check_one(name, dataset, executor)
    return dict(datasets)


def _check_one(name: str, dataset: Any, executor: str) -> None:
    kind = type(dataset)
    given = f"{kind.__module__}.{kind.__qualname__}" if kind.__module__ != "builtins" else kind.__qualname__
    if isinstance(dataset, type):
        raise ConfigTypeError(f"datasets[{name!r}] is the class {dataset.__qualname__}, not a dataset: pass an "
                              f"instance of it; accepted: {ACCEPTED}")
    if is_ray_dataset(dataset) or (not is_sized_indexable(dataset) and callable(dataset)):
        if executor == "ray":
            return
        raise ConfigTypeError(
            f"datasets[{name!r}] is a {given}: {RAY_ACCEPTED} needs the Ray executor (call ray.init() before "
            f"building the trainer, or pass executor='ray'); the local executor accepts {ACCEPTED}")
    if not is_sized_indexable(dataset):
        also = f", or {RAY_ACCEPTED}" if executor == "ray" else ""
        raise ConfigTypeError(f"datasets[{name!r}] must be {ACCEPTED}{also}; got a {given}{_why_not(dataset)}")


def _why_not(dataset: Any) -> str:
    """Return why ``dataset`` is not a sized indexable, as the tail of an error message."""
    if _is_torch_iterable(dataset):
        return " (an IterableDataset has no positions to split: shard it yourself inside the training function)"
    if isinstance(dataset, Mapping):
        return " (a mapping is indexed by key, not by position)"
    if isinstance(dataset, str | bytes | bytearray):
        return " (a string, not a dataset)"
    if hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__"):
        return " (len() of it fails)"
    missing = [m for m in ("__len__", "__getitem__") if not hasattr(dataset, m)]
    return f" (it has no {' and no '.join(missing)})"


def is_ray_dataset(obj: Any) -> bool:
    """Return True for a ``ray.data.Dataset`` (without importing Ray: a user who built one imported it)."""
    data = sys.modules.get("ray.data")
    return data is not None and isinstance(obj, data.Dataset)


def _is_torch_iterable(obj: Any) -> bool:
    data = sys.modules.get("torch.utils.data")
    return data is not None and isinstance(obj, data.IterableDataset)


def _is_torch_dataset(obj: Any) -> bool:
    data = sys.modules.get("torch.utils.data")
    return data is not None and isinstance(obj, data.Dataset)


def is_sized_indexable(obj: Any) -> bool:
    """Return True when ``obj`` can be split by position: it has a length and items by position.

    A mapping (keyed), a string and a torch ``IterableDataset`` (whose ``__getitem__`` is torch's placeholder)
    are not; neither is a 0-d array, whose ``len()`` fails.
    """
    if isinstance(obj, Mapping | str | bytes | bytearray) or _is_torch_iterable(obj):
        return False
    if not (hasattr(obj, "__len__") and (hasattr(obj, "__getitem__") or _is_pandas(obj))):
        return False
    try:
        len(obj)
    except Exception:  # a 0-d array's TypeError, or whatever a lazy object's __len__ raises
        return False
    return True


def _is_pandas(obj: Any) -> bool:
    pandas = sys.modules.get("pandas")
    return pandas is not None and isinstance(obj, pandas.DataFrame | pandas.Series)


# ---------------------------------------------------------------------------------------------- the split


def bounds(length: int, world_size: int, rank: int) -> tuple[int, int]:
    """Return ``[start, stop)`` of rank ``rank``'s block of ``length`` items split into ``world_size`` blocks.

    As ``numpy.array_split``: consecutive blocks in rank order, the first ``length % world_size`` one item
    longer than the others.
    """
    size, extra = divmod(length, world_size)
    start = rank * size + min(rank, extra)
    return start, start + size + (1 if rank < extra else 0)


def is_sliced(obj: Any) -> bool:
    """Return True when a slice of ``obj`` holds only its own items (the driver slices it; see the docstring)."""
    if isinstance(obj, list | tuple | range) or _is_pandas(obj):
        return True
    numpy, torch = sys.modules.get("numpy"), sys.modules.get("torch")
    return (numpy is not None and isinstance(obj, numpy.ndarray)) or (torch is not None and isinstance(obj, torch.Tensor))


def slice_of(obj: Any, start: int, stop: int) -> Any:
    """Return rows ``[start, stop)`` of a sliced kind (see :func:`is_sliced`), of the same type."""
    if _is_pandas(obj):
        return obj.iloc[start:stop]
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(obj, torch.Tensor):
        return obj[start:stop].clone()  # a view would pickle its whole storage
    return obj[start:stop]


def view_of(obj: Any, start: int, stop: int) -> Any:
    """Return a lazy view of rows ``[start, stop)`` of ``obj``: a ``Subset`` of a torch Dataset, else IndexView."""
    if _is_torch_dataset(obj):
        from torch.utils.data import Subset

        return Subset(obj, range(start, stop))
    return IndexView(obj, range(start, stop))


class IndexView(Sequence[Any]):
    """A read-only view of some positions of a sized indexable: ``view[i]`` is ``base[indices[i]]``.

    Slicing a view gives a view; nothing is copied.
    """

    def __init__(self, base: Any, indices: range) -> None:
        self.base, self.indices = base, indices

    def __len__(self) -> int:
        return len(self.indices)

    @overload
    def __getitem__(self, index: int) -> Any: ...

    @overload
    def __getitem__(self, index: slice) -> IndexView: ...

    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            return IndexView(self.base, self.indices[index])
        return self.base[self.indices[index]]  # an IndexError for a position out of range, as a list's

    def __iter__(self) -> Iterator[Any]:
        for i in self.indices:
            yield self.base[i]

    def __repr__(self) -> str:
        r = self.indices
        return f"IndexView({type(self.base).__name__}, [{r.start}:{r.stop}])"


# ---------------------------------------------------------------------------------------------- the journey


class Prepared(NamedTuple):
    """The datasets of a fit(), ready to travel (see the module docstring)."""

    whole: dict[str, Any]  # travel whole in the WorkerSpec; each worker makes its view (or takes it, if Unsplit)
    per_rank: list[bytes | None]  # rank r's slices, pickled; None when there are none
    ray: dict[str, Any]  # ray.data Datasets or functions returning one: split per attempt by backends/ray.py
    config: DataConfig | None = None


def prepare(datasets: dict[str, Any], world_size: int, config: DataConfig | None = None) -> Prepared:
    """Sort ``datasets`` by how they travel, and pickle each rank's slices.

    Raises:
        ConfigTypeError (a TypeError) when a dataset's slice cannot be pickled with cloudpickle.
    """
    config = config or DataConfig()
    indexable = {n: d for n, d in datasets.items() if is_sized_indexable(d)}
    sliced = {n: d for n, d in indexable.items() if is_sliced(d) and config.is_split(n)}
    whole: dict[str, Any] = {n: d if config.is_split(n) else Unsplit(d) for n, d in indexable.items()
                             if n not in sliced}
    ray = {n: d for n, d in datasets.items() if n not in indexable}
    per_rank: list[bytes | None] = []
    for rank in range(world_size):
        if not sliced:
            per_rank.append(None)
            continue
        shards = {n: slice_of(d, *bounds(len(d), world_size, rank)) for n, d in sliced.items()}
        try:
            per_rank.append(cloudpickle.dumps(shards))
        except Exception as exc:
            raise ConfigTypeError(f"datasets {sorted(sliced)} must be picklable with cloudpickle to reach the worker "
                                  f"processes: {type(exc).__name__}: {exc}") from exc
    return Prepared(whole, per_rank, ray, config)


def worker_shards(whole: Mapping[str, Any], packed: bytes | None, rank: int, world_size: int,
                  ray_shards: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Return this rank's shard of every dataset: its slices, views of the whole ones, its Ray iterators."""
    shards: dict[str, Any] = cloudpickle.loads(packed) if packed is not None else {}
    for name, dataset in whole.items():
        shards[name] = dataset.dataset if isinstance(dataset, Unsplit) else view_of(
            dataset, *bounds(len(dataset), world_size, rank))
    shards.update(ray_shards or {})
    return shards


def resolve_ray(name: str, dataset: Any) -> Any:
    """Return the ``ray.data.Dataset`` of a ``datasets`` entry for the Ray executor: it, or what its function returns.

    Raises:
        ConfigTypeError (a TypeError) when a function returned something else.
    """
    if is_ray_dataset(dataset):
        return dataset
    made = dataset() if callable(dataset) else dataset
    if not is_ray_dataset(made):
        raise ConfigTypeError(f"datasets[{name!r}] is a function, so it must return a ray.data.Dataset, but "
                              f"{getattr(dataset, '__name__', dataset)!r} returned a {type(made).__name__}")
    return made



def split_ray(datasets: Mapping[str, Any], config: DataConfig, node_ids: Sequence[str]) -> list[dict[str, Any]]:
    """Return each rank's ``ray.data`` iterators, by dataset name, for ranks placed on ``node_ids``.

    Each dataset (or what its function returns, called now: once per attempt, as Ray Train does) is split with
    ``streaming_split(len(node_ids), equal=True)``, the node ids as locality hints when ``config`` asks for them,
    so every rank gets the same number of rows (up to ``len(node_ids) - 1`` rows are dropped when they do not
    divide); one that ``config`` does not split gives every rank an iterator of all of it.

    Raises:
        ConfigTypeError (a TypeError) when a dataset function returned something else than a Dataset.
    """
    shards: list[dict[str, Any]] = [{} for _ in node_ids]
    for name, dataset in datasets.items():
        ds = resolve_ray(name, dataset)
        options = config.options_for(name)
        if options is not None:  # on a copy: the user's dataset keeps its own
            ds = ds.copy(ds)
            ds.context.execution_options = copy.deepcopy(options)
        if config.is_split(name):
            hints = list(node_ids) if config.enable_shard_locality else None
            splits = ds.streaming_split(len(node_ids), equal=True, locality_hints=hints)
        else:
            splits = [ds.iterator() for _ in node_ids]
        for rank, iterator in enumerate(splits):
            shards[rank][name] = iterator
    return shards
