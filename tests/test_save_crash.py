"""Crash safety of `save_pretrained`: a save killed at any point leaves a folder that loads as exactly the old
checkpoint or exactly the new one (or says, with SaveInterruptedError, that a save was interrupted), never a
mix; and the next save into the folder cleans up whatever the killed one left.

How: one helper process (started once, so torch is imported once) holds the models. For every kill point it
forks a child that counts the filesystem calls a save makes (os.replace/rename/unlink/remove/fsync/mkdir/
makedirs/rmdir, shutil.rmtree, every write to a file opened for writing, whole-file shard writers such as
`torch.save`) and sends itself SIGKILL at the N-th one — for a write, after half of its bytes
have landed. A first run without a kill counts the points; then N = 1 .. count + 1. A few kills from the
helper after a random (seeded) delay add real, untimed interruptions.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import select
import shutil
import subprocess
import sys

import pytest
import torch

import pretrained
from pretrained.checkpoint.atomic import MARKER, STAGING_PREFIX
from pretrained.checkpoint.shards import shard_filenames
from pretrained.errors import SaveInterruptedError

TINY = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2)

HELPER = r'''
import builtins, json, os, shutil, signal, sys, time, traceback

import torch
torch.set_num_threads(1)
import pretrained
import pretrained.checkpoint.writer as writer

MODELS = {tag: pretrained.LlamaForCausalLM.from_pretrained(path) for tag, path in json.loads(sys.argv[1]).items()}
REAL_OPEN, REAL_KILL, REAL_GETPID = builtins.open, os.kill, os.getpid
REAL_FSYNC = os.fsync


def die():
    REAL_KILL(REAL_GETPID(), signal.SIGKILL)


def install_hooks(kill_at):
    """Count the save's filesystem calls; SIGKILL this process at call number `kill_at` (0: never)."""
    state = {"n": 0}

    def point():
        state["n"] += 1
        return state["n"] == kill_at

    def before(owner, name):
        real = getattr(owner, name)

        def hooked(*args, **kwargs):
            if point():
                die()
            return real(*args, **kwargs)

        setattr(owner, name, hooked)

    for name in ("replace", "rename", "unlink", "remove", "fsync", "mkdir", "makedirs", "rmdir"):
        before(os, name)
    before(shutil, "rmtree")

    def whole_file(owner, name, path_arg):  # a library call that writes one file: killed before, or half-way
        real = getattr(owner, name)

        def hooked(*args, **kwargs):
            path = args[path_arg]
            if point():
                die()
            real(*args, **kwargs)
            if point():
                with REAL_OPEN(path, "r+b") as f:
                    f.truncate(os.path.getsize(path) // 2)
                    f.flush()
                    REAL_FSYNC(f.fileno())
                die()

        setattr(owner, name, hooked)

    for name, path_arg in (("save_file", 1), ("write_safetensors", 0)):  # whichever the writer uses
        if hasattr(writer, name):
            whole_file(writer, name, path_arg)
    whole_file(torch, "save", 1)

    class File:
        def __init__(self, f):
            self._f = f

        def write(self, data):
            if point():
                die()
            if point():
                self._f.write(data[: len(data) // 2])
                self._f.flush()
                die()
            return self._f.write(data)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return self._f.__exit__(*exc)

        def __getattr__(self, name):
            return getattr(self._f, name)

    def hooked_open(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+"):
            if point():
                die()
            return File(REAL_OPEN(file, mode, *args, **kwargs))
        return REAL_OPEN(file, mode, *args, **kwargs)

    builtins.open = hooked_open
    return state


def run(cmd):
    start = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            state = install_hooks(cmd["kill_at"])
            t0 = time.perf_counter()
            MODELS[cmd["model"]].save_pretrained(cmd["folder"], **cmd["kwargs"])
            report = {"points": state["n"], "elapsed": time.perf_counter() - t0}
        except BaseException:
            report, code = {"error": traceback.format_exc()}, 3
        with REAL_OPEN(cmd["report"], "w") as f:
            f.write(json.dumps(report))
        os._exit(code)
    if cmd.get("delay") is not None:
        time.sleep(cmd["delay"])
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 60
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return {"hung": True}
        time.sleep(0.001)
    out = {"signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
           "code": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
           "wall": time.perf_counter() - start}
    if os.path.exists(cmd["report"]):
        with REAL_OPEN(cmd["report"]) as f:
            text = f.read()
        try:
            out.update(json.loads(text))
        except ValueError:  # a timed kill can land after the save, while the child writes this report
            if out["signal"] is None:
                raise
    return out


print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    print(json.dumps(run(json.loads(line))), flush=True)
'''


class Helper:
    """The helper process: `save(model_tag, folder, kill_at=..., delay=..., **save_kwargs)` -> what happened."""

    def __init__(self, models: dict[str, str], workdir) -> None:
        self.workdir = workdir
        self.stderr = open(os.path.join(workdir, "helper-stderr.txt"), "wb")
        env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
        self.proc = subprocess.Popen([sys.executable, "-u", "-c", HELPER, json.dumps(models)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.stderr, env=env, text=True)
        assert self._read(120) == {"ready": True}
        self.calls = 0

    def _read(self, timeout):
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            raise AssertionError(f"the helper did not answer in {timeout}s; stderr:\n{self._stderr()}")
        line = self.proc.stdout.readline()
        if not line:
            raise AssertionError(f"the helper died; stderr:\n{self._stderr()}")
        return json.loads(line)

    def _stderr(self):
        self.stderr.flush()
        with open(self.stderr.name, "rb") as f:
            return f.read().decode(errors="replace")[-5000:]

    def save(self, model, folder, kill_at=0, delay=None, **kwargs):
        self.calls += 1
        report = os.path.join(self.workdir, f"report-{self.calls}.json")
        cmd = {"model": model, "folder": str(folder), "kill_at": kill_at, "delay": delay, "kwargs": kwargs,
               "report": report}
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        out = self._read(90)
        assert not out.get("hung"), f"a save hung: {cmd}"
        assert "error" not in out, out["error"]
        return out

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=30)
        self.stderr.close()


def tiny_model(seed: int, tag: str):
    torch.manual_seed(seed)
    config = pretrained.LlamaConfig(**TINY, save_tag=tag)  # an unknown key: tells whose config.json was read
    return pretrained.LlamaForCausalLM.from_config(config)


def visible_digest(folder) -> dict[str, str]:
    """The ordinary (not hidden) files of a folder, with hashes of their bytes."""
    out = {}
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if not name.startswith(".") and os.path.isfile(path):
            with open(path, "rb") as f:
                out[name] = hashlib.sha256(f.read()).hexdigest()
    return out


def listing(folder) -> list[str]:
    return sorted(os.listdir(folder))


def expected_files(max_shard_size: str, safe: bool = True) -> list[str]:
    counts = {"25KB": 5, "30KB": 4, "40KB": 3, "60KB": 2, "5GB": 1}  # of the tiny untied model
    weights = "model.safetensors" if safe else "pytorch_model.bin"
    n = counts[max_shard_size]
    index = [weights + ".index.json"] if n > 1 else []
    return sorted(["config.json", "generation_config.json", *shard_filenames(n, weights), *index])


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("crash")
    models = {tag: tiny_model(seed, tag) for seed, tag in ((0, "A"), (1, "B"), (2, "C"))}
    states = {tag: {k: v.detach().clone() for k, v in m.state_dict().items()} for tag, m in models.items()}
    for tag in ("B", "C"):  # the helper loads its models from disk, as a user's process would
        models[tag].save_pretrained(root / "source" / tag)
    helper = Helper({tag: str(root / "source" / tag) for tag in ("B", "C")}, str(root))
    yield {"root": root, "models": models, "states": states, "helper": helper}
    helper.close()


def outcome(folder, states) -> str:
    """'A', 'B', 'C' (the checkpoint that loads, checked tensor by tensor and against its config), or
    'interrupted'. Anything else fails the test."""
    try:
        model, info = pretrained.LlamaForCausalLM.from_pretrained(folder, output_loading_info=True)
    except SaveInterruptedError as e:
        assert str(folder) in str(e)
        return "interrupted"
    except Exception as e:  # noqa: BLE001 - the point of the test: say what the folder held
        raise AssertionError(f"loading {listing(folder)} raised {type(e).__name__}: {e}") from e
    assert info["missing_keys"] == [] and info["unexpected_keys"] == [] and info["mismatched_keys"] == [], info
    loaded = model.state_dict()
    matches = [tag for tag, state in states.items()
               if sorted(state) == sorted(loaded) and all(torch.equal(loaded[k], v) for k, v in state.items())]
    assert len(matches) == 1, f"the weights are a mix of checkpoints: {listing(folder)}"
    assert model.config.save_tag == matches[0], "config.json of one save, weights of another"
    return matches[0]


def check_monotonic(outcomes: list[str], old: str, new: str) -> None:
    """The folder goes from the old checkpoint to the new one once, and never back."""
    assert set(outcomes) <= {old, new, "interrupted"}, outcomes
    first_new = next((i for i, o in enumerate(outcomes) if o != old), len(outcomes))
    assert old not in outcomes[first_new:], outcomes
    assert outcomes[0] == old and outcomes[-1] == new, outcomes


def clean_save_after(folder, model, states, tag, safe=True, extra=(), max_shard_size="60KB"):
    """A later, uninterrupted save cleans up every leftover and loads as the new model."""
    model.save_pretrained(folder, max_shard_size=max_shard_size, safe_serialization=safe)
    assert listing(folder) == sorted(expected_files(max_shard_size, safe) + list(extra)), listing(folder)
    assert outcome(folder, states) == tag


def sweep(env, template, model, kwargs, old, cleanup_tag="C", keep_states_at=None, old_is_on_disk=True):
    """Kill a save of `model` over a copy of `template` at every point; return outcomes per kill point.

    `old_is_on_disk`: the template is a finished checkpoint (not one with a commit still to roll forward), so
    before the new commit point its files must be untouched, byte for byte."""
    helper, root, states = env["helper"], env["root"], env["states"]
    name = f"{old}-to-{model}-{len(os.listdir(root))}"
    # count the points, and keep the complete new checkpoint for byte comparisons
    full = root / f"{name}-full"
    shutil.copytree(template, full)
    ran = helper.save(model, full, kill_at=0, **kwargs)
    assert ran["code"] == 0 and ran["signal"] is None
    points = ran["points"]
    assert outcome(full, states) == model
    new_files = visible_digest(full)
    assert sorted(new_files) == [n for n in listing(full)], listing(full)  # nothing hidden left
    old_files = visible_digest(template)
    extra = ["README.md"] if os.path.exists(template / "README.md") else []
    safe = kwargs.get("safe_serialization", True)

    outcomes, kept = [], {}
    for n in range(1, points + 2):
        folder = root / f"{name}-{n}"
        shutil.copytree(template, folder)
        ran = helper.save(model, folder, kill_at=n, **kwargs)
        if n <= points:
            assert ran["signal"] == 9, (n, ran)
        else:
            assert ran["code"] == 0, ran
        got = outcome(folder, states)
        outcomes.append(got)
        marked = os.path.exists(folder / MARKER)
        if got == old and old_is_on_disk:  # before the commit point the old checkpoint is untouched, byte for byte
            assert not marked
            assert visible_digest(folder) == old_files, n
        elif got == model and not marked:  # after it, the new one is in place, byte for byte
            assert visible_digest(folder) == new_files, n
        if keep_states_at is not None and keep_states_at(n, got, marked):
            kept[n] = root / f"{name}-{n}-kept"
            shutil.copytree(folder, kept[n])
        clean_save_after(folder, env["models"][cleanup_tag], states, cleanup_tag, safe=safe, extra=extra)
        shutil.rmtree(folder)
    shutil.rmtree(full)
    check_monotonic(outcomes, old, model)
    return outcomes, kept


SCENARIOS = [
    # (old checkpoint: max_shard_size, format), (new: max_shard_size, format)
    pytest.param("30KB", "40KB", True, id="4-shards-to-3-shards"),
    pytest.param("30KB", "5GB", True, id="4-shards-to-single-file"),
    pytest.param("5GB", "25KB", True, id="single-file-to-5-shards"),
    pytest.param("30KB", "60KB", False, id="pickle-4-shards-to-2-shards"),
]


@pytest.mark.parametrize(("old_size", "new_size", "safe"), SCENARIOS)
def test_killed_save_leaves_old_or_new_checkpoint(env, old_size, new_size, safe):
    template = env["root"] / f"template-A-{old_size}-{safe}"
    if not template.exists():
        env["models"]["A"].save_pretrained(template, max_shard_size=old_size, safe_serialization=safe)
        (template / "README.md").write_text("user's notes")  # not a weight file: must survive every save
    assert listing(template) == sorted(expected_files(old_size, safe) + ["README.md"])
    outcomes, _ = sweep(env, template, "B", {"max_shard_size": new_size, "safe_serialization": safe}, old="A",
                        cleanup_tag="C")
    assert len(outcomes) >= 30  # the sweep really went through the save
    assert outcomes.count("A") >= 5 and outcomes.count("B") >= 5


def test_killed_recovery_never_goes_back(env):
    """A folder left with a marked commit (killed just after the commit point) is itself killed again at every
    point of the next save: it reads as the first save's checkpoint until the second commits, never the one
    before, and a clean save afterwards still cleans up."""
    template = env["root"] / "template-A-30KB-True"
    if not template.exists():
        env["models"]["A"].save_pretrained(template, max_shard_size="30KB")
        (template / "README.md").write_text("user's notes")
    _, kept = sweep(env, template, "B", {"max_shard_size": "40KB"}, old="A", cleanup_tag="C",
                    keep_states_at=lambda n, got, marked: got == "B" and marked)
    assert kept, "no kill point left a marked, unfinished commit"
    first, last = min(kept), max(kept)
    for n in sorted({first, last}):  # nothing moved yet / everything moved but not yet unmarked
        assert os.path.isdir(kept[n]) and os.path.exists(kept[n] / MARKER)
        assert any(name.startswith(STAGING_PREFIX) for name in os.listdir(kept[n]))
        sweep(env, kept[n], "C", {"max_shard_size": "5GB"}, old="B", cleanup_tag="B", old_is_on_disk=False)


def test_kills_after_a_random_delay(env):
    """Real interruptions at unplanned moments: SIGKILL from the helper after a seeded random delay."""
    template = env["root"] / "template-A-30KB-True"
    if not template.exists():
        env["models"]["A"].save_pretrained(template, max_shard_size="30KB")
        (template / "README.md").write_text("user's notes")
    helper, root, states = env["helper"], env["root"], env["states"]
    probes = []
    for i in range(3):
        probe = root / f"timed-probe-{i}"
        shutil.copytree(template, probe)
        probes.append(helper.save("B", probe, kill_at=0, max_shard_size="40KB"))
        shutil.rmtree(probe)
    wall = min(p["wall"] for p in probes)  # fork to exit
    save_time = min(p["elapsed"] for p in probes)  # the save itself
    rng = random.Random(1234)
    seen, killed = [], 0
    for i in range(30):
        folder = root / f"timed-{i}"
        shutil.copytree(template, folder)
        delay = rng.uniform(max(0.0, wall - 1.5 * save_time), wall)  # mostly while the save runs
        ran = helper.save("B", folder, delay=delay, max_shard_size="40KB")
        assert ran["signal"] == 9 or ran["code"] == 0, ran
        killed += ran["signal"] == 9
        seen.append(outcome(folder, states))
        clean_save_after(folder, env["models"]["C"], states, "C", extra=["README.md"])
        shutil.rmtree(folder)
    assert set(seen) <= {"A", "B", "interrupted"}, seen
    assert killed >= 5, f"only {killed} of 30 saves were interrupted; the delays miss the save"


# ---- failures that are not kills: an OSError from the filesystem, a corrupt record ------------------------


class _FailAt:
    """Make the N-th filesystem call of a save raise OSError (disk full), in this process."""

    NAMES = ("replace", "rename", "unlink", "remove", "fsync", "mkdir", "makedirs", "rmdir")

    def __init__(self, fail_at: int) -> None:
        self.fail_at, self.count, self.saved = fail_at, 0, []

    def _tick(self):
        self.count += 1
        if self.count == self.fail_at:
            raise OSError(28, "No space left on device (injected)")

    def __enter__(self):
        import builtins

        def wrap(owner, name):
            real = getattr(owner, name)
            self.saved.append((owner, name, real))

            def hooked(*args, **kwargs):
                self._tick()
                return real(*args, **kwargs)

            setattr(owner, name, hooked)

        for name in self.NAMES:
            wrap(os, name)
        wrap(shutil, "rmtree")
        real_open = builtins.open
        self.saved.append((builtins, "open", real_open))

        def hooked_open(file, mode="r", *args, **kwargs):
            if any(c in mode for c in "wax+"):
                self._tick()
            return real_open(file, mode, *args, **kwargs)

        builtins.open = hooked_open
        return self

    def __exit__(self, *exc):
        for owner, name, real in reversed(self.saved):
            setattr(owner, name, real)


def test_failed_save_leaves_old_or_new_checkpoint(env, tmp_path):
    """An OSError at any filesystem call of a save either propagates to the caller or was handled (and then the
    save succeeded), and the folder loads as the old or the new checkpoint: after the commit point, the new one
    (its staged files are kept for recovery), never 'interrupted'."""
    states, models = env["states"], env["models"]
    template = tmp_path / "template"
    models["A"].save_pretrained(template, max_shard_size="30KB")
    probe = tmp_path / "probe"
    shutil.copytree(template, probe)
    with _FailAt(0) as counter:
        models["B"].save_pretrained(probe, max_shard_size="40KB")
    points = counter.count
    assert points > 20
    outcomes = []
    for n in range(1, points + 1):
        folder = tmp_path / f"fail-{n}"
        shutil.copytree(template, folder)
        try:
            with _FailAt(n):
                models["B"].save_pretrained(folder, max_shard_size="40KB")
            failed = False
        except OSError as e:
            assert "injected" in str(e)
            failed = True
        got = outcome(folder, states)
        if failed:
            outcomes.append(got)
        else:  # the error was handled inside (os.makedirs(exist_ok=True), ...) and the save succeeded
            assert got == "B", n
        clean_save_after(folder, models["C"], states, "C")
        shutil.rmtree(folder)
    assert "interrupted" not in outcomes, outcomes
    check_monotonic(outcomes + ["B"], "A", "B")  # over the saves that failed, in the order of their failure
    assert outcomes.count("A") >= 5 and outcomes.count("B") >= 1


@pytest.mark.parametrize("damage", ["staging-gone", "garbage-record", "record-a-list", "record-empty-object"])
def test_interrupted_save_is_reported_and_the_next_save_recovers(env, tmp_path, damage):
    from pretrained.checkpoint.atomic import AtomicSave

    states, models = env["states"], env["models"]
    folder = tmp_path / "ckpt"
    models["A"].save_pretrained(folder, max_shard_size="30KB")
    (folder / "README.md").write_text("user's notes")
    if damage == "staging-gone":  # a marked commit whose staged files were deleted by someone
        with AtomicSave(folder) as save:
            save.write_text("model.safetensors", "staged, then lost")  # the folder has no such file
            staged = save.staging
            import pretrained.checkpoint.atomic as atomic

            real = atomic._roll_forward
            atomic._roll_forward = lambda *a: None  # stop right after the commit point
            try:
                save.commit()
            finally:
                atomic._roll_forward = real
        shutil.rmtree(staged, ignore_errors=True)
    else:
        text = {"garbage-record": '{"staging": ".pretrained-st', "record-a-list": "[]",
                "record-empty-object": "{}"}[damage]
        (folder / MARKER).write_text(text)
    with pytest.raises(SaveInterruptedError) as err:
        pretrained.LlamaForCausalLM.from_pretrained(folder)
    assert str(folder) in str(err.value) and "save" in str(err.value)
    assert outcome(folder, states) == "interrupted"
    # as the message says: saving again into the folder repairs it
    clean_save_after(folder, models["C"], states, "C", extra=["README.md"])
    assert (folder / "README.md").read_text() == "user's notes"
