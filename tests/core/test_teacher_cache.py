"""The teacher cache: storage (shards, index, damage, eviction), keys, and its use in training (exactness)."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

from dskd_core import models
from dskd_core.cache import TeacherCache
from dskd_core.cache.fill import CacheBuildCancelled, open_teacher_cache
from dskd_core.cache.keys import entry_key, example_key, teacher_fingerprint, teacher_side
from dskd_core.progress import NeverCancel
from dskd_core.spec import JobSpec
from dskd_core.train import TrainingModule, make_accelerator, prepare, train_step


class ListSink:
    def __init__(self) -> None:
        self.events = []

    def emit(self, event) -> None:
        self.events.append(event)


def rows(n: int, d: int = 4, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(k + 1, d, generator=g) for k in range(n)]


# ------------------------------------------------------------------------------------------------- storage


def test_shards_round_trip_and_the_index_rebuilds_from_the_shards(tmp_path):
    cache = TeacherCache(tmp_path)
    entry = cache.entry("e1", {"teacher": "t"})
    first, second = rows(3), rows(2, seed=1)
    a = entry.add_shard(["k0", "k1", "k2"], first)
    b = entry.add_shard(["k3", "k4"], second)
    (entry.path / "index.json").unlink()  # as if the process died right after renaming the shards into place
    where = entry.locations()
    assert set(where) == {"k0", "k1", "k2", "k3", "k4"}
    assert where["k1"].shard == a and where["k4"].shard == b
    torch.testing.assert_close(entry.open_shard(a).rows(where["k1"].item), first[1], rtol=0, atol=0)
    torch.testing.assert_close(entry.open_shard(b).rows(where["k4"].item), second[1], rtol=0, atol=0)
    assert entry.check([a, b]) == []


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_a_damaged_shard_is_detected_and_deleted(tmp_path, damage):
    entry = TeacherCache(tmp_path).entry("e1", {})
    good = entry.add_shard(["a"], rows(1))
    bad = entry.add_shard(["b", "c"], rows(2, seed=3))
    path = entry.shard_dir / bad
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[-3] ^= 0xFF  # a bit of the tensor data: the header still parses
    else:
        data = data[: len(data) // 2]
    path.write_bytes(bytes(data))
    assert entry.check([good, bad]) == [bad]
    assert not path.exists() and set(entry.locations()) == {"a"}


def test_an_unfinished_shard_is_never_read_and_a_dead_writers_temp_file_is_removed(tmp_path):
    import socket

    entry = TeacherCache(tmp_path).entry("e1", {})
    entry.add_shard(["a"], rows(1))
    host = socket.gethostname()
    dead = entry.shard_dir / f".tmp-{host}-999999999-x.safetensors.part"
    live = entry.shard_dir / f".tmp-{host}-{os.getpid()}-y.safetensors.part"
    for p in (dead, live):
        p.write_bytes(b"half a shard")
    assert set(entry.locations()) == {"a"}
    entry.remove_stale_temps()
    assert not dead.exists() and live.exists()


def test_eviction_removes_the_least_recently_used_shards_first_but_never_protected_ones(tmp_path):
    cache = TeacherCache(tmp_path)
    e1, e2 = cache.entry("e1", {}), cache.entry("e2", {})
    old = e1.add_shard(["a"], rows(1, d=64))
    mid = e2.add_shard(["b"], rows(1, d=64))
    new = e1.add_shard(["c"], rows(1, d=64))
    for entry, name, used in [(e1, old, 1.0), (e2, mid, 2.0), (e1, new, 3.0)]:
        with entry.locked():
            index = entry.read_index()
            index[name]["last_used"] = used
            entry.write_index(index)
    size = cache.total_bytes() // 3
    cache.max_bytes = size  # room for one shard
    freed = cache.evict(protect={"e1": {old}})
    assert freed == 2 * size
    assert set(e1.locations()) == {"a"} and not e2.path.exists()  # the emptied entry is removed
    assert [s.key for s in cache.summaries()] == ["e1"]


def test_remove_deletes_entries_by_key_prefix(tmp_path):
    cache = TeacherCache(tmp_path)
    cache.entry("abc123", {}).add_shard(["a"], rows(1))
    cache.entry("abd456", {}).add_shard(["b"], rows(1))
    assert cache.remove("abc") == ["abc123"]
    assert [s.key for s in cache.summaries()] == ["abd456"]
    with pytest.raises(ValueError):
        cache.remove("")


# ---------------------------------------------------------------------------------------------------- keys


def make_spec(world, method: str = "vanilla_kd", *, data: dict | None = None, **training) -> JobSpec:
    settings = {"max_steps": 1, "batch_size": 4, "max_length": 64, "max_prompt_length": 32}
    cross = method in ("dskd_eta", "dskd_cma", "uld", "mined", "shared_vocab_kd")
    return JobSpec.model_validate(
        {
            "student": {"name_or_path": str(world.cross_student if cross else world.student)},
            "teacher": {"name_or_path": str(world.teacher)},
            "data": {
                "path": str(world.train),
                "dev_path": str(world.dev),
                "dev_max_examples": 4,
                "max_examples": 12,
            }
            | (data or {}),
            "distill": {"method": method},
            "training": settings | training,
        }
    )


def example_keys(spec: JobSpec) -> list[str]:
    from dskd_core.data.build import build_datasets

    student_tok = models.load_tokenizer(spec.student)
    return [example_key(*teacher_side(ex)) for ex in build_datasets(spec, student_tok, dual=False).train]


def test_example_keys_change_with_the_template_the_lengths_the_text_and_the_tokenizer(toy_world, tmp_path):
    base = example_keys(make_spec(toy_world))
    assert len(set(base)) == len(base)
    assert example_keys(make_spec(toy_world)) == base  # deterministic
    templated = example_keys(make_spec(toy_world, data={"prompt_template": "Q: {prompt}\nA: "}))
    shorter = example_keys(make_spec(toy_world, max_length=16, max_prompt_length=8))  # cuts most records
    assert not set(templated) & set(base)
    assert set(shorter) != set(base)
    # One record's text changed: only its key changes.
    records = [json.loads(line) for line in toy_world.train.read_text().splitlines()[:12]]
    field = next(k for k in ("response", "output", "completion", "answer") if k in records[3])
    records[3][field] = records[3][field] + " more"
    edited = tmp_path / "edited.jsonl"
    edited.write_text("".join(json.dumps(r) + "\n" for r in records))
    changed = example_keys(make_spec(toy_world, data={"path": str(edited)}))
    assert [i for i, (a, b) in enumerate(zip(base, changed, strict=True)) if a != b] == [3]
    # Another tokenizer gives other ids: the cross student's tokenizer stands in for a changed teacher tokenizer.
    other = make_spec(toy_world).model_copy(deep=True)
    other.student.name_or_path = str(toy_world.cross_student)
    assert not set(example_keys(other)) & set(base)


def test_the_entry_key_changes_with_the_teacher_weights_and_the_numerics(toy_world, tmp_path):
    spec = make_spec(toy_world)
    teacher = models.load_model(spec.teacher, trainable=False)
    fingerprint = teacher_fingerprint(spec.teacher.name_or_path, teacher, tmp_path)
    key, info = entry_key(spec, fingerprint, "fp32")
    assert info["teacher_fingerprint"] == fingerprint and json.loads(
        (tmp_path / "fingerprints.json").read_text()
    )
    assert entry_key(spec, fingerprint, "bf16")[0] != key
    assert entry_key(make_spec(toy_world, precision="bf16"), fingerprint, "fp32")[0] != key
    bf16_teacher = spec.model_copy(deep=True)
    bf16_teacher.teacher.dtype = "bfloat16"
    assert entry_key(bf16_teacher, fingerprint, "fp32")[0] != key
    # A copy of the teacher is the same teacher; one changed weight makes it another.
    copy = tmp_path / "teacher-copy"
    shutil.copytree(toy_world.teacher, copy)
    assert teacher_fingerprint(str(copy), teacher, tmp_path) == fingerprint
    from safetensors.torch import load_file, save_file

    weights = copy / "model.safetensors"
    state = load_file(weights)
    name = next(iter(state))
    state[name] = state[name] + 1e-3
    save_file(state, weights, metadata={"format": "pt"})
    assert teacher_fingerprint(str(copy), teacher, tmp_path) != fingerprint


# ------------------------------------------------------------------------------------------- in training


class CancelAfter:
    def __init__(self, checks: int) -> None:
        self.left = checks

    def cancelled(self) -> bool:
        self.left -= 1
        return self.left < 0


def open_cache(spec, root, *, cancel=None, shard_bytes=1 << 28, sink=None):
    accelerator = make_accelerator(spec.training.precision, "cpu")
    setup = prepare(spec, accelerator.device)
    cached = open_teacher_cache(
        spec,
        setup,
        accelerator,
        TeacherCache(root),
        sink=sink or ListSink(),
        cancel=cancel or NeverCancel(),
        shard_bytes=shard_bytes,
    )
    return setup, accelerator, cached


def test_built_then_hit_then_extended_and_the_job_says_so(toy_world, tmp_path):
    sink = ListSink()
    _, _, cached = open_cache(make_spec(toy_world), tmp_path, sink=sink)
    assert cached.status == "built"
    assert sink.events[-1].type == "log" and sink.events[-1].message.startswith("teacher cache built")
    assert sink.events[-1].metrics["cache_computed"] == 16  # 12 training + 4 dev examples
    _, _, cached = open_cache(make_spec(toy_world), tmp_path, sink=sink)
    assert cached.status == "hit" and sink.events[-1].metrics["cache_computed"] == 0
    bigger = make_spec(toy_world, data={"max_examples": 20})
    _, _, cached = open_cache(bigger, tmp_path, sink=sink)
    assert cached.status == "extended" and sink.events[-1].metrics["cache_computed"] == 8


def test_a_corrupted_shard_is_rebuilt_and_a_cancelled_build_keeps_its_finished_shards(toy_world, tmp_path):
    spec = make_spec(toy_world)
    with pytest.raises(CacheBuildCancelled):  # one shard per batch of 4; cancelled before the third batch
        open_cache(spec, tmp_path, cancel=CancelAfter(2), shard_bytes=1)
    (entry,) = TeacherCache(tmp_path).entries()
    assert len(entry.read_index()) == 2 and len(entry.locations()) == 8
    sink = ListSink()
    _, _, cached = open_cache(spec, tmp_path, sink=sink, shard_bytes=1)
    assert cached.status == "extended" and sink.events[-1].metrics["cache_computed"] == 8
    shard = sorted(entry.read_index())[0]
    path = entry.shard_dir / shard
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x55
    path.write_bytes(bytes(data))
    *_, cached = open_cache(spec, tmp_path, sink=sink, shard_bytes=1)
    assert cached.status == "extended" and sink.events[-1].metrics["cache_computed"] == 4
    assert shard not in entry.read_index()


def step_with_and_without_cache(spec, root):
    """One training step (loss and gradients) on the same 4 examples, teacher live and teacher from the cache."""
    setup, accelerator, cached = open_cache(spec, root)
    module = TrainingModule(setup.student, setup.distiller).eval()  # no dropout: the same function twice
    indices = [0, 1, 2, 3]

    def step(batch):
        module.zero_grad(set_to_none=True)
        metrics, _ = train_step(module, [batch], accelerator)
        return metrics["loss"], [p.grad.clone() for p in module.parameters() if p.grad is not None]

    live = step(setup.collate([setup.train_set[j] for j in indices]))
    setup.teacher_cache = cached
    batch = setup.collate_split("train", indices)
    assert "teacher_hidden" in batch

    def refuse(*args, **kwargs):
        raise AssertionError("the teacher ran although the cache supplied its states")

    hook = setup.teacher.base_model.register_forward_pre_hook(refuse)
    from_cache = step(batch)
    hook.remove()
    return live, from_cache, setup, batch


@pytest.mark.parametrize("method", ["vanilla_kd", "dskd", "dskd_eta"])
def test_a_step_with_the_fp32_cache_equals_a_step_without_it(toy_world, tmp_path, method):
    (loss, grads), (cached_loss, cached_grads), _, _ = step_with_and_without_cache(
        make_spec(toy_world, method), tmp_path
    )
    assert cached_loss == pytest.approx(loss, rel=1e-6)
    assert len(grads) == len(cached_grads) > 0
    for a, b in zip(grads, cached_grads, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-7)


def test_the_bf16_cache_stays_within_its_documented_bound(toy_world, tmp_path):
    """Teacher logits: |Δz_j| ≤ 2^-8·Σ_i |h_i|·|w_ji|. FKL per position: |ΔKL| ≤ ε + (e^ε − 1)·max_j |log p_j − log q_j|
    with ε = 2·max_j |Δz_j| / τ (docs/design.md, "Teacher cache")."""
    spec = make_spec(toy_world, teacher_cache="bf16")
    (loss, _), (cached_loss, _), setup, batch = step_with_and_without_cache(spec, tmp_path)
    valid = batch["labels"] != -100
    h_cached = batch["teacher_hidden"][valid].float()
    with torch.no_grad():
        h = models.last_hidden_state(setup.teacher.base_model, batch["input_ids"], batch["attention_mask"])[
            valid
        ]
        w = models.output_head(setup.teacher).weight[: len(setup.teacher_tokenizer)].float()
        dz = (h_cached - h) @ w.T
        bound = 2.0**-8 * (h.abs() @ w.abs().T)
        assert (dz.abs() <= bound * (1 + 1e-5) + 1e-6).all()
        assert dz.abs().max() > 0  # bf16 really rounded
        tau, rate = spec.distill.temperature, spec.distill.kd_rate
        eps = 2 * dz.abs().amax(-1) / tau
        h_s = models.last_hidden_state(setup.student, batch["input_ids"], batch["attention_mask"])[valid]
        w_s = models.output_head(setup.student).weight[: len(setup.student_tokenizer)].float()
        log_p, log_q = torch.log_softmax(h @ w.T / tau, -1), torch.log_softmax(h_s.float() @ w_s.T / tau, -1)
        per_position = eps + torch.expm1(eps) * (log_p - log_q).abs().amax(-1)
    assert abs(cached_loss - loss) <= rate * float(per_position.mean()) + 1e-6
    assert cached_loss != loss


def test_dskd_train_fills_the_cache_and_dskd_cache_lists_and_removes_it(toy_world, tmp_path):
    import yaml
    from typer.testing import CliRunner

    from dskd_cli.main import app

    runner = CliRunner()
    spec_file = tmp_path / "job.yaml"
    spec_file.write_text(yaml.safe_dump(json.loads(make_spec(toy_world, max_steps=2).to_json())))
    cache_dir = ["--cache-dir", str(tmp_path / "cache")]
    for run, status in [("a", "built"), ("b", "hit")]:
        result = runner.invoke(app, ["train", str(spec_file), "--run-dir", str(tmp_path / run), *cache_dir])
        assert result.exit_code == 0, result.output
        assert f"teacher cache {status}: entry" in result.output
    listing = runner.invoke(app, ["cache", "ls", *cache_dir])
    assert listing.exit_code == 0 and "1 entries" in listing.output
    (entry,) = TeacherCache(tmp_path / "cache").summaries()
    line = next(x for x in listing.output.splitlines() if x.startswith(entry.key))
    # Two steps of 4 read 8 of the 12 training examples: only those are computed, with the 4 dev examples.
    assert line.split()[1] == "12" and str(toy_world.teacher) in line and "fp32/fp32" in line
    assert runner.invoke(app, ["cache", "rm", "zzz", *cache_dir]).exit_code == 2
    removed = runner.invoke(app, ["cache", "rm", entry.key[:6], *cache_dir])
    assert removed.exit_code == 0 and f"removed {entry.key}" in removed.output
    assert TeacherCache(tmp_path / "cache").summaries() == []


def test_a_job_caches_only_the_training_examples_its_steps_will_read():
    from types import SimpleNamespace

    from dskd_core.checkpoint import TrainState
    from dskd_core.training.step import micro_batch_indices, planned_examples

    def run(steps: int, state: TrainState, grad_accum: int = 1):
        training = SimpleNamespace(batch_size=4, grad_accum=grad_accum, seed=0)
        return SimpleNamespace(
            spec=SimpleNamespace(training=training),
            state=state,
            total_steps=steps,
            setup=SimpleNamespace(train_set=[None] * 10),
        )

    stream = micro_batch_indices(10, 4, 0, 0, 0)
    first, second, third, fourth = (next(stream)[1] for _ in range(4))
    assert planned_examples(run(2, TrainState())) == sorted(first + second)
    assert planned_examples(run(1, TrainState(), grad_accum=2)) == sorted(first + second)
    # Resumed after one micro-batch: the next ones only; past the epoch's end (10 examples in 3 micro-batches),
    # the next epoch's order.
    assert planned_examples(run(2, TrainState(step=1, batches_in_epoch=1))) == sorted(second)
    assert planned_examples(run(4, TrainState(step=1, batches_in_epoch=1))) == sorted(
        set(second + third + fourth)
    )
    assert planned_examples(run(100, TrainState())) == list(range(10))
