"""Exact, in-process tests of `patches/fsdp.py`: resharding, CPU wrapping, checkpoint save/load (sharded and not),
the weights-only allow-list and `apply()`.

Sharded FSDP needs world size >= 2 (world size 1 is always NO_SHARD). Two ranks run here as two threads of the
test process on torch's threaded process group, so the patched code runs in-process (where mutation testing sees
it) and each rank's state can be compared with what the other holds.
"""

import logging
import os
import pickle
import threading
import warnings

import numpy as np
import pytest
import torch
import torch.distributed as dist
from omegaconf import OmegaConf

from dinov2_cell.plugin import install, load_patches

install()
load_patches()
import dinov2.fsdp as upstream
from dinov2_cell.patches import fsdp as patch
from torch.distributed._shard.sharded_tensor import ShardedTensor
from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
from torch.distributed.fsdp import StateDictType

LOCAL, FULL = StateDictType.LOCAL_STATE_DICT, StateDictType.FULL_STATE_DICT


def on_ranks(fn, world_size=2):
    """Runs `fn(rank)` on `world_size` ranks (threads on torch's threaded process group) and returns the results
    in rank order; re-raises the first rank's exception."""
    from torch.testing._internal.distributed.multi_threaded_pg import (
        ProcessLocalGroup,
        _install_threaded_pg,
        _uninstall_threaded_pg,
    )

    results, errors = {}, {}
    store = dist.HashStore()

    def worker(rank):
        dist.init_process_group("threaded", rank=rank, world_size=world_size, store=store)
        try:
            results[rank] = fn(rank)
        except BaseException as e:  # noqa: BLE001  (re-raised below; wakes the ranks blocked in a collective)
            errors[rank] = e
            ProcessLocalGroup.exception_handle(e)
        finally:
            dist.destroy_process_group()

    from dinov2 import distributed

    # upstream's get_fsdp_wrapper asks for the local rank (its value is unused on CPU, where device_id is the CPU)
    saved = distributed._LOCAL_RANK, distributed._LOCAL_WORLD_SIZE
    distributed._LOCAL_RANK, distributed._LOCAL_WORLD_SIZE = 0, world_size
    torch._C._distributed_c10d._set_thread_isolation_mode(True)
    _install_threaded_pg()
    try:
        threads = [threading.Thread(target=worker, args=(r,)) for r in range(world_size)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert not any(t.is_alive() for t in threads), "a rank hung"
    finally:
        _uninstall_threaded_pg()
        torch._C._distributed_c10d._set_thread_isolation_mode(False)
        distributed._LOCAL_RANK, distributed._LOCAL_WORLD_SIZE = saved
    if errors:
        raise errors[min(errors)]
    return [results[r] for r in range(world_size)]


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(3, 5)
        self.b = torch.nn.Linear(5, 2)
        self.register_buffer("scale", torch.rand(2))

    def forward(self, x):
        return self.b(self.a(x)) * self.scale


def _cfg(strategy="SHARD_GRAD_OP"):
    mp = {"param_dtype": "fp32", "reduce_dtype": "fp32", "buffer_dtype": "fp32"}
    return OmegaConf.create({"sharding_strategy": strategy, "mixed_precision": mp})


def _net(rank):
    """A `_Net` with rank-dependent values (own generator: the ranks are threads sharing torch's global one)."""
    net, g = _Net(), torch.Generator().manual_seed(100 + rank)
    with torch.no_grad():
        for t in [*net.parameters(), *net.buffers()]:
            t.copy_(torch.rand(t.shape, generator=g))
    return net


def _wrapped(rank, strategy="SHARD_GRAD_OP"):
    """`_net(rank)` wrapped by upstream's (patched) `get_fsdp_wrapper`: one FSDP unit per Linear, the root unit
    holds only the buffer (no flat parameter)."""
    return upstream.get_fsdp_wrapper(_cfg(strategy), modules_to_wrap={torch.nn.Linear})(_net(rank))


def _local(model):
    """The model's `LOCAL_STATE_DICT` as plain tensors (copies)."""
    with FSDP.state_dict_type(model, LOCAL):
        sd = model.state_dict()
    return {k: (v.local_tensor() if isinstance(v, ShardedTensor) else v).detach().clone() for k, v in sd.items()}


def _units(model):
    return [m for m in FSDP.fsdp_modules(model) if m._handle is not None]


# ------------------------------------------------------------------------------------------------ free_if_fsdp


def test_reshard_frees_each_sharded_units_unsharded_parameters_and_keeps_the_shard():
    def body(rank):
        model = _wrapped(rank)
        assert upstream.is_sharded_fsdp(model) and model._handle is None  # root: sharded, no flat parameter
        model(torch.ones(2, 3))  # SHARD_GRAD_OP keeps the gathered parameters after forward
        sizes_before = [u._handle.flat_param._full_param_padded.untyped_storage().size() for u in _units(model)]
        shards = [u._handle.flat_param._local_shard.clone() for u in _units(model)]
        upstream.reshard_fsdp_model(model)  # upstream's loop calls (patched) free_if_fsdp on each unit
        sizes_after = [u._handle.flat_param._full_param_padded.untyped_storage().size() for u in _units(model)]
        same = all(
            torch.equal(u._handle.flat_param.data, s)
            and u._handle.flat_param.data_ptr() == u._handle.flat_param._local_shard.data_ptr()
            for u, s in zip(_units(model), shards)
        )
        return sizes_before, sizes_after, same

    for sizes_before, sizes_after, same in on_ranks(body):
        # padded full flat parameters of Linear(3, 5) and Linear(5, 2), float32: allocated, then freed
        assert len(sizes_before) == 2 and min(sizes_before) >= 4 * 12 and sizes_after == [0, 0] and same


def test_free_if_fsdp_leaves_unsharded_units_and_plain_modules_alone():
    def body(rank):
        model = _wrapped(rank, "NO_SHARD")
        model(torch.ones(2, 3))
        before = [u._handle.flat_param.data.clone() for u in _units(model)]
        for m in [model, *_units(model), torch.nn.Linear(2, 2)]:
            patch._free_if_fsdp(m)
        return [u._handle.flat_param.untyped_storage().size() for u in _units(model)], all(
            torch.equal(u._handle.flat_param.data, b) for u, b in zip(_units(model), before)
        )

    for sizes, same in on_ranks(body):
        assert len(sizes) == 2 and min(sizes) >= 4 * 12 and same


# ------------------------------------------------------------------------------------------------ wrapper


def test_cpu_wrapper_broadcasts_rank_0s_parameters_and_buffers():
    def body(rank):
        rank0 = _net(0)
        model = _wrapped(rank)
        with FSDP.state_dict_type(model, FULL):
            full = model.state_dict()
        return {k: torch.equal(v, rank0.state_dict()[k]) for k, v in full.items()}, _local(model)

    (eq0, shard0), (eq1, shard1) = on_ranks(body)
    assert eq0 == eq1 == {"a.weight": True, "a.bias": True, "b.weight": True, "b.bias": True, "scale": True}
    assert set(shard0) == set(shard1) and any(not torch.equal(shard0[k], shard1[k]) for k in shard0)  # shards differ


def test_wrapper_is_marked_and_apply_wraps_upstream_once(monkeypatch):
    original = upstream.get_fsdp_wrapper.__wrapped__
    assert patch._wrap_get_fsdp_wrapper(original).__dinov2_cell_patched__ is True
    monkeypatch.setattr(upstream, "free_if_fsdp", object())
    for name in ("save", "load", "_load_file"):
        monkeypatch.setattr(upstream.FSDPCheckpointer, name, object())
    monkeypatch.setattr(upstream, "get_fsdp_wrapper", original)  # as upstream ships it: not marked
    patch.apply()
    wrapped = upstream.get_fsdp_wrapper
    assert wrapped is not original and wrapped.__wrapped__ is original and wrapped.__dinov2_cell_patched__ is True
    patch.apply()
    assert upstream.get_fsdp_wrapper is wrapped  # not wrapped twice
    assert upstream.free_if_fsdp is patch._free_if_fsdp
    assert upstream.FSDPCheckpointer.save is patch._save
    assert upstream.FSDPCheckpointer.load is patch._load
    assert upstream.FSDPCheckpointer._load_file is patch._load_file


# ------------------------------------------------------------------------------------------------ state dicts


def test_state_dict_type_for():
    assert patch.state_dict_type_for(torch.nn.Linear(2, 2)) == FULL

    def body(rank):
        return patch.state_dict_type_for(_wrapped(rank)), patch.state_dict_type_for(_wrapped(rank, "NO_SHARD"))

    assert on_ranks(body) == [(LOCAL, FULL), (LOCAL, FULL)]


def test_sharded_save_and_load_round_trip_per_rank(tmp_path):
    def body(rank):
        model = _wrapped(rank)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        expected = _local(model)
        checkpointer = upstream.FSDPCheckpointer(model, str(tmp_path), optimizer=optimizer, save_to_disk=True)
        checkpointer.save("model_0000003", iteration=3)
        path = tmp_path / f"model_0000003.rank_{rank}.pth"
        saved = torch.load(path, weights_only=True)  # plain tensors only: loadable weights-only
        types = {type(v) for v in saved["model"].values()}
        exact = set(saved["model"]) == set(expected) and all(
            torch.equal(saved["model"][k], v) for k, v in expected.items()
        )
        with torch.no_grad():
            for u in _units(model):
                u._handle.flat_param.add_(1.0)
            model.scale.add_(1.0)
        changed = {k for k, v in _local(model).items() if not torch.equal(v, expected[k])}
        extra = checkpointer.load(str(path), checkpointables=[])
        after = _local(model)
        nonempty = {k for k, v in expected.items() if v.numel()}
        restored = {k: torch.equal(v, expected[k]) for k, v in after.items()}
        return (
            types,
            exact,
            changed == nonempty and "a._flat_param" in changed,
            saved["iteration"],
            sorted(extra),
            restored,
        )

    results = on_ranks(body)
    for types, exact, changed, iteration, extra, restored in results:
        assert types == {torch.Tensor} and exact and iteration == 3
        assert changed  # every non-empty entry (flat parameters, their views, the buffer) was perturbed
        assert extra == ["iteration", "optimizer"]  # checkpointables=[] reaches fvcore: the optimizer is not loaded
        assert all(restored.values())
    assert sorted(os.listdir(tmp_path)) == [
        "last_checkpoint.rank_0",
        "last_checkpoint.rank_1",
        "model_0000003.rank_0.pth",
        "model_0000003.rank_1.pth",
    ]
    assert (tmp_path / "last_checkpoint.rank_1").read_text() == "model_0000003.rank_1.pth"


def test_sharded_like_puts_shards_back_and_refuses_other_shapes():
    def body(rank):
        model = _wrapped(rank)
        with FSDP.state_dict_type(model, LOCAL):
            template = model.state_dict()
        sharded = [k for k, v in template.items() if isinstance(v, ShardedTensor)]
        plain = {k: torch.full_like(v.local_tensor() if k in sharded else v, 7.0 + rank) for k, v in template.items()}
        missing = dict(plain)
        missing.pop(sharded[1])
        out = patch.sharded_like(missing, template)
        kept = dict(plain, **{sharded[1]: template[sharded[1]]})  # already a ShardedTensor: taken as it is
        out_kept = patch.sharded_like(kept, template)
        result = {
            "keys": sorted(out) == sorted(missing) and out is not missing and len(missing) == len(plain) - 1,
            "same_objects": out[sharded[0]] is template[sharded[0]] and out_kept[sharded[1]] is template[sharded[1]],
            "values": torch.equal(template[sharded[0]].local_tensor(), plain[sharded[0]]),
            "buffer": out["scale"] is plain["scale"],
        }
        wrong = dict(plain, **{sharded[0]: torch.zeros(3)})
        with pytest.raises(ValueError) as info:
            patch.sharded_like(wrong, template)
        shape = tuple(template[sharded[0]].local_tensor().shape)
        result["message"] = str(info.value) == (
            f"{sharded[0]}: the checkpoint's local shard has shape (3,), this process's {shape}: "
            "resume with the number of processes that wrote it"
        )
        return result, sorted(sharded)

    for result, sharded in on_ranks(body):
        assert len(sharded) == 2 and result == dict.fromkeys(result, True)


def test_local_shards_as_tensors():
    def body(rank):
        model = _wrapped(rank)
        with FSDP.state_dict_type(model, LOCAL):
            sd = model.state_dict()
        out = patch.local_shards_as_tensors(sd)
        return (
            all((out[k] is v.local_tensor()) if isinstance(v, ShardedTensor) else (out[k] is v) for k, v in sd.items())
            and {type(v) for v in out.values()} == {torch.Tensor}
            and list(out) == list(sd)
        )

    assert on_ranks(body) == [True, True]


def test_load_file_passes_through_what_is_not_a_model_checkpoint(tmp_path):
    tensor_file, no_model = tmp_path / "t.pth", tmp_path / "n.pth"
    torch.save(torch.arange(3.0), tensor_file)
    torch.save({"iteration": 5, "model": [1, 2]}, no_model)
    plain = upstream.FSDPCheckpointer(torch.nn.Linear(2, 2), str(tmp_path))
    assert torch.equal(plain._load_file(str(tensor_file)), torch.arange(3.0))  # unsharded model, not a dict

    def body(rank):
        checkpointer = upstream.FSDPCheckpointer(_wrapped(rank), str(tmp_path))
        return checkpointer._load_file(str(no_model)), torch.equal(
            checkpointer._load_file(str(tensor_file)), torch.arange(3.0)
        )

    assert on_ranks(body) == [({"iteration": 5, "model": [1, 2]}, True)] * 2


# ------------------------------------------------------------------------------------------------ save details


def test_save_writes_nothing_without_a_folder_or_when_not_saving_to_disk(tmp_path):
    model = torch.nn.Linear(2, 2)
    upstream.FSDPCheckpointer(model, str(tmp_path), save_to_disk=False).save("model_0000001")
    upstream.FSDPCheckpointer(model, "", save_to_disk=True).save("model_0000001")
    assert os.listdir(tmp_path) == [] and not os.path.exists("model_0000001.rank_0.pth")


def test_save_logs_the_file_and_writes_through_a_tmp_file(tmp_path, monkeypatch):
    on_ranks(lambda rank: _save_logs_the_file_and_writes_through_a_tmp_file(tmp_path, monkeypatch), world_size=1)


def _save_logs_the_file_and_writes_through_a_tmp_file(tmp_path, monkeypatch):
    model = _wrapped(0)  # world size 1: NO_SHARD, saved as FULL_STATE_DICT
    checkpointer = upstream.FSDPCheckpointer(model, str(tmp_path), save_to_disk=True)
    records = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    checkpointer.logger.addHandler(handler)
    level = checkpointer.logger.level
    checkpointer.logger.setLevel(logging.INFO)
    written = []
    real_save = torch.save

    def save(obj, f):  # where the bytes go while the checkpoint's own name does not exist yet
        written.append((f.name, os.path.exists(tmp_path / "model_0000001.rank_0.pth")))
        real_save(obj, f)

    monkeypatch.setattr(torch, "save", save)
    try:
        checkpointer.save("model_0000001")
    finally:
        checkpointer.logger.removeHandler(handler)
        checkpointer.logger.setLevel(level)
    final = str(tmp_path / "model_0000001.rank_0.pth")
    assert records == [f"Saving checkpoint to {final}"]
    assert written == [(final + ".tmp", False)]
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint.rank_0", "model_0000001.rank_0.pth"]
    loaded = torch.load(final, weights_only=True)["model"]
    with FSDP.state_dict_type(model, FULL):
        full = model.state_dict()
    assert sorted(loaded) == ["a.bias", "a.weight", "b.bias", "b.weight", "scale"]
    assert all(torch.equal(loaded[k], v) for k, v in full.items())


# ------------------------------------------------------------------------------------------------ load details


class _RunsCodeWhenUnpickled:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import pathlib

        return pathlib.Path.touch, (pathlib.Path(self.marker),)


def test_crafted_pickle_is_refused_even_when_the_environment_turns_weights_only_off(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    marker = tmp_path / "code_ran"
    torch.save({"model": {}, "x": _RunsCodeWhenUnpickled(str(marker))}, tmp_path / "bad.pth")
    checkpointer = upstream.FSDPCheckpointer(torch.nn.Linear(2, 2), str(tmp_path))
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        checkpointer._load_file(str(tmp_path / "bad.pth"))
    assert not marker.exists()


def test_a_checkpoint_written_on_an_accelerator_loads_on_cpu(tmp_path):
    """Storages tagged `cuda:0` in the file (as a GPU run writes them) come back on the CPU."""
    from torch.serialization import _package_registry, register_package

    register_package(0, lambda obj: "cuda:0", lambda obj, location: None)  # tag every storage as a GPU one
    entry = _package_registry[0]
    try:
        torch.save({"model": {"w": torch.arange(4.0)}, "lr": np.float64(0.5)}, tmp_path / "gpu.pth")
    finally:
        _package_registry.remove(entry)
    checkpointer = upstream.FSDPCheckpointer(torch.nn.Linear(2, 2), str(tmp_path))
    loaded = checkpointer._load_file(str(tmp_path / "gpu.pth"))
    assert loaded["model"]["w"].device == torch.device("cpu") and torch.equal(loaded["model"]["w"], torch.arange(4.0))
    assert type(loaded["lr"]) is np.float64 and loaded["lr"] == 0.5


def test_load_file_on_torch_without_scoped_safe_globals(tmp_path, monkeypatch):
    """torch 2.4 has only the process-wide allow-list: exactly `numpy_safe_globals()` is added there."""
    import torch.serialization as ts

    before = list(ts.get_safe_globals())
    real, added = ts.add_safe_globals, []

    def add_safe_globals(allowed):
        added.append(list(allowed))
        real(allowed)

    monkeypatch.delattr(ts, "safe_globals")
    monkeypatch.setattr(ts, "add_safe_globals", add_safe_globals)
    torch.save({"model": {}, "it": np.int64(4), "lr": np.float32(0.25)}, tmp_path / "n.pth")
    try:
        loaded = upstream.FSDPCheckpointer(torch.nn.Linear(2, 2), str(tmp_path))._load_file(str(tmp_path / "n.pth"))
    finally:
        ts.clear_safe_globals()
        real(before)
    assert added == [patch.numpy_safe_globals()]
    assert type(loaded["it"]) is np.int64 and loaded["it"] == 4 and type(loaded["lr"]) is np.float32


# ------------------------------------------------------------------------------------------------ allow-list


def test_numpy_safe_globals_are_exactly_the_scalar_and_dtype_types_without_deprecated_names(monkeypatch):
    expected = [np._core.multiarray.scalar, np.dtype]
    dtype_classes = {type(np.dtype(t)) for t in (np.float16, np.float32, np.float64, np.int8, np.int16)}
    dtype_classes |= {type(np.dtype(t)) for t in (np.int32, np.int64, np.uint8, np.bool_)}
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # numpy >= 2 warns on `np.core`
        got = patch.numpy_safe_globals()
    assert got[:2] == expected and len(got) == 11 and set(got[2:]) == dtype_classes
    monkeypatch.delattr(np, "_core")  # numpy 1.x: only `np.core`
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        assert patch.numpy_safe_globals()[:2] == expected
