"""The TVM kernels: correctness, the tuning cache, the DLPack bridge, CUDA source, remote timing over RPC."""

import hashlib
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from timm.layers import Attention
from torch import nn

from kernels import KernelError, KernelSpec
from kernels.spec import KernelResourceError
from kernels.check import all_specs, check
from kernels.matadd import pack_bits, pack_nibbles
from kernels.dispatch import Dispatch
from kernels.matshift import pack, pack_xor, unpack_xor
from kernels.measure import measure, time_remote
from kernels.runtime import KernelAdditiveAttention, KernelBinaryProduct, KernelSet, to_kernels
from kernels.tuning import cuda_source, get_kernel, task_dir
from search_spaces import ArchConfig, BlockConfig, MoEConfig, build_model
from search_spaces.ops import AdditiveAttention, ShiftLinear

from tiny import free_port

TINY = KernelSpec("matmul", "fp32", 24, 20, 12)


@pytest.mark.parametrize("spec", list(all_specs()), ids=lambda s: s.key)
def test_every_kernel_matches_its_reference_at_awkward_shapes(spec):
    result = check(spec, "cpu")
    assert result.ok, result.detail
    if spec.dtype != "float32":
        assert result.status == "exact"


@pytest.mark.parametrize("tokens, dim, heads, images", [(64, 32, 1, 2), (7, 3, 2, 1), (1, 1, 1, 1)])
def test_the_fused_additive_kernel_takes_one_head_and_tiny_dims(tokens, dim, heads, images):
    # unit loops (one head, one image) and dims below a vector or a table group are where a schedule breaks
    spec = KernelSpec("additive", "lut4", tokens, dim, heads, batch=images)
    for seed in range(3):  # the binarization is drawn per seed: both kinds
        result = check(spec, "cpu", seed=seed)
        assert result.ok, result.detail


def test_pack_bits_layout():
    codes = np.zeros((2, 70), dtype=np.uint8)
    codes[0, [0, 63]] = 1
    codes[1, 64] = 1
    words = pack_bits(codes)
    assert words.shape == (2, 2) and words.dtype == np.uint64
    assert words[0].tolist() == [1 | (1 << 63), 0] and words[1].tolist() == [0, 1]


def test_pack_nibbles_layout():
    codes = np.zeros((1, 9), dtype=np.uint8)
    codes[0, [0, 3, 5, 8]] = 1
    assert pack_nibbles(codes).tolist() == [[0b1001, 0b0010, 0b0001]]


def test_bad_kernel_requests_are_refused_clearly():
    with pytest.raises(KernelError, match="unknown kernel 'matmult'"):
        KernelSpec("matmult", "fp32", 1, 1, 1)
    with pytest.raises(KernelError, match="M must be a positive integer, got 0"):
        KernelSpec("matmul", "fp32", 0, 4, 4)
    with pytest.raises(KernelError, match="unsupported dtype 'float16'"):
        KernelSpec("matmul", "fp32", 4, 4, 4, "float16")
    with pytest.raises(KernelError, match="trials must be a non-negative integer"):
        get_kernel(TINY, "cpu", -1)
    with pytest.raises(KernelError, match="unknown target 'tpu'"):
        get_kernel(TINY, "tpu", 0)


def test_arguments_of_the_wrong_shape_are_refused_clearly(tmp_path):
    import torch

    kernel = get_kernel(TINY, "cpu", 0, root=tmp_path)
    x, w, y = torch.zeros(24, 21), torch.zeros(12, 20), torch.zeros(24, 12)  # X has K = 21, the kernel K = 20
    with pytest.raises(KernelError, match=r"kernel matmul.*takes \(X\[24, 20\] float32.*X"):
        kernel(x, w, y)


def _snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() + str(p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


def test_tuned_once_then_cache_hits_touch_nothing(tmp_path):
    seen = []
    kernel = get_kernel(TINY, "cpu", trials=2, root=tmp_path, on_trials=seen.append)
    assert kernel.tuned and kernel.trials == 2 and not kernel.cache_hit and sum(seen) == 2
    folder = task_dir(TINY, kernel.target, tmp_path)
    assert (folder / "tuning" / "database_tuning_record.json").stat().st_size > 0
    before = _snapshot(folder)
    again = get_kernel(TINY, "cpu", trials=2, root=tmp_path)
    assert again.cache_hit and again.tuned
    assert _snapshot(folder) == before  # the tuning database and the library are untouched
    # asking for zero trials is served by the tuned kernel too
    assert get_kernel(TINY, "cpu", trials=0, root=tmp_path).tuned

    # a corrupted library is detected by its checksum and rebuilt from the tuning database, without re-tuning
    library = folder / "kernel.so"
    # truncated as a crashed writer would leave it (a new file: this process still maps the old one)
    truncated = folder / "truncated.so"
    truncated.write_bytes(library.read_bytes()[:1000])
    truncated.replace(library)
    records = (folder / "tuning" / "database_tuning_record.json").read_bytes()
    rebuilt = get_kernel(TINY, "cpu", trials=2, root=tmp_path, on_trials=lambda n: pytest.fail("re-tuned"))
    assert not rebuilt.cache_hit and rebuilt.tuned
    assert (folder / "tuning" / "database_tuning_record.json").read_bytes() == records
    assert check(TINY, "cpu", trials=2, root=tmp_path).ok

    # a half-written database (interrupted while tuning: no meta.json) is discarded and tuned again
    (folder / "meta.json").unlink()
    (folder / "tuning" / "database_tuning_record.json").write_text('[0, [[["tir.Sche')
    tuned_again = []
    fresh = get_kernel(TINY, "cpu", trials=2, root=tmp_path, on_trials=tuned_again.append)
    assert fresh.tuned and sum(tuned_again) == 2


def test_untuned_kernels_are_marked(tmp_path):
    kernel, timing = measure(KernelSpec("matshift", "mul", 9, 33, 7), "cpu", trials=0, repeats=3, root=tmp_path)
    assert not kernel.tuned and kernel.trials == 0
    assert timing.repeats == 3 and 0 < timing.min_ms <= timing.median_ms <= timing.max_ms


def test_dlpack_bridge_shares_memory_and_matches_torch(tmp_path):
    kernel = get_kernel(TINY, "cpu", trials=0, root=tmp_path)
    x, w = torch.randn(24, 20), torch.randn(12, 20)
    y = torch.full((24, 12), float("nan"))
    pointer = y.data_ptr()
    kernel(x, w, y)  # torch tensors go in as they are: TVM writes into y's own buffer
    assert y.data_ptr() == pointer
    torch.testing.assert_close(y, x @ w.T, rtol=1e-5, atol=1e-5)


def test_shift_layers_on_kernels_equal_the_torch_integer_path_bit_for_bit(tmp_path):
    layer = ShiftLinear.from_dense(nn.Linear(40, 24))
    with torch.no_grad():
        layer.weight[0, :5] = 0.0  # zero weights (sign code 0) take their own path in the xor variant
    model = nn.Sequential(layer)
    kernels = KernelSet("cpu", trials=0, root=tmp_path)
    fast = to_kernels(model, kernels)
    x = torch.randn(3, 11, 40)
    assert torch.equal(fast(x), layer.forward_int(x))
    assert [s.key for s in kernels.specs] == ["matshift-xor-int32-33x40x24"]  # the multiplication-free default
    # the packed weights are the kernel's contract
    shift, sign = layer.quantized()
    assert (sign == 0).sum() >= 5
    packed = pack_xor(shift.numpy(), sign.numpy())
    assert all(np.array_equal(a.numpy(), b) for a, b in zip(fast[0].packed("xor"), packed, strict=True))
    r, s = pack(shift.numpy(), sign.numpy())
    assert all(np.array_equal(a, b) for a, b in zip(unpack_xor(*packed), (r, s), strict=True))

    # where the measurements say another variant is faster at a shape, that shape runs it, with the same result
    measured = Dispatch.from_timings([("matshift", "xor", 33, 40, 24, "int32", 2.0),
                                      ("matshift", "mul", 33, 40, 24, "int32", 1.0)])
    dispatched = KernelSet("cpu", trials=0, root=tmp_path, dispatch=measured)
    other = to_kernels(model, dispatched)
    assert torch.equal(other(x), layer.forward_int(x))
    assert torch.equal(other(x[:1]), layer.forward_int(x[:1]))  # 11 rows: not measured, the default variant
    assert sorted(s.key for s in dispatched.specs) == ["matshift-mul-int32-33x40x24", "matshift-xor-int32-11x40x24"]


def test_dispatch_takes_the_fastest_candidate_per_shape_and_ignores_the_rest():
    measured = Dispatch.from_timings([
        ("matshift", "mul", 8, 16, 4, "int32", 1.0), ("matshift", "select", 8, 16, 4, "int32", 0.5),
        ("matshift", "xor", 8, 16, 4, "int32", 0.7), ("matshift", "xor", 9, 16, 4, "int32", 0.1),
        ("matshift", "mul", 9, 16, 4, "int32", 0.3), ("matshift", "mul", 11, 16, 4, "int32", 0.2),
        ("matmul", "fp32", 8, 16, 4, "float32", 0.01)])  # not a variant of the shift product
    # select is not a candidate (never the fastest in the kernel bench): its timing does not make it run
    assert measured.variant("matshift", 8, 16, 4, "int32", default="mul") == "xor"
    assert measured.variant("matshift", 9, 16, 4, "int32", default="mul") == "xor"
    assert measured.variant("matshift", 10, 16, 4, "int32", default="mul") == "mul"
    # a shape timed in one variant only (a table from before the other existed) is not a comparison
    assert measured.variant("matshift", 11, 16, 4, "int32", default="xor") == "xor"
    measured.timings[("matshift", 8, 16, 4, "int32")]["mul"] = 0.6
    assert measured.describe() == "matshift: mul fastest at 1 of 2 shape(s), xor at 1"
    assert measured.to_dict() == {"matshift-8x16x4-int32": "mul", "matshift-9x16x4-int32": "xor"}


def test_batched_binary_products_run_in_one_call_and_only_where_a_variant_takes_a_batch(tmp_path):
    kernels = KernelSet("cpu", trials=0, root=tmp_path)
    product = KernelBinaryProduct(kernels)
    codes, values = (torch.rand(2, 3, 17, 8) < 0.5).float(), torch.randn(2, 3, 8, 5)
    torch.testing.assert_close(product(codes, values), codes @ values, rtol=1e-5, atol=1e-5)
    assert [s.key for s in kernels.specs] == ["matadd-binary_real-float32-b6x17x8x5"]
    assert product(codes[:1, :1], values[:1, :1]).shape == (1, 1, 17, 5)
    assert kernels.specs[-1].batch == 1  # a batch of one is the plain kernel
    with pytest.raises(KernelError, match="matshift/mul computes one product per call, not a batch of 4"):
        KernelSpec("matshift", "mul", 4, 4, 4, batch=4)


def test_tuned_kernels_pass_the_check_too(tmp_path):
    for spec in (KernelSpec("matshift", "xor", 37, 70, 29), KernelSpec("matadd", "binary_real", 13, 64, 20, batch=3),
                 KernelSpec("additive", "lut4", 13, 32, 2, batch=2)):  # additive: its own space (hand schedule)
        result = check(spec, "cpu", trials=2, root=tmp_path)
        assert result.ok, result.detail
        assert get_kernel(spec, "cpu", trials=2, root=tmp_path).tuned


def test_a_reparameterized_model_runs_on_kernels(tmp_path, tiny_spec):
    config = ArchConfig(
        tiny_spec,
        (BlockConfig("additive", "shift", "shift", "shift"), BlockConfig("additive", "dense", "dense", "moe", MoEConfig())),
    )
    model = build_model(config).eval()
    kernels = KernelSet("cpu", trials=0, root=tmp_path)
    x = torch.randn(2, 3, 32, 32)
    for attention in (model.blocks[0].attn, model.blocks[1].attn):
        nn.init.normal_(attention.dconv.weight, std=0.2)  # the token conv starts at zero: give it weights to check
    with torch.no_grad():
        # the fused kernel's attention equals torch's within fp32 rounding, in both binarizations
        tokens = torch.randn(2, 17, 32)
        for binarize in ("tensor", "token"):
            model.blocks[1].attn.binarize = binarize
            fast = to_kernels(model, kernels)
            assert isinstance(fast.blocks[1].attn, KernelAdditiveAttention)
            torch.testing.assert_close(fast.blocks[1].attn(tokens), model.blocks[1].attn(tokens), rtol=1e-4,
                                       atol=1e-5)
        assert fast(x).shape == (2, 10) and torch.isfinite(fast(x)).all()
    kinds = {(s.kernel, s.variant) for s in kernels.specs}
    assert kinds == {("matshift", "xor"), ("additive", "lut4")}
    # the whole mixing of every image and head in one kernel call
    heads = model.blocks[1].attn.num_heads
    assert {(s.batch, s.N) for s in kernels.specs if s.kernel == "additive"} == {(2, heads)}
    assert isinstance(model.blocks[0].attn.qkv, ShiftLinear)  # the original model is untouched


@torch.no_grad()
def test_an_additive_attention_the_fused_kernel_does_not_take_runs_its_products_on_matadd(tmp_path):
    source = Attention(32, num_heads=2, qkv_bias=True)
    attention = AdditiveAttention(source, res_kernel_size=5).eval()  # the fused kernel's conv has 9 taps
    nn.init.normal_(attention.dconv.weight, std=0.2)
    kernels = KernelSet("cpu", trials=0, root=tmp_path)
    fast = to_kernels(nn.Sequential(attention), kernels)[0]  # to_kernels converts a model's modules, not the model
    assert isinstance(fast.binary_product, KernelBinaryProduct)
    tokens = torch.randn(2, 17, 32)
    torch.testing.assert_close(fast(tokens), attention(tokens), rtol=1e-4, atol=1e-5)
    assert {(s.kernel, s.variant) for s in kernels.specs} == {("matadd", "binary_real")}


@pytest.mark.parametrize("kernel, variant", [("matmul", "fp32"), ("matshift", "select"), ("matshift", "mul"),
                                             ("matshift", "xor"),
                                             ("matadd", "binary_real"), ("matadd", "lut4"),
                                             ("matadd", "packed_popcount")])
def test_cuda_source_is_generated_for_each_kernel(kernel, variant):
    source = cuda_source(KernelSpec(kernel, variant, 37, 70, 29))
    assert "__global__" in source and "blockIdx.x" in source
    if variant == "packed_popcount":
        assert "__popcll" in source  # the hardware popcount


def test_remote_timing_through_an_rpc_tracker_on_loopback(tmp_path):
    from tvm.rpc.server import Server
    from tvm.rpc.tracker import Tracker

    port = free_port()
    tracker = Tracker(host="127.0.0.1", port=port, port_end=port + 50, silent=True)
    server_port = free_port()
    server = Server(host="127.0.0.1", port=server_port, port_end=server_port + 50, key="loopback-cpu",
                    tracker_addr=("127.0.0.1", tracker.port), silent=True)
    try:
        kernel = get_kernel(TINY, "cpu", trials=0, root=tmp_path)
        deadline = time.monotonic() + 60
        while True:  # the server registers with the tracker asynchronously
            try:
                timing = time_remote(kernel, f"127.0.0.1:{tracker.port}", "loopback-cpu", repeats=3, session_timeout=30)
                break
            except KernelResourceError:  # not registered yet
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        assert timing.repeats == 3 and timing.median_ms > 0
        with pytest.raises(KernelError, match="HOST:PORT"):
            time_remote(kernel, "localhost", "loopback-cpu")
    finally:
        server.terminate()
        tracker.terminate()


def test_an_untuned_xor_kernel_runs_its_hand_written_schedule_and_a_tuned_one_the_faster_of_two(tmp_path):
    import json

    from kernels.tuning import compile_untuned

    spec = KernelSpec("matshift", "xor", 37, 70, 48)  # 48 outputs: a tile of 16; 37 rows: a partial tile
    source = compile_untuned(spec).mod.inspect_source()
    assert "parallel" in source.lower()  # spread over the cores: TVM's default schedule is one serial loop nest
    assert check(spec, "cpu").status == "exact"
    assert spec.definition.cpu_schedule(None, 37, 70, 29) is None  # no vector tile divides 29: TVM's default
    kernel = get_kernel(spec, "cpu", trials=2, root=tmp_path)
    meta = json.loads((task_dir(spec, kernel.target, tmp_path) / "meta.json").read_text())
    assert kernel.tuned and meta["schedule"] in ("hand", "metaschedule")
    assert check(spec, "cpu", trials=2, root=tmp_path).status == "exact"


@pytest.mark.parametrize("batch, m, k, n", [(3, 37, 70, 24), (1, 5, 9, 64)])
def test_an_untuned_binary_product_runs_its_tiled_schedule_with_the_default_schedules_sums(batch, m, k, n):
    import tvm

    from kernels import target as targets
    from kernels.tuning import compile_untuned

    spec = KernelSpec("matadd", "binary_real", m, k, n, "float32", batch=batch)
    tiled = compile_untuned(spec)
    assert "parallel" in tiled.mod.inspect_source().lower()
    serial = tvm.compile(tvm.IRModule({"main": spec.prim_func()}), target=targets.resolve("cpu"))
    rng = np.random.default_rng(0)
    lead = (batch,) if batch > 1 else ()
    codes = (rng.random((*lead, m, k)) < 0.5).astype(np.int8)
    values = rng.standard_normal((*lead, k, n)).astype(np.float32)
    outputs = []
    for executable in (tiled, serial):
        out = tvm.runtime.tensor(np.zeros((*lead, m, n), np.float32))
        executable["main"](tvm.runtime.tensor(codes), tvm.runtime.tensor(values), out)
        outputs.append(out.numpy())
    assert np.array_equal(*outputs)  # each output sums its terms in the same order of k
    assert spec.definition.cpu_schedule(None, m, k, 20) is None  # no vector tile divides 20: TVM's default


def test_a_cache_entry_built_from_other_kernel_code_is_rebuilt_not_loaded(tmp_path):
    import json

    kernel = get_kernel(TINY, "cpu", trials=0, root=tmp_path)
    meta_path = task_dir(TINY, kernel.target, tmp_path) / "meta.json"
    meta = json.loads(meta_path.read_text())
    assert meta["source"] and get_kernel(TINY, "cpu", trials=0, root=tmp_path).cache_hit
    meta_path.write_text(json.dumps({**meta, "source": "from-an-older-definition"}))  # as after an upgrade
    rebuilt = get_kernel(TINY, "cpu", trials=0, root=tmp_path)
    assert not rebuilt.cache_hit and json.loads(meta_path.read_text())["source"] == meta["source"]
    assert get_kernel(TINY, "cpu", trials=0, root=tmp_path).cache_hit
