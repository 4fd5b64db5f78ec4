"""zoo.host_memory: freed host memory stays in the process, so XLA:CPU's buffers are not
faulted in anew on every run (page faults counted with getrusage in a fresh interpreter)."""

import platform
import subprocess
import sys
import textwrap
import warnings

import jax.numpy as jnp
import pytest

from zoo import host_memory

GLIBC = sys.platform == "linux" and platform.libc_ver()[0] == "glibc"

# a program whose 64 MB temporary (the [4096, 4096] scores) and outputs XLA takes from malloc on each run
RUNS = textwrap.dedent("""
    import json, resource, sys
    from zoo import host_memory
    kept = host_memory.keep_freed_memory() if sys.argv[1] == "keep" else None
    import jax, jax.numpy as jnp
    x = jax.random.normal(jax.random.PRNGKey(0), (4096, 256))
    f = jax.jit(lambda x: jnp.tanh(x @ x.T).sum(axis=0) + jnp.cos(x @ x.T).sum(axis=1))
    for _ in range(4):
        f(x).block_until_ready()
    runs = []
    for _ in range(9):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        f(x).block_until_ready()
        runs.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    # the median run: a kept heap still grows now and then (when a result outlives the next run)
    print(json.dumps({"kept": kept, "faults": sorted(runs)[len(runs) // 2], "runs": runs,
                      "again": host_memory.keep_freed_memory() if kept else None}))
""")
PAGES = 4096 * 4096 * 4 // 4096  # pages of one [4096, 4096] float32 buffer


def _run(mode: str) -> dict:
    import json

    out = subprocess.run([sys.executable, "-c", RUNS, mode], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not GLIBC, reason="glibc's mallopt only")
def test_freed_memory_is_not_faulted_in_again():
    default, kept = _run("default"), _run("keep")
    if default["faults"] < PAGES / 2:
        pytest.skip(f"this allocator keeps freed memory already ({default['runs']} faults per run)")
    assert kept["kept"] is True and kept["again"] is True
    # by default each run faults its two 16k-page buffers in again (about 33k faults)
    assert kept["faults"] < PAGES / 16, (default, kept)


@pytest.mark.skipif(not GLIBC, reason="glibc's mallopt only")
def test_after_jax_started_it_warns_and_does_nothing():
    jnp.ones(2).block_until_ready()  # JAX's backend (and XLA's threads) exist now
    with pytest.warns(UserWarning, match="before the first JAX computation"):
        assert host_memory.keep_freed_memory() is False


def test_other_c_libraries_are_left_alone(monkeypatch):
    monkeypatch.setattr(host_memory.platform, "libc_ver", lambda: ("", ""))
    monkeypatch.setattr(host_memory, "_applied", False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert host_memory.keep_freed_memory() is False


@pytest.mark.skipif(not GLIBC, reason="glibc's mallopt only")
def test_zoo_finetune_keeps_freed_memory(tmp_path):
    """The command sets it before anything runs JAX (a fresh process, as `zoo finetune` is);
    a caller's ``cli.main([...])`` in its own process is left alone."""
    code = textwrap.dedent(f"""
        import sys
        sys.argv = ["zoo", "finetune", "--recipe", "{tmp_path}/missing.json", "--checkpoint", "x", "--data", "y",
                    "--output", "{tmp_path}/run"]
        from zoo import cli, host_memory
        rc = cli.main()  # as the console script calls it
        print(rc, host_memory._applied)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.stdout.split() == ["1", "True"], (out.stdout, out.stderr[-2000:])
    assert "missing.json" in out.stderr
